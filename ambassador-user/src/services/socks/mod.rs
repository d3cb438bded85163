//! The SOCKS5 door: clients outside the fleet (a laptop's browser, curl, ssh) reach services
//! by name. The protocol is fast-socks5's (RFC 1928 CONNECT, RFC 1929 username/password);
//! what a name means is [`directory`]'s, from the registry this process follows in etcd; the
//! bytes go through tokio's bidirectional copy (or `splice(2)`, `--copy splice`).
//!
//! Never an open proxy: clients outside `--allow-client` are closed before a byte is read,
//! names outside the domain and addresses that are not frontends are refused unless the
//! operator allows them (`--allow-destination`), and the backend policy keeps endpoints from
//! pointing at this host or its metadata service. Bounded: connections, the handshake's
//! deadline, each endpoint's connect timeout, the idle timeout; each with a metric.

pub mod directory;
pub mod fds;
mod idle;
pub mod stats;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use fast_socks5::{
    server::{states, Socks5ServerProtocol, SocksServerError},
    util::target_addr::TargetAddr,
    ReplyError, Socks5Command,
};
use hickory_proto::rr::Name;
use ipnet::IpNet;
use rand::seq::IndexedRandom as _;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::{
    core::{
        model::{Desired, Endpoint},
        policy::BackendPolicy,
    },
    error::{Error, Result},
};
pub use directory::{Destination, Directory, Refusal, Route};
pub use idle::CopyMode;
pub use stats::Stats;

/// User names and their passwords (RFC 1929), from `--users-file`.
pub type Users = HashMap<String, String>;

/// How the door behaves.
#[derive(Clone, Debug)]
pub struct DoorConfig {
    /// The registry's domain.
    pub domain: Name,
    /// Clients that may connect.
    pub allow_client: Vec<IpNet>,
    /// Destinations allowed besides the registry's services and endpoints.
    pub allow_destination: Vec<IpNet>,
    /// Where endpoints may point (the backend policy, as `run` applies it).
    pub policy: BackendPolicy,
    /// When set, RFC 1929 username/password is required.
    pub users: Option<Arc<Users>>,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// The greeting, authentication and request together.
    pub handshake_timeout: Duration,
    /// One endpoint's TCP connect.
    pub connect_timeout: Duration,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// How bytes are copied.
    pub copy: CopyMode,
}

/// Endpoints tried for one connection before the client hears of a failure: the first
/// choice and up to two more (as the datapath re-points a flow up to twice).
const TRIES: usize = 3;
/// How long an endpoint that refused or stayed silent is tried only after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// The door's state: the current directory, the suspect endpoints, the counters.
pub struct Door {
    cfg: DoorConfig,
    directory: RwLock<Arc<Directory>>,
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
    /// The counters (also read by the metrics page).
    pub stats: Arc<Stats>,
}

impl Door {
    /// A door with an empty registry (every name unknown until [`Door::update`]).
    pub fn new(cfg: DoorConfig) -> Self {
        let empty = Directory::new(
            cfg.domain.clone(),
            &Desired::new(),
            cfg.allow_destination.clone(),
        );
        Self {
            directory: RwLock::new(Arc::new(empty)),
            suspects: Mutex::default(),
            stats: Arc::default(),
            cfg,
        }
    }

    /// Takes a new desired state from the registry (the backend policy applied here).
    pub fn update(&self, desired: &Desired) {
        let (allowed, refused) = self.cfg.policy.filter(desired.clone());
        for r in &refused {
            debug!("socks: {r}");
        }
        let dir = Directory::new(
            self.cfg.domain.clone(),
            &allowed,
            self.cfg.allow_destination.clone(),
        );
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(dir);
    }

    fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `endpoints` in the order to try: weighted random among those not suspect, then the
    /// suspect ones (still better than failing the client).
    fn order(&self, endpoints: &[Endpoint]) -> Vec<SocketAddr> {
        let now = Instant::now();
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects.retain(|_, until| *until > now);
        let (mut good, bad): (Vec<_>, Vec<_>) = endpoints
            .iter()
            .partition(|e| !suspects.contains_key(&e.addr));
        drop(suspects);
        let mut rng = rand::rng();
        let mut out = Vec::with_capacity(endpoints.len());
        while let Ok(&pick) = good.choose_weighted(&mut rng, |e| e.weight) {
            out.push(pick.addr);
            good.retain(|e| !std::ptr::eq(*e, pick));
        }
        out.extend(bad.iter().map(|e| e.addr));
        out
    }

    fn suspect(&self, addr: SocketAddr) {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        suspects.insert(addr, Instant::now() + SUSPECT_FOR);
    }
}

/// Binds `addr`, failing clearly if it cannot.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(Error::io(format!("listening for SOCKS5 clients on {addr}")))
}

/// Accepts clients on `listener` forever.
pub async fn serve(listener: TcpListener, door: Arc<Door>) {
    let slots = Arc::new(Semaphore::new(door.cfg.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn!("socks: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !door
            .cfg
            .allow_client
            .iter()
            .any(|n| n.contains(&peer.ip().to_canonical()))
        {
            door.stats.client_refused.fetch_add(1, Relaxed);
            debug!(%peer, "socks: a client outside --allow-client; closed");
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            door.stats.over_limit.fetch_add(1, Relaxed);
            debug!(%peer, "socks: every connection slot is taken; closed");
            continue;
        };
        door.stats.accepted.fetch_add(1, Relaxed);
        let door = door.clone();
        tokio::spawn(async move {
            door.stats.active.fetch_add(1, Relaxed);
            if let Err(e) = handle(&door, stream).await {
                debug!(%peer, "socks: {e}");
            }
            door.stats.active.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

/// Why a connection ended without being proxied (for the debug log; the client was told).
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// The handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] SocksServerError),
    /// The handshake took too long.
    #[error("no complete handshake within the deadline")]
    HandshakeTimeout,
    /// A command other than CONNECT.
    #[error("{0:?} is not supported (CONNECT only)")]
    Command(Socks5Command),
    /// The destination is refused.
    #[error("{0}")]
    Refused(Refusal),
    /// No endpoint could be reached.
    #[error("{0}: no endpoint answered ({1})")]
    Unreachable(Destination, String),
    /// The connection failed while proxying.
    #[error("proxying: {0}")]
    Io(#[from] std::io::Error),
    /// No byte either way within the idle timeout.
    #[error("idle for {0:?}; closed")]
    Idle(Duration),
}

/// The greeting, authentication and request of one client: what it asked for, and the
/// protocol in the state to answer it. `users`: RFC 1929 required when set.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    users: Option<&Users>,
) -> std::result::Result<(Socks5ServerProtocol<S, states::CommandRead>, Destination), Ended> {
    let authenticated = match users {
        None => Socks5ServerProtocol::accept_no_auth(stream).await?,
        Some(users) => {
            let check = |user: String, pass: String| users.get(&user) == Some(&pass);
            Socks5ServerProtocol::accept_password_auth(stream, check)
                .await?
                .0
        }
    };
    let (proto, cmd, target) = authenticated.read_command().await?;
    if cmd != Socks5Command::TCPConnect {
        let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
        return Err(Ended::Command(cmd));
    }
    let dest = match target {
        TargetAddr::Ip(addr) => Destination::Addr(addr),
        TargetAddr::Domain(name, port) => Destination::Name(name, port),
    };
    Ok((proto, dest))
}

/// The SOCKS reply that tells a client why its destination is refused.
pub fn reply_for(refusal: &Refusal) -> ReplyError {
    match refusal {
        Refusal::Unknown(_) | Refusal::NoEndpoints(_) => ReplyError::HostUnreachable,
        Refusal::OutsideDomain(_) | Refusal::Port { .. } | Refusal::Address(_) => {
            ReplyError::ConnectionNotAllowed
        }
    }
}

async fn handle(door: &Door, stream: TcpStream) -> std::result::Result<(), Ended> {
    let _ = stream.set_nodelay(true);
    let handshake = negotiate(stream, door.cfg.users.as_deref());
    let (proto, dest) = match tokio::time::timeout(door.cfg.handshake_timeout, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            door.stats.handshake_failures.fetch_add(1, Relaxed);
            return Err(e);
        }
        Err(_) => {
            door.stats.handshake_timeouts.fetch_add(1, Relaxed);
            return Err(Ended::HandshakeTimeout);
        }
    };
    let candidates = match candidates(door, &dest).await {
        Ok(c) => c,
        Err(refusal) => {
            door.stats.refused(refusal.reason());
            let _ = proto.reply_error(&reply_for(&refusal)).await;
            return Err(Ended::Refused(refusal));
        }
    };
    let (upstream, failures) = connect(door, &candidates).await;
    let Some(upstream) = upstream else {
        door.stats.refused("unreachable");
        let _ = proto.reply_error(&ReplyError::HostUnreachable).await;
        return Err(Ended::Unreachable(dest, failures.join("; ")));
    };
    let bound = upstream.local_addr()?;
    let client = proto.reply_success(bound).await?;
    door.stats.connected.fetch_add(1, Relaxed);
    idle::copy(
        door.cfg.copy,
        client,
        upstream,
        door.cfg.idle_timeout,
        &door.stats,
    )
    .await
}

/// Where `dest` may go, in the order to try.
async fn candidates(
    door: &Door,
    dest: &Destination,
) -> std::result::Result<Vec<SocketAddr>, Refusal> {
    let directory = door.directory();
    Ok(match directory.route(dest)? {
        Route::Service { endpoints, .. } => door.order(&endpoints),
        Route::Endpoint(a) | Route::Allowed(a) => vec![a],
        Route::Resolve(name, port) => {
            // Bounded like the handshake: a resolver that does not answer is no answer.
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            let found: Vec<SocketAddr> = tokio::time::timeout(door.cfg.handshake_timeout, lookup)
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(Iterator::collect)
                .unwrap_or_default();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| directory.allows(a.ip()))
                .collect();
            match (found.first(), allowed.is_empty()) {
                (None, _) => return Err(Refusal::Unknown(name)),
                (Some(first), true) => return Err(Refusal::Address(*first)),
                (Some(_), false) => allowed,
            }
        }
    })
}

/// Connects to the first of `candidates` that answers (at most [`TRIES`]), marking those
/// that refused or stayed silent suspect.
async fn connect(door: &Door, candidates: &[SocketAddr]) -> (Option<TcpStream>, Vec<String>) {
    let mut failures = Vec::new();
    for &addr in candidates.iter().take(TRIES) {
        match tokio::time::timeout(door.cfg.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return (Some(s), failures);
            }
            Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
            Err(_) => failures.push(format!(
                "{addr}: no answer within {:?}",
                door.cfg.connect_timeout
            )),
        }
        door.stats.endpoint_failures.fetch_add(1, Relaxed);
        door.suspect(addr);
    }
    (None, failures)
}

/// Logs where the door listens.
pub fn announce(addr: SocketAddr, cfg: &DoorConfig) {
    let clients: Vec<String> = cfg.allow_client.iter().map(IpNet::to_string).collect();
    info!(
        %addr,
        clients = clients.join(","),
        auth = if cfg.users.is_some() { "username/password" } else { "none" },
        copy = cfg.copy.name(),
        max_connections = cfg.max_connections,
        "socks: SOCKS5 served at {addr}"
    );
}
