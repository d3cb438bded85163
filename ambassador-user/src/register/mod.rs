//! `ambassador register`: writes this host's labelled Docker containers into etcd, one entry
//! per container, all under one lease that this process keeps alive. If the process or its
//! host dies, the lease expires and every entry goes with it (registrator's stale entries).
//!
//! It lists the containers, then follows the event stream; a periodic reconcile heals missed
//! events; a closed stream is reopened and re-listed; a lost lease is re-granted and every
//! entry rewritten.

mod config;
mod events;
mod lease;
mod mapping;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bollard::{
    models::ContainerInspectResponse,
    query_parameters::{EventsOptions, ListContainersOptions},
    Docker, API_DEFAULT_VERSION,
};
pub use config::{AddressMode, RegisterConfig};
use etcd_client::{Client, PutOptions};
use events::Change;
use futures_util::StreamExt as _;
use lease::{keep_lease, retry};
use mapping::short_id;
pub use mapping::{entry, labels, ready, registration, Registration};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    etcd::timed,
    metrics::{self, Kind, Page},
};

/// What the register reports at `--metrics-addr`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Containers whose endpoint is written under the current lease.
    containers: AtomicU64,
    /// Labelled containers that cannot be registered (bad label, no published port...).
    unusable: AtomicU64,
    /// Whether a lease is held and kept alive.
    etcd_connected: AtomicBool,
    /// Whether the Docker event stream is followed.
    docker_connected: AtomicBool,
    /// Leases granted (more than one: etcd was lost and the entries rewritten).
    lease_grants: AtomicU64,
    /// Endpoint writes and deletions.
    puts: AtomicU64,
    deletes: AtomicU64,
}

impl Stats {
    fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let flag = |a: &AtomicBool| if a.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        let mut page = Page::default();
        page.single(
            "ambassador_register_containers",
            Kind::Gauge,
            "Containers whose endpoint this register holds in etcd under its lease.",
            get(&self.containers),
        )
        .single(
            "ambassador_register_unusable_containers",
            Kind::Gauge,
            "Labelled containers that cannot be registered (the log says why).",
            get(&self.unusable),
        )
        .single(
            "ambassador_register_etcd_connected",
            Kind::Gauge,
            "Whether a lease is held and kept alive.",
            flag(&self.etcd_connected),
        )
        .single(
            "ambassador_register_docker_connected",
            Kind::Gauge,
            "Whether Docker's events are followed.",
            flag(&self.docker_connected),
        )
        .single(
            "ambassador_register_lease_grants_total",
            Kind::Counter,
            "Leases granted; each after the first means etcd was lost and every entry rewritten.",
            get(&self.lease_grants),
        )
        .single(
            "ambassador_register_puts_total",
            Kind::Counter,
            "Endpoint entries written.",
            get(&self.puts),
        )
        .single(
            "ambassador_register_deletes_total",
            Kind::Counter,
            "Endpoint entries deleted.",
            get(&self.deletes),
        );
        page.finish()
    }
}

/// Connects to the Docker engine, agreeing on an API version it speaks.
pub async fn connect_docker(path: &str) -> Result<Docker> {
    let docker = Docker::connect_with_unix(path, 30, API_DEFAULT_VERSION).map_err(|source| {
        Error::Docker {
            what: format!("connecting to {path}"),
            source,
        }
    })?;
    docker
        .negotiate_version()
        .await
        .map_err(|source| Error::Docker {
            what: format!("talking to {path}"),
            source,
        })
}

/// The register's state: what it wrote, under which lease. Dropping it stops the lease's
/// keep-alives (the entries then expire with the lease unless a new one takes them over).
struct Register {
    cfg: RegisterConfig,
    etcd: Client,
    lease: i64,
    /// key -> value written under the current lease, by container id.
    written: HashMap<String, (String, String)>,
    /// Containers already reported as unusable (reported once).
    reported: HashSet<String>,
    /// Containers that were sent their stop signal, with the start time of the run being
    /// stopped: that run drains and is not registered again; a later run is.
    stopping: HashMap<String, String>,
    /// Services labelled containers back, with the port and protocol a service created for
    /// them gets (the first container's).
    /// Labelled services: the first container's port, protocol, and whether its address is
    /// IPv6 (a service created for them gets a frontend of that family).
    services: HashMap<String, (u16, crate::model::Proto, bool)>,
    /// Services known to exist (created or found), with their frontend.
    ensured: HashMap<String, std::net::SocketAddr>,
    /// Containers whose port differs from their service's frontend port (said once).
    disagreeing: HashSet<String>,
    /// Keeps the lease alive, independently of Docker: the lease means "this register lives".
    keepalive: tokio::task::JoinHandle<()>,
    /// Becomes true when the lease is lost.
    lost: watch::Receiver<bool>,
    stats: Arc<Stats>,
}

impl Drop for Register {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl Register {
    /// Connects to etcd, grants a lease and starts keeping it alive.
    async fn new(cfg: &RegisterConfig, stats: Arc<Stats>) -> Result<Self> {
        let mut etcd = cfg.etcd.connect().await?;
        let resp = timed("granting a lease", etcd.lease_grant(cfg.ttl, None)).await?;
        let lease = resp.id();
        info!(
            lease = format!("{lease:x}"),
            ttl = cfg.ttl,
            "etcd lease granted"
        );
        let (tx, lost) = watch::channel(false);
        let keepalive = tokio::spawn(keep_lease(etcd.clone(), lease, cfg.ttl, tx));
        stats.lease_grants.fetch_add(1, Ordering::Relaxed);
        stats.etcd_connected.store(true, Ordering::Relaxed);
        stats.containers.store(0, Ordering::Relaxed);
        Ok(Self {
            cfg: cfg.clone(),
            etcd,
            lease,
            written: HashMap::new(),
            reported: HashSet::new(),
            stopping: HashMap::new(),
            services: HashMap::new(),
            ensured: HashMap::new(),
            disagreeing: HashSet::new(),
            keepalive,
            lost,
            stats,
        })
    }

    /// Makes etcd hold exactly `wanted` (container id -> (key, value)) under our lease.
    async fn sync(&mut self, wanted: HashMap<String, (String, String)>) -> Result<()> {
        let stale: Vec<String> = self
            .written
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            self.remove(&id).await?;
        }
        for (id, kv) in wanted {
            self.put(&id, kv).await?;
        }
        Ok(())
    }

    async fn put(&mut self, container: &str, (key, value): (String, String)) -> Result<()> {
        if self.written.get(container) == Some(&(key.clone(), value.clone())) {
            return Ok(());
        }
        if let Some((old_key, _)) = self.written.get(container) {
            if *old_key != key {
                let old_key = old_key.clone();
                self.delete(&old_key).await?;
            }
        }
        let opts = PutOptions::new().with_lease(self.lease);
        retry(&format!("writing {key}"), || {
            // A client is a cheap handle on a shared channel.
            let (mut etcd, k, v, o) = (self.etcd.clone(), key.clone(), value.clone(), opts.clone());
            async move { etcd.put(k, v, Some(o)).await }
        })
        .await?;
        info!(%key, %value, "registered");
        self.written.insert(container.to_owned(), (key, value));
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.count();
        Ok(())
    }

    async fn remove(&mut self, container: &str) -> Result<()> {
        if let Some((key, _)) = self.written.remove(container) {
            self.delete(&key).await?;
            info!(%key, "deregistered");
            self.count();
        }
        Ok(())
    }

    async fn delete(&mut self, key: &str) -> Result<()> {
        retry(&format!("deleting {key}"), || {
            let (mut etcd, k) = (self.etcd.clone(), key.to_owned());
            async move { etcd.delete(k, None).await }
        })
        .await?;
        self.stats.deletes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn count(&self) {
        let s = &self.stats;
        s.containers
            .store(self.written.len() as u64, Ordering::Relaxed);
        s.unusable
            .store(self.reported.len() as u64, Ordering::Relaxed);
    }

    /// The entry for one container, reporting an unusable label once.
    fn entry_of(&mut self, c: &ContainerInspectResponse) -> Option<(String, String)> {
        let id = c.id.clone().unwrap_or_default();
        let started = c
            .state
            .as_ref()
            .and_then(|s| s.started_at.clone())
            .unwrap_or_default();
        match self.stopping.get(&id) {
            Some(run) if *run == started => return None, // draining
            Some(_) => {
                self.stopping.remove(&id); // started again since
            }
            None => {}
        }
        if !ready(c) {
            return None;
        }
        let reg = registration(c, &self.cfg);
        if let Ok(Some(r)) = &reg {
            self.services.entry(r.service.clone()).or_insert((
                r.frontend_port,
                r.proto,
                r.addr.is_ipv6(),
            ));
            if let Some(frontend) = self.ensured.get(&r.service) {
                if frontend.port() != r.frontend_port && self.disagreeing.insert(id.clone()) {
                    info!(container = %short_id(&id), service = %r.service, %frontend, "the container's port {} differs from its service's frontend port: it is registered with its own port, and clients reach it through {frontend}", r.frontend_port);
                }
            }
        }
        match reg.and_then(|r| r.map(|r| entry(&self.cfg, &r, &id)).transpose()) {
            Ok(Some(e)) => {
                self.reported.remove(&id);
                Some(e)
            }
            Ok(None) => None,
            Err(why) => {
                if self.reported.insert(id.clone()) {
                    warn!(container = %short_id(&id), "not registered: {why}");
                }
                None
            }
        }
    }

    /// Zero-configuration services: creates each labelled service that does not exist yet, at
    /// an allocated address (one transaction: concurrent registers never create two). An
    /// existing service is never changed; a container whose port disagrees with it is still
    /// registered (its endpoint carries its own port) and the difference is logged once.
    async fn ensure_services(&mut self) -> Result<()> {
        if !self.cfg.create_services {
            return Ok(());
        }
        let todo: Vec<(String, (u16, crate::model::Proto, bool))> = self
            .services
            .iter()
            .filter(|(s, _)| !self.ensured.contains_key(*s))
            .map(|(s, v)| (s.clone(), *v))
            .collect();
        for (service, (port, proto, ipv6)) in todo {
            let prefix = self.cfg.etcd.prefix.clone();
            let outcome =
                crate::vips::ensure(&mut self.etcd, &prefix, &service, port, proto, ipv6, false)
                    .await?;
            let frontend = match outcome {
                crate::vips::Outcome::Created(a) => {
                    info!(%service, frontend = %a, %proto, "service created for its labelled containers (frontend address allocated)");
                    a
                }
                crate::vips::Outcome::Existing(a) => a,
            };
            self.ensured.insert(service, frontend);
        }
        Ok(())
    }

    /// Lists the labelled running containers and syncs etcd with them.
    async fn reconcile(&mut self, docker: &Docker) -> Result<usize> {
        let filters = HashMap::from([("label".to_owned(), vec![labels::SERVICE.to_owned()])]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|source| Error::Docker {
                what: "listing containers".into(),
                source,
            })?;
        let mut wanted = HashMap::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            match docker.inspect_container(&id, None).await {
                Ok(c) => {
                    if let Some(kv) = self.entry_of(&c) {
                        wanted.insert(id, kv);
                    }
                }
                // Gone between the list and the inspect: not running any more.
                Err(e) => debug!(container = %id, "inspect failed: {e}"),
            }
        }
        let n = wanted.len();
        self.sync(wanted).await?;
        self.ensure_services().await?;
        self.count();
        Ok(n)
    }

    /// Acts on one container event.
    async fn event(&mut self, docker: &Docker, change: Change, id: &str) -> Result<()> {
        match change {
            Change::Started | Change::Health => {
                if change == Change::Started {
                    self.stopping.remove(id);
                }
                match docker.inspect_container(id, None).await {
                    Ok(c) => match self.entry_of(&c) {
                        Some(kv) => {
                            self.put(id, kv).await?;
                            self.ensure_services().await?;
                        }
                        None => self.remove(id).await?,
                    },
                    Err(e) => debug!(container = %id, "inspect failed: {e}"),
                }
            }
            // Leaving at the stop signal gives a container that drains on SIGTERM (see the
            // README) time to finish while clients already go elsewhere. It stays out (even if
            // a reconcile sees it still running and healthy) until it starts again.
            Change::Stopping => {
                let started = match docker.inspect_container(id, None).await {
                    Ok(c) => c.state.and_then(|s| s.started_at).unwrap_or_default(),
                    Err(_) => String::new(),
                };
                self.stopping.insert(id.to_owned(), started);
                self.remove(id).await?;
            }
            Change::Stopped => self.remove(id).await?,
            Change::Gone => {
                self.stopping.remove(id);
                self.remove(id).await?;
            }
        }
        Ok(())
    }
}

/// Runs the register until SIGTERM/SIGINT. Entries stay in etcd until the lease expires, so a
/// restarted (or upgraded) register takes them over without a gap.
pub async fn run(cfg: RegisterConfig) -> Result<()> {
    if cfg.address_mode == AddressMode::Published && cfg.advertise_ip.is_none() {
        return Err(Error::Usage(
            "--advertise-ip is required in published mode: the address other hosts reach this host at".into(),
        ));
    }
    let mut term =
        signal(SignalKind::terminate()).map_err(Error::io("installing the SIGTERM handler"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(Error::io("installing the SIGINT handler"))?;
    let stats = Arc::new(Stats::default());
    let _metrics = match cfg.metrics_addr {
        Some(addr) => {
            let s = stats.clone();
            let render: metrics::Render = Arc::new(move || s.render());
            Some(AbortOnDrop(metrics::serve(addr, render).await?.1))
        }
        None => None,
    };
    let mut backoff = Duration::from_millis(200);
    let mut reg: Option<Register> = None;
    let mut memory: Memory = Default::default();
    loop {
        let outcome = tokio::select! {
            result = attempt(&cfg, &mut reg, &mut memory, &stats) => Some(result),
            _ = term.recv() => None,
            _ = int.recv() => None,
        };
        match outcome {
            None => {
                info!("stopping; the entries stay until the lease expires, so a restarted register takes them over");
                return Ok(());
            }
            Some(Ok(())) => {
                backoff = Duration::from_millis(200);
                continue;
            }
            Some(Err(e)) => {
                warn!("{e}; retrying in {backoff:?}");
                stats.docker_connected.store(false, Ordering::Relaxed);
                if matches!(e, Error::Etcd { .. } | Error::EtcdTimeout { .. }) {
                    stats.etcd_connected.store(false, Ordering::Relaxed);
                    stats.containers.store(0, Ordering::Relaxed);
                    // Reconnect and re-grant, but remember what was learnt about containers
                    // (a draining one must not come back with the next listing).
                    if let Some(old) = reg.take() {
                        memory = (old.stopping.clone(), old.reported.clone());
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Aborts the task when dropped (the metrics server ends with the register).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a register knows about containers, carried across reconnects: draining runs and
/// containers already reported as unusable.
type Memory = (HashMap<String, String>, HashSet<String>);

/// Connects to etcd and grants a lease if needed, then runs one Docker session.
async fn attempt(
    cfg: &RegisterConfig,
    reg: &mut Option<Register>,
    memory: &mut Memory,
    stats: &Arc<Stats>,
) -> Result<()> {
    if reg.is_none() {
        let mut r = Register::new(cfg, stats.clone()).await?;
        (r.stopping, r.reported) = std::mem::take(memory);
        *reg = Some(r);
    }
    session(reg.as_mut().expect("set above")).await
}

/// One Docker session: list, then follow events, with periodic reconciles.
/// Returns on any failure; the caller retries.
async fn session(r: &mut Register) -> Result<()> {
    let docker = connect_docker(&r.cfg.docker).await?;
    // Subscribe before listing, so nothing between the two is missed.
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![labels::SERVICE.to_owned()]),
    ]);
    let mut stream = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    let n = r.reconcile(&docker).await?;
    r.stats.docker_connected.store(true, Ordering::Relaxed);
    info!(containers = n, docker = %r.cfg.docker, "registered the labelled containers; following Docker events");

    let mut reconcile = tokio::time::interval(r.cfg.reconcile_interval);
    reconcile.tick().await; // the first tick is immediate: we just reconciled
    loop {
        tokio::select! {
            _ = r.lost.changed() => return Err(Error::EtcdTimeout { what: "keeping the lease alive".into() }),
            _ = reconcile.tick() => {
                r.reconcile(&docker).await?;
            }
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    let Some((change, id)) = events::parse(&ev) else { continue };
                    debug!(?change, container = %id, "docker event");
                    r.event(&docker, change, id).await?;
                }
                Some(Err(source)) => return Err(Error::Docker { what: "the event stream failed".into(), source }),
                None => return Err(Error::Docker {
                    what: "following events".into(),
                    source: bollard::errors::Error::IOError { err: std::io::Error::other("the event stream closed") },
                }),
            },
        }
    }
}
