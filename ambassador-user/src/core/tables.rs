//! The datapath's tables as the control loop sees them: the one narrow interface between the
//! core (desired state -> reconcile plan -> tables) and whatever holds the result. The BPF maps
//! are one implementation ([`crate::datapath::maps::Maps`]); [`Memory`] is another, for tests that run
//! without root and for driving the loop many times in one process.

use std::collections::BTreeSet;

use crate::{
    core::{
        model::Desired,
        reconcile::{self, Installed, Op},
    },
    error::{Error, Result},
};

/// What the control loop writes to.
pub trait Tables {
    /// Writes one planned change.
    fn apply(&mut self, op: &Op) -> Result<()>;
    /// Forgets that the datapath found backend `id` failing (its entry changed: etcd, or the
    /// file, is the source of truth).
    fn clear_suspect(&mut self, id: u32) -> Result<()>;
}

/// Installs `desired` op by op, keeping `installed` equal to the tables (an op the tables
/// refuse is not recorded, and ends the run). Returns the op count. A backend written or
/// removed is no longer suspect.
pub fn converge(
    tables: &mut impl Tables,
    installed: &mut Installed,
    desired: &Desired,
) -> Result<usize> {
    reconcile::validate(desired)?;
    write(tables, installed, reconcile::plan(installed, desired))
}

/// [`converge`], planning only the `changed` services: `installed` must hold what
/// [`converge`] made of a desired state that differs from `desired` only in those (see
/// [`reconcile::plan_changed`]).
pub fn converge_changed(
    tables: &mut impl Tables,
    installed: &mut Installed,
    desired: &Desired,
    changed: &BTreeSet<String>,
) -> Result<usize> {
    reconcile::validate(desired)?;
    write(
        tables,
        installed,
        reconcile::plan_changed(installed, desired, changed),
    )
}

/// Writes `ops` in order, keeping `installed` equal to the tables.
fn write(tables: &mut impl Tables, installed: &mut Installed, ops: Vec<Op>) -> Result<usize> {
    for op in &ops {
        tables.apply(op)?;
        installed.apply(op);
        if let Op::PutBackend { id, .. } | Op::DeleteBackend { id } = op {
            tables.clear_suspect(*id)?;
        }
    }
    Ok(ops.len())
}

/// Tables in memory: what was applied, in the shape of the maps.
#[derive(Debug, Default)]
pub struct Memory {
    /// The tables' contents.
    pub contents: Installed,
    /// Backends held suspect (as the datapath would mark them).
    pub suspects: BTreeSet<u32>,
    /// Ops applied so far.
    pub applied: usize,
    /// Refuse every op from this many applied on, as full maps would (none: never).
    pub full_after: Option<usize>,
}

impl Tables for Memory {
    fn apply(&mut self, op: &Op) -> Result<()> {
        if self.full_after.is_some_and(|n| self.applied >= n) {
            return Err(Error::MapFull {
                name: "memory",
                flag: "full_after",
                what: format!("{op:?}"),
            });
        }
        self.contents.apply(op);
        self.applied += 1;
        Ok(())
    }

    fn clear_suspect(&mut self, id: u32) -> Result<()> {
        self.suspects.remove(&id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config;

    fn desired(toml: &str) -> Desired {
        config::parse("test.toml", toml).unwrap()
    }

    const TWO: &str = "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.1:80\"\nendpoints = [\"10.0.0.1:8080\", \"10.0.0.2:8080\"]\n\n[[service]]\nname = \"db\"\nfrontend = \"10.96.0.2:6379\"\nendpoints = [\"10.0.0.3:6379\"]\n";
    const MOVED: &str = "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.1:80\"\nendpoints = [\"10.0.0.2:8080\", \"10.0.0.4:8080\"]\n";

    /// The loop without a kernel: each desired state converges, the mirror equals the tables,
    /// and a second run changes nothing.
    #[test]
    fn converges_in_memory_and_keeps_the_mirror_equal_to_the_tables() {
        let mut tables = Memory::default();
        let mut installed = Installed::default();
        for toml in [TWO, MOVED, TWO, ""] {
            let want = desired(toml);
            assert!(converge(&mut tables, &mut installed, &want).unwrap() > 0);
            assert_eq!(tables.contents, installed);
            assert_eq!(converge(&mut tables, &mut installed, &want).unwrap(), 0);
            assert!(reconcile::plan(&installed, &want).is_empty());
        }
    }

    /// A backend whose entry changes (here: it leaves, so it turns terminating) is no longer
    /// suspect; one left as it was stays suspect.
    #[test]
    fn a_changed_backend_is_no_longer_suspect() {
        let mut tables = Memory::default();
        let mut installed = Installed::default();
        converge(&mut tables, &mut installed, &desired(TWO)).unwrap();
        let id_of = |inst: &Installed, addr: &str| {
            *inst
                .backends
                .iter()
                .find(|(_, b)| b.addr.to_string() == addr)
                .unwrap()
                .0
        };
        let (leaving, staying) = (
            id_of(&installed, "10.0.0.1:8080"),
            id_of(&installed, "10.0.0.2:8080"),
        );
        tables.suspects.extend([leaving, staying]);
        converge(&mut tables, &mut installed, &desired(MOVED)).unwrap();
        assert!(installed.backends[&leaving].terminating);
        assert!(!tables.suspects.contains(&leaving));
        assert!(tables.suspects.contains(&staying));
    }

    /// Tables that refuse an op part way: the run fails, the mirror holds exactly what the
    /// tables took, and the next run (with room again) finishes the job.
    #[test]
    fn a_refused_op_leaves_the_mirror_equal_to_the_tables() {
        let want = desired(TWO);
        let total = reconcile::plan(&Installed::default(), &want).len();
        for cut in 0..total {
            let mut tables = Memory {
                full_after: Some(cut),
                ..Memory::default()
            };
            let mut installed = Installed::default();
            assert!(converge(&mut tables, &mut installed, &want).is_err());
            assert_eq!(tables.contents, installed, "cut after {cut} ops");
            tables.full_after = None;
            converge(&mut tables, &mut installed, &want).unwrap();
            assert_eq!(tables.contents, installed);
            assert!(reconcile::plan(&installed, &want).is_empty());
        }
    }
}
