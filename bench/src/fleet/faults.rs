//! The etcd faults of a trial: the leader killed, then the whole cluster restarted, and
//! what reconnecting cost the members.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ambassador_tests::metrics;
use anyhow::Result;

use super::{collect::Outcome, Run};

impl Run {
    /// The leader is killed; an operator's change right after it reaches every host (from the
    /// kill). The member is then started again.
    pub(super) async fn leader_killed(&mut self) -> Result<Outcome> {
        let cluster = self.s.cluster.clone();
        let t0 = Instant::now();
        let killed = tokio::task::spawn_blocking(move || {
            let mut etcd = cluster.lock().unwrap_or_else(|p| p.into_inner());
            let leader = etcd.leader();
            etcd.members[leader].kill();
            leader
        })
        .await?;
        let outcome = self.change(Some(t0), Duration::from_secs(30)).await?;
        let cluster = self.s.cluster.clone();
        tokio::task::spawn_blocking(move || {
            let mut etcd = cluster.lock().unwrap_or_else(|p| p.into_inner());
            etcd.members[killed].start();
            etcd.wait_healthy(Duration::from_secs(30));
        })
        .await?;
        Ok(outcome)
    }

    /// Every member is killed and started again; an operator's change once a quorum answers
    /// reaches every host (from the restart). Also what it cost etcd: the list requests
    /// (Range) and the bytes it sent, from the members' own metrics (counted from their start).
    pub(super) async fn full_restart(&mut self) -> Result<Restart> {
        let cluster = self.s.cluster.clone();
        let t0 = Instant::now();
        tokio::task::spawn_blocking(move || {
            let mut etcd = cluster.lock().unwrap_or_else(|p| p.into_inner());
            for m in &mut etcd.members {
                m.kill();
            }
            std::thread::sleep(Duration::from_secs(1));
            for m in &mut etcd.members {
                m.start();
            }
            etcd.wait_healthy(Duration::from_secs(60));
        })
        .await?;
        let converged = self.change(Some(t0), Duration::from_secs(90)).await?;
        let (ns, members) = (self.s.ns.clone(), self.s.members.clone());
        let (ranges, bytes) =
            tokio::task::spawn_blocking(move || etcd_costs(&ns, &members)).await??;
        Ok(Restart {
            converged,
            ranges,
            bytes,
        })
    }
}

/// What a full restart cost.
pub(super) struct Restart {
    /// From the restart until every host had a change made once a quorum answered.
    pub(super) converged: Outcome,
    /// Range (list and get) requests the members served since their start.
    pub(super) ranges: f64,
    /// Bytes the members sent to clients since their start.
    pub(super) bytes: f64,
}

/// The members' Range requests and bytes sent to clients, from their `/metrics`.
pub(super) fn etcd_costs(ns: &str, members: &[String]) -> Result<(f64, f64)> {
    let (mut ranges, mut bytes) = (0.0, 0.0);
    for m in members {
        let addr: SocketAddr = m.trim_start_matches("http://").parse()?;
        let (status, page) = metrics::get(ns, addr, "/metrics");
        anyhow::ensure!(status.ends_with("200 OK"), "{m}/metrics: {status}");
        ranges += metrics::value(&page, "etcd_mvcc_range_total", &[]).unwrap_or(0.0);
        bytes +=
            metrics::value(&page, "etcd_network_client_grpc_sent_bytes_total", &[]).unwrap_or(0.0);
    }
    Ok((ranges, bytes))
}
