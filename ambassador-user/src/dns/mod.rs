//! The DNS responder of `ambassador run --dns-listen`: answers the service names of the
//! daemon's current state ([`zone`]) over UDP and TCP, and forwards other names to the host's
//! upstream resolvers for the clients it serves.
//!
//! UDP is served by one thread per listen address (blocking `recvmmsg`/`sendmmsg`: nothing
//! between a query and its answer but the lookup, and under load one system call for every
//! datagram waiting); TCP and forwarding run on the daemon's runtime. Answers come from a
//! [`Zone`] swapped whole at every apply, so an etcd change is answered as soon as it is in
//! the maps, with no etcd round trip per query.

pub mod zone;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use hickory_proto::{op::ResponseCode, rr::Name};
use ipnet::IpNet;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{info, warn};
pub use zone::{Reply, Transport, Zone};

use crate::{
    error::{Error, Result},
    metrics::{Kind, Page},
    model::Desired,
};

/// How long an upstream resolver may take to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle between queries.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded queries in flight at once (beyond this, SERVFAIL at once).
pub const MAX_FORWARDS: usize = 512;
/// TCP connections served at once (beyond this, a new one is closed at once).
pub const MAX_TCP: usize = 256;
/// Datagrams received, and answers sent, in one system call (recvmmsg/sendmmsg) under load.
const BATCH: usize = 32;
/// The longest UDP query read whole; a longer one is cut, and so malformed.
const MAX_QUERY: usize = 4096;

/// Where names outside the domain go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Refused (`--dns-no-forward`).
    Off,
    /// The resolvers of the host's /etc/resolv.conf, read at start.
    Host,
    /// These resolvers, tried in order (`--dns-upstream`).
    To(Vec<SocketAddr>),
}

/// The host's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Validated settings of the responder.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where it listens (UDP and TCP on each).
    pub listen: Vec<SocketAddr>,
    /// The domain it is authoritative for.
    pub domain: Name,
    /// Where other names go.
    pub forwarding: Forwarding,
    /// Who may have other names forwarded; empty: the subnets of the listen addresses.
    pub allow: Vec<IpNet>,
}

/// Parses an upstream resolver: `IP` (port 53) or `IP:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address like 10.0.0.2 or 10.0.0.2:53"))
}

/// The host's resolvers from `resolv_conf` (port 53), leaving out the responder's own
/// addresses (forwarding to itself would loop).
pub fn upstreams_from(resolv_conf: &[u8], own: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    let conf = resolv_conf::Config::parse(resolv_conf).map_err(|e| e.to_string())?;
    Ok(conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(ip.into(), 53))
        .filter(|up| !own.contains(up))
        .collect())
}

/// Who may use forwarding when `--dns-allow` is not given: the subnets of the listen addresses
/// (every subnet of the host for an unspecified address).
pub fn default_allow(listen: &[SocketAddr], host: &[IpNet]) -> Vec<IpNet> {
    let mut allow: Vec<IpNet> = Vec::new();
    for l in listen {
        for net in host {
            if (l.ip().is_unspecified() || net.addr() == l.ip()) && !allow.contains(&net.trunc()) {
                allow.push(net.trunc());
            }
        }
    }
    allow
}

/// What the responder counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct DnsStats {
    noerror: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    servfail: AtomicU64,
    other: AtomicU64,
    truncated: AtomicU64,
    dropped: AtomicU64,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
    /// When a malformed query was last warned about (at most one warning a minute).
    warned: Mutex<Option<Instant>>,
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl DnsStats {
    fn answered(&self, rcode: ResponseCode, truncated: bool, from: SocketAddr) {
        match rcode {
            ResponseCode::NoError => bump(&self.noerror),
            ResponseCode::NXDomain => bump(&self.nxdomain),
            ResponseCode::Refused => bump(&self.refused),
            ResponseCode::FormErr => {
                bump(&self.formerr);
                self.malformed(from);
            }
            ResponseCode::ServFail => bump(&self.servfail),
            _ => bump(&self.other),
        }
        if truncated {
            bump(&self.truncated);
        }
    }

    fn dropped(&self, from: SocketAddr) {
        bump(&self.dropped);
        self.malformed(from);
    }

    fn malformed(&self, from: SocketAddr) {
        let mut last = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *last = Some(Instant::now());
            let total = self.formerr.load(Ordering::Relaxed) + self.dropped.load(Ordering::Relaxed);
            warn!(%from, total, "DNS: a malformed query (or a response sent to the responder) was skipped; ambassador_dns_answers_total{{rcode=\"FORMERR\"}} and ambassador_dns_dropped_total count them (said at most once a minute)");
        }
    }

    /// Writes the responder's counters.
    pub fn write(&self, page: &mut Page) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let name = "ambassador_dns_answers_total";
        let f = page.family(
            name,
            Kind::Counter,
            "DNS answers the responder sent, by response code (forwarded answers are not counted here).",
        );
        for (rcode, a) in [
            ("NOERROR", &self.noerror),
            ("NXDOMAIN", &self.nxdomain),
            ("REFUSED", &self.refused),
            ("FORMERR", &self.formerr),
            ("SERVFAIL", &self.servfail),
            ("other", &self.other),
        ] {
            f.sample(name, &[("rcode", rcode)], get(a));
        }
        page.single(
            "ambassador_dns_truncated_total",
            Kind::Counter,
            "DNS answers cut to what the query invited (TC set: the client retries over TCP).",
            get(&self.truncated),
        )
        .single(
            "ambassador_dns_dropped_total",
            Kind::Counter,
            "Datagrams left unanswered: too short to carry a DNS header, or responses.",
            get(&self.dropped),
        )
        .single(
            "ambassador_dns_forwarded_total",
            Kind::Counter,
            "Queries for names outside the domain relayed to an upstream resolver and answered.",
            get(&self.forwarded),
        )
        .single(
            "ambassador_dns_forward_failures_total",
            Kind::Counter,
            "Forwarded queries no upstream resolver answered in time (SERVFAIL sent).",
            get(&self.forward_failures),
        );
    }
}

/// What the listeners share.
struct Shared {
    zone: RwLock<Arc<Zone>>,
    stats: Arc<DnsStats>,
    forwarding: Forwarding,
    allow: Vec<IpNet>,
    forwards: Semaphore,
    stop: AtomicBool,
}

impl Shared {
    fn may_forward(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        matches!(self.forwarding, Forwarding::To(ref u) if !u.is_empty())
            && self.allow.iter().any(|n| n.contains(&client))
    }

    /// Handles one query from `from`, counting what is answered or dropped.
    fn reply(&self, query: &[u8], transport: Transport, from: SocketAddr) -> Reply {
        let reply = zone::handle(query, &self.zone(), transport, self.may_forward(from.ip()));
        match &reply {
            Reply::Answer {
                rcode, truncated, ..
            } => self.stats.answered(*rcode, *truncated, from),
            Reply::Drop => self.stats.dropped(from),
            Reply::Forward { .. } => {}
        }
        reply
    }

    fn zone(&self) -> Arc<Zone> {
        self.zone.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn upstreams(&self) -> &[SocketAddr] {
        match &self.forwarding {
            Forwarding::To(u) => u,
            Forwarding::Off | Forwarding::Host => &[],
        }
    }
}

/// A running responder. Dropping it stops the UDP threads (their sockets are shut down, which
/// wakes them) and the TCP tasks.
pub struct Responder {
    shared: Arc<Shared>,
    ns_addrs: Vec<IpAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The UDP threads' sockets, to wake them when stopping.
    udp_sockets: Vec<UdpSocket>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        // A blocked recvmmsg returns at once when the socket is shut down for reading: no
        // receive timeout on the hot path.
        for s in &self.udp_sockets {
            // SAFETY: shutdown on a socket this struct owns (a duplicate of the thread's).
            unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(s), libc::SHUT_RD) };
        }
    }
}

impl Responder {
    /// Binds every listen address (UDP and TCP) and starts serving an empty zone. Fails, naming
    /// the address, when one cannot be bound.
    pub async fn start(mut cfg: DnsConfig) -> Result<Self> {
        if cfg.forwarding == Forwarding::Host {
            let conf = std::fs::read(RESOLV_CONF).map_err(Error::io(format!("reading {RESOLV_CONF} (for the upstream resolvers; --dns-upstream or --dns-no-forward do without it)")))?;
            let ups = upstreams_from(&conf, &cfg.listen)
                .map_err(|e| Error::Usage(format!("{RESOLV_CONF}: {e}")))?;
            cfg.forwarding = Forwarding::To(ups);
        }
        let allow = if cfg.allow.is_empty() {
            let host =
                crate::netlink::addresses().map_err(Error::io("listing the host's addresses"))?;
            default_allow(&cfg.listen, &host)
        } else {
            cfg.allow.clone()
        };
        let ns_addrs: Vec<IpAddr> = cfg
            .listen
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let shared = Arc::new(Shared {
            zone: RwLock::new(Arc::new(Zone::empty(cfg.domain.clone(), ns_addrs.clone()))),
            stats: Arc::default(),
            forwarding: cfg.forwarding.clone(),
            allow,
            forwards: Semaphore::new(MAX_FORWARDS),
            stop: AtomicBool::new(false),
        });
        let mut tasks = Vec::new();
        let mut udp_sockets = Vec::new();
        let runtime = tokio::runtime::Handle::current();
        for addr in &cfg.listen {
            let udp = UdpSocket::bind(addr).map_err(|e| listen_error(*addr, "UDP", e))?;
            udp_sockets.push(
                udp.try_clone()
                    .map_err(Error::io("duplicating the DNS socket"))?,
            );
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(|e| listen_error(*addr, "TCP", e))?;
            let (s, rt) = (shared.clone(), runtime.clone());
            std::thread::Builder::new()
                .name(format!("dns-udp {addr}"))
                .spawn(move || serve_udp(udp, s, rt))
                .map_err(Error::io("starting the DNS thread"))?;
            tasks.push(tokio::spawn(serve_tcp(tcp, shared.clone())));
        }
        let upstreams = match &cfg.forwarding {
            Forwarding::Off | Forwarding::Host => "off".to_owned(),
            Forwarding::To(u) if u.is_empty() => {
                warn!("DNS: no upstream resolver (none in /etc/resolv.conf but the responder itself, and no --dns-upstream): names outside the domain are refused");
                "none".to_owned()
            }
            Forwarding::To(u) => u
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        };
        let allowed = shared
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        info!(
            listen = %cfg.listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            domain = %cfg.domain,
            %upstreams,
            forwarding_for = %allowed,
            "DNS responder serving"
        );
        Ok(Self {
            shared,
            ns_addrs,
            tasks,
            udp_sockets,
        })
    }

    /// Answers from `desired` from now on.
    pub fn update(&self, desired: &Desired, serial: u32) {
        let domain = self.shared.zone().domain().clone();
        let zone = Arc::new(Zone::new(domain, desired, self.ns_addrs.clone(), serial));
        *self.shared.zone.write().unwrap_or_else(|p| p.into_inner()) = zone;
    }

    /// The responder's counters.
    pub fn stats(&self) -> Arc<DnsStats> {
        self.shared.stats.clone()
    }
}

fn listen_error(addr: SocketAddr, what: &str, e: io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrNotAvailable => ": no interface of this host has that address",
        io::ErrorKind::AddrInUse => {
            ": another server (a resolver such as systemd-resolved or dnsmasq?) listens there"
        }
        io::ErrorKind::PermissionDenied => ": ports below 1024 need root or CAP_NET_BIND_SERVICE",
        _ => "",
    };
    Error::Io {
        what: format!("listening for DNS on {addr} ({what}){hint}"),
        source: e,
    }
}

/// One UDP listener: answer, or hand the query to the runtime to forward. Ends when the
/// [`Responder`] is dropped (it shuts the socket down).
fn serve_udp(socket: UdpSocket, shared: Arc<Shared>, runtime: tokio::runtime::Handle) {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_QUERY]; BATCH];
    let mut received = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut sending = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    while !shared.stop.load(Ordering::Relaxed) {
        // Every datagram waiting, up to BATCH, in one call (blocking for the first).
        let batch: Vec<(usize, SocketAddr)> = {
            let mut iovs: Vec<[io::IoSliceMut; 1]> =
                bufs.iter_mut().map(|b| [io::IoSliceMut::new(b)]).collect();
            match recvmmsg(
                fd,
                &mut received,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => msgs
                    .filter_map(|m| Some((m.bytes, std_addr(&m.address?)?)))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("DNS: receiving on UDP failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        };
        let mut answers: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(batch.len());
        for (buf, (n, from)) in bufs.iter().zip(&batch) {
            let (query, from) = (&buf[..*n], *from);
            match shared.reply(query, Transport::Udp, from) {
                Reply::Answer { bytes, .. } => answers.push((bytes, SockaddrStorage::from(from))),
                Reply::Drop => {}
                Reply::Forward { limit } => forward(&socket, query, from, limit, &shared, &runtime),
            }
        }
        // Every answer in one call.
        if !answers.is_empty() {
            let iovs: Vec<[io::IoSlice; 1]> =
                answers.iter().map(|(a, _)| [io::IoSlice::new(a)]).collect();
            let to: Vec<Option<SockaddrStorage>> = answers.iter().map(|(_, t)| Some(*t)).collect();
            let _ = sendmmsg(fd, &mut sending, &iovs, &to, [], MsgFlags::empty());
        }
    }
}

/// The standard address of a received datagram's source.
fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// Hands a query for a name outside the domain to the runtime, which relays it upstream and
/// answers the client (SERVFAIL at once when too many are in flight).
fn forward(
    socket: &UdpSocket,
    query: &[u8],
    from: SocketAddr,
    limit: usize,
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
) {
    let Ok(permit) = shared.forwards.try_acquire() else {
        return send_servfail(socket, query, from, &shared.stats);
    };
    permit.forget();
    let (query, shared) = (query.to_vec(), shared.clone());
    let Ok(socket) = socket.try_clone() else {
        return shared.forwards.add_permits(1);
    };
    runtime.spawn(async move {
        match forward_udp(&query, shared.upstreams()).await {
            Some(answer) => match zone::fit(&answer, limit) {
                Some(answer) => {
                    bump(&shared.stats.forwarded);
                    let _ = socket.send_to(&answer, from);
                }
                None => send_servfail(&socket, &query, from, &shared.stats),
            },
            None => send_servfail(&socket, &query, from, &shared.stats),
        }
        shared.forwards.add_permits(1);
    });
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = hickory_proto::op::Message::from_vec(query).ok()?;
    let mut m = hickory_proto::op::Message::error_msg(q.id, q.op_code, ResponseCode::ServFail);
    m.metadata.recursion_desired = q.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.iter().cloned());
    m.to_vec().ok()
}

fn send_servfail(socket: &UdpSocket, query: &[u8], to: SocketAddr, stats: &DnsStats) {
    bump(&stats.forward_failures);
    if let Some(bytes) = servfail(query) {
        stats.answered(ResponseCode::ServFail, false, to);
        let _ = socket.send_to(&bytes, to);
    }
}

/// Relays `query` to the first upstream that answers it (same id) in time.
async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = if up.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = tokio::net::UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            if n >= 12 && buf[..2] == query[..2] {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

/// Relays `query` over TCP to the first upstream that answers it in time.
async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let attempt = async {
            let mut s = TcpStream::connect(up).await?;
            s.write_all(&(query.len() as u16).to_be_bytes()).await?;
            s.write_all(query).await?;
            read_message(&mut s).await
        };
        if let Ok(Ok(Some(answer))) = tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            return Some(answer);
        }
    }
    None
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
async fn read_message(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve_connection(stream, from, &shared).await;
        });
    }
}

async fn serve_connection(mut s: TcpStream, from: SocketAddr, shared: &Shared) -> io::Result<()> {
    while let Ok(read) = tokio::time::timeout(TCP_IDLE, read_message(&mut s)).await {
        let Some(query) = read? else {
            return Ok(());
        };
        let answer = match shared.reply(&query, Transport::Tcp, from) {
            Reply::Answer { bytes, .. } => bytes,
            Reply::Drop => return Ok(()),
            Reply::Forward { .. } => match forward_tcp(&query, shared.upstreams()).await {
                Some(a) => {
                    bump(&shared.stats.forwarded);
                    a
                }
                None => {
                    bump(&shared.stats.forward_failures);
                    shared.stats.answered(ResponseCode::ServFail, false, from);
                    servfail(&query).unwrap_or_default()
                }
            },
        };
        s.write_all(&(answer.len() as u16).to_be_bytes()).await?;
        s.write_all(&answer).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_without_the_responder_itself() {
        let conf = b"# comment\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nsearch example\n";
        let own: Vec<SocketAddr> = vec!["127.0.0.53:53".parse().unwrap()];
        assert_eq!(
            upstreams_from(conf, &own).unwrap(),
            vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap()]
        );
        assert!(upstreams_from(b"", &own).unwrap().is_empty());
    }

    #[test]
    fn forwarding_serves_the_listen_address_subnets_by_default() {
        let host: Vec<IpNet> = vec![
            "127.0.0.1/8".parse().unwrap(),
            "172.17.0.1/16".parse().unwrap(),
            "192.168.1.5/24".parse().unwrap(),
        ];
        let bridge: Vec<SocketAddr> = vec!["172.17.0.1:53".parse().unwrap()];
        assert_eq!(
            default_allow(&bridge, &host),
            vec!["172.17.0.0/16".parse::<IpNet>().unwrap()]
        );
        let any: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
        assert_eq!(default_allow(&any, &host).len(), 3);
        let elsewhere: Vec<SocketAddr> = vec!["10.9.9.9:53".parse().unwrap()];
        assert!(default_allow(&elsewhere, &host).is_empty());
    }
}
