//! `ambassador run`: keeps the maps equal to the desired state (from a file or from etcd),
//! keeps the conntrack tidy, and records its own state for `status`.

use std::{
    collections::BTreeSet,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use ambassador_common::{source, DaemonInfo};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
    sync::watch,
    time::{interval, Interval},
};
use tracing::{error, info, warn};

mod follow;
mod telemetry;

use follow::follow_kernel_log;
use telemetry::{render_metrics, status_view, Telemetry};

use crate::{
    control::etcd::{self, EtcdOptions, Snapshot},
    core::{
        config,
        model::Desired,
        pipeline::Pipeline,
        policy::BackendPolicy,
        trust::{self, FrontendPolicy},
    },
    datapath::{
        gc::{self, Timeouts},
        loader,
    },
    error::{Error, Result},
    services::{
        heartbeat::{self, unix_ms},
        status::page,
        web::{self, Site},
    },
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
    /// Where frontends may be, beyond the cluster's VIP ranges.
    pub frontends: FrontendPolicy,
    /// Where Prometheus metrics are served (none: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// The DNS responder (none: not served).
    pub dns: Option<crate::services::dns::DnsConfig>,
    /// How long a stop may take before the daemon exits anyway.
    pub grace: Duration,
    /// Kernel-side debug output (aya-log): new flows and drops.
    pub debug_datapath: bool,
    /// Map capacities asked for.
    pub capacity: crate::core::capacity::Requested,
}

/// Exit code when a stop outlasts `--grace-period` (EX_SOFTWARE).
pub const EXIT_GRACE_EXCEEDED: i32 = 70;

/// The daemon's state between events.
struct State {
    dp: loader::Datapath,
    /// Policies, capacity and the reconcile plan, into the maps.
    core: Pipeline,
    info: DaemonInfo,
    applied: Option<Arc<Desired>>,
    /// This host's addresses could not be read (said once).
    own_unknown: bool,
    telemetry: Arc<Mutex<Telemetry>>,
    /// The kernel refused SOCK_DESTROY once (said once, not at every pass).
    destroy_refused: bool,
    /// The DNS responder, answering from what was last applied.
    dns: Option<crate::services::dns::Responder>,
}

impl State {
    /// Applies `desired`; `received` is when it arrived from etcd (for the lag).
    fn apply(&mut self, desired: &Desired, why: &str, received: Option<Instant>) {
        let own = trust::own_addresses().unwrap_or_else(|e| {
            if !std::mem::replace(&mut self.own_unknown, true) {
                warn!("cannot read this host's addresses, so frontends are not checked against them: {e}");
            }
            BTreeSet::new()
        });
        let result = self.core.apply(&mut self.dp.maps, desired, &own);
        self.info.refused = self.core.refused_endpoints();
        self.info.refused_host_endpoints = self.core.refused_host_endpoints();
        self.info.refused_frontends = self.core.refused_frontends();
        self.info.over_capacity = self.core.over_capacity();
        let mut t = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(applied) => {
                self.info.applied_unix_ms = unix_ms(SystemTime::now());
                t.applies += 1;
                if let Some(r) = received {
                    t.lag.observe(r.elapsed());
                    t.last_lag = Some(r.elapsed());
                }
                let (desired, changes) = (&applied.desired, applied.changes);
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
        let backends = self.core.installed.backends.values().map(|b| b.addr.ip());
        self.dp.sync_xdp_backends(backends);
    }

    fn follow_etcd(&mut self, snap: &Snapshot) {
        self.info.etcd_connected = snap.connected as u32;
        self.info.state_since_unix_ms = unix_ms(snap.since);
        self.info.etcd_revision = snap.revision.max(0) as u64;
        self.info.malformed = snap.malformed;
        self.info.conflicts = snap.conflicts;
        self.info.trust = match snap.mode {
            trust::Mode::Open => ambassador_common::trust::OPEN,
            trust::Mode::Hosts => ambassador_common::trust::HOSTS,
        };
        self.core
            .follow_trust(snap.scope.clone(), snap.host_refused.clone());
        if let Some(desired) = snap.unapplied(&mut self.applied) {
            let why = format!("etcd revision {} applied", snap.revision);
            self.apply(&desired, &why, snap.received);
        }
        self.write_info();
    }

    /// Loads and attaches the datapath (adopting what is pinned) and records the daemon.
    fn start(cfg: &RunConfig, dns: Option<crate::services::dns::Responder>) -> Result<Self> {
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
        let core = Pipeline::new(
            installed,
            cfg.policy.clone(),
            cfg.frontends.clone(),
            dp.capacity,
        );
        Ok(Self {
            dp,
            core,
            info,
            applied: None,
            own_unknown: false,
            telemetry: Arc::default(),
            destroy_refused: false,
            dns,
        })
    }

    /// One garbage collection: sockets to backends that went, expired flows and socket
    /// translations, drained backends.
    fn collect_garbage(&mut self, timeouts: &Timeouts) {
        self.destroy_stale_sockets();
        match gc::collect(&mut self.dp.maps, &mut self.core.installed, timeouts) {
            Ok(done) if done == gc::Collected::default() => {}
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
    let mut signals = Signals::install()?;

    // The responder binds its addresses before the kernel is touched: a bad address fails
    // the start with nothing changed.
    let dns = match &cfg.dns {
        Some(d) => Some(crate::services::dns::Responder::start(d.clone()).await?),
        None => None,
    };
    let mut state = State::start(&cfg, dns)?;
    if let Some(desired) = &initial {
        state.apply(desired, "configuration applied", None);
    }
    state.write_info();
    let metrics = serve_metrics(&cfg, &state).await?;
    let (follower, mut rx) = follow(&cfg.source);
    info!(pin_dir = %cfg.pin_dir.display(), "ready");

    let mut ticks = Ticks::new(&cfg);
    let link_events = if state.dp.has_bridges() {
        link_events()
    } else {
        None
    };
    let mut health = state.dp.health_events.take().and_then(readable);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = signals.term.recv() => { info!("SIGTERM: stopping"); break }
            _ = signals.int.recv() => { info!("SIGINT: stopping"); break }
            changed = rx.changed(), if follower.is_some() => {
                if changed.is_err() {
                    error!("the etcd follower stopped");
                    break;
                }
                let snap = rx.borrow_and_update().clone();
                state.follow_etcd(&snap);
            }
            _ = signals.hup.recv() => match &cfg.source {
                Source::File(path) => match config::load(path) {
                    Ok(desired) => state.apply(&desired, "configuration reloaded", None),
                    Err(e) => warn!("configuration not reloaded, the running one stays: {e}"),
                },
                Source::Etcd(_) => info!("SIGHUP ignored: the configuration comes from etcd"),
            },
            _ = ticks.gc.tick() => state.collect_garbage(&cfg.timeouts),
            _ = ticks.heartbeat.tick() => state.write_info(),
            _ = ticks.ports.tick(), if state.dp.has_bridges() => state.dp.sync_bridge_ports(),
            _ = ticks.routes.tick(), if state.dp.has_xdp() => state.follow_xdp_backends(),
            _ = ticks.xdp_targets.tick(), if state.dp.has_xdp() => state.dp.sync_xdp_targets(),
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

/// The daemon's periodic work.
struct Ticks {
    /// Flow expiry (`--gc-interval`).
    gc: Interval,
    /// The record `status` reads (the heartbeat).
    heartbeat: Interval,
    /// Bridge ports come and go with containers: a link event attaches a new port at once;
    /// this sweep is the safety net (a lost event, an overflowing socket).
    ports: Interval,
    /// Routes to the backends change too (a subnet moves to another link).
    routes: Interval,
    /// Which interfaces take redirected XDP frames changes with a peer's GRO or XDP program.
    xdp_targets: Interval,
}

impl Ticks {
    fn new(cfg: &RunConfig) -> Self {
        Self {
            gc: interval(cfg.gc_interval),
            heartbeat: interval(heartbeat::INTERVAL),
            ports: interval(Duration::from_secs(1)),
            routes: interval(Duration::from_secs(5)),
            xdp_targets: interval(Duration::from_secs(1)),
        }
    }
}

/// The signals the daemon answers: SIGHUP re-reads a file, SIGTERM and SIGINT stop it.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(Error::io(format!("installing the {name} handler")))
        };
        Ok(Self {
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }
}

/// The metrics page and the status page, when `--metrics-addr` asks for them.
async fn serve_metrics(
    cfg: &RunConfig,
    state: &State,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = cfg.metrics_addr else {
        return Ok(None);
    };
    let (pin, t) = (cfg.pin_dir.clone(), state.telemetry.clone());
    let dns = state
        .dns
        .as_ref()
        .map(crate::services::dns::Responder::stats);
    let (pin2, t2, dns2) = (pin.clone(), t.clone(), dns.clone());
    let view = move || status_view(&pin2, &t2, dns2.as_deref());
    let json = view.clone();
    let site = Site::metrics(move || render_metrics(&pin, &t, dns.as_deref()))
        .page("/", "text/html; charset=utf-8", move || {
            view().map(|v| page::html(&v))
        })
        .page("/status.json", "application/json", move || {
            json().and_then(|v| serde_json::to_string(&v).map_err(|e| e.to_string()))
        })
        .fixed("/page.js", "text/javascript; charset=utf-8", page::SCRIPT)
        .fixed("/page.css", "text/css; charset=utf-8", page::STYLE);
    Ok(Some(web::serve(addr, site).await?.1))
}

/// The datapath's backend health events as something the loop can wait on.
fn readable(ring: loader::HealthEvents) -> Option<AsyncFd<loader::HealthEvents>> {
    // SAFETY: the ring buffer owns its map's fd and never replaces or closes it while it
    // lives; the AsyncFd owns the ring buffer.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| warn!("backend health events will not be logged: {e}"))
        .ok()
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
fn link_events() -> Option<tokio::io::unix::AsyncFd<crate::datapath::netlink::LinkEvents>> {
    let registered = crate::datapath::netlink::LinkEvents::subscribe().and_then(|events| {
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
