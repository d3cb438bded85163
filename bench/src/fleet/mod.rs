//! `fleet`: the control plane at fleet scale, in one process, from the real code. N simulated
//! client hosts, each the daemon's core with its own etcd connection and watch, and M
//! simulated backend hosts, each the register's core with its own lease over synthetic
//! containers (see `sim.rs`), against a 3-member etcd cluster (Debian's etcd-server) on
//! loopback in a namespace of its own; once with every client host given the three members,
//! once through `etcd grpc-proxy`. Two real `ambassador run` daemons follow the same etcd, and
//! their maps must end equal to the simulated hosts' tables. Each figure is a distribution over many
//! events: an operator's endpoint change, a container start on a backend host, a tenth of the
//! backend hosts dying at once (their leases expire).

mod collect;
mod sim;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ambassador_tests::{metrics, wait_until, Daemon, Etcd, EtcdProxy, NetNs, PinDir, Proc};
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
    /// Each given the three members.
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
    leader: Outcome,
    restart: Restart,
    /// What every simulated host's tables held at the end (None: the hosts disagreed).
    last: Option<std::sync::Arc<Desired>>,
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
    let data = data_dir();
    let etcd = match &data {
        Some(root) => Etcd::cluster_in(&ns, 3, root),
        None => Etcd::cluster(&ns, 3),
    };
    let members: Vec<String> = etcd.members.iter().map(|m| m.url.clone()).collect();
    let proxy = EtcdProxy::start(&ns, &etcd, PROXY);
    let cluster = Arc::new(Mutex::new(etcd));
    let mut trials = Vec::new();
    for &hosts in &sizes {
        for via in vias(hosts) {
            let pids: Vec<i32> = cluster
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .members
                .iter()
                .filter_map(|m| m.proc.as_ref().map(Proc::pid))
                .collect();
            let setup = Setup {
                hosts,
                via,
                members: members.clone(),
                prefix: format!("/fleet-{hosts}-{}", via.name()),
                events,
                ttl,
                etcd_pids: pids,
                cluster: cluster.clone(),
                proxy: proxy.url.clone(),
                ns: ns.name.clone(),
            };
            println!("fleet: {hosts} hosts through {}", via.name());
            let real = RealHosts::start(&ns, &setup.endpoints(), &setup.prefix);
            let trial = ns.run(move || -> Result<Trial> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(trial(setup))
            })?;
            real.agree(&trial)?;
            trials.push(trial);
        }
    }
    let data = match &data {
        Some(root) => format!("in {}", root.display()),
        None => format!("on disk ({})", std::env::temp_dir().display()),
    };
    Ok((report(&trials, events, &data), json(&trials, &data)))
}

/// Where the members keep their data: `AMBASSADOR_FLEET_ETCD_DATA` (`/dev/shm` for tmpfs),
/// else the system's temporary directory.
fn data_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("AMBASSADOR_FLEET_ETCD_DATA").map(Into::into)
}

/// Beyond this many hosts, only through grpc-proxy: a host given the whole cluster holds a
/// connection to each member, and three per simulated host would exceed the open files one
/// process may hold here (20,000).
const MEMBERS_UP_TO: usize = 2000;

fn vias(hosts: usize) -> Vec<Via> {
    if hosts > MEMBERS_UP_TO {
        vec![Via::Proxy]
    } else {
        vec![Via::Members, Via::Proxy]
    }
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
    /// The cluster, for the leader kill and the full restart.
    cluster: Arc<Mutex<Etcd>>,
    /// The grpc-proxy's URL.
    proxy: String,
    /// The namespace etcd runs in.
    ns: String,
}

impl Setup {
    /// Where the client hosts (simulated and real) reach etcd: the whole cluster, as a daemon
    /// is given it (`--etcd` with three URLs), or the proxy.
    fn endpoints(&self) -> Vec<String> {
        match self.via {
            Via::Members => self.members.clone(),
            Via::Proxy => vec![self.proxy.clone()],
        }
    }
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

/// A trial under way: the operator's etcd client, the backend hosts, the fleet's reports.
struct Run {
    s: Setup,
    etcd: etcd_client::Client,
    backends: Vec<BackendHost>,
    fleet: Collector,
    /// Operator changes made so far (each a new endpoint).
    changes: usize,
}

async fn trial(s: Setup) -> Result<Trial> {
    let etcd = etcd_client::Client::connect(s.members.clone(), None)
        .await
        .context("connecting to etcd")?;
    let backend_hosts = (s.hosts / 10).clamp(5, 100);
    let backends: Vec<BackendHost> = (0..backend_hosts)
        .map(|b| BackendHost::start(b, s.members[b % 3].clone(), &s.prefix, s.ttl))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut run = Run {
        fleet: Collector::new(rx, s.hosts),
        s,
        etcd,
        backends,
        changes: 0,
    };
    run.populate().await?;
    let endpoints = run.s.endpoints();
    let rss_before = rss_kib(std::process::id() as i32);
    let start = Instant::now();
    let clients: Vec<_> = (0..run.s.hosts)
        .map(|h| sim::client_host(h, endpoints.clone(), &run.s.prefix, tx.clone()))
        .collect();
    drop(tx);
    let expected = backend_hosts * 2;
    let cold = run
        .fleet
        .until(start, Duration::from_secs(120), |d| {
            d.len() == SERVICES && d.values().map(|s| s.endpoints.len()).sum::<usize>() == expected
        })
        .await;
    let host_kib = (rss_kib(std::process::id() as i32) - rss_before) / run.s.hosts as f64;
    let mut changes = Vec::new();
    for _ in 0..run.s.events {
        changes.push(run.change(None, Duration::from_secs(20)).await?);
    }
    let mut starts = Vec::new();
    for k in 0..run.s.events {
        starts.push(run.container_start(k).await);
    }
    let loss = run.lose_a_tenth().await;
    let etcd_mib = run.s.etcd_pids.iter().map(|p| rss_kib(*p)).sum::<f64>() / 1024.0;
    let leader = run.leader_killed().await?;
    let restart = run.full_restart().await?;
    // What every host ends with, once the changes still arriving have settled.
    let last = run.fleet.agreed(Duration::from_secs(30)).await;
    for c in clients {
        c.abort();
    }
    Ok(Trial {
        hosts: run.s.hosts,
        via: run.s.via,
        backend_hosts,
        ttl: run.s.ttl,
        cold,
        changes,
        starts,
        loss,
        leader,
        restart,
        last,
        host_kib,
        etcd_mib,
        applies: run.fleet.applies,
    })
}

impl Run {
    /// The services, and two containers on every backend host.
    async fn populate(&mut self) -> Result<()> {
        for j in 0..SERVICES {
            let value = ServiceValue {
                frontend: format!("10.96.1.{}:80", j + 1),
                proto: "tcp".into(),
            };
            let key = contract::service_key(&self.s.prefix, &service(j));
            self.etcd
                .put(key, serde_json::to_string(&value)?, None)
                .await?;
        }
        for (b, host) in self.backends.iter_mut().enumerate() {
            for c in 0..2 {
                let svc = service((b * 2 + c) % SERVICES);
                host.run(format!("{b:06x}{c:06x}"), &svc, backend_addr(b, c));
            }
        }
        Ok(())
    }

    /// An operator adds an endpoint; the wait ends when every host has it, timed from `since`
    /// (default: the put). The put is retried for up to 10 s (etcd may be choosing a leader).
    async fn change(&mut self, since: Option<Instant>, timeout: Duration) -> Result<Outcome> {
        let k = self.changes;
        self.changes += 1;
        let svc = service(k % SERVICES);
        let addr = SocketAddr::from(([10, 250, (k / 250) as u8, (k % 250 + 1) as u8], 8080));
        let value = serde_json::to_string(&EndpointValue {
            addr: addr.to_string(),
            ..Default::default()
        })?;
        let key = contract::endpoint_key(&self.s.prefix, &svc, &format!("op{k}"));
        self.fleet.drain();
        let t0 = since.unwrap_or_else(Instant::now);
        let mut tries = 0;
        loop {
            let put = self.etcd.put(key.as_str(), value.as_str(), None);
            match tokio::time::timeout(Duration::from_secs(1), put).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => anyhow::ensure!(tries < 20, "etcd refused the change: {e}"),
                Err(_) => anyhow::ensure!(tries < 20, "etcd did not answer the change"),
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let accepted = t0.elapsed().as_secs_f64() * 1e3;
        let mut outcome = self.fleet.until(t0, timeout, |d| has(d, &svc, addr)).await;
        outcome.accepted_ms = Some(accepted);
        Ok(outcome)
    }

    /// A container starts on a backend host; the wait ends when every host has it.
    async fn container_start(&mut self, k: usize) -> Outcome {
        let b = k % self.backends.len();
        let (svc, addr) = (service(k % SERVICES), backend_addr(b, 10 + k));
        self.fleet.drain();
        let t0 = Instant::now();
        self.backends[b].run(format!("{b:06x}{:06x}", 10 + k), &svc, addr);
        self.fleet
            .until(t0, Duration::from_secs(20), |d| has(d, &svc, addr))
            .await
    }

    /// A tenth of the backend hosts die at once (the last ones: the events above used the
    /// first); the wait ends when no host has any of their endpoints.
    async fn lose_a_tenth(&mut self) -> Outcome {
        let n = self.backends.len();
        let dead = (n / 10).max(1);
        let gone: Vec<SocketAddr> = self.backends[n - dead..]
            .iter()
            .flat_map(|b| b.started.iter().map(|(_, a)| *a))
            .collect();
        self.fleet.drain();
        let t0 = Instant::now();
        for b in &mut self.backends[n - dead..] {
            b.die();
        }
        let lost = Duration::from_secs(self.s.ttl as u64 + 20);
        self.fleet
            .until(t0, lost, |d| {
                !d.values()
                    .any(|s| s.endpoints.iter().any(|e| gone.contains(&e.addr)))
            })
            .await
    }

    /// The leader is killed; an operator's change right after it reaches every host (from the
    /// kill). The member is then started again.
    async fn leader_killed(&mut self) -> Result<Outcome> {
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
    async fn full_restart(&mut self) -> Result<Restart> {
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
struct Restart {
    /// From the restart until every host had a change made once a quorum answered.
    converged: Outcome,
    /// Range (list and get) requests the members served since their start.
    ranges: f64,
    /// Bytes the members sent to clients since their start.
    bytes: f64,
}

/// The members' Range requests and bytes sent to clients, from their `/metrics`.
fn etcd_costs(ns: &str, members: &[String]) -> Result<(f64, f64)> {
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

/// Real `ambassador run` daemons (the `tc` datapath on a veth of its own each, their maps
/// pinned) following the same etcd as the simulated hosts: at the end their maps must hold
/// what every simulated host's tables hold.
struct RealHosts {
    daemons: Vec<(Daemon, PinDir)>,
    /// The namespace their interfaces are in.
    ns: String,
}

/// Real daemons beside the simulated hosts in each trial.
const REAL_HOSTS: usize = 2;

impl RealHosts {
    fn start(ns: &NetNs, endpoints: &[String], prefix: &str) -> Self {
        let urls = endpoints.join(",");
        let daemons = (0..REAL_HOSTS)
            .map(|i| {
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
    fn agree(&self, trial: &Trial) -> Result<()> {
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
                "real host {i} disagrees with the simulated hosts:\nmaps: {got:?}\nsimulated: {want:?}\n{}",
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

fn report(trials: &[Trial], events: usize, data: &str) -> String {
    let mut md = format!(
        "## Fleet: the control plane at scale\n\nSimulated hosts in one process, made of the product's cores: each client host is the daemon's core (its own etcd connection and watch, the policies and the reconcile plan into in-memory tables), each backend host the register's core (its own lease, keep-alives at the register's interval, synthetic containers). etcd: 3 members of Debian's etcd-server on loopback, their data {data}. `members`: each client host given the three members (as a daemon is); `grpc-proxy`: every client host through one `etcd grpc-proxy` (backend hosts always to a member). Beside them, {REAL_HOSTS} real `ambassador run` daemons (BPF maps, the `tc` datapath) follow the same etcd the same way; at the end of each trial their maps hold exactly what every simulated host's tables hold (checked: the run fails otherwise). {SERVICES} services, two containers per backend host; {events} operator endpoint changes and {events} container starts per trial, one at a time; then a tenth of the backend hosts die at once. Times are from the etcd put (the container start) until a host's tables hold it: per event until **every** host has it (p50 / p99 / max over the events), and per host (p50 / p99 / max over every host and event).\n\n| hosts | via | backend hosts | cold start, every host listed, ms | change → every host, ms | change, per host, ms | container start → every host, ms | a tenth of backend hosts lost → gone everywhere, s (TTL) | memory per client host, KiB | etcd RSS (3 members), MiB |\n|---:|---|---:|---:|---|---|---|---|---:|---:|\n"
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
    md += "\netcd faults, after the events above. The leader is killed and an operator's change made at once (retried while etcd chooses a leader): time from the kill until every host has it. Then every member is killed and started again: time from the restart until every host has a change made once a quorum answers; what the reconnecting fleet cost etcd, from the members' own metrics since their start: list requests (Range) and bytes sent to clients.\n\n| hosts | via | leader killed → change accepted, ms | → change everywhere, ms | per host, ms (p50 / p99 / max) | full restart → every host converged, s | Range requests after the restart, per host | bytes sent after the restart, per host |\n|---:|---|---:|---:|---|---:|---:|---:|\n";
    for t in trials {
        let all = |o: &Outcome| {
            o.all_ms()
                .map_or(format!("{} hosts never", o.missing), |ms| {
                    format!("{ms:.0}")
                })
        };
        let converged = t.restart.converged.all_ms().map_or(
            format!("{} hosts never", t.restart.converged.missing),
            |ms| format!("{:.1}", ms / 1e3),
        );
        md += &format!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.0} |\n",
            t.hosts,
            t.via.name(),
            t.leader.accepted_ms.unwrap_or(f64::NAN),
            all(&t.leader),
            dist(t.leader.delays_ms.clone()).0,
            converged,
            t.restart.ranges / t.hosts as f64,
            t.restart.bytes / t.hosts as f64,
        );
    }
    md
}

fn json(trials: &[Trial], data: &str) -> serde_json::Value {
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
                "leader_killed_every_host_ms": t.leader.all_ms(),
                "leader_killed_per_host_ms": dist(t.leader.delays_ms.clone()).1,
                "restart_converged_ms": t.restart.converged.all_ms(),
                "restart_range_requests": t.restart.ranges,
                "restart_bytes_sent": t.restart.bytes,
            })
        })
        .collect();
    json!({ "etcd_data": data, "trials": rows })
}
