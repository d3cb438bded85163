//! etcd keys and values, as the daemon's watcher sees them (services, endpoints by hand and by
//! hosts, host records, settings, allocations): any sequence of puts and deletes must neither
//! panic nor produce a desired state the maps cannot take, through the trust model's checks.
#![no_main]

use std::collections::BTreeSet;

use ambassador_user::core::{
    contract::{self, Store},
    policy::BackendPolicy,
    reconcile::{self, Installed},
    trust::FrontendPolicy,
};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "/ambassador";

fuzz_target!(|data: &[u8]| {
    let mut store = Store::default();
    // Operations separated by 0xff: [kind][key 0x00 value]. The kind picks a key family so
    // that most inputs reach the value parsers.
    for op in data.split(|&b| b == 0xff) {
        let Some((&kind, rest)) = op.split_first() else {
            continue;
        };
        let (key, value) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let mut full = match kind % 7 {
            0 => contract::services_prefix(PREFIX).into_bytes(),
            1 => contract::endpoints_prefix(PREFIX, None).into_bytes(),
            2 => format!("{PREFIX}/v1/hosts/").into_bytes(),
            3 => format!("{PREFIX}/v1/host-policy/").into_bytes(),
            4 => format!("{PREFIX}/v1/settings/").into_bytes(),
            5 => format!("{PREFIX}/v1/vips/").into_bytes(),
            _ => Vec::new(),
        };
        full.extend_from_slice(key);
        let _ = contract::parse(PREFIX, &full, value);
        if kind & 0x80 == 0 {
            store.put(PREFIX, &full, value);
        } else {
            store.delete(PREFIX, &full);
        }
    }
    let judged = store.judge();
    reconcile::validate(&judged.desired).expect("the watcher only publishes installable state");
    let (desired, _refused) =
        FrontendPolicy::default().filter(judged.desired, Some(&judged.scope), &BTreeSet::new());
    let (allowed, _refused) = BackendPolicy::default().filter(desired);
    reconcile::validate(&allowed).expect("the policy keeps the state installable");
    let mut installed = Installed::default();
    for op in reconcile::plan(&installed, &allowed) {
        installed.apply(&op);
    }
    assert!(
        reconcile::plan(&installed, &allowed).is_empty(),
        "applying a plan converges"
    );
});
