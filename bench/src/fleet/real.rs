//! Real `ambassador run` daemons beside the simulated hosts: their maps must end equal to
//! the simulated hosts' tables.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use ambassador_tests::{wait_until, Daemon, NetNs, PinDir};
use anyhow::{Context as _, Result};

use super::Trial;

/// Real `ambassador run` daemons (the `tc` datapath on a veth of its own each, their maps
/// pinned) following the same etcd as the simulated hosts: at the end their maps must hold
/// what every simulated host's tables hold.
pub(super) struct RealHosts {
    daemons: Vec<(Daemon, PinDir)>,
    /// The namespace their interfaces are in.
    ns: String,
}

/// Real daemons beside the simulated hosts in each trial.
pub(super) const REAL_HOSTS: usize = 2;

impl RealHosts {
    /// `endpoints(i)`: where real host `i` reaches etcd.
    pub(super) fn start(
        ns: &NetNs,
        endpoints: impl Fn(usize) -> Vec<String>,
        prefix: &str,
    ) -> Self {
        let daemons = (0..REAL_HOSTS)
            .map(|i| {
                let urls = endpoints(i).join(",");
                let iface = format!("fl{i}");
                let peer = format!("{iface}p");
                ns.ip(&["link", "add", &iface, "type", "veth", "peer", "name", &peer]);
                ns.ip(&["link", "set", &iface, "up"]);
                ns.ip(&["link", "set", &peer, "up"]);
                let pin = PinDir::new();
                let mut d = Daemon::run_etcd(ns, &iface, &urls, &pin.path, &["--prefix", prefix]);
                d.wait_ready();
                (d, pin)
            })
            .collect();
        Self {
            daemons,
            ns: ns.name.clone(),
        }
    }

    /// Whether every real daemon's maps hold, service by service, the active backends the
    /// simulated hosts' tables hold (waiting up to 10 s for them to catch up).
    pub(super) fn agree(&self, trial: &Trial) -> Result<()> {
        let want = trial
            .last
            .as_ref()
            .context("the simulated hosts did not all end with the same tables")?;
        let want: BTreeMap<String, BTreeSet<String>> = want
            .iter()
            .map(|(name, spec)| {
                let addrs = spec.endpoints.iter().map(|e| e.addr.to_string()).collect();
                (name.clone(), addrs)
            })
            .collect();
        for (i, (daemon, pin)) in self.daemons.iter().enumerate() {
            let mut got = BTreeMap::new();
            let same = wait_until(Duration::from_secs(10), || {
                got = active_backends(&pin.path);
                got == want
            });
            anyhow::ensure!(
                same,
                "real host {i} disagrees with the simulated hosts:\nmaps: {got:?}\nsimulated: {want:?}\nits status: {}\nits log:\n{}",
                ambassador_tests::status(&pin.path)["control_plane"],
                daemon.log()
            );
        }
        Ok(())
    }
}

impl Drop for RealHosts {
    fn drop(&mut self) {
        self.daemons.clear(); // each daemon stops, then its pins go
        for i in 0..REAL_HOSTS {
            let iface = format!("fl{i}");
            let _ = std::process::Command::new("ip")
                .args(["-n", &self.ns, "link", "del", &iface])
                .status();
        }
    }
}

/// Service -> active backend addresses, from `ambassador status` on `pin`.
fn active_backends(pin: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let status = ambassador_tests::status(pin);
    let mut out = BTreeMap::new();
    for svc in status["services"].as_array().into_iter().flatten() {
        let addrs = svc["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["state"] == "active")
            .filter_map(|b| b["addr"].as_str().map(str::to_owned))
            .collect();
        out.insert(svc["name"].as_str().unwrap_or_default().to_owned(), addrs);
    }
    out
}
