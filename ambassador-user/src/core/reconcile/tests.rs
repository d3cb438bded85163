//! The plan's unit and property tests.

use std::sync::Arc;

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
