//! `fleet`: the control plane at fleet scale, in one process, from the real code. N simulated
//! client hosts, each the daemon's core with its own etcd connection and watch, and M
//! simulated backend hosts, each the register's core with its own lease over synthetic
//! containers (see `sim.rs`), against a 3-member etcd cluster (Debian's etcd-server) on
//! loopback in a namespace of its own; once with every client host connected to a member
//! (round-robin), once through `etcd grpc-proxy`. Each figure is a distribution over many
//! events: an operator's endpoint change, a container start on a backend host, a tenth of the
//! backend hosts dying at once (their leases expire).

mod collect;
mod sim;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use ambassador_tests::{temp_dir, Etcd, NetNs, Proc};
use ambassador_user::core::{
    contract::{self, EndpointValue, ServiceValue},
    model::Desired,
};
use anyhow::{Context as _, Result};
use serde_json::json;

use crate::stats::pct;
use collect::{Collector, Outcome};
use sim::BackendHost;

/// Services every trial creates.
const SERVICES: usize = 20;
/// Where `etcd grpc-proxy` listens, inside the namespace.
const PROXY: &str = "127.0.0.1:23790";

/// How the client hosts reach etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Each to one member, round-robin.
    Members,
    /// Each through the one grpc-proxy in front of the cluster.
    Proxy,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Members => "members",
            Via::Proxy => "grpc-proxy",
        }
    }
}

/// What one trial measured.
struct Trial {
    hosts: usize,
    via: Via,
    backend_hosts: usize,
    ttl: i64,
    cold: Outcome,
    changes: Vec<Outcome>,
    starts: Vec<Outcome>,
    loss: Outcome,
    host_kib: f64,
    etcd_mib: f64,
    applies: u64,
}

/// Runs the fleet at each size, direct and through grpc-proxy.
pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    raise_open_files();
    let sizes = sizes(quick)?;
    let (events, ttl) = if quick { (5, 3) } else { (30, 10) };
    let ns = NetNs::new("fl");
    let etcd = Etcd::cluster(&ns, 3);
    let members: Vec<String> = etcd.members.iter().map(|m| m.url.clone()).collect();
    let _proxy = start_proxy(&ns, &members)?;
    let mut trials = Vec::new();
    for &hosts in &sizes {
        for via in [Via::Members, Via::Proxy] {
            let prefix = format!("/fleet-{hosts}-{}", via.name());
            let members = members.clone();
            let pids: Vec<i32> = etcd
                .members
                .iter()
                .filter_map(|m| m.proc.as_ref().map(Proc::pid))
                .collect();
            println!("fleet: {hosts} hosts through {}", via.name());
            let trial = ns.run(move || -> Result<Trial> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let setup = Setup {
                    hosts,
                    via,
                    members,
                    prefix,
                    events,
                    ttl,
                    etcd_pids: pids,
                };
                rt.block_on(trial(setup))
            })?;
            trials.push(trial);
        }
    }
    Ok((report(&trials, events), json(&trials)))
}

/// The fleet sizes: `AMBASSADOR_FLEET_HOSTS` (comma-separated), else 50 for a quick run and
/// 100, 1,000 and 5,000 for a full one.
fn sizes(quick: bool) -> Result<Vec<usize>> {
    match std::env::var("AMBASSADOR_FLEET_HOSTS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .context("AMBASSADOR_FLEET_HOSTS: a comma-separated list of numbers")
            })
            .collect(),
        Err(_) if quick => Ok(vec![50]),
        Err(_) => Ok(vec![100, 1000, 5000]),
    }
}

/// One trial's settings.
struct Setup {
    hosts: usize,
    via: Via,
    members: Vec<String>,
    prefix: String,
    events: usize,
    ttl: i64,
    etcd_pids: Vec<i32>,
}

fn service(j: usize) -> String {
    format!("svc{j}")
}

/// Backend host `b`'s container `c`'s address (never dialled: the tables are in memory).
fn backend_addr(b: usize, c: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, 200 + (b / 250) as u8, (b % 250) as u8, (c + 1) as u8);
    SocketAddr::from((ip, 8080))
}

fn has(d: &Desired, service: &str, addr: SocketAddr) -> bool {
    d.get(service)
        .is_some_and(|s| s.endpoints.iter().any(|e| e.addr == addr))
}

async fn trial(s: Setup) -> Result<Trial> {
    let mut etcd = etcd_client::Client::connect(s.members.clone(), None)
        .await
        .context("connecting to etcd")?;
    for j in 0..SERVICES {
        let value = ServiceValue {
            frontend: format!("10.96.1.{}:80", j + 1),
            proto: "tcp".into(),
        };
        let key = contract::service_key(&s.prefix, &service(j));
        etcd.put(key, serde_json::to_string(&value)?, None).await?;
    }
    let backend_hosts = (s.hosts / 10).clamp(5, 100);
    let mut backends: Vec<BackendHost> = (0..backend_hosts)
        .map(|b| BackendHost::start(b, s.members[b % 3].clone(), &s.prefix, s.ttl))
        .collect();
    for (b, host) in backends.iter_mut().enumerate() {
        for c in 0..2 {
            host.run(
                format!("{b:06x}{c:06x}"),
                &service((b * 2 + c) % SERVICES),
                backend_addr(b, c),
            );
        }
    }
    let endpoints: Vec<String> = match s.via {
        Via::Members => s.members.clone(),
        Via::Proxy => vec![format!("http://{PROXY}")],
    };
    let rss_before = rss_kib(std::process::id() as i32);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let clients: Vec<_> = (0..s.hosts)
        .map(|h| {
            sim::client_host(
                h,
                endpoints[h % endpoints.len()].clone(),
                &s.prefix,
                tx.clone(),
            )
        })
        .collect();
    drop(tx);
    let mut fleet = Collector::new(rx, s.hosts);
    let expected = backend_hosts * 2;
    let cold = fleet
        .until(start, Duration::from_secs(120), |d| {
            d.len() == SERVICES && d.values().map(|s| s.endpoints.len()).sum::<usize>() == expected
        })
        .await;
    let host_kib = (rss_kib(std::process::id() as i32) - rss_before) / s.hosts as f64;

    let mut changes = Vec::new();
    for k in 0..s.events {
        let (svc, addr) = (
            service(k % SERVICES),
            SocketAddr::from(([10, 250, 0, (k + 1) as u8], 8080)),
        );
        let value = EndpointValue {
            addr: addr.to_string(),
            ..Default::default()
        };
        let key = contract::endpoint_key(&s.prefix, &svc, &format!("op{k}"));
        fleet.drain();
        let t0 = Instant::now();
        etcd.put(key, serde_json::to_string(&value)?, None).await?;
        changes.push(
            fleet
                .until(t0, Duration::from_secs(20), |d| has(d, &svc, addr))
                .await,
        );
    }
    let mut starts = Vec::new();
    for k in 0..s.events {
        let b = k % backend_hosts;
        let (svc, addr) = (service(k % SERVICES), backend_addr(b, 10 + k));
        fleet.drain();
        let t0 = Instant::now();
        backends[b].run(format!("{b:06x}{:06x}", 10 + k), &svc, addr);
        starts.push(
            fleet
                .until(t0, Duration::from_secs(20), |d| has(d, &svc, addr))
                .await,
        );
    }
    // A tenth of the backend hosts die at once (the last ones: the events above used the first).
    let dead = (backend_hosts / 10).max(1);
    let gone: Vec<SocketAddr> = backends[backend_hosts - dead..]
        .iter()
        .flat_map(|b| b.started.iter().map(|(_, a)| *a))
        .collect();
    fleet.drain();
    let t0 = Instant::now();
    for b in &mut backends[backend_hosts - dead..] {
        b.die();
    }
    let lost = Duration::from_secs(s.ttl as u64 + 20);
    let loss = fleet
        .until(t0, lost, |d| {
            !d.values()
                .any(|s| s.endpoints.iter().any(|e| gone.contains(&e.addr)))
        })
        .await;
    let etcd_mib = s.etcd_pids.iter().map(|p| rss_kib(*p)).sum::<f64>() / 1024.0;
    for c in clients {
        c.abort();
    }
    Ok(Trial {
        hosts: s.hosts,
        via: s.via,
        backend_hosts,
        ttl: s.ttl,
        cold,
        changes,
        starts,
        loss,
        host_kib,
        etcd_mib,
        applies: fleet.applies,
    })
}

/// `etcd grpc-proxy` in front of the members, once it answers.
fn start_proxy(ns: &NetNs, members: &[String]) -> Result<Proc> {
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| m.trim_start_matches("http://").to_owned())
        .collect();
    let data = temp_dir("grpc-proxy");
    let args = vec![
        "grpc-proxy".to_owned(),
        "start".to_owned(),
        format!("--endpoints={}", endpoints.join(",")),
        format!("--listen-addr={PROXY}"),
        format!("--data-dir={}", data.path().display()),
    ];
    let proxy = Proc::spawn(&ns.name, "grpc-proxy", Path::new("/usr/bin/etcd"), &args);
    let addr: SocketAddr = PROXY.parse()?;
    let up = ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    anyhow::ensure!(
        up,
        "etcd grpc-proxy did not listen on {PROXY}:\n{}",
        proxy.log()
    );
    std::mem::forget(data);
    Ok(proxy)
}

/// A process's resident memory in KiB (0 if it cannot be read).
fn rss_kib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every simulated host holds sockets: the soft limit of open files goes up to the hard one.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// p50, p99 and max of `v` (ms), or "-" when empty.
fn dist(mut v: Vec<f64>) -> (String, [f64; 3]) {
    if v.is_empty() {
        return ("-".into(), [f64::NAN; 3]);
    }
    v.sort_by(f64::total_cmp);
    let q = [pct(&v, 0.5), pct(&v, 0.99), v[v.len() - 1]];
    (format!("{:.0} / {:.0} / {:.0}", q[0], q[1], q[2]), q)
}

/// Per event, the time until every host had it; hosts that never did are counted apart.
fn every_host(events: &[Outcome]) -> (Vec<f64>, usize) {
    let all: Vec<f64> = events.iter().filter_map(Outcome::all_ms).collect();
    let missed = events.iter().filter(|e| e.missing > 0).count();
    (all, missed)
}

fn per_host(events: &[Outcome]) -> Vec<f64> {
    events
        .iter()
        .flat_map(|e| e.delays_ms.iter().copied())
        .collect()
}

fn report(trials: &[Trial], events: usize) -> String {
    let mut md = format!(
        "## Fleet: the control plane at scale\n\nSimulated hosts in one process, made of the product's cores: each client host is the daemon's core (its own etcd connection and watch, the policies and the reconcile plan into in-memory tables), each backend host the register's core (its own lease, keep-alives at the register's interval, synthetic containers). etcd: 3 members of Debian's etcd-server on loopback, data on disk (`/tmp`). `members`: each client host connected to one member, round-robin; `grpc-proxy`: every client host through one `etcd grpc-proxy` (backend hosts always to a member). {SERVICES} services, two containers per backend host; {events} operator endpoint changes and {events} container starts per trial, one at a time; then a tenth of the backend hosts die at once. Times are from the etcd put (the container start) until a host's tables hold it: per event until **every** host has it (p50 / p99 / max over the events), and per host (p50 / p99 / max over every host and event).\n\n| hosts | via | backend hosts | cold start, every host listed, ms | change → every host, ms | change, per host, ms | container start → every host, ms | a tenth of backend hosts lost → gone everywhere, s (TTL) | memory per client host, KiB | etcd RSS (3 members), MiB |\n|---:|---|---:|---:|---|---|---|---|---:|---:|\n"
    );
    for t in trials {
        let (changes, missed_c) = every_host(&t.changes);
        let (starts, missed_s) = every_host(&t.starts);
        let missed = |n: usize| {
            if n == 0 {
                String::new()
            } else {
                format!(" ({n} events not everywhere in 20 s)")
            }
        };
        let loss = t
            .loss
            .all_ms()
            .map_or(format!("{} hosts still had them", t.loss.missing), |ms| {
                format!("{:.1} ({})", ms / 1e3, t.ttl)
            });
        md += &format!(
            "| {} | {} | {} | {} | {}{} | {} | {}{} | {} | {:.0} | {:.0} |\n",
            t.hosts,
            t.via.name(),
            t.backend_hosts,
            t.cold
                .all_ms()
                .map_or(format!("{} never", t.cold.missing), |ms| format!("{ms:.0}")),
            dist(changes).0,
            missed(missed_c),
            dist(per_host(&t.changes)).0,
            dist(starts).0,
            missed(missed_s),
            loss,
            t.host_kib,
            t.etcd_mib,
        );
    }
    md
}

fn json(trials: &[Trial]) -> serde_json::Value {
    let rows: Vec<_> = trials
        .iter()
        .map(|t| {
            json!({
                "hosts": t.hosts,
                "via": t.via.name(),
                "backend_hosts": t.backend_hosts,
                "ttl_s": t.ttl,
                "cold_start_ms": t.cold.all_ms(),
                "change_every_host_ms": every_host(&t.changes).0,
                "change_per_host_ms": dist(per_host(&t.changes)).1,
                "container_start_every_host_ms": every_host(&t.starts).0,
                "loss_gone_everywhere_ms": t.loss.all_ms(),
                "memory_per_client_host_kib": t.host_kib,
                "etcd_rss_mib": t.etcd_mib,
                "applies": t.applies,
            })
        })
        .collect();
    json!({ "trials": rows })
}
