//! `fleet`: the control plane at fleet scale, in one process, from the real code. N simulated
//! client hosts, each the daemon's core with its own etcd connection and watch, and M
//! simulated backend hosts, each the register's core with its own lease over synthetic
//! containers (see `sim.rs`), against a 3-member etcd cluster (Debian's etcd-server) on
//! loopback in a namespace of its own; once with every client host given the three members,
//! once through `etcd grpc-proxy`. Two real `ambassador run` daemons follow the same etcd, and
//! their maps must end equal to the simulated hosts' tables. Each figure is a distribution over many
//! events: an operator's endpoint change, a container start on a backend host, a tenth of the
//! backend hosts dying at once (their leases expire).

mod anchor;
mod collect;
mod faults;
mod real;
mod report;
mod sim;
mod storm;
mod usage;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ambassador_tests::{Etcd, EtcdProxy, NetNs, Proc};
use ambassador_user::core::{
    contract::{self, EndpointValue, ServiceValue},
    model::Desired,
};
use anyhow::{Context as _, Result};
use collect::{Collector, Outcome};
use faults::Restart;
use real::{RealHosts, REAL_HOSTS};
pub use report::{change_p99, goals, table, ETCD_MIB_PER_CLIENT};
use sim::BackendHost;

/// Services every trial creates.
const SERVICES: usize = 20;
/// Where the `k`-th `etcd grpc-proxy` listens, inside the namespace.
fn proxy_addr(k: usize) -> String {
    format!("127.0.0.1:{}", 23790 + k)
}

/// How the client hosts reach etcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Each given the three members.
    Members,
    /// Through this many grpc-proxies in front of the cluster, host `h` through proxy
    /// `h % n` (as the hosts of several zones would each use their zone's).
    Proxies(usize),
}

impl Via {
    fn name(self) -> String {
        match self {
            Via::Members => "members".into(),
            Via::Proxies(1) => "grpc-proxy".into(),
            Via::Proxies(n) => format!("{n} grpc-proxies"),
        }
    }

    /// For key prefixes.
    fn slug(self) -> String {
        match self {
            Via::Members => "members".into(),
            Via::Proxies(n) => format!("proxy{n}"),
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
    /// What the hosts added to etcd's memory (3 members' RSS, from before they connected).
    etcd_growth_mib: f64,
    applies: u64,
    /// What the operator's changes cost, per change.
    cost: usage::PerChange,
}

/// Runs the fleet at each size, direct and through grpc-proxy.
pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    raise_open_files();
    let sizes = sizes(quick)?;
    let proxy_counts = proxy_counts()?;
    let (events, ttl) = if quick { (5, 3) } else { (30, 10) };
    let ns = NetNs::new("fl");
    let data = data_dir();
    let clients = anchor::clients(quick);
    println!("fleet: etcd's own client, {clients} watches");
    let anchor = anchor::etcdctl_watch_kib(&ns, clients)?;
    let (storm_hosts, storm_keys, storm_reps) = storm::size(quick);
    let storm = storm::run(&ns, storm_hosts, storm_keys, storm_reps)?;
    let mut trials = Vec::new();
    for &hosts in &sizes {
        for via in vias(hosts, &proxy_counts) {
            println!("fleet: {hosts} hosts through {}", via.name());
            trials.push(one(&ns, data.as_deref(), hosts, via, events, ttl)?);
        }
    }
    let data = match &data {
        Some(root) => format!("in {}", root.display()),
        None => format!("on disk ({})", std::env::temp_dir().display()),
    };
    let json = report::json(&trials, &data, events, (clients, anchor), storm);
    Ok((report::table(&json)?, json))
}

/// One trial, on a cluster of its own (its memory is then the trial's alone): 3 members,
/// the proxies the trial uses, the real daemons; all gone at the end.
fn one(
    ns: &NetNs,
    data: Option<&Path>,
    hosts: usize,
    via: Via,
    events: usize,
    ttl: i64,
) -> Result<Trial> {
    let etcd = match data {
        Some(root) => Etcd::cluster_in(ns, 3, root),
        None => Etcd::cluster(ns, 3),
    };
    let members: Vec<String> = etcd.members.iter().map(|m| m.url.clone()).collect();
    let etcd_pids = etcd
        .members
        .iter()
        .filter_map(|m| m.proc.as_ref().map(Proc::pid))
        .collect();
    let n = match via {
        Via::Members => 0,
        Via::Proxies(n) => n,
    };
    let proxies: Vec<EtcdProxy> = (0..n)
        .map(|k| EtcdProxy::start(ns, &etcd, &proxy_addr(k)))
        .collect();
    let setup = Setup {
        hosts,
        via,
        members,
        prefix: format!("/fleet-{hosts}-{}", via.slug()),
        events,
        ttl,
        etcd_pids,
        cluster: Arc::new(Mutex::new(etcd)),
        proxies: proxies.iter().map(|p| p.url.clone()).collect(),
        proxy_pids: proxies.iter().map(EtcdProxy::pid).collect(),
        ns: ns.name.clone(),
    };
    let real = RealHosts::start(ns, |h| setup.endpoints(h), &setup.prefix);
    let trial = ns.run(move || -> Result<Trial> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // The backend hosts on threads of their own, as on machines of their own: a burst of
        // work on the client hosts must not delay their leases' keep-alives in one task queue
        // (at 5,000 hosts it did, and their leases expired).
        let backends = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("backend-hosts")
            .enable_all()
            .build()?;
        rt.block_on(trial(setup, backends.handle().clone()))
    })?;
    real.agree(&trial)?;
    drop(real); // the daemons stop before the cluster does
    drop(proxies);
    Ok(trial)
}

/// Where the members keep their data: `AMBASSADOR_FLEET_ETCD_DATA` (`/dev/shm` for tmpfs),
/// else the system's temporary directory.
fn data_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("AMBASSADOR_FLEET_ETCD_DATA").map(Into::into)
}

/// Beyond this many hosts, only through grpc-proxy: every simulated host holds a connection
/// (each follows one member at a time), and one process may hold 20,000 open files here.
const MEMBERS_UP_TO: usize = 5000;

fn vias(hosts: usize, proxy_counts: &[usize]) -> Vec<Via> {
    let members = (hosts <= MEMBERS_UP_TO).then_some(Via::Members);
    members
        .into_iter()
        .chain(proxy_counts.iter().map(|&n| Via::Proxies(n)))
        .collect()
}

/// How many grpc-proxies the proxied trials use: `AMBASSADOR_FLEET_PROXIES` (comma-separated),
/// else one, then three.
fn proxy_counts() -> Result<Vec<usize>> {
    match std::env::var("AMBASSADOR_FLEET_PROXIES") {
        Ok(list) => list
            .split(',')
            .map(|n| match n.trim().parse() {
                Ok(n) if n > 0 => Ok(n),
                _ => anyhow::bail!(
                    "AMBASSADOR_FLEET_PROXIES: a comma-separated list of counts from 1"
                ),
            })
            .collect(),
        Err(_) => Ok(vec![1, 3]),
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
    /// The trial's grpc-proxies' URLs (none given the members).
    proxies: Vec<String>,
    /// Their process ids.
    proxy_pids: Vec<i32>,
    /// The namespace etcd runs in.
    ns: String,
}

impl Setup {
    /// Where client host `h` (simulated or real) reaches etcd: the whole cluster, as a daemon
    /// is given it (`--etcd` with three URLs), or its proxy.
    fn endpoints(&self, h: usize) -> Vec<String> {
        match self.via {
            Via::Members => self.members.clone(),
            Via::Proxies(n) => vec![self.proxies[h % n].clone()],
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

async fn trial(s: Setup, backends_rt: tokio::runtime::Handle) -> Result<Trial> {
    let etcd = etcd_client::Client::connect(s.members.clone(), None)
        .await
        .context("connecting to etcd")?;
    let backend_hosts = (s.hosts / 10).clamp(5, 100);
    let backends: Vec<BackendHost> = (0..backend_hosts)
        .map(|b| BackendHost::start(&backends_rt, b, s.members[b % 3].clone(), &s.prefix, s.ttl))
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
    let rss_before = rss_kib(std::process::id() as i32);
    let etcd_before = etcd_rss_mib(&run.s.etcd_pids);
    let start = Instant::now();
    let clients: Vec<_> = (0..run.s.hosts)
        .map(|h| sim::client_host(h, run.s.endpoints(h), &run.s.prefix, tx.clone()))
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
    let etcd_growth_mib = etcd_rss_mib(&run.s.etcd_pids) - etcd_before;
    run.fleet.costs();
    let before = run.usage().await?;
    let mut changes = Vec::new();
    for _ in 0..run.s.events {
        changes.push(run.change(None, Duration::from_secs(20)).await?);
    }
    let cost = usage::PerChange::new(
        &before,
        &run.usage().await?,
        run.s.events,
        run.s.hosts,
        run.fleet.costs(),
    );
    let mut starts = Vec::new();
    for k in 0..run.s.events {
        starts.push(run.container_start(k).await);
    }
    let loss = run.lose_a_tenth().await;
    let etcd_mib = etcd_rss_mib(&run.s.etcd_pids);
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
        etcd_growth_mib,
        applies: run.fleet.applies,
        cost,
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
}

/// A process's resident memory in KiB (0 if it cannot be read).
fn rss_kib(pid: i32) -> f64 {
    status_kib(pid, "VmRSS:")
}

/// A field of a process's /proc/PID/status, in KiB (0 if it cannot be read).
fn status_kib(pid: i32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// The members' resident memory together, MiB.
fn etcd_rss_mib(pids: &[i32]) -> f64 {
    pids.iter().map(|p| rss_kib(*p)).sum::<f64>() / 1024.0
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
