//! The daemon's life: it starts, then answers etcd, signals, timers, the kernel's events and
//! the monitors until it is stopped.

use std::{future::Future, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
    sync::watch,
    time::{interval, Interval},
};
use tracing::{error, info, warn};

use super::{serve_metrics, RunConfig, Source, State};
use crate::{
    control::etcd::{self, Snapshot},
    core::config,
    datapath::loader,
    error::{Error, Result},
    services::{heartbeat, monitor},
};

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
    let (follower, rx) = follow(&cfg.source);
    let socket = monitor::socket_path(&cfg.pin_dir);
    let monitors = state
        .monitor
        .serve(&socket)
        .map_err(|e| warn!("`ambassador monitor` will not work: {e}"))
        .ok();
    info!(pin_dir = %cfg.pin_dir.display(), "ready");
    state.serve(&cfg, follower.is_some(), rx, shutdown).await?;
    for task in [follower, metrics, monitors].into_iter().flatten() {
        task.abort();
    }
    if state.monitor.is_listening() {
        state.monitor_switch(false);
    }
    let _ = std::fs::remove_file(&socket);
    state.stop(cfg.grace);
    Ok(())
}

impl State {
    /// Answers etcd, signals, timers, the kernel's events and the monitors until stopped.
    async fn serve(
        &mut self,
        cfg: &RunConfig,
        following: bool,
        mut rx: watch::Receiver<Snapshot>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let mut signals = Signals::install()?;
        let mut listening = self.monitor.listening();
        let mut ticks = Ticks::new(cfg);
        let link_events = if self.dp.has_bridges() {
            link_events()
        } else {
            None
        };
        let mut health = self.dp.health_events.take().and_then(readable);
        let mut flows = self.dp.flow_events.take().and_then(readable);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = signals.term.recv() => { info!("SIGTERM: stopping"); break }
                _ = signals.int.recv() => { info!("SIGINT: stopping"); break }
                changed = rx.changed(), if following => {
                    if changed.is_err() {
                        error!("the etcd follower stopped");
                        break;
                    }
                    let snap = rx.borrow_and_update().clone();
                    self.follow_etcd(&snap);
                }
                _ = signals.hup.recv() => match &cfg.source {
                    Source::File(path) => match config::load(path) {
                        Ok(desired) => self.apply(&desired, "configuration reloaded", None),
                        Err(e) => warn!("configuration not reloaded, the running one stays: {e}"),
                    },
                    Source::Etcd(_) => info!("SIGHUP ignored: the configuration comes from etcd"),
                },
                Ok(()) = listening.changed() => {
                    let on = *listening.borrow_and_update();
                    self.monitor_switch(on);
                }
                _ = ticks.gc.tick() => self.collect_garbage(&cfg.timeouts),
                _ = ticks.heartbeat.tick() => self.write_info(),
                _ = ticks.ports.tick(), if self.dp.has_bridges() => self.dp.sync_bridge_ports(),
                _ = ticks.routes.tick(), if self.dp.has_xdp() => self.follow_xdp_backends(),
                _ = ticks.xdp_targets.tick(), if self.dp.has_xdp() => self.dp.sync_xdp_targets(),
                ready = async { health.as_mut().expect("guarded").readable_mut().await }, if health.is_some() => {
                    if let Ok(mut guard) = ready {
                        self.health_events(guard.get_inner_mut());
                        guard.clear_ready();
                    }
                }
                ready = async { flows.as_mut().expect("guarded").readable_mut().await }, if flows.is_some() => {
                    if let Ok(mut guard) = ready {
                        self.flow_events(guard.get_inner_mut());
                        guard.clear_ready();
                    }
                }
                ready = async { link_events.as_ref().expect("guarded").readable().await }, if link_events.is_some() => {
                    if let Ok(mut guard) = ready {
                        if guard.get_inner().drain() {
                            self.dp.sync_bridge_ports();
                        }
                        guard.clear_ready();
                    }
                }
            }
        }
        Ok(())
    }
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

/// One of the datapath's ring buffers (health or flow events) as something the loop can wait on.
fn readable(ring: loader::Ring) -> Option<AsyncFd<loader::Ring>> {
    // SAFETY: the ring buffer owns its map's fd and never replaces or closes it while it
    // lives; the AsyncFd owns the ring buffer.
    unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| {
            warn!("a ring buffer of the datapath will not be read (health or flow events): {e}")
        })
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
