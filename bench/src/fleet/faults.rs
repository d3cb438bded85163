//! The etcd faults of a trial: the leader killed, then the whole cluster restarted, and
//! what reconnecting cost the members.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ambassador_tests::metrics;
use anyhow::{Context as _, Result};
use etcd_client::GetOptions;

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
        let hosts_prefix = format!("{}/v1/hosts/", self.s.prefix);
        let expected = count(&mut self.etcd, &hosts_prefix).await?;
        let cluster = self.s.cluster.clone();
        let t0 = Instant::now();
        let entries = tokio::spawn(follow_entries(
            self.etcd.clone(),
            hosts_prefix,
            expected,
            Duration::from_secs(2 * self.s.ttl as u64),
        ));
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
            entries: entries.await?,
        })
    }
}

/// How many keys are under `prefix` now (tried up to 10 times: the client's connection to a
/// member that was restarted may fail once).
async fn count(etcd: &mut etcd_client::Client, prefix: &str) -> Result<i64> {
    let mut tries = 0;
    loop {
        let opts = GetOptions::new().with_prefix().with_count_only();
        let get = tokio::time::timeout(Duration::from_secs(2), etcd.get(prefix, Some(opts)));
        match get.await {
            Ok(Ok(resp)) => return Ok(resp.count()),
            Ok(Err(e)) if tries >= 10 => return Err(e.into()),
            Err(e) if tries >= 10 => return Err(e.into()),
            _ => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The backend hosts' entries in etcd during a full restart.
#[derive(Debug, Default)]
pub(super) struct Entries {
    /// Before the restart.
    pub(super) expected: i64,
    /// The fewest seen after it (while etcd answered).
    pub(super) lowest: i64,
    /// How long they were fewer than before, seconds (from the first answer after the
    /// restart).
    pub(super) below_s: f64,
}

/// Counts the keys under `prefix` every 250 ms from the restart until they have been back at
/// `expected` for `settled` (or 90 s): whether the backend hosts' registers kept their
/// entries through the restart, and for how long they were missing.
async fn follow_entries(
    mut etcd: etcd_client::Client,
    prefix: String,
    expected: i64,
    settled: Duration,
) -> Entries {
    let start = Instant::now();
    let mut out = Entries {
        expected,
        lowest: expected,
        below_s: 0.0,
    };
    let (mut last, mut whole_since) = (None::<Instant>, None::<Instant>);
    while start.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(n) = count(&mut etcd, &prefix).await else {
            continue; // etcd not answering yet
        };
        let now = Instant::now();
        if let Some(l) = last {
            if n < expected {
                out.below_s += (now - l).as_secs_f64();
            }
        }
        last = Some(now);
        out.lowest = out.lowest.min(n);
        if n >= expected {
            let since = *whole_since.get_or_insert(now);
            if now - since >= settled {
                break;
            }
        } else {
            whole_since = None;
        }
    }
    out
}

/// What a full restart cost.
pub(super) struct Restart {
    /// From the restart until every host had a change made once a quorum answered.
    pub(super) converged: Outcome,
    /// Range (list and get) requests the members served since their start.
    pub(super) ranges: f64,
    /// Bytes the members sent to clients since their start.
    pub(super) bytes: f64,
    /// The backend hosts' entries in etcd through the restart.
    pub(super) entries: Entries,
}

/// The members' Range requests and bytes sent to clients, from their `/metrics`.
pub(super) fn etcd_costs(ns: &str, members: &[String]) -> Result<(f64, f64)> {
    let (mut ranges, mut bytes) = (0.0, 0.0);
    for m in members {
        let page = member_metrics(ns, m)?;
        ranges += metrics::value(&page, "etcd_mvcc_range_total", &[]).unwrap_or(0.0);
        bytes +=
            metrics::value(&page, "etcd_network_client_grpc_sent_bytes_total", &[]).unwrap_or(0.0);
    }
    Ok((ranges, bytes))
}

/// The Prometheus page of the etcd member at `url` (`http://ip:port`), fetched inside `ns`.
pub(super) fn member_metrics(ns: &str, url: &str) -> Result<String> {
    let addr: SocketAddr = url.trim_start_matches("http://").parse()?;
    let (status, page) =
        metrics::try_get(ns, addr, "/metrics").with_context(|| format!("{url}/metrics"))?;
    anyhow::ensure!(status.ends_with("200 OK"), "{url}/metrics: {status}");
    Ok(page)
}
