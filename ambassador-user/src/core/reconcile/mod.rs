//! Desired state -> the minimal, ordered list of map operations. Pure: no I/O, unit- and
//! property-tested.
//!
//! Ordering rules (DESIGN.md): backends first, then slots, then the count, so a lookup never
//! meets an empty slot. Slots past the new count are pointed at live backends before the
//! count shrinks and deleted after. A backend that leaves its service becomes *terminating*:
//! it keeps serving its established flows and takes no new ones, until the garbage collector
//! sees its last flow gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

mod installed;

pub use installed::{Installed, InstalledBackend};

use crate::core::model::{Desired, Endpoint, Proto, ServiceSpec, MAX_WEIGHT};

/// One map operation. `plan` orders them so that applying them one by one never exposes a
/// half-written service to the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Zero a service id's counters before the id is (re)used.
    ResetStats { id: u32 },
    /// Write the name of a service id.
    PutName { id: u32, name: String },
    /// Remove the name of a service id.
    DeleteName { id: u32 },
    /// Insert or update a backend.
    PutBackend { id: u32, backend: InstalledBackend },
    /// Remove a backend.
    DeleteBackend { id: u32 },
    /// Point a slot at a backend.
    PutSlot {
        service_id: u32,
        slot: u32,
        backend_id: u32,
    },
    /// Remove a slot.
    DeleteSlot { service_id: u32, slot: u32 },
    /// Insert or update a frontend.
    PutService {
        frontend: SocketAddr,
        proto: Proto,
        id: u32,
        count: u32,
    },
    /// Remove a frontend.
    DeleteService { frontend: SocketAddr, proto: Proto },
    /// Mark an address as a frontend address (fragments to it are dropped, not leaked).
    PutMarker { vip: IpAddr, proto: Proto },
    /// Remove an address marker.
    DeleteMarker { vip: IpAddr, proto: Proto },
}

/// Why a desired state cannot be installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Two services claim the same frontend.
    #[error("services {first:?} and {second:?} both use frontend {frontend}/{proto}")]
    DuplicateFrontend {
        first: String,
        second: String,
        frontend: SocketAddr,
        proto: Proto,
    },
}

/// Refuses desired states that cannot be installed as a whole. (What exceeds the maps'
/// capacity is left out before this: `Capacity::fit`.)
pub fn validate(desired: &Desired) -> Result<(), PlanError> {
    let mut seen: BTreeMap<(SocketAddr, Proto), &str> = BTreeMap::new();
    for (name, spec) in desired {
        if let Some(first) = seen.insert((spec.frontend, spec.proto), name) {
            return Err(PlanError::DuplicateFrontend {
                first: first.to_owned(),
                second: name.clone(),
                frontend: spec.frontend,
                proto: spec.proto,
            });
        }
    }
    Ok(())
}

/// Merges duplicate endpoints and clamps weights: the (address, weight) list a service gets.
fn normalized(endpoints: &[Endpoint]) -> Vec<(SocketAddr, u32)> {
    let mut merged: Vec<(SocketAddr, u32)> = Vec::new();
    for ep in endpoints {
        match merged.iter_mut().find(|(a, _)| *a == ep.addr) {
            Some((_, w)) => *w = (*w + ep.weight).min(MAX_WEIGHT),
            None => merged.push((ep.addr, ep.weight.clamp(1, MAX_WEIGHT))),
        }
    }
    merged
}

/// Computes the operations that turn `installed` into `desired`. Call [`validate`] first.
/// Anything in the maps that belongs to no named service (left by a crash) is removed too.
pub fn plan(installed: &Installed, desired: &Desired) -> Vec<Op> {
    plan_services(installed, desired, None)
}

/// The same operations as [`plan`], found by looking only at the `changed` services (names
/// in `desired`, or installed and gone from it), when `installed` holds exactly what
/// [`plan`] made of a desired state that differs from `desired` only in those services.
/// Nothing else is looked at: one changed service costs its own entries, not the tables'.
pub fn plan_changed(
    installed: &Installed,
    desired: &Desired,
    changed: &BTreeSet<String>,
) -> Vec<Op> {
    plan_services(installed, desired, Some(changed))
}

/// The services a plan covers, as installed: every id, or those of the changed names.
struct Scope(Option<BTreeSet<u32>>);

impl Scope {
    fn covers(&self, id: u32) -> bool {
        self.0.as_ref().is_none_or(|ids| ids.contains(&id))
    }
}

/// [`plan`] over every service (`changed` None) or over the changed ones.
fn plan_services(
    installed: &Installed,
    desired: &Desired,
    changed: Option<&BTreeSet<String>>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let ids_by_name: BTreeMap<&str, u32> = installed
        .names
        .iter()
        .map(|(id, n)| (n.as_str(), *id))
        .collect();
    let kept_ids: BTreeSet<u32> = desired
        .keys()
        .filter_map(|n| ids_by_name.get(n.as_str()).copied())
        .collect();

    let scope = Scope(changed.map(|names| {
        names
            .iter()
            .filter_map(|n| ids_by_name.get(n.as_str()).copied())
            .collect()
    }));
    take_apart(installed, desired, &kept_ids, &scope, &mut ops);
    // Grouped once: plan is linear in the number of services and backends.
    let owned = installed.backends_in(&scope);
    let mut next_backend_id = installed.next_backend_id.max(1);
    // New services take the lowest free ids; ids only get used as the loop goes, so the search
    // resumes where the last one stopped. Id 0 is reserved (address markers, "no service").
    // A new id stays at most desired.len(): of 1..=len, kept services hold at most len minus
    // the new ones, so enough stay free. That keeps ids inside the counter array (capacity + 1
    // long; `Capacity::fit` bounds len by the capacity, and kept ids were new ids once).
    let mut free_from = 1;
    for (name, spec) in desired {
        if changed.is_some_and(|names| !names.contains(name)) {
            continue;
        }
        let (id, fresh) = match ids_by_name.get(name.as_str()) {
            Some(&id) => (id, false),
            None => {
                let id = (free_from..)
                    .find(|id| !kept_ids.contains(id))
                    .expect("fewer services than u32 ids");
                free_from = id + 1;
                ops.push(Op::ResetStats { id });
                ops.push(Op::PutName {
                    id,
                    name: name.clone(),
                });
                (id, true)
            }
        };
        // A reused id's previous owner was taken apart above: start from nothing.
        let empty = Installed::default();
        let (current, owned) = if fresh {
            (&empty, &[][..])
        } else {
            (installed, owned.get(&id).map_or(&[][..], Vec::as_slice))
        };
        plan_service(current, owned, id, spec, &mut next_backend_id, &mut ops);
    }

    plan_markers(installed, desired, &mut ops);
    ops
}

/// What belongs to no kept service, frontends first, so no new packet reaches anything taken
/// apart after them; and a frontend that moves to another service must be free before it is
/// claimed again.
fn take_apart(
    installed: &Installed,
    desired: &Desired,
    kept_ids: &BTreeSet<u32>,
    scope: &Scope,
    ops: &mut Vec<Op>,
) {
    for (&(frontend, proto), &(id, _)) in &installed.frontends {
        if !scope.covers(id) {
            continue;
        }
        let keep = kept_ids.contains(&id)
            && desired
                .get(&installed.names[&id])
                .is_some_and(|spec| (spec.frontend, spec.proto) == (frontend, proto));
        if !keep {
            ops.push(Op::DeleteService { frontend, proto });
        }
    }
    let slots: Box<dyn Iterator<Item = &(u32, u32)>> = match &scope.0 {
        None => Box::new(installed.slots.keys()),
        Some(ids) => Box::new(
            ids.iter()
                .flat_map(|&id| installed.slots.range((id, 0)..=(id, u32::MAX)))
                .map(|(key, _)| key),
        ),
    };
    for &(service_id, slot) in slots {
        if !kept_ids.contains(&service_id) {
            ops.push(Op::DeleteSlot { service_id, slot });
        }
    }
    for (&id, b) in &installed.backends {
        if scope.covers(b.service_id) && !kept_ids.contains(&b.service_id) {
            ops.push(Op::DeleteBackend { id });
        }
    }
    for &id in installed.names.keys() {
        if scope.covers(id) && !kept_ids.contains(&id) {
            ops.push(Op::DeleteName { id });
        }
    }
}

/// Address markers follow the frontends.
fn plan_markers(installed: &Installed, desired: &Desired, ops: &mut Vec<Op>) {
    let wanted: BTreeSet<(IpAddr, Proto)> = desired
        .values()
        .map(|s| (s.frontend.ip(), s.proto))
        .collect();
    for &(vip, proto) in wanted.difference(&installed.markers) {
        ops.push(Op::PutMarker { vip, proto });
    }
    for &(vip, proto) in installed.markers.difference(&wanted) {
        ops.push(Op::DeleteMarker { vip, proto });
    }
}

/// `owned`: the backends `installed` holds for service `id`.
fn plan_service(
    installed: &Installed,
    owned: &[(u32, InstalledBackend)],
    id: u32,
    spec: &ServiceSpec,
    next_backend_id: &mut u32,
    ops: &mut Vec<Op>,
) {
    let (new_slots, wanted_ids) = plan_backends(owned, id, spec, next_backend_id, ops);
    plan_slots(installed, id, spec, &new_slots, ops);
    // Step 4, backends that left: terminating, until their flows drain.
    for &(bid, b) in owned {
        if !wanted_ids.contains(&bid) && !b.terminating {
            let backend = InstalledBackend {
                terminating: true,
                ..b
            };
            ops.push(Op::PutBackend { id: bid, backend });
        }
    }
}

/// Step 1, the backends: reuse ids by address (reviving terminating ones), allocate the rest.
/// Returns the new slot table (each backend id repeated by its weight) and the wanted ids.
fn plan_backends(
    owned: &[(u32, InstalledBackend)],
    id: u32,
    spec: &ServiceSpec,
    next_backend_id: &mut u32,
    ops: &mut Vec<Op>,
) -> (Vec<u32>, BTreeSet<u32>) {
    let mut new_slots: Vec<u32> = Vec::new();
    let mut wanted_ids = BTreeSet::new();
    for (addr, weight) in normalized(&spec.endpoints) {
        let bid = match owned.iter().find(|(_, b)| b.addr == addr) {
            Some(&(bid, b)) => {
                if b.terminating {
                    let backend = InstalledBackend {
                        terminating: false,
                        ..b
                    };
                    ops.push(Op::PutBackend { id: bid, backend });
                }
                bid
            }
            None => {
                let bid = *next_backend_id;
                *next_backend_id += 1;
                let backend = InstalledBackend {
                    service_id: id,
                    addr,
                    terminating: false,
                };
                ops.push(Op::PutBackend { id: bid, backend });
                bid
            }
        };
        wanted_ids.insert(bid);
        new_slots.extend(std::iter::repeat_n(bid, weight as usize));
    }
    (new_slots, wanted_ids)
}

/// Steps 2 and 3, the slots and the count: every slot the datapath may read (below the live
/// count) is pointed at a wanted backend before the count changes; then the count; then the
/// slots past the new count go.
fn plan_slots(
    installed: &Installed,
    id: u32,
    spec: &ServiceSpec,
    new_slots: &[u32],
    ops: &mut Vec<Op>,
) {
    // The count the datapath sees now, at this frontend (0 if the frontend is new or moved).
    let live_count = match installed.frontends.get(&(spec.frontend, spec.proto)) {
        Some(&(fid, count)) if fid == id => Some(count),
        _ => None,
    };
    let old_slots: BTreeMap<u32, u32> = installed
        .slots
        .range((id, 0)..=(id, u32::MAX))
        .map(|(&(_, slot), &bid)| (slot, bid))
        .collect();
    let new_count = new_slots.len() as u32;
    let live = live_count.unwrap_or(0);
    if new_count > 0 {
        for slot in 0..live.max(new_count) {
            let bid = new_slots[(slot % new_count) as usize];
            if old_slots.get(&slot) != Some(&bid) {
                ops.push(Op::PutSlot {
                    service_id: id,
                    slot,
                    backend_id: bid,
                });
            }
        }
    }
    if live_count != Some(new_count) {
        ops.push(Op::PutService {
            frontend: spec.frontend,
            proto: spec.proto,
            id,
            count: new_count,
        });
    }
    for &slot in old_slots.keys() {
        if slot >= new_count {
            ops.push(Op::DeleteSlot {
                service_id: id,
                slot,
            });
        }
    }
}

#[cfg(test)]
mod tests;
