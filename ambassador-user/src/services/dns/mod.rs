//! The DNS responder of `ambassador run --dns-listen`: answers the service names of the
//! daemon's current state ([`zone`]) over UDP and TCP, and forwards other names to the host's
//! upstream resolvers for the clients it serves.
//!
//! UDP is served by one thread per listen address (blocking `recvmmsg`/`sendmmsg`: nothing
//! between a query and its answer but the lookup, and under load one system call for every
//! datagram waiting); TCP and forwarding run on the daemon's runtime. Answers come from a
//! [`Zone`] swapped whole at every apply, so an etcd change is answered as soon as it is in
//! the maps, with no etcd round trip per query.

mod forward;
pub mod handler;
mod rrl;
mod stats;
mod tcp;
mod udp;
pub mod zone;

pub use rrl::DEFAULT_RATE;
use stats::bump;
pub use stats::{DnsCounts, DnsStats};
pub use tcp::read_message;
use tcp::supervise_tcp;
use udp::supervise_udp;

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

pub use handler::{Reply, Transport};
use hickory_proto::rr::Name;
use ipnet::IpNet;
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{error, info, warn};
pub use zone::Zone;

use crate::{
    core::model::Desired,
    error::{Error, Result},
};

/// How long an upstream resolver may take to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle between queries.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Forwarded queries in flight at once (beyond this, SERVFAIL at once).
pub const MAX_FORWARDS: usize = 512;
/// TCP connections served at once (beyond this, idle ones are closed for a newcomer, or the
/// newcomer is).
pub const MAX_TCP: usize = 256;
/// How long an answer may take to be written to a TCP client (one that does not read is
/// closed then).
pub const TCP_WRITE: Duration = Duration::from_secs(2);
/// A TCP client idle this long gives its slot up when another client waits for one.
pub const TCP_BUSY_IDLE: Duration = Duration::from_millis(250);
/// How long a new TCP client waits for a slot that idle clients give up.
const TCP_SLOT_WAIT: Duration = Duration::from_millis(500);
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
    /// Identical UDP answers per second to one client prefix (0: no limit).
    pub rate_limit: u32,
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
            // A wildcard listen address reaches every interface: only the private and
            // loopback subnets among them are served (never a public one by default).
            let served = if l.ip().is_unspecified() {
                private(net.addr())
            } else {
                net.addr() == l.ip()
            };
            if served && !allow.contains(&net.trunc()) {
                allow.push(net.trunc());
            }
        }
    }
    allow
}

/// Loopback and private addresses (RFC 1918, RFC 6598's shared space, IPv6 unique local).
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(100, 64, 0, 0), 10)
                    .contains(&v4)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || ipnet::Ipv6Net::new_assert(
                    std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
                    7,
                )
                .contains(&v6)
        }
    }
}

/// What the listeners share.
struct Shared {
    zone: RwLock<Arc<Zone>>,
    stats: Arc<DnsStats>,
    forwarding: Forwarding,
    allow: Vec<IpNet>,
    forwards: Semaphore,
    rrl: rrl::RateLimit,
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
        // A panic in the handler (a bug: it is pure and fuzzed) costs this query only, never
        // the listener: counted, said, and the query dropped.
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handler::handle(query, &self.zone(), transport, self.may_forward(from.ip()))
        }));
        let reply = match handled {
            Ok(reply) => reply,
            Err(panic) => {
                bump(&self.stats.panics);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(%from, "DNS: answering a query panicked ({what}); the query is dropped, the responder goes on");
                return Reply::Drop;
            }
        };
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
            let host = crate::datapath::netlink::addresses()
                .map_err(Error::io("listing the host's addresses"))?;
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
            rrl: rrl::RateLimit::new(cfg.rate_limit),
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
            let (s, rt, addr) = (shared.clone(), runtime.clone(), *addr);
            std::thread::Builder::new()
                .name(format!("dns-udp {addr}"))
                .spawn(move || supervise_udp(&udp, &s, &rt, addr))
                .map_err(Error::io("starting the DNS thread"))?;
            tasks.push(tokio::spawn(supervise_tcp(tcp, shared.clone(), addr)));
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
        // A wildcard: the private and loopback subnets only, never a public one.
        let mut host = host;
        host.push("203.0.113.5/24".parse().unwrap());
        host.push("fd00:1::5/64".parse().unwrap());
        host.push("2001:db8::5/64".parse().unwrap());
        let any: Vec<SocketAddr> = vec!["0.0.0.0:53".parse().unwrap()];
        let served: Vec<String> = default_allow(&any, &host)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            served,
            [
                "127.0.0.0/8",
                "172.17.0.0/16",
                "192.168.1.0/24",
                "fd00:1::/64"
            ]
        );
        let elsewhere: Vec<SocketAddr> = vec!["10.9.9.9:53".parse().unwrap()];
        assert!(default_allow(&elsewhere, &host).is_empty());
    }
}
