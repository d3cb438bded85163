//! What the fleet's changes cost: CPU time of etcd's members, of the grpc-proxies and of the
//! simulated hosts (this process), and the bytes the members sent, read before and after the
//! operator's changes; and how long the daemon's core took per apply.

use anyhow::Result;

use super::{faults::etcd_costs, Run};
use crate::stats::{pct, process_cpu_seconds};

/// Counters at one instant.
pub(super) struct Usage {
    etcd_cpu_s: f64,
    proxy_cpu_s: f64,
    sim_cpu_s: f64,
    /// Bytes the members sent to their clients (hosts, or the proxies).
    sent_bytes: f64,
}

/// What one operator change cost, on average over a trial's changes.
#[derive(Debug, Default)]
pub(super) struct PerChange {
    /// CPU of the 3 members together, ms.
    pub etcd_cpu_ms: f64,
    /// CPU of the proxies in use, ms (0: none).
    pub proxy_cpu_ms: f64,
    /// CPU of the whole simulator (every client host, the backend hosts' registers, the
    /// operator), ms.
    pub sim_cpu_ms: f64,
    /// Bytes the members sent, per client host.
    pub bytes_per_host: f64,
    /// The daemon's core per apply (policies, fit, plan, tables), µs: p50 and p99.
    pub apply_us: [f64; 2],
}

impl PerChange {
    /// From the counters before and after `changes` changes seen by `hosts` hosts, and the
    /// apply times of the hosts meanwhile.
    pub fn new(
        before: &Usage,
        after: &Usage,
        changes: usize,
        hosts: usize,
        mut apply_us: Vec<f64>,
    ) -> Self {
        let n = changes.max(1) as f64;
        apply_us.sort_by(f64::total_cmp);
        let q = |p| {
            if apply_us.is_empty() {
                f64::NAN
            } else {
                pct(&apply_us, p)
            }
        };
        Self {
            etcd_cpu_ms: (after.etcd_cpu_s - before.etcd_cpu_s) * 1e3 / n,
            proxy_cpu_ms: (after.proxy_cpu_s - before.proxy_cpu_s) * 1e3 / n,
            sim_cpu_ms: (after.sim_cpu_s - before.sim_cpu_s) * 1e3 / n,
            bytes_per_host: (after.sent_bytes - before.sent_bytes) / n / hosts.max(1) as f64,
            apply_us: [q(0.5), q(0.99)],
        }
    }
}

impl Run {
    /// The counters now.
    pub(super) async fn usage(&self) -> Result<Usage> {
        let (ns, members) = (self.s.ns.clone(), self.s.members.clone());
        let (_, sent_bytes) =
            tokio::task::spawn_blocking(move || etcd_costs(&ns, &members)).await??;
        let cpu = |pids: &[i32]| pids.iter().map(|&p| process_cpu_seconds(p)).sum::<f64>();
        Ok(Usage {
            etcd_cpu_s: cpu(&self.s.etcd_pids),
            proxy_cpu_s: cpu(&self.s.proxy_pids),
            sim_cpu_s: process_cpu_seconds(std::process::id() as i32),
            sent_bytes,
        })
    }
}
