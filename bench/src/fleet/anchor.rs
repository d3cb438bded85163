//! etcd's own watch cost on this machine, as an anchor beside its published one: what a
//! member's memory grows by per client of etcd's own (`etcdctl watch`, Go's client), each
//! holding one connection with one watch, as each simulated host does (which also lists).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ambassador_tests::{metrics, Etcd, NetNs, Proc};
use anyhow::{Context as _, Result};

use super::{faults::member_metrics, rss_kib};

/// How many `etcdctl watch` processes measure the anchor (each takes about 20 MiB itself).
pub(super) fn clients(quick: bool) -> usize {
    if quick {
        20
    } else {
        200
    }
}

/// KiB a fresh member's resident memory grows by per `etcdctl watch --prefix` client, `n` of
/// them holding their watch at once.
pub(super) fn etcdctl_watch_kib(ns: &NetNs, n: usize) -> Result<f64> {
    let etcd = Etcd::cluster(ns, 1);
    let member = &etcd.members[0];
    let pid = member.proc.as_ref().context("the member's process")?.pid();
    let watchers = || -> Result<f64> {
        let page = member_metrics(&ns.name, &member.url)?;
        Ok(metrics::value(&page, "etcd_debugging_mvcc_watcher_total", &[]).unwrap_or(0.0))
    };
    let before = (watchers()?, rss_kib(pid));
    let args = ["--endpoints", &member.url, "watch", "--prefix", "/anchor/"].map(str::to_owned);
    let procs: Vec<Proc> = (0..n)
        .map(|_| {
            Proc::spawn_env(
                &ns.name,
                "etcdctl-watch",
                Path::new("/usr/bin/etcdctl"),
                &args,
                &[("ETCDCTL_API", "3")],
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while watchers()? < before.0 + n as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} etcdctl watches were not all open within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // As the trials' figure: what the member holds once every client is in place.
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss_kib(pid) - before.1;
    drop(procs);
    Ok(grown / n as f64)
}
