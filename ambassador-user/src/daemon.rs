//! `ambassador run`: keeps the maps equal to the desired state (from a file or from etcd),
//! keeps the conntrack tidy, and records its own state for `status`.

use std::{
    collections::BTreeSet,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use ambassador_common::{source, suspicion, DaemonInfo, HealthEvent};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    config,
    error::{Error, Result},
    etcd::{self, EtcdOptions, Snapshot},
    gc::{self, Timeouts},
    heartbeat::{self, unix_ms},
    loader,
    maps::Maps,
    metrics::{self, Histogram, Kind, Page},
    model::{Desired, Proto},
    policy::{BackendPolicy, Refusal},
    reconcile::{self, Installed, Op},
    sockets, status,
};

/// Where the desired state comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A static TOML file; SIGHUP re-reads it.
    File(PathBuf),
    /// etcd, watched continuously.
    Etcd(EtcdOptions),
}

/// Validated settings of `ambassador run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Where the datapaths attach: interfaces (`tc`) and a cgroup (`sock`).
    pub targets: loader::Targets,
    /// Where the desired state comes from.
    pub source: Source,
    /// Where maps are pinned.
    pub pin_dir: PathBuf,
    /// How often expired flows and drained backends are removed.
    pub gc_interval: Duration,
    /// Flow timeouts.
    pub timeouts: Timeouts,
    /// Where backends may point.
    pub policy: BackendPolicy,
    /// Where Prometheus metrics are served (none: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// The DNS responder (none: not served).
    pub dns: Option<crate::dns::DnsConfig>,
    /// How long a stop may take before the daemon exits anyway.
    pub grace: Duration,
    /// Kernel-side debug output (aya-log): new flows and drops.
    pub debug_datapath: bool,
    /// Map capacities asked for.
    pub capacity: crate::capacity::Requested,
}

/// Exit code when a stop outlasts `--grace-period` (EX_SOFTWARE).
pub const EXIT_GRACE_EXCEEDED: i32 = 70;

/// Installs `desired` op by op, keeping `installed` equal to the maps. Returns the op count.
/// A backend written or removed is no longer suspect: its entry changed, and etcd (or the
/// file) is the source of truth.
pub fn converge(maps: &mut Maps, installed: &mut Installed, desired: &Desired) -> Result<usize> {
    reconcile::validate(desired)?;
    let ops = reconcile::plan(installed, desired);
    for op in &ops {
        maps.apply(op)?;
        installed.apply(op);
        if let Op::PutBackend { id, .. } | Op::DeleteBackend { id } = op {
            maps.clear_suspect(*id)?;
        }
    }
    Ok(ops.len())
}

/// What one garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Expired TC flows.
    pub flows: usize,
    /// Translations of the socket datapath whose socket is gone or idle.
    pub sockets: usize,
    /// Terminating backends no flow or socket uses any more.
    pub backends: usize,
}

/// Removes expired flows and socket translations, then drained terminating backends.
pub fn collect_garbage(
    maps: &mut Maps,
    installed: &mut Installed,
    timeouts: &Timeouts,
) -> Result<Collected> {
    let now = gc::monotonic_ns();
    let mut used = BTreeSet::new();
    let mut done = Collected::default();
    for flow in maps.flows()? {
        if gc::expired(&flow, now, timeouts) || !installed.backends.contains_key(&flow.backend_id) {
            maps.delete_flow(&flow)?;
            done.flows += 1;
        } else {
            used.insert(flow.backend_id);
        }
    }
    for entry in maps.sock_entries()? {
        if gc::sock_expired(&entry, now, timeouts)
            || !installed.backends.contains_key(&entry.backend_id)
        {
            maps.delete_sock_entry(&entry)?;
            done.sockets += 1;
        } else {
            used.insert(entry.backend_id);
        }
    }
    let drained = gc::drained_backends(installed, &used);
    for id in &drained {
        let op = Op::DeleteBackend { id: *id };
        maps.apply(&op)?;
        installed.apply(&op);
        maps.clear_suspect(*id)?;
    }
    done.backends = drained.len();
    Ok(done)
}

/// What the daemon measures about itself, for the metrics page.
struct Telemetry {
    /// etcd response received -> maps updated.
    lag: Histogram,
    /// Desired states applied, and those that failed to apply.
    applies: u64,
    apply_failures: u64,
    /// Flows and drained backends removed by the garbage collector.
    gc_flows: u64,
    gc_sockets: u64,
    gc_backends: u64,
    /// Sockets destroyed because their backend went.
    sockets_destroyed: u64,
    /// Backends the datapath found refusing, or silent, and how many answered again.
    suspected_refused: u64,
    suspected_silent: u64,
    recovered: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            lag: Histogram::new(metrics::LAG_BUCKETS),
            applies: 0,
            apply_failures: 0,
            gc_flows: 0,
            gc_sockets: 0,
            gc_backends: 0,
            sockets_destroyed: 0,
            suspected_refused: 0,
            suspected_silent: 0,
            recovered: 0,
        }
    }
}

/// The metrics page: the status read from the pinned maps, then the daemon's own figures.
fn render_metrics(
    pin_dir: &Path,
    telemetry: &Mutex<Telemetry>,
    dns: Option<&crate::dns::DnsStats>,
) -> String {
    let mut page = Page::default();
    match status::read(pin_dir) {
        Ok(s) => {
            page.single(
                "ambassador_maps_readable",
                Kind::Gauge,
                "Whether the pinned maps could be read for this page.",
                1.0,
            );
            status::write_metrics(&s, &mut page);
        }
        Err(e) => {
            warn!("metrics: reading the pinned maps failed: {e}");
            page.single(
                "ambassador_maps_readable",
                Kind::Gauge,
                "Whether the pinned maps could be read for this page.",
                0.0,
            );
        }
    }
    let t = telemetry.lock().unwrap_or_else(|p| p.into_inner());
    t.lag.write(
        &mut page,
        "ambassador_control_plane_lag_seconds",
        "From an etcd response arriving to the maps holding it.",
    );
    page.single(
        "ambassador_applies_total",
        Kind::Counter,
        "Desired states applied to the maps.",
        t.applies as f64,
    );
    page.single(
        "ambassador_apply_failures_total",
        Kind::Counter,
        "Desired states that failed to apply (the maps keep the previous one).",
        t.apply_failures as f64,
    );
    page.single(
        "ambassador_gc_flows_removed_total",
        Kind::Counter,
        "Expired flows removed by the garbage collector.",
        t.gc_flows as f64,
    );
    page.single(
        "ambassador_gc_backends_removed_total",
        Kind::Counter,
        "Drained terminating backends removed.",
        t.gc_backends as f64,
    );
    page.single(
        "ambassador_gc_sockets_removed_total",
        Kind::Counter,
        "Socket-datapath translations removed (an unconnected socket idle past --udp-timeout, or a backend gone).",
        t.gc_sockets as f64,
    );
    page.family(
        "ambassador_backend_suspicions_total",
        Kind::Counter,
        "Backends this host's datapath found failing new flows, by how (refused: RST to a SYN; silent: a SYN retransmitted unanswered).",
    )
    .sample(
        "ambassador_backend_suspicions_total",
        &[("reason", "refused")],
        t.suspected_refused as f64,
    )
    .sample(
        "ambassador_backend_suspicions_total",
        &[("reason", "silent")],
        t.suspected_silent as f64,
    );
    page.single(
        "ambassador_backend_recoveries_total",
        Kind::Counter,
        "Suspect backends that answered a new flow again.",
        t.recovered as f64,
    );
    page.single(
        "ambassador_sockets_destroyed_total",
        Kind::Counter,
        "Sockets the socket datapath connected to a backend that went (UDP: also one that left its service), destroyed so the application reconnects.",
        t.sockets_destroyed as f64,
    );
    if let Some(dns) = dns {
        dns.write(&mut page);
    }
    page.finish()
}

/// The daemon's state between events.
struct State {
    dp: loader::Datapath,
    installed: Installed,
    info: DaemonInfo,
    applied: Option<Arc<Desired>>,
    policy: BackendPolicy,
    /// Endpoints refused by the policy at the last apply (each warned about once).
    refused: BTreeSet<Refusal>,
    /// Services and endpoints left out for want of map capacity at the last apply (each
    /// warned about once).
    left_out: BTreeSet<String>,
    telemetry: Arc<Mutex<Telemetry>>,
    /// The kernel refused SOCK_DESTROY once (said once, not at every pass).
    destroy_refused: bool,
    /// The DNS responder, answering from what was last applied.
    dns: Option<crate::dns::Responder>,
}

impl State {
    /// Applies `desired`; `received` is when it arrived from etcd (for the lag).
    fn apply(&mut self, desired: &Desired, why: &str, received: Option<Instant>) {
        let (desired, refused) = self.policy.filter(desired);
        for r in &refused {
            if !self.refused.contains(r) {
                warn!("{r}");
            }
        }
        self.refused = refused.into_iter().collect();
        self.info.refused = self.refused.len() as u32;
        let (desired, left_out) = self.dp.capacity.fit(&desired);
        for l in &left_out {
            if !self.left_out.contains(l) {
                warn!("{l}");
            }
        }
        self.left_out = left_out.into_iter().collect();
        self.info.over_capacity = self.left_out.len() as u32;
        let desired = &desired;
        let result = converge(&mut self.dp.maps, &mut self.installed, desired);
        let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(changes) => {
                self.info.applied_unix_ms = unix_ms(SystemTime::now());
                t.applies += 1;
                if let Some(r) = received {
                    t.lag.observe(r.elapsed());
                }
                info!(services = desired.len(), changes, "{why}");
                let serial = t.applies as u32;
                drop(t);
                if let Some(dns) = &self.dns {
                    dns.update(desired, serial);
                }
                self.destroy_stale_sockets();
                self.follow_xdp_backends();
            }
            Err(e) => {
                t.apply_failures += 1;
                error!("{why}: applying failed, the maps keep what was applied before: {e}")
            }
        }
    }

    /// Keeps the XDP program on the interfaces towards the current backends.
    fn follow_xdp_backends(&mut self) {
        let backends = self.installed.backends.values().map(|b| b.addr.ip());
        self.dp.sync_xdp_backends(backends);
    }

    fn follow_etcd(&mut self, snap: &Snapshot) {
        self.info.etcd_connected = snap.connected as u32;
        self.info.state_since_unix_ms = unix_ms(snap.since);
        self.info.etcd_revision = snap.revision.max(0) as u64;
        self.info.malformed = snap.malformed;
        self.info.conflicts = snap.conflicts;
        if let Some(desired) = &snap.desired {
            if !self
                .applied
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, desired))
            {
                self.apply(
                    desired,
                    &format!("etcd revision {} applied", snap.revision),
                    snap.received,
                );
                self.applied = Some(desired.clone());
            }
        }
        self.write_info();
    }

    /// Loads and attaches the datapath (adopting what is pinned) and records the daemon.
    fn start(cfg: &RunConfig, dns: Option<crate::dns::Responder>) -> Result<Self> {
        let mut dp = loader::start(&cfg.pin_dir, &cfg.targets, cfg.capacity, cfg.debug_datapath)?;
        info!(
            services = dp.capacity.services,
            backends = dp.capacity.backends,
            slots = dp.capacity.slots,
            flows = dp.capacity.flows,
            "map capacity"
        );
        if let Some(log) = dp.kernel_log.take() {
            follow_kernel_log(log)?;
        }
        let installed = dp.maps.read_installed()?;
        // Suspicion of backends that are gone is meaningless; of the others, still valid.
        for id in dp.maps.suspects()?.keys() {
            if !installed.backends.contains_key(id) {
                dp.maps.clear_suspect(*id)?;
            }
        }
        let mut info = DaemonInfo {
            pid: std::process::id(),
            source: match cfg.source {
                Source::File(_) => source::FILE,
                Source::Etcd(_) => source::ETCD,
            },
            state_since_unix_ms: unix_ms(SystemTime::now()),
            ..DaemonInfo::default()
        };
        cfg.timeouts.record(&mut info);
        Ok(Self {
            dp,
            installed,
            info,
            applied: None,
            policy: cfg.policy.clone(),
            refused: BTreeSet::new(),
            left_out: BTreeSet::new(),
            telemetry: Arc::default(),
            destroy_refused: false,
            dns,
        })
    }

    /// Logs and counts the backend health transitions the datapath reported.
    fn health_events(&mut self, ring: &mut loader::HealthEvents) {
        let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<HealthEvent>() {
                continue;
            }
            // SAFETY: the datapath writes whole HealthEvents (checked length; any bit pattern
            // is a valid value).
            let ev: HealthEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let backend = self
                .installed
                .backends
                .get(&ev.backend_id)
                .map_or_else(|| format!("id {}", ev.backend_id), |b| b.addr.to_string());
            let service = self
                .installed
                .names
                .get(&ev.service_id)
                .cloned()
                .unwrap_or_else(|| format!("id {}", ev.service_id));
            let retry_s = suspicion::backoff_ns(ev.strikes) / 1_000_000_000;
            match ev.reason {
                suspicion::REFUSED | suspicion::SILENT => {
                    let how = if ev.reason == suspicion::REFUSED {
                        t.suspected_refused += 1;
                        "refused a new flow (RST to its SYN)"
                    } else {
                        t.suspected_silent += 1;
                        "left a new flow unanswered (its SYN was retransmitted)"
                    };
                    warn!(
                        %backend,
                        %service,
                        strikes = ev.strikes,
                        "backend {how}: suspect on this host, new flows go to the others; one may try it again in {retry_s} s"
                    );
                }
                suspicion::ANSWERED => {
                    t.recovered += 1;
                    info!(%backend, %service, "suspect backend answered a new flow: in use again");
                }
                _ => {}
            }
        }
    }

    /// Destroys the sockets the socket datapath connected to a backend that went (UDP: also
    /// to one that left its service), so their applications reconnect to a live backend.
    fn destroy_stale_sockets(&mut self) {
        if self.dp.sock_cgroup().is_none() {
            return;
        }
        let entries = match self.dp.maps.sock_entries() {
            Ok(e) => e,
            Err(e) => return warn!("reading the socket datapath's entries failed: {e}"),
        };
        let doomed = sockets::doomed(&entries, &self.installed);
        let mut destroyed = 0;
        for proto in [Proto::Udp, Proto::Tcp] {
            if !doomed.iter().any(|e| e.proto == proto) {
                continue;
            }
            let connected = match sockets::connected(proto) {
                Ok(c) => c,
                Err(e) => {
                    warn!("listing {proto} sockets (sock_diag) failed: {e}");
                    continue;
                }
            };
            for socket in sockets::stale(&connected, &doomed) {
                match sockets::destroy(socket) {
                    Ok(()) => {
                        destroyed += 1;
                        info!(%proto, backend = %socket.peer, "destroyed a socket connected to a backend that went");
                    }
                    Err(e) if !self.destroy_refused => {
                        self.destroy_refused = true;
                        warn!(
                            "destroying a {proto} socket connected to {} failed: {e}. Sockets connected to a backend that went keep it until their application reconnects (destroying them needs CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY)",
                            socket.peer
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        if destroyed > 0 {
            let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
            t.sockets_destroyed += destroyed;
        }
    }

    /// One garbage collection: sockets to backends that went, expired flows and socket
    /// translations, drained backends.
    fn collect_garbage(&mut self, timeouts: &Timeouts) {
        self.destroy_stale_sockets();
        match collect_garbage(&mut self.dp.maps, &mut self.installed, timeouts) {
            Ok(done) if done == Collected::default() => {}
            Ok(done) => {
                let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
                t.gc_flows += done.flows as u64;
                t.gc_sockets += done.sockets as u64;
                t.gc_backends += done.backends as u64;
                info!(
                    flows = done.flows,
                    sockets = done.sockets,
                    backends = done.backends,
                    "expired flows, closed sockets and drained backends removed"
                );
            }
            Err(e) => warn!("garbage collection failed: {e}"),
        }
    }

    /// Stops within `grace`: whatever hangs (a kernel call, a dropped runtime waiting for a
    /// blocking task), the process is gone after it. Forwarding never depends on it: with TCX
    /// the pinned links stay, and the next daemon adopts them; the maps stay pinned for
    /// `status` and for the next start.
    fn stop(mut self, grace: Duration) {
        let _ = std::thread::Builder::new()
            .name("grace".into())
            .spawn(move || {
                std::thread::sleep(grace);
                error!(
                    "stopping took longer than the grace period ({}s): exiting now",
                    grace.as_secs()
                );
                std::process::exit(EXIT_GRACE_EXCEEDED);
            });
        self.info.heartbeat_unix_ms = 0;
        self.info.etcd_connected = 0;
        let _ = self.dp.maps.set_info(&self.info);
        drop(self);
        info!("stopped");
    }

    fn write_info(&mut self) {
        self.info.heartbeat_unix_ms = unix_ms(SystemTime::now());
        if let Err(e) = self.dp.maps.set_info(&self.info) {
            warn!("recording the daemon's state failed: {e}");
        }
    }
}

/// Forwards the datapath's aya-log records to the log as they arrive.
fn follow_kernel_log(log: loader::KernelLog) -> Result<()> {
    // SAFETY: the logger owns its ring buffer's map fd and never replaces or closes it while
    // it lives; the AsyncFd owns the logger.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(log, tokio::io::Interest::READABLE)
    }
    .map_err(|e| Error::Io {
        what: "watching the datapath's log ring buffer".into(),
        source: e.into(),
    })?;
    info!("datapath debug output on: every new flow and every drop is logged");
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable_mut().await else {
                warn!("the datapath's log ring buffer failed; no more kernel debug output");
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

/// Runs the daemon until `shutdown` completes (or SIGTERM/SIGINT arrives).
///
/// With a file, SIGHUP re-reads it: a bad file is reported and the running state stays. With
/// etcd, the state follows etcd; while etcd is unreachable the last applied state stays in
/// force (also across a restart: the pinned maps keep it).
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    // Validate everything before touching the kernel.
    let initial = match &cfg.source {
        Source::File(path) => Some(config::load(path)?),
        Source::Etcd(_) => None,
    };
    let mut hup =
        signal(SignalKind::hangup()).map_err(Error::io("installing the SIGHUP handler"))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(Error::io("installing the SIGTERM handler"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(Error::io("installing the SIGINT handler"))?;

    // The responder binds its addresses before the kernel is touched: a bad address fails
    // the start with nothing changed.
    let dns = match &cfg.dns {
        Some(d) => Some(crate::dns::Responder::start(d.clone()).await?),
        None => None,
    };
    let mut state = State::start(&cfg, dns)?;
    if let Some(desired) = &initial {
        state.apply(desired, "configuration applied", None);
    }
    state.write_info();
    let metrics = match cfg.metrics_addr {
        Some(addr) => {
            let (pin, t) = (cfg.pin_dir.clone(), state.telemetry.clone());
            let dns = state.dns.as_ref().map(crate::dns::Responder::stats);
            let render: metrics::Render =
                Arc::new(move || render_metrics(&pin, &t, dns.as_deref()));
            Some(metrics::serve(addr, render).await?.1)
        }
        None => None,
    };
    let (follower, mut rx) = follow(&cfg.source);
    info!(pin_dir = %cfg.pin_dir.display(), "ready");

    let mut gc_tick = tokio::time::interval(cfg.gc_interval);
    // Bridge ports come and go with containers: a link event attaches a new port at once; the
    // periodic sweep is the safety net (a lost event, an overflowing socket).
    let mut ports = tokio::time::interval(Duration::from_secs(1));
    let mut routes = tokio::time::interval(Duration::from_secs(5));
    let link_events = if state.dp.has_bridges() {
        link_events()
    } else {
        None
    };
    let mut heartbeat = tokio::time::interval(heartbeat::INTERVAL);
    let mut health = state.dp.health_events.take().and_then(|ring| {
        // SAFETY: the ring buffer owns its map's fd and never replaces or closes it while it
        // lives; the AsyncFd owns the ring buffer.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }
        .map_err(|e| warn!("backend health events will not be logged: {e}"))
        .ok()
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            changed = rx.changed(), if follower.is_some() => {
                if changed.is_err() {
                    error!("the etcd follower stopped");
                    break;
                }
                let snap = rx.borrow_and_update().clone();
                state.follow_etcd(&snap);
            }
            _ = hup.recv() => match &cfg.source {
                Source::File(path) => match config::load(path) {
                    Ok(desired) => state.apply(&desired, "configuration reloaded", None),
                    Err(e) => warn!("configuration not reloaded, the running one stays: {e}"),
                },
                Source::Etcd(_) => info!("SIGHUP ignored: the configuration comes from etcd"),
            },
            _ = gc_tick.tick() => state.collect_garbage(&cfg.timeouts),
            _ = heartbeat.tick() => state.write_info(),
            _ = ports.tick(), if state.dp.has_bridges() => state.dp.sync_bridge_ports(),
            // Routes to the backends change too (a subnet moves to another link).
            _ = routes.tick(), if state.dp.has_xdp() => state.follow_xdp_backends(),
            ready = async { health.as_mut().expect("guarded").readable_mut().await }, if health.is_some() => {
                if let Ok(mut guard) = ready {
                    state.health_events(guard.get_inner_mut());
                    guard.clear_ready();
                }
            }
            ready = async { link_events.as_ref().expect("guarded").readable().await }, if link_events.is_some() => {
                if let Ok(mut guard) = ready {
                    if guard.get_inner().drain() {
                        state.dp.sync_bridge_ports();
                    }
                    guard.clear_ready();
                }
            }
        }
    }
    for task in [follower, metrics].into_iter().flatten() {
        task.abort();
    }
    state.stop(cfg.grace);
    Ok(())
}

/// Follows the source of truth: a watch of etcd's desired state (none for a file, which is
/// read at start and on SIGHUP).
fn follow(
    source: &Source,
) -> (
    Option<tokio::task::JoinHandle<()>>,
    watch::Receiver<Snapshot>,
) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let follower = match source {
        Source::Etcd(opts) => {
            info!(endpoints = %opts.endpoints.join(","), prefix = %opts.prefix, "following etcd");
            Some(tokio::spawn(etcd::follow(opts.clone(), tx)))
        }
        Source::File(_) => None,
    };
    (follower, rx)
}

/// Link events of this namespace, ready for `select!`; `None` (with a warning) where they are
/// unavailable, leaving the periodic sweep alone to follow bridge ports.
fn link_events() -> Option<tokio::io::unix::AsyncFd<crate::netlink::LinkEvents>> {
    let registered = crate::netlink::LinkEvents::subscribe().and_then(|events| {
        // SAFETY: LinkEvents owns its descriptor and always returns that same one.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))
    });
    match registered {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!("link events unavailable ({e}); bridge ports are followed every second");
            None
        }
    }
}
