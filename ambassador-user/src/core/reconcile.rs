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
    sync::Arc,
};

use crate::core::model::{Desired, Endpoint, Proto, ServiceSpec, MAX_WEIGHT};

/// A backend as installed in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledBackend {
    /// Owning service.
    pub service_id: u32,
    /// Address.
    pub addr: SocketAddr,
    /// Takes no new flows.
    pub terminating: bool,
}

/// A mirror of the maps' contents, keyed as the maps are, so that applying an [`Op`] to it is
/// the same as applying it to the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Service map (real frontends): (frontend, proto) -> (service id, slot count).
    pub frontends: BTreeMap<(SocketAddr, Proto), (u32, u32)>,
    /// Service map address markers: (VIP, proto).
    pub markers: BTreeSet<(IpAddr, Proto)>,
    /// Slot map: (service id, slot) -> backend id.
    pub slots: BTreeMap<(u32, u32), u32>,
    /// Backend map.
    pub backends: BTreeMap<u32, InstalledBackend>,
    /// Name map: service id -> name.
    pub names: BTreeMap<u32, String>,
    /// Next unused backend id (ids are never reused, so a stale flow cannot meet a new backend).
    pub next_backend_id: u32,
}

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

impl Installed {
    /// Each service's backends (id, backend), in one pass: looking them up per service would
    /// scan every backend once per service (10,000 services: 10,000 scans).
    pub fn backends_by_service(&self) -> BTreeMap<u32, Vec<(u32, InstalledBackend)>> {
        self.backends_in(&Scope(None))
    }

    /// [`Installed::backends_by_service`] for the services in `scope`.
    fn backends_in(&self, scope: &Scope) -> BTreeMap<u32, Vec<(u32, InstalledBackend)>> {
        let mut owned: BTreeMap<u32, Vec<(u32, InstalledBackend)>> = BTreeMap::new();
        for (&bid, b) in &self.backends {
            if scope.covers(b.service_id) {
                owned.entry(b.service_id).or_default().push((bid, *b));
            }
        }
        owned
    }

    /// Applies one operation to this mirror, exactly as the maps apply it. The daemon keeps
    /// its mirror current this way instead of re-reading the maps after every change.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::ResetStats { .. } => {}
            Op::PutName { id, name } => {
                self.names.insert(*id, name.clone());
            }
            Op::DeleteName { id } => {
                self.names.remove(id);
            }
            Op::PutBackend { id, backend } => {
                self.backends.insert(*id, *backend);
                self.next_backend_id = self.next_backend_id.max(id + 1);
            }
            Op::DeleteBackend { id } => {
                self.backends.remove(id);
            }
            Op::PutSlot {
                service_id,
                slot,
                backend_id,
            } => {
                self.slots.insert((*service_id, *slot), *backend_id);
            }
            Op::DeleteSlot { service_id, slot } => {
                self.slots.remove(&(*service_id, *slot));
            }
            Op::PutService {
                frontend,
                proto,
                id,
                count,
            } => {
                self.frontends.insert((*frontend, *proto), (*id, *count));
            }
            Op::DeleteService { frontend, proto } => {
                self.frontends.remove(&(*frontend, *proto));
            }
            Op::PutMarker { vip, proto } => {
                self.markers.insert((*vip, *proto));
            }
            Op::DeleteMarker { vip, proto } => {
                self.markers.remove(&(*vip, *proto));
            }
        }
    }

    /// The datapath's safety invariant: every slot a lookup can pick exists and names an
    /// existing backend of the same service. `plan` keeps it true after every single op.
    pub fn check_datapath_invariant(&self) -> Result<(), String> {
        for (&(frontend, proto), &(id, count)) in &self.frontends {
            for slot in 0..count {
                let Some(bid) = self.slots.get(&(id, slot)) else {
                    return Err(format!(
                        "{frontend}/{proto}: slot {slot} of {count} is empty"
                    ));
                };
                match self.backends.get(bid) {
                    Some(b) if b.service_id == id => {}
                    _ => {
                        return Err(format!(
                            "{frontend}/{proto}: slot {slot} -> bad backend {bid}"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// The services as a desired state would describe them (active backends, weight = slots).
    pub fn as_desired(&self) -> Desired {
        let mut out = Desired::new();
        for (&(frontend, proto), &(id, count)) in &self.frontends {
            let Some(name) = self.names.get(&id) else {
                continue;
            };
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for slot in 0..count {
                let Some(b) = self
                    .slots
                    .get(&(id, slot))
                    .and_then(|bid| self.backends.get(bid))
                else {
                    continue;
                };
                match endpoints.iter_mut().find(|e| e.addr == b.addr) {
                    Some(e) => e.weight += 1,
                    None => endpoints.push(Endpoint {
                        addr: b.addr,
                        weight: 1,
                    }),
                }
            }
            let spec = ServiceSpec {
                frontend,
                proto,
                endpoints,
            };
            out.insert(name.clone(), Arc::new(spec));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint {
            addr: s.parse().unwrap(),
            weight: 1,
        }
    }

    fn svc(frontend: &str, proto: Proto, eps: &[&str]) -> Arc<ServiceSpec> {
        Arc::new(ServiceSpec {
            frontend: frontend.parse().unwrap(),
            proto,
            endpoints: eps.iter().map(|e| ep(e)).collect(),
        })
    }

    /// Applies `plan` op by op, checking the invariant after each; returns the ops.
    fn converge(installed: &mut Installed, desired: &Desired) -> Vec<Op> {
        validate(desired).unwrap();
        let ops = plan(installed, desired);
        for op in &ops {
            installed.apply(op);
            installed
                .check_datapath_invariant()
                .unwrap_or_else(|e| panic!("after {op:?}: {e}"));
        }
        ops
    }

    fn normalized_desired(desired: &Desired) -> Desired {
        desired
            .iter()
            .map(|(n, s)| {
                let endpoints = normalized(&s.endpoints)
                    .into_iter()
                    .map(|(addr, weight)| Endpoint { addr, weight })
                    .collect();
                let spec = ServiceSpec {
                    endpoints,
                    ..(**s).clone()
                };
                (n.clone(), Arc::new(spec))
            })
            .collect()
    }

    #[test]
    fn fresh_install_writes_backends_then_slots_then_count() {
        let mut inst = Installed::default();
        let desired = Desired::from([(
            "web".into(),
            svc(
                "10.96.0.10:80",
                Proto::Tcp,
                &["10.0.0.1:8080", "10.0.0.2:8080"],
            ),
        )]);
        let ops = converge(&mut inst, &desired);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::ResetStats { .. } => "reset",
                Op::PutName { .. } => "name",
                Op::PutBackend { .. } => "backend",
                Op::PutSlot { .. } => "slot",
                Op::PutService { .. } => "service",
                Op::PutMarker { .. } => "marker",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["reset", "name", "backend", "backend", "slot", "slot", "service", "marker"]
        );
        assert_eq!(inst.as_desired(), desired);
        assert!(
            plan(&inst, &desired).is_empty(),
            "a second plan must be empty"
        );
    }

    #[test]
    fn removed_backend_becomes_terminating_and_returns_when_added_back() {
        let mut inst = Installed::default();
        let two = svc("10.96.0.10:80", Proto::Tcp, &["10.0.0.1:80", "10.0.0.2:80"]);
        let one = svc("10.96.0.10:80", Proto::Tcp, &["10.0.0.2:80"]);
        converge(&mut inst, &Desired::from([("web".into(), two.clone())]));
        let ids: Vec<u32> = inst.backends.keys().copied().collect();
        converge(&mut inst, &Desired::from([("web".into(), one)]));
        assert!(inst.backends[&ids[0]].terminating);
        assert!(!inst.backends[&ids[1]].terminating);
        assert_eq!(inst.frontends.values().next(), Some(&(1, 1)));
        assert_eq!(inst.slots.len(), 1);
        // Added back: the same backend id is revived, not a new one allocated.
        converge(&mut inst, &Desired::from([("web".into(), two)]));
        assert_eq!(inst.backends.keys().copied().collect::<Vec<_>>(), ids);
        assert!(inst.backends.values().all(|b| !b.terminating));
    }

    #[test]
    fn no_endpoints_installs_a_frontend_with_count_zero() {
        let mut inst = Installed::default();
        converge(
            &mut inst,
            &Desired::from([("db".into(), svc("10.96.0.11:3306", Proto::Tcp, &[]))]),
        );
        assert_eq!(inst.frontends.values().next(), Some(&(1, 0)));
        assert!(inst
            .markers
            .contains(&("10.96.0.11".parse().unwrap(), Proto::Tcp)));
    }

    #[test]
    fn removing_a_service_removes_everything_it_owned() {
        let mut inst = Installed::default();
        converge(
            &mut inst,
            &Desired::from([(
                "web".into(),
                svc("10.96.0.10:80", Proto::Udp, &["10.0.0.1:80"]),
            )]),
        );
        converge(&mut inst, &Desired::new());
        assert_eq!(
            inst,
            Installed {
                next_backend_id: 2,
                ..Installed::default()
            }
        );
    }

    #[test]
    fn leftovers_of_a_crash_are_cleaned() {
        let mut inst = Installed::default();
        inst.slots.insert((7, 0), 99);
        inst.backends.insert(
            99,
            InstalledBackend {
                service_id: 7,
                addr: "10.0.0.9:1".parse().unwrap(),
                terminating: false,
            },
        );
        inst.frontends
            .insert(("10.96.0.99:1".parse().unwrap(), Proto::Tcp), (7, 1));
        converge(&mut inst, &Desired::new());
        assert!(inst.slots.is_empty() && inst.backends.is_empty() && inst.frontends.is_empty());
    }

    #[test]
    fn duplicate_frontends_are_refused() {
        let desired = Desired::from([
            ("a".into(), svc("10.96.0.10:80", Proto::Tcp, &[])),
            ("b".into(), svc("10.96.0.10:80", Proto::Tcp, &[])),
        ]);
        assert!(matches!(
            validate(&desired),
            Err(PlanError::DuplicateFrontend { .. })
        ));
        let ok = Desired::from([
            ("a".into(), svc("10.96.0.10:80", Proto::Tcp, &[])),
            ("b".into(), svc("10.96.0.10:80", Proto::Udp, &[])),
        ]);
        assert!(validate(&ok).is_ok());
    }

    fn arb_desired() -> impl Strategy<Value = Desired> {
        let names = prop::sample::select(vec!["a", "b", "c", "d"]);
        let frontend = (0u8..3, 1u16..4).prop_map(|(h, p)| format!("10.96.0.{h}:{p}"));
        let proto = prop::sample::select(vec![Proto::Tcp, Proto::Udp]);
        let endpoint = (0u8..5, 1u32..4).prop_map(|(h, w)| Endpoint {
            addr: format!("10.0.0.{h}:80").parse().unwrap(),
            weight: w,
        });
        let spec = (frontend, proto, prop::collection::vec(endpoint, 0..5)).prop_map(
            |(f, proto, endpoints)| {
                Arc::new(ServiceSpec {
                    frontend: f.parse().unwrap(),
                    proto,
                    endpoints,
                })
            },
        );
        prop::collection::btree_map(names.prop_map(String::from), spec, 0..4)
            .prop_filter("frontends must be unique", |d| validate(d).is_ok())
    }

    proptest! {
        #[test]
        fn any_sequence_of_states_converges_without_exposing_an_empty_slot(
            states in prop::collection::vec(arb_desired(), 1..6)
        ) {
            let mut inst = Installed::default();
            for desired in &states {
                converge(&mut inst, desired);
                prop_assert_eq!(inst.as_desired(), normalized_desired(desired));
                prop_assert!(plan(&inst, desired).is_empty());
                // Nothing dangles: every slot and backend belongs to a named service.
                for (sid, _) in inst.slots.keys() {
                    prop_assert!(inst.names.contains_key(sid));
                }
                for b in inst.backends.values() {
                    prop_assert!(inst.names.contains_key(&b.service_id));
                }
            }
        }

        /// Planning only the services that changed gives exactly the full plan's operations,
        /// in its order: after each state, the next one keeps some of its services (the same
        /// specs) and changes, adds or removes the others.
        #[test]
        fn a_plan_of_the_changed_services_is_the_whole_plan(
            states in prop::collection::vec(
                (arb_desired(), prop::collection::vec(any::<bool>(), 4)),
                1..8,
            )
        ) {
            let mut inst = Installed::default();
            let mut before = Desired::new();
            for (next, keep) in &states {
                let mut desired = next.clone();
                for (name, keep) in ["a", "b", "c", "d"].iter().zip(keep) {
                    if let (true, Some(spec)) = (*keep, before.get(*name)) {
                        desired.insert(name.to_string(), spec.clone());
                    }
                }
                if validate(&desired).is_err() {
                    continue;
                }
                let changed: BTreeSet<String> = before
                    .keys()
                    .chain(desired.keys())
                    .filter(|n| before.get(*n) != desired.get(*n))
                    .cloned()
                    .collect();
                prop_assert_eq!(
                    plan_changed(&inst, &desired, &changed),
                    plan(&inst, &desired)
                );
                converge(&mut inst, &desired);
                before = desired;
            }
        }
    }
}
