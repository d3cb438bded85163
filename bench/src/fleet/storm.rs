//! A re-list storm: every host lists a large key space at once (a fleet's cold start, or the
//! whole fleet back after an etcd outage), against one fresh member, two ways in turn: one
//! range request per host (how the daemon listed before, with its timeout and backoff; the
//! keys then go into the contract's store and are judged, as the follower does), and the
//! daemon's own follower (`etcd::follow`: pages of `etcd::PAGE` keys at one revision). Each
//! host then watches, as a daemon does. What it cost the member: its peak and held memory,
//! its CPU, its range requests and bytes sent, and the time until every host had listed.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ambassador_tests::{Etcd, NetNs};
use ambassador_user::{
    control::{
        etcd::{self, EtcdOptions, Snapshot},
        reconnect::Reconnect,
    },
    core::contract::{self, EndpointValue, Store},
    task::AbortOnDrop,
};
use anyhow::{Context as _, Result};
use etcd_client::{Client, GetOptions, GetResponse, Txn, TxnOp};
use serde_json::{json, Value};

use super::{faults::etcd_costs, rss_kib, status_kib};
use crate::stats::{median_min_max, process_cpu_seconds};

const PREFIX: &str = "/storm";
/// How long every host may take to list.
const LISTED_WITHIN: Duration = Duration::from_secs(120);

/// How the hosts list.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// One range request for the whole prefix (its answer allowed to pass tonic's 4 MiB).
    OneRange,
    /// The daemon's follower.
    Follower,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::OneRange => "one range request",
            Way::Follower => "the follower's pages",
        }
    }
}

/// The storm's size: hosts, keys, repetitions. One request per host took the member's memory
/// up by 22 GiB at this size (2026-12-06): mind the machine's memory before raising it.
pub(super) fn size(quick: bool) -> (usize, usize, usize) {
    if quick {
        (50, 2_000, 1)
    } else {
        (1_000, 12_000, 2)
    }
}

/// Runs the storm both ways, `reps` times each (the ways take turns, on a fresh member each),
/// and returns its record.
pub(super) fn run(ns: &NetNs, hosts: usize, keys: usize, reps: usize) -> Result<Value> {
    let mut rows = Vec::new();
    let mut bytes = 0;
    for rep in 0..reps {
        let ways = if rep % 2 == 0 {
            [Way::OneRange, Way::Follower]
        } else {
            [Way::Follower, Way::OneRange]
        };
        for way in ways {
            println!(
                "fleet: a re-list storm, {hosts} hosts, {keys} keys, {}",
                way.name()
            );
            let (row, listed_bytes) = once(ns, way, hosts, keys)?;
            bytes = listed_bytes;
            rows.push((way, row));
        }
    }
    let ways: Vec<Value> = [Way::OneRange, Way::Follower]
        .into_iter()
        .map(|way| {
            let of = |field: &str| -> Vec<f64> {
                let mut v: Vec<f64> = rows
                    .iter()
                    .filter(|(w, _)| *w == way)
                    .filter_map(|(_, r)| r[field].as_f64())
                    .collect();
                v.sort_by(f64::total_cmp);
                v
            };
            json!({
                "way": way.name(),
                "listed_s": of("listed_s"),
                "peak_mib": of("peak_mib"),
                "held_kib_per_host": of("held_kib_per_host"),
                "cpu_s": of("cpu_s"),
                "ranges_per_host": of("ranges_per_host"),
                "sent_mib_per_host": of("sent_mib_per_host"),
                "listed_everywhere": rows.iter().filter(|(w, _)| *w == way).all(|(_, r)| r["listed"] == hosts),
                "hosts_listed": of("listed"),
            })
        })
        .collect();
    Ok(
        json!({ "hosts": hosts, "keys": keys, "listing_bytes": bytes, "page": etcd::PAGE, "repetitions": reps, "ways": ways }),
    )
}

/// One storm on a fresh member: its figures, and the listing's size in bytes.
fn once(ns: &NetNs, way: Way, hosts: usize, keys: usize) -> Result<(Value, usize)> {
    let etcd = Etcd::cluster(ns, 1);
    let member = &etcd.members[0];
    let pid = member.proc.as_ref().context("the member's process")?.pid();
    let url = member.url.clone();
    let ns_name = ns.name.clone();
    ns.run(move || -> Result<(Value, usize)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let bytes = populate(&url, keys).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let members = [url.clone()];
            let (rss, cpu) = (rss_kib(pid), process_cpu_seconds(pid));
            let (ranges, sent) = etcd_costs(&ns_name, &members)?;
            let listed = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let tasks: Vec<_> = (0..hosts)
                .map(|_| tokio::spawn(host(way, url.clone(), listed.clone())))
                .collect();
            while listed.load(Ordering::SeqCst) < hosts && start.elapsed() < LISTED_WITHIN {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (listed, listed_s) = (listed.load(Ordering::SeqCst), start.elapsed());
            let cpu_s = process_cpu_seconds(pid) - cpu;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (peak, held) = (status_kib(pid, "VmHWM:"), rss_kib(pid));
            // The hosts go before the member's metrics are read: a member still serving
            // listings may not answer them in time.
            for t in tasks {
                t.abort();
            }
            let mut after = None;
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Ok(costs) = etcd_costs(&ns_name, &members) {
                    after = Some(costs);
                    break;
                }
            }
            let row = json!({
                "listed": listed,
                "listed_s": listed_s.as_secs_f64(),
                "cpu_s": cpu_s,
                "peak_mib": (peak - rss) / 1024.0,
                "held_kib_per_host": (held - rss) / hosts as f64,
                // None: the member did not answer for its metrics within a minute.
                "ranges_per_host": after.map(|(r, _)| (r - ranges) / hosts as f64),
                "sent_mib_per_host": after.map(|(_, b)| (b - sent) / hosts as f64 / (1 << 20) as f64),
            });
            Ok((row, bytes))
        })
    })
}

/// `keys` endpoints as registers write them (ten a host), in transactions of 100; returns the
/// bytes of their keys and values.
async fn populate(url: &str, keys: usize) -> Result<usize> {
    let mut c = etcd_client::Client::connect([url], None).await?;
    let mut bytes = 0;
    let mut ops = Vec::new();
    for k in 0..keys {
        let host = format!("simb{}", k / 10);
        let id = format!("{host}-{k:012x}");
        let key = contract::host_endpoint_key(PREFIX, &host, &format!("svc{}", k % 20), &id);
        let value = serde_json::to_string(&EndpointValue {
            addr: format!("10.{}.{}.{}:8080", 1 + k / 65_536, (k / 256) % 256, k % 256),
            weight: None,
            host: Some(host),
            container: Some(format!("{k:064x}")),
        })?;
        bytes += key.len() + value.len();
        ops.push(TxnOp::put(key, value, None));
        if ops.len() == 100 || k + 1 == keys {
            c.txn(Txn::new().and_then(std::mem::take(&mut ops))).await?;
        }
    }
    Ok(bytes)
}

/// One host: lists `way`, counts itself in `listed`, then holds its watch.
async fn host(way: Way, url: String, listed: Arc<AtomicUsize>) -> Result<()> {
    let opts = EtcdOptions {
        endpoints: vec![url],
        prefix: PREFIX.into(),
        ..Default::default()
    };
    match way {
        Way::Follower => {
            let (tx, mut rx) = tokio::sync::watch::channel(Snapshot::default());
            // Ends with this host's task.
            let _follower = AbortOnDrop(tokio::spawn(etcd::follow(opts, tx)).abort_handle());
            while rx.changed().await.is_ok() {
                if rx.borrow().connected {
                    listed.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
            // Holds its watch until this host's task ends.
            std::future::pending::<()>().await;
        }
        Way::OneRange => {
            // As the daemon listed before: one request, given the request timeout; on a
            // failure, a new connection after the follower's backoff.
            let root = contract::watch_prefix(PREFIX);
            let mut backoff = Reconnect::default();
            let (mut client, all) = loop {
                match one_range(&opts, &root).await {
                    Ok(done) => break done,
                    Err(_) => tokio::time::sleep(backoff.next_delay()).await,
                }
            };
            // What the follower does with a listing, so that only the requests differ.
            let mut store = Store::default();
            for kv in all.kvs() {
                store.put(PREFIX, kv.key(), kv.value());
            }
            drop(store.judge());
            listed.fetch_add(1, Ordering::SeqCst);
            let from = all.header().map_or(0, |h| h.revision()) + 1;
            let mut stream = etcd::watch_from(&mut client, &root, from).await?;
            while stream.message().await?.is_some() {}
        }
    }
    Ok(())
}

/// A connection, and everything under `root` in one answer (allowed past tonic's 4 MiB).
async fn one_range(opts: &EtcdOptions, root: &str) -> Result<(Client, GetResponse)> {
    let client = opts.connect().await?;
    let mut kv = client.kv_client().max_decoding_message_size(1 << 30);
    let what = format!("listing {root}");
    let all = etcd::timed(what, kv.get(root, Some(GetOptions::new().with_prefix()))).await?;
    Ok((client, all))
}

/// The storm's table, from its record (empty for a record without one).
pub(super) fn table(json: &Value) -> String {
    let Some(ways) = json["ways"].as_array() else {
        return String::new();
    };
    let mib = json["listing_bytes"].as_f64().unwrap_or(f64::NAN) / (1 << 20) as f64;
    let reps = match json["repetitions"].as_u64() {
        Some(1) => "once each".to_owned(),
        Some(n) => format!("{n} times each, the median (min-max)"),
        None => "?".to_owned(),
    };
    let mut md = format!(
        "\nA re-list storm: {} hosts list {} endpoint keys at once ({mib:.1} MiB of keys and values, ten endpoints per backend host as a register writes them) from one fresh member of Debian's etcd, then watch. The two ways take turns, {reps}, on a fresh member each time. The follower reads pages of {} keys at one revision. One range request per host is how it listed before: the whole answer in one message, which fails once it passes tonic's 4 MiB limit (about 23,000 such endpoints), and the daemon then never lists. Both ways give each request 5 s (the daemon's request timeout), then connect and list again from the start after the follower's backoff. The member's peak growth is its peak resident memory (VmHWM) over its memory before the hosts came; the held memory is what it still holds 5 s after every host listed; range requests and bytes sent are from its metrics (more range requests than pages mean listings started again).\n\n| way | every host listed, s | member's peak growth, MiB | held per host, KiB | member CPU, s | range requests per host | MiB sent per host |\n|---|---|---|---|---|---|---|\n",
        json["hosts"], json["keys"], json["page"],
    );
    for w in ways {
        let range = |field: &str, digits: usize| {
            let v: Vec<f64> = w[field]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            match v.len() {
                0 => "-".into(),
                1 => format!("{:.digits$}", v[0]),
                _ => {
                    let [mid, lo, hi] = median_min_max(&v);
                    format!("{mid:.digits$} ({lo:.digits$}-{hi:.digits$})")
                }
            }
        };
        let listed = if w["listed_everywhere"] == true {
            range("listed_s", 1)
        } else {
            format!(
                "{} of {} hosts within {} s",
                range("hosts_listed", 0),
                json["hosts"],
                LISTED_WITHIN.as_secs()
            )
        };
        md += &format!(
            "| {} | {listed} | {} | {} | {} | {} | {} |\n",
            w["way"].as_str().unwrap_or("?"),
            range("peak_mib", 0),
            range("held_kib_per_host", 0),
            range("cpu_s", 1),
            range("ranges_per_host", 1),
            range("sent_mib_per_host", 1),
        );
    }
    md
}
