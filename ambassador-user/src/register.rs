//! `ambassador register`: writes this host's labelled Docker containers into etcd, one entry
//! per container, all under one lease that this process keeps alive. If the process or its
//! host dies, the lease expires and every entry goes with it (registrator's stale entries).
//!
//! It lists the containers, then follows the event stream; a periodic reconcile heals missed
//! events; a closed stream is reopened and re-listed; a lost lease is re-granted and every
//! entry rewritten.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bollard::{
    models::{ContainerInspectResponse, HealthStatusEnum},
    query_parameters::{EventsOptions, ListContainersOptions},
    Docker, API_DEFAULT_VERSION,
};
use etcd_client::{Client, PutOptions};
use futures_util::StreamExt as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    contract::{self, EndpointValue},
    error::{Error, Result},
    etcd::{EtcdOptions, REQUEST_TIMEOUT},
    metrics::{self, Kind, Page},
    model::{check_service_name, parse_weight},
};

/// Container labels of the Docker contract.
pub mod labels {
    /// The service a container backs.
    pub const SERVICE: &str = "ambassador.service";
    /// Which container port to register when several are published.
    pub const PORT: &str = "ambassador.port";
    /// Share of new flows.
    pub const WEIGHT: &str = "ambassador.weight";
}

/// Validated settings of `ambassador register`.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// Docker socket path.
    pub docker: String,
    /// Address other hosts reach this host's published ports at.
    pub advertise_ip: Option<Ipv4Addr>,
    /// Lease TTL in seconds.
    pub ttl: i64,
    /// This host's id.
    pub host_id: String,
    /// Which address to register.
    pub address_mode: AddressMode,
    /// Full reconcile period.
    pub reconcile_interval: Duration,
    /// etcd connection.
    pub etcd: EtcdOptions,
    /// Where Prometheus metrics are served (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

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

/// One container's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The service.
    pub service: String,
    /// The endpoint id (`<host-id>-<container id, 12 characters>`).
    pub id: String,
    /// The address other hosts dial.
    pub addr: SocketAddrV4,
    /// The weight.
    pub weight: u32,
}

/// How the register computes an endpoint's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressMode {
    /// `--advertise-ip` and the port Docker published on the host.
    Published,
    /// The container's own IP and port (routed or overlay networks).
    Container,
}

/// What the register writes for `c`: `Ok(None)` when it is not labelled (not ours),
/// `Err(why)` when it is labelled but unusable.
pub fn registration(
    c: &ContainerInspectResponse,
    cfg: &RegisterConfig,
) -> Result<Option<Registration>, String> {
    let labels = c.config.as_ref().and_then(|cfg| cfg.labels.as_ref());
    let Some(service) = labels.and_then(|l| l.get(labels::SERVICE)) else {
        return Ok(None);
    };
    check_service_name(service)?;
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let weight = match label(labels::WEIGHT) {
        None => 1,
        Some(w) => w
            .parse::<i64>()
            .map_err(|_| format!("label {}={w:?} is not a number", labels::WEIGHT))
            .and_then(|n| parse_weight(Some(n)))
            .map_err(|m| format!("label {}: {m}", labels::WEIGHT))?,
    };
    let wanted_port = label(labels::PORT);
    let ports = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    let addr = match cfg.address_mode {
        AddressMode::Published => {
            let advertise = cfg
                .advertise_ip
                .ok_or("published mode needs --advertise-ip")?;
            let published: BTreeMap<&str, u16> = ports
                .into_iter()
                .flatten()
                .filter_map(|(cport, bindings)| {
                    let host_port = bindings
                        .as_ref()?
                        .iter()
                        .find_map(|b| nonzero_port(b.host_port.as_deref()?))?;
                    Some((cport.as_str(), host_port))
                })
                .collect();
            let host_port = pick(&published, wanted_port, "published")?;
            SocketAddrV4::new(advertise, host_port)
        }
        AddressMode::Container => {
            let ip = c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .and_then(|nets| {
                    let mut names: Vec<&String> = nets.keys().collect();
                    names.sort();
                    names
                        .into_iter()
                        .find_map(|n| nets[n].ip_address.as_deref()?.parse::<Ipv4Addr>().ok())
                })
                .ok_or("the container has no IPv4 address on any network")?;
            let mut exposed: BTreeMap<&str, u16> = BTreeMap::new();
            let from_config = c.config.as_ref().and_then(|cfg| cfg.exposed_ports.as_ref());
            for p in from_config
                .into_iter()
                .flatten()
                .map(String::as_str)
                .chain(ports.into_iter().flatten().map(|(k, _)| k.as_str()))
            {
                if let Some(n) = p.split('/').next().and_then(nonzero_port) {
                    exposed.insert(p, n);
                }
            }
            SocketAddrV4::new(ip, pick(&exposed, wanted_port, "exposed")?)
        }
    };
    let container_id = c.id.as_deref().ok_or("the container has no id")?;
    let id = format!("{}-{}", cfg.host_id, short_id(container_id));
    // Docker's ids are hex; anything else would make a key every daemon skips.
    crate::model::check_endpoint_id(&id)?;
    Ok(Some(Registration {
        service: service.clone(),
        id,
        addr,
        weight,
    }))
}

/// Whether a container may take traffic: running, and healthy if it has a health check
/// (registered before it listens, its first clients would be refused).
pub fn ready(c: &ContainerInspectResponse) -> bool {
    let Some(state) = c.state.as_ref() else {
        return false;
    };
    let health = state.health.as_ref().and_then(|h| h.status);
    state.running.unwrap_or(false)
        && !matches!(
            health,
            Some(HealthStatusEnum::STARTING) | Some(HealthStatusEnum::UNHEALTHY)
        )
}

/// Picks the port: the labelled one, else the only one.
fn pick(ports: &BTreeMap<&str, u16>, wanted: Option<&str>, kind: &str) -> Result<u16, String> {
    match wanted {
        Some(w) => {
            let w_full = if w.contains('/') {
                w.to_owned()
            } else {
                format!("{w}/tcp")
            };
            let w_udp = format!("{w}/udp");
            ports
                .get(w_full.as_str())
                .or_else(|| ports.get(w_udp.as_str()))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "label {}={w} names no {kind} port (have: {})",
                        labels::PORT,
                        list(ports)
                    )
                })
        }
        None => match ports.len() {
            1 => Ok(*ports.values().next().expect("one")),
            0 => Err(format!(
                "no {kind} port (publish one with -p, or use --address-mode container)"
            )),
            _ => Err(format!(
                "several {kind} ports ({}): pick one with the label {}",
                list(ports),
                labels::PORT
            )),
        },
    }
}

fn list(ports: &BTreeMap<&str, u16>) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports.keys().copied().collect::<Vec<_>>().join(", ")
}

/// A port number as Docker writes it; 0 (not a port a client can reach) is none.
fn nonzero_port(s: &str) -> Option<u16> {
    s.parse::<std::num::NonZeroU16>().ok().map(u16::from)
}

/// The first 12 characters of a container id, as `docker ps` shows it (Docker's ids are hex;
/// this never splits a character of anything else).
fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
}

/// The etcd key and value of a registration, or why it cannot be written: the entry is checked
/// with the watcher's own parser (`contract::parse`), so the register never writes what every
/// daemon would skip (a container id long or odd enough to push the value past the size limit,
/// say).
pub fn entry(
    cfg: &RegisterConfig,
    r: &Registration,
    container_id: &str,
) -> Result<(String, String), String> {
    let value = EndpointValue {
        addr: r.addr.to_string(),
        weight: Some(r.weight as i64),
        host: Some(cfg.host_id.clone()),
        container: Some(container_id.to_owned()),
    };
    let key = contract::endpoint_key(&cfg.etcd.prefix, &r.service, &r.id);
    let value = serde_json::to_string(&value).expect("serializable");
    match contract::parse(&cfg.etcd.prefix, key.as_bytes(), value.as_bytes()) {
        Ok(Some(contract::Entry::Endpoint { .. })) => Ok((key, value)),
        Ok(_) => Err(format!("its entry {key} is outside the etcd contract")),
        Err(why) => Err(format!("every daemon would skip its entry: {why}")),
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
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, etcd.lease_grant(cfg.ttl, None))
            .await
            .map_err(|_| Error::EtcdTimeout {
                what: "granting a lease".into(),
            })?
            .map_err(|source| Error::Etcd {
                what: "granting a lease".into(),
                source,
            })?;
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
        match registration(c, &self.cfg)
            .and_then(|r| r.map(|r| entry(&self.cfg, &r, &id)).transpose())
        {
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
        self.count();
        Ok(n)
    }

    /// Handles one container event.
    async fn event(&mut self, docker: &Docker, action: &str, id: &str) -> Result<()> {
        match action {
            "start" | "unpause" | "restart" | "health_status" => {
                if action != "health_status" {
                    self.stopping.remove(id);
                }
                match docker.inspect_container(id, None).await {
                    Ok(c) => match self.entry_of(&c) {
                        Some(kv) => self.put(id, kv).await?,
                        None => self.remove(id).await?,
                    },
                    Err(e) => debug!(container = %id, "inspect failed: {e}"),
                }
            }
            // `docker stop` first sends the stop signal ("kill" with signal=15), then the
            // container dies: leaving at the signal gives a container that drains on SIGTERM
            // (see the README) time to finish while clients already go elsewhere. It stays out
            // (even if a reconcile sees it still running and healthy) until it starts again.
            "stopping" => {
                let started = match docker.inspect_container(id, None).await {
                    Ok(c) => c.state.and_then(|s| s.started_at).unwrap_or_default(),
                    Err(_) => String::new(),
                };
                self.stopping.insert(id.to_owned(), started);
                self.remove(id).await?;
            }
            "die" | "stop" | "pause" | "destroy" | "oom" => {
                if matches!(action, "die" | "destroy") {
                    self.stopping.remove(id);
                }
                self.remove(id).await?;
            }
            _ => {}
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

/// Signals that stop a container (a `kill` event with another signal, e.g. SIGHUP for a
/// reload, leaves the endpoint alone).
fn is_stop_signal(signal: &str) -> bool {
    matches!(
        signal,
        "15" | "2" | "3" | "9" | "SIGTERM" | "SIGINT" | "SIGQUIT" | "SIGKILL"
    )
}

/// What a register knows about containers, carried across reconnects: draining runs and
/// containers already reported as unusable.
type Memory = (HashMap<String, String>, HashSet<String>);

/// Runs an etcd request up to three times: with several members, a request that met a member
/// going away succeeds on another.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match tokio::time::timeout(REQUEST_TIMEOUT, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(source)) => Error::Etcd {
                what: what.to_owned(),
                source,
            },
            Err(_) => Error::EtcdTimeout {
                what: what.to_owned(),
            },
        };
        if attempt == 3 {
            return Err(err);
        }
        debug!("{err}; trying again");
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
    }
}

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

/// Keeps `lease` alive every third of its TTL; sets `lost` when it cannot.
async fn keep_lease(mut client: Client, lease: i64, ttl: i64, lost: watch::Sender<bool>) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let result: Result<(), String> = async {
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(ttl as u64), stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Err("the lease expired".into()),
                Ok(Ok(None)) => return Err("the keep-alive stream closed".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no keep-alive answer within the TTL".into()),
            }
        }
    }
    .await;
    if let Err(why) = result {
        warn!("etcd lease {lease:x} lost ({why}): reconnecting, granting a new lease and rewriting every entry");
    }
    let _ = lost.send(true);
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
    let mut events = docker.events(Some(EventsOptions {
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
            ev = events.next() => match ev {
                Some(Ok(ev)) => {
                    let action = ev.action.as_deref().unwrap_or("");
                    let Some(id) = ev.actor.as_ref().and_then(|a| a.id.as_deref()) else { continue };
                    // "exec_start: sh" and the like carry a suffix.
                    let action = action.split(':').next().unwrap_or("");
                    debug!(action, container = %id, "docker event");
                    let signal = ev.actor.as_ref().and_then(|a| a.attributes.as_ref()).and_then(|a| a.get("signal"));
                    let action = if action == "kill" && signal.is_some_and(|s| is_stop_signal(s)) { "stopping" } else { action };
                    r.event(&docker, action, id).await?;
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

#[cfg(test)]
mod tests {
    use bollard::models::{
        ContainerConfig, ContainerState, EndpointSettings, NetworkSettings, PortBinding,
    };

    use super::*;

    fn cfg(mode: AddressMode) -> RegisterConfig {
        RegisterConfig {
            docker: "/x".into(),
            advertise_ip: Some("192.0.2.7".parse().unwrap()),
            ttl: 10,
            host_id: "h2".into(),
            address_mode: mode,
            reconcile_interval: Duration::from_secs(30),
            metrics_addr: None,
            etcd: EtcdOptions {
                endpoints: vec![],
                prefix: "/ambassador".into(),
                cacert: None,
                cert: None,
                key: None,
                user: None,
                password: None,
            },
        }
    }

    #[test]
    fn short_ids_are_twelve_characters_and_never_split_one() {
        assert_eq!(short_id("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
    }

    fn container(
        labels: &[(&str, &str)],
        ports: &[(&str, Option<&str>)],
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                exposed_ports: Some(ports.iter().map(|(p, _)| p.to_string()).collect()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(
                    ports
                        .iter()
                        .map(|(p, host)| {
                            let b = host.map(|h| {
                                vec![PortBinding {
                                    host_ip: Some("0.0.0.0".into()),
                                    host_port: Some(h.into()),
                                }]
                            });
                            (p.to_string(), b)
                        })
                        .collect(),
                ),
                networks: Some(HashMap::from([(
                    "bridge".to_owned(),
                    EndpointSettings {
                        ip_address: Some("10.250.0.5".into()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_running_and_not_unhealthy_containers_are_ready() {
        use bollard::models::Health;
        let mut c = container(&[("ambassador.service", "db")], &[]);
        assert!(ready(&c), "no health check: running is enough");
        for (status, want) in [
            (HealthStatusEnum::STARTING, false),
            (HealthStatusEnum::UNHEALTHY, false),
            (HealthStatusEnum::HEALTHY, true),
            (HealthStatusEnum::NONE, true),
        ] {
            c.state.as_mut().unwrap().health = Some(Health {
                status: Some(status),
                ..Default::default()
            });
            assert_eq!(ready(&c), want, "{status:?}");
        }
        c.state.as_mut().unwrap().running = Some(false);
        assert!(!ready(&c));
    }

    #[test]
    fn published_mode_uses_the_advertised_ip_and_host_port() {
        let c = container(
            &[("ambassador.service", "db")],
            &[("3306/tcp", Some("32769"))],
        );
        let r = registration(&c, &cfg(AddressMode::Published))
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Registration {
                service: "db".into(),
                id: "h2-0123456789ab".into(),
                addr: "192.0.2.7:32769".parse().unwrap(),
                weight: 1
            }
        );
    }

    /// Found by the docker_labels fuzzer (seed `long-container-id`): the id went into the value
    /// unchecked, and a long one made an entry over the watcher's size limit.
    #[test]
    fn an_entry_every_daemon_would_skip_is_refused_not_written() {
        let cfg = cfg(AddressMode::Published);
        let c = container(
            &[("ambassador.service", "db")],
            &[("3306/tcp", Some("32769"))],
        );
        let r = registration(&c, &cfg).unwrap().unwrap();
        let (key, value) = entry(&cfg, &r, "0123456789abcdef0123").unwrap();
        assert!(matches!(
            contract::parse(&cfg.etcd.prefix, key.as_bytes(), value.as_bytes()),
            Ok(Some(contract::Entry::Endpoint { .. }))
        ));
        // Each NUL serializes as six bytes: 1,000 of them pass the 4,096-byte value limit.
        let long = format!("0123456789ab{}", "\0".repeat(1000));
        let why = entry(&cfg, &r, &long).unwrap_err();
        assert!(why.contains("every daemon would skip its entry"), "{why}");
    }

    #[test]
    fn container_mode_uses_the_container_ip_and_port() {
        let c = container(
            &[("ambassador.service", "db"), ("ambassador.weight", "3")],
            &[("3306/tcp", None)],
        );
        let r = registration(&c, &cfg(AddressMode::Container))
            .unwrap()
            .unwrap();
        assert_eq!(r.addr, "10.250.0.5:3306".parse().unwrap());
        assert_eq!(r.weight, 3);
    }

    #[test]
    fn the_port_label_picks_among_several() {
        let ports = [("8080/tcp", Some("32001")), ("9090/tcp", Some("32002"))];
        let c = container(&[("ambassador.service", "web")], &ports);
        let err = registration(&c, &cfg(AddressMode::Published)).unwrap_err();
        assert!(
            err.contains("several") && err.contains("ambassador.port"),
            "{err}"
        );
        let c = container(
            &[("ambassador.service", "web"), ("ambassador.port", "9090")],
            &ports,
        );
        assert_eq!(
            registration(&c, &cfg(AddressMode::Published))
                .unwrap()
                .unwrap()
                .addr
                .port(),
            32002
        );
        let c = container(
            &[("ambassador.service", "web"), ("ambassador.port", "7070")],
            &ports,
        );
        assert!(registration(&c, &cfg(AddressMode::Published))
            .unwrap_err()
            .contains("7070"));
    }

    #[test]
    fn unlabelled_containers_are_not_ours_and_bad_labels_are_errors() {
        let c = container(&[("other", "x")], &[("80/tcp", Some("1"))]);
        assert_eq!(registration(&c, &cfg(AddressMode::Published)), Ok(None));
        for labels in [
            &[("ambassador.service", "Bad_Name")][..],
            &[("ambassador.service", "db"), ("ambassador.weight", "0")][..],
            &[("ambassador.service", "db"), ("ambassador.weight", "x")][..],
        ] {
            assert!(registration(
                &container(labels, &[("80/tcp", Some("1"))]),
                &cfg(AddressMode::Published)
            )
            .is_err());
        }
        let unpublished = container(&[("ambassador.service", "db")], &[("80/tcp", None)]);
        assert!(registration(&unpublished, &cfg(AddressMode::Published))
            .unwrap_err()
            .contains("no published port"));
        let mut no_ip = cfg(AddressMode::Published);
        no_ip.advertise_ip = None;
        assert!(registration(&container(&[("ambassador.service", "db")], &[]), &no_ip).is_err());
    }

    /// Both found by `cargo xtask fuzz` (docker_labels): each made a key or value that every
    /// daemon then skipped as malformed.
    #[test]
    fn port_zero_and_odd_container_ids_are_never_registered() {
        let zero = container(&[("ambassador.service", "db")], &[("80/tcp", Some("0"))]);
        assert!(registration(&zero, &cfg(AddressMode::Published)).is_err());
        let mut odd = container(&[("ambassador.service", "db")], &[("80/tcp", Some("1"))]);
        odd.id = Some("deadbeefc\t\0afe".into());
        assert!(registration(&odd, &cfg(AddressMode::Published))
            .unwrap_err()
            .contains("printable ASCII"));
    }
}
