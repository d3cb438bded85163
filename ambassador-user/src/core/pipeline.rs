//! The daemon's core, with no kernel in it: a desired state (from a file, or etcd's snapshot)
//! goes through the policies (where frontends may be, where backends may point, what each
//! host may publish), is fitted to the tables' capacity, and is converged into the tables
//! through the reconcile plan. `ambassador run` drives it into the BPF maps; the fleet
//! simulator and the unit tests drive it into [`tables::Memory`].

use std::{collections::BTreeSet, fmt::Display, net::IpAddr, sync::Arc};

use tracing::warn;

use crate::{
    core::{
        capacity::Capacity,
        model::Desired,
        policy::{BackendPolicy, Refusal},
        reconcile::Installed,
        tables::{self, Tables},
        trust::{FrontendPolicy, FrontendRefusal, FrontendScope},
    },
    error::Result,
};

/// The path from a desired state to the tables, and what it left out.
#[derive(Debug)]
pub struct Pipeline {
    /// What the tables hold (kept equal to them).
    pub installed: Installed,
    policy: BackendPolicy,
    frontends: FrontendPolicy,
    capacity: Capacity,
    /// Where the cluster places frontends (None: a local file, trusted).
    scope: Option<Arc<FrontendScope>>,
    /// Endpoints the host records leave out, as last heard from etcd.
    host_refused: Arc<Vec<Refusal>>,
    /// Endpoints refused by the policy or their host's record at the last apply.
    refused: BTreeSet<Refusal>,
    /// How many of them the backend policy refused.
    refused_by_policy: u32,
    /// Services refused for their frontend at the last apply.
    refused_frontends: BTreeSet<FrontendRefusal>,
    /// Services and endpoints left out for want of capacity at the last apply.
    left_out: BTreeSet<String>,
    /// The state the tables were converged to by the last apply; None when unknown (before
    /// the first apply, and after one that failed part-way), so that the next apply plans
    /// every service.
    converged: Option<Arc<Desired>>,
}

/// What one apply did.
#[derive(Debug)]
pub struct Applied {
    /// The state now in the tables (what the DNS responder answers from).
    pub desired: Arc<Desired>,
    /// Operations written to the tables.
    pub changes: usize,
}

impl Pipeline {
    /// A pipeline into tables that hold `installed` and `capacity` entries.
    pub fn new(
        installed: Installed,
        policy: BackendPolicy,
        frontends: FrontendPolicy,
        capacity: Capacity,
    ) -> Self {
        Self {
            installed,
            policy,
            frontends,
            capacity,
            scope: None,
            host_refused: Arc::default(),
            refused: BTreeSet::new(),
            refused_by_policy: 0,
            refused_frontends: BTreeSet::new(),
            left_out: BTreeSet::new(),
            converged: None,
        }
    }

    /// What etcd says about trust: where frontends live, and the endpoints the host records
    /// refuse (applied at the next [`Pipeline::apply`]).
    pub fn follow_trust(&mut self, scope: Arc<FrontendScope>, host_refused: Arc<Vec<Refusal>>) {
        self.scope = Some(scope);
        self.host_refused = host_refused;
    }

    /// Judges `desired` and converges `tables` to what is left. `own` are this host's
    /// addresses (never a frontend). Each refusal is warned about once, when it appears. On
    /// an error the tables keep what they held, and `installed` says what that is.
    ///
    /// The judging runs over every service (it reads, and copies only a spec it changes);
    /// the plan covers only the services whose judged spec differs from the last apply's, so
    /// one change on a large state costs its own service's entries.
    pub fn apply(
        &mut self,
        tables: &mut impl Tables,
        desired: &Desired,
        own: &BTreeSet<IpAddr>,
    ) -> Result<Applied> {
        // One copy of the state, filtered in place by each step.
        let (desired, refused) = self
            .frontends
            .filter(desired.clone(), self.scope.as_deref(), own);
        warn_new(&mut self.refused_frontends, refused);
        let (desired, mut refused) = self.policy.filter(desired);
        self.refused_by_policy = refused.len() as u32;
        refused.extend(self.host_refused.iter().cloned());
        warn_new(&mut self.refused, refused);
        let (desired, left_out) = self.capacity.fit(desired);
        warn_new(&mut self.left_out, left_out);
        let converged = self.converged.take();
        let changes = match &converged {
            Some(before) => {
                let changed = changed_services(before, &desired);
                tables::converge_changed(tables, &mut self.installed, &desired, &changed)?
            }
            None => tables::converge(tables, &mut self.installed, &desired)?,
        };
        let desired = Arc::new(desired);
        self.converged = Some(desired.clone());
        Ok(Applied { desired, changes })
    }

    /// Endpoints refused by the backend policy at the last apply.
    pub fn refused_endpoints(&self) -> u32 {
        self.refused_by_policy
    }

    /// Endpoints refused by their host's record, as last heard from etcd.
    pub fn refused_host_endpoints(&self) -> u32 {
        self.host_refused.len() as u32
    }

    /// Services whose frontend this host refused at the last apply.
    pub fn refused_frontends(&self) -> u32 {
        self.refused_frontends.len() as u32
    }

    /// Services and endpoints left out for want of capacity at the last apply.
    pub fn over_capacity(&self) -> u32 {
        self.left_out.len() as u32
    }
}

/// The services whose spec differs between `before` and `after`, or that only one holds (a
/// spec shared by both is equal at the cost of comparing two pointers).
fn changed_services(before: &Desired, after: &Desired) -> BTreeSet<String> {
    let mut changed: BTreeSet<String> = before
        .keys()
        .filter(|name| !after.contains_key(*name))
        .cloned()
        .collect();
    for (name, spec) in after {
        if before.get(name) != Some(spec) {
            changed.insert(name.clone());
        }
    }
    changed
}

/// Replaces `known` with `now`, warning about what was not known before.
fn warn_new<T: Ord + Display>(known: &mut BTreeSet<T>, now: Vec<T>) {
    for item in &now {
        if !known.contains(item) {
            warn!("{item}");
        }
    }
    *known = now.into_iter().collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{config, tables::Memory};

    const STATE: &str = r#"
[[service]]
name = "web"
frontend = "10.96.0.1:80"
endpoints = ["10.0.0.1:8080", "127.0.0.1:8080"]

[[service]]
name = "evil"
frontend = "1.1.1.1:443"
endpoints = ["10.0.0.9:443"]

[[service]]
name = "zdb"
frontend = "10.96.0.2:6379"
endpoints = ["10.0.0.3:6379"]
"#;

    /// The whole core without a kernel: a frontend outside the cluster's ranges, an endpoint
    /// the backend policy refuses and a service past the capacity are left out and counted;
    /// the rest reaches the tables, and a second apply changes nothing.
    #[test]
    fn policies_and_capacity_judge_before_the_tables_see_anything() {
        let capacity = Capacity {
            services: 1,
            ..Capacity::default()
        };
        let mut core = Pipeline::new(
            Installed::default(),
            BackendPolicy::default(),
            FrontendPolicy::default(),
            capacity,
        );
        core.follow_trust(Arc::new(FrontendScope::default()), Arc::default());
        let desired = config::parse("test.toml", STATE).unwrap();
        let mut tables = Memory::default();
        let applied = core.apply(&mut tables, &desired, &BTreeSet::new()).unwrap();
        assert_eq!(applied.desired.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(applied.desired["web"].endpoints.len(), 1);
        assert_eq!(
            core.refused_frontends(),
            1,
            "evil's 1.1.1.1 is outside the ranges"
        );
        assert_eq!(core.refused_endpoints(), 1, "loopback is never a backend");
        assert_eq!(core.over_capacity(), 1, "zdb does not fit one service");
        assert_eq!(tables.contents, core.installed);
        assert_eq!(tables.contents.frontends.len(), 1);
        assert_eq!(tables.contents.backends.len(), 1);
        let again = core.apply(&mut tables, &desired, &BTreeSet::new()).unwrap();
        assert_eq!(again.changes, 0);

        // A file is trusted (no scope), but never for one of the host's own addresses.
        let mut local = Pipeline::new(
            Installed::default(),
            BackendPolicy::default(),
            FrontendPolicy::default(),
            Capacity::default(),
        );
        let own = BTreeSet::from(["10.96.0.2".parse().unwrap()]);
        let applied = local.apply(&mut Memory::default(), &desired, &own).unwrap();
        assert_eq!(applied.desired.keys().collect::<Vec<_>>(), ["evil", "web"]);
        assert_eq!(local.refused_frontends(), 1);
    }

    /// A spec no step changed goes through the pipeline shared, and only the services that
    /// changed are planned; after an apply that failed part-way, the next plans everything.
    #[test]
    fn an_apply_plans_only_what_changed_and_everything_after_a_failure() {
        let mut core = Pipeline::new(
            Installed::default(),
            BackendPolicy::default(),
            FrontendPolicy::default(),
            Capacity::default(),
        );
        let mut desired = config::parse("test.toml", STATE).unwrap();
        desired.remove("evil");
        let mut tables = Memory::default();
        core.apply(&mut tables, &desired, &BTreeSet::new()).unwrap();

        let zdb = Arc::make_mut(desired.get_mut("zdb").unwrap());
        zdb.endpoints[0].addr = "10.0.0.4:6379".parse().unwrap();
        let applied = core.apply(&mut tables, &desired, &BTreeSet::new()).unwrap();
        assert!(
            Arc::ptr_eq(&applied.desired["zdb"], &desired["zdb"]),
            "no step copied zdb"
        );
        // zdb's new backend, its slot, the old one terminating; web (one endpoint refused,
        // so its spec is a copy) is equal to before and not planned.
        assert_eq!(applied.changes, 3);
        assert_eq!(tables.contents, core.installed);
        assert_eq!(&tables.contents.as_desired(), &*applied.desired);

        // The tables refuse the second op of the next apply: it fails part-way...
        let zdb = Arc::make_mut(desired.get_mut("zdb").unwrap());
        zdb.endpoints[0].addr = "10.0.0.5:6379".parse().unwrap();
        tables.full_after = Some(tables.applied + 1);
        assert!(core.apply(&mut tables, &desired, &BTreeSet::new()).is_err());
        // ... and what the tables hold is planned again from what they hold, as a whole.
        tables.full_after = None;
        core.installed.names.insert(99, "leftover".into());
        tables.contents.names.insert(99, "leftover".into());
        let applied = core.apply(&mut tables, &desired, &BTreeSet::new()).unwrap();
        assert_eq!(tables.contents, core.installed);
        assert_eq!(&tables.contents.as_desired(), &*applied.desired);
        assert!(!tables.contents.names.contains_key(&99), "a full plan ran");
    }
}
