//! `ambassador register`: writes this host's labelled Docker containers into etcd, one entry
//! per container, all under one lease that this process keeps alive. If the process or its
//! host dies, the lease expires and every entry goes with it (registrator's stale entries).
//!
//! It lists the containers, then follows the event stream; a periodic reconcile heals missed
//! events; a closed stream is reopened and re-listed; a lost lease is re-granted and every
//! entry rewritten.
//!
//! The core ([`serve`]: container events in, etcd writes out) takes its containers from any
//! [`Source`]: Docker's engine ([`DockerEngine`], what `run` uses) or a synthetic one
//! ([`synthetic`], for the fleet simulator and tests).

mod allowed;
mod config;
mod containers;
mod docker;
mod events;
mod lease;
mod mapping;
mod source;
mod stats;
mod synthetic;

use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::Ordering, Arc},
};

use allowed::Allowance;
pub use config::{AddressMode, RegisterConfig};
pub use docker::{connect_docker, DockerEngine};
use etcd_client::{Client, PutOptions};
pub use events::Change;
use lease::{keep_lease, retry};
pub use mapping::{entry, labels, ready, registration, Registration};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{debug, info, warn};

pub use source::Source;
pub use stats::Stats;
pub use synthetic::{synthetic, Synthetic, SyntheticHandle};

use crate::{
    control::{etcd::timed, reconnect::Reconnect},
    core::trust::Mode,
    error::{Error, Result},
    services::web,
    task::AbortOnDrop,
};

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
    services: HashMap<String, (u16, crate::core::model::Proto, bool)>,
    /// Services known to exist (created or found), with their frontend.
    ensured: HashMap<String, std::net::SocketAddr>,
    /// Containers whose port differs from their service's frontend port (said once).
    disagreeing: HashSet<String>,
    /// What this host may register (trust mode and host record), read at each reconcile.
    allowance: Allowance,
    /// Services this register does not create (trust mode hosts: waiting for an admin; or
    /// etcd refused it), each said once.
    uncreated: HashSet<String>,
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
        let allowance = Allowance::read(&etcd, &cfg.etcd.prefix, &cfg.host_id).await?;
        info!(host = %cfg.host_id, trust = %allowance.mode(), "writing under {}", crate::core::contract::host_prefix(&cfg.etcd.prefix, &cfg.host_id));
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
            allowance,
            uncreated: HashSet::new(),
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
        retry(&self.etcd, &format!("writing {key}"), |mut c| {
            let (key, value, opts) = (key.clone(), value.clone(), opts.clone());
            async move { c.put(key, value, Some(opts)).await }
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
        retry(&self.etcd, &format!("deleting {key}"), |mut c| async move {
            c.delete(key, None).await
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

    /// Zero-configuration services: creates each labelled service that does not exist yet, at
    /// an allocated address (one transaction: concurrent registers never create two). An
    /// existing service is never changed; a container whose port disagrees with it is still
    /// registered (its endpoint carries its own port) and the difference is logged once.
    async fn ensure_services(&mut self) -> Result<()> {
        if !self.cfg.create_services {
            return Ok(());
        }
        let todo: Vec<(String, (u16, crate::core::model::Proto, bool))> = self
            .services
            .iter()
            .filter(|(s, _)| !self.ensured.contains_key(*s))
            .map(|(s, v)| (s.clone(), *v))
            .collect();
        for (service, (port, proto, ipv6)) in todo {
            let prefix = self.cfg.etcd.prefix.clone();
            if self.allowance.mode() == Mode::Hosts {
                // Only an admin creates services in this mode: wait for one.
                match crate::control::vips::frontend(&mut self.etcd, &prefix, &service).await? {
                    Some(frontend) => {
                        self.ensured.insert(service, frontend);
                    }
                    None if self.uncreated.insert(service.clone()) => {
                        info!(%service, "service {service} does not exist yet: in trust mode hosts only an admin creates services (`ambassador service set {service} --port {port}`); its endpoints are registered and apply once it exists");
                    }
                    None => {}
                }
                continue;
            }
            if self.uncreated.contains(&service) {
                continue; // etcd refused creating it to this credential (said once)
            }
            let outcome = match crate::control::vips::ensure(
                &mut self.etcd,
                &prefix,
                &service,
                port,
                proto,
                ipv6,
                false,
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(e @ Error::EtcdDenied { .. }) => {
                    self.uncreated.insert(service.clone());
                    warn!(%service, "service not created: {e}; its endpoints are registered and apply once an admin creates it");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let frontend = match outcome {
                crate::control::vips::Outcome::Created(a) => {
                    info!(%service, frontend = %a, %proto, "service created for its labelled containers (frontend address allocated)");
                    a
                }
                crate::control::vips::Outcome::Existing(a) => a,
            };
            self.ensured.insert(service, frontend);
        }
        Ok(())
    }
}

/// Runs the register on the Docker engine until SIGTERM/SIGINT. Entries stay in etcd until
/// the lease expires, so a restarted (or upgraded) register takes them over without a gap.
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
            let site = web::Site::metrics(move || s.render());
            Some(AbortOnDrop(web::serve(addr, site).await?.1.abort_handle()))
        }
        None => None,
    };
    let stop = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    serve(&cfg, DockerEngine::new(&cfg.docker), stats, stop).await
}

/// The register's core: keeps etcd equal to `source`'s labelled containers under one lease,
/// until `stop` completes. Any failure (etcd, the source) is retried with backoff; a lost
/// lease is re-granted and every entry rewritten.
pub async fn serve(
    cfg: &RegisterConfig,
    mut source: impl Source,
    stats: Arc<Stats>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    let mut backoff = Reconnect::default();
    let mut reg: Option<Register> = None;
    let mut memory: Memory = Default::default();
    loop {
        let outcome = tokio::select! {
            result = attempt(cfg, &mut reg, &mut memory, &stats, &mut source) => Some(result),
            _ = &mut stop => None,
        };
        let delay;
        match outcome {
            None => {
                info!("stopping; the entries stay until the lease expires, so a restarted register takes them over");
                return Ok(());
            }
            Some(Ok(())) => {
                backoff.reset();
                continue;
            }
            Some(Err(e)) => {
                delay = backoff.next_delay();
                warn!("{e}; retrying in {delay:?}");
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
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// What a register knows about containers, carried across reconnects: draining runs and
/// containers already reported as unusable.
type Memory = (HashMap<String, String>, HashSet<String>);

/// Connects to etcd and grants a lease if needed, then runs one session of the source.
async fn attempt(
    cfg: &RegisterConfig,
    reg: &mut Option<Register>,
    memory: &mut Memory,
    stats: &Arc<Stats>,
    source: &mut impl Source,
) -> Result<()> {
    if reg.is_none() {
        let mut r = Register::new(cfg, stats.clone()).await?;
        (r.stopping, r.reported) = std::mem::take(memory);
        *reg = Some(r);
    }
    session(reg.as_mut().expect("set above"), source).await
}

/// One session of the source: subscribe, list, then follow events, with periodic
/// reconciles. Returns on any failure; the caller retries.
async fn session(r: &mut Register, source: &mut impl Source) -> Result<()> {
    // Subscribe before listing, so nothing between the two is missed.
    source.open().await?;
    let n = r.reconcile(source).await?;
    r.stats.docker_connected.store(true, Ordering::Relaxed);
    info!(containers = n, source = %source.name(), "registered the labelled containers; following {} events", source.kind());

    let mut reconcile = tokio::time::interval(r.cfg.reconcile_interval);
    reconcile.tick().await; // the first tick is immediate: we just reconciled
    loop {
        tokio::select! {
            _ = r.lost.changed() => return Err(Error::EtcdTimeout { what: "keeping the lease alive".into() }),
            _ = reconcile.tick() => {
                r.reconcile(source).await?;
            }
            ev = source.next_event() => {
                let (change, id) = ev?;
                debug!(?change, container = %id, "container event");
                r.event(source, change, &id).await?;
            }
        }
    }
}
