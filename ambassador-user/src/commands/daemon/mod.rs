//! `ambassador run`: keeps the maps equal to the desired state (from a file or from etcd),
//! keeps the conntrack tidy, and records its own state for `status`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use ambassador_common::{source, DaemonInfo};
use tracing::{error, info, warn};

mod follow;
mod life;
mod telemetry;

pub use life::run;

use follow::follow_kernel_log;
use telemetry::{render_metrics, status_view, Telemetry};

use crate::{
    control::etcd::{EtcdOptions, Snapshot},
    core::{
        model::Desired,
        pipeline::Pipeline,
        policy::BackendPolicy,
        trust::{self, FrontendPolicy},
    },
    datapath::{
        gc::{self, Timeouts},
        loader,
    },
    error::Result,
    services::{
        heartbeat::unix_ms,
        monitor::{Event, Hub, Kind},
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
    /// Events for `ambassador monitor`.
    monitor: Hub,
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
                self.monitor.publish(|| {
                    let mut e = Event::new(Kind::Applied);
                    e.reason = Some(why.to_owned());
                    e.detail = Some(format!("{} services, {changes} changes", desired.len()));
                    e
                });
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
                error!("{why}: applying failed, the maps keep what was applied before: {e}");
                self.monitor.publish(|| {
                    let mut e2 = Event::new(Kind::Applied);
                    e2.reason = Some(format!("{why}: FAILED"));
                    e2.detail = Some(e.to_string());
                    e2
                });
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
            monitor: Hub::default(),
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
    let hub = state.monitor.clone();
    let site = Site::metrics(move || render_metrics(&pin, &t, dns.as_deref(), &hub))
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
