//! Types shared by the eBPF datapath and user space.
//!
//! Every key and value is `#[repr(C)]` with explicit padding and a size assertion, so the
//! kernel and user space agree byte for byte. Fields in network byte order end in `_be`;
//! everything else is in host order. Only user space's `maps.rs` converts between the two.
#![no_std]

pub mod csum;

/// Map names: kernel object names are cut at 15 characters, and the pinned files under the
/// pin directory carry these names. The `_vN` suffix changes whenever a layout changes, so an
/// upgraded daemon never reads a map of an older layout as its own.
pub mod map_names {
    /// (VIP, port, proto) -> service.
    pub const SERVICES: &str = "amb_svc4_v1";
    /// (service id, slot) -> backend id.
    pub const SLOTS: &str = "amb_slot_v1";
    /// backend id -> backend address.
    pub const BACKENDS: &str = "amb_be4_v1";
    /// Forward conntrack: the client's original tuple -> chosen backend.
    pub const CONNTRACK: &str = "amb_ct4_v1";
    /// Reverse NAT: the backend's reply tuple -> frontend to restore.
    pub const REVERSE_NAT: &str = "amb_rnat4_v1";
    /// Per-CPU counters per service id.
    pub const SERVICE_STATS: &str = "amb_sstat_v1";
    /// Per-CPU counters per [`crate::Reason`].
    pub const REASONS: &str = "amb_reason_v3";
    /// service id -> service name; written and read by user space only.
    pub const NAMES: &str = "amb_names_v1";
    /// The daemon's control-plane state (one entry); user space only.
    pub const INFO: &str = "amb_info_v2";
    /// Socket datapath: (socket cookie, frontend) -> the backend an unconnected UDP socket's
    /// datagrams to that frontend go to.
    pub const SOCK_FORWARD: &str = "amb_skfwd4_v1";
    /// Socket datapath: (socket cookie, backend) -> the frontend `recvmsg` and `getpeername`
    /// report instead.
    pub const SOCK_REVERSE: &str = "amb_skrev4_v1";
    /// [`SOCK_FORWARD`] for IPv6 frontends.
    pub const SOCK_FORWARD6: &str = "amb_skfwd6_v1";
    /// [`SOCK_REVERSE`] for IPv6 backends.
    pub const SOCK_REVERSE6: &str = "amb_skrev6_v1";
    /// IPv6 frontends: (address, port, proto) -> service id and slot count.
    pub const SERVICES6: &str = "amb_svc6_v1";
    /// backend id -> IPv6 backend address (ids are shared with [`BACKENDS`]: never reused).
    pub const BACKENDS6: &str = "amb_be6_v1";
    /// Forward conntrack of IPv6 flows.
    pub const CONNTRACK6: &str = "amb_ct6_v1";
    /// Reverse NAT of IPv6 flows.
    pub const REVERSE_NAT6: &str = "amb_rnat6_v1";
    /// backend id -> why and until when new flows avoid it ([`crate::Suspect`]).
    pub const SUSPECTS: &str = "amb_suspect_v1";
    /// Ring buffer of backend health transitions ([`crate::HealthEvent`]), read by the daemon.
    pub const HEALTH_EVENTS: &str = "amb_health_v1";
    /// Every map, in a stable order (for status, uninstall and tests).
    pub const ALL: [&str; 19] = [
        SERVICES,
        SLOTS,
        BACKENDS,
        CONNTRACK,
        REVERSE_NAT,
        SERVICE_STATS,
        REASONS,
        NAMES,
        INFO,
        SOCK_FORWARD,
        SOCK_REVERSE,
        SUSPECTS,
        HEALTH_EVENTS,
        SERVICES6,
        BACKENDS6,
        CONNTRACK6,
        REVERSE_NAT6,
        SOCK_FORWARD6,
        SOCK_REVERSE6,
    ];
    /// The socket datapath's maps (sized by whether `sock` runs, not by the capacity flags).
    pub const SOCK: [&str; 4] = [SOCK_FORWARD, SOCK_REVERSE, SOCK_FORWARD6, SOCK_REVERSE6];
}

/// Program names as the kernel shows them (`bpftool prog show`).
pub mod program_names {
    /// TC ingress on a client-facing interface: frontend -> backend.
    pub const TC_DNAT: &str = "amb_tc_dnat";
    /// TC egress on a client-facing interface: backend -> frontend on replies.
    pub const TC_RNAT: &str = "amb_tc_rnat";
    /// XDP on a gateway's client- and backend-facing interfaces: both translations, and the
    /// frame forwarded from there.
    pub const XDP: &str = "amb_xdp";
    /// cgroup `connect4`: a TCP or UDP socket connecting to a frontend connects to a backend.
    pub const SOCK_CONNECT4: &str = "amb_sk_connect4";
    /// cgroup `sendmsg4`: a datagram sent to a frontend on an unconnected UDP socket goes to
    /// a backend.
    pub const SOCK_SENDMSG4: &str = "amb_sk_sendmsg4";
    /// cgroup `recvmsg4`: a datagram from a backend is reported as from the frontend.
    pub const SOCK_RECVMSG4: &str = "amb_sk_recvmsg4";
    /// cgroup `getpeername4`: a socket connected to a backend reports the frontend as its peer.
    pub const SOCK_GETPEERNAME4: &str = "amb_sk_getpeer4";
    /// cgroup `connect6`: [`SOCK_CONNECT4`] for IPv6 sockets (IPv6 frontends, and IPv4 ones
    /// dialled as IPv4-mapped addresses).
    pub const SOCK_CONNECT6: &str = "amb_sk_connect6";
    /// cgroup `sendmsg6`: [`SOCK_SENDMSG4`] for IPv6 sockets.
    pub const SOCK_SENDMSG6: &str = "amb_sk_sendmsg6";
    /// cgroup `recvmsg6`: [`SOCK_RECVMSG4`] for IPv6 sockets.
    pub const SOCK_RECVMSG6: &str = "amb_sk_recvmsg6";
    /// cgroup `getpeername6`: [`SOCK_GETPEERNAME4`] for IPv6 sockets.
    pub const SOCK_GETPEERNAME6: &str = "amb_sk_getpeer6";
    /// cgroup `sock_release`: a closed socket's reverse entries go.
    pub const SOCK_RELEASE: &str = "amb_sk_release";
    /// The socket datapath's address programs, with the cgroup hook each attaches to.
    pub const SOCK_ADDR: [(&str, &str); 8] = [
        (SOCK_CONNECT4, "connect4"),
        (SOCK_SENDMSG4, "sendmsg4"),
        (SOCK_RECVMSG4, "recvmsg4"),
        (SOCK_GETPEERNAME4, "getpeername4"),
        (SOCK_CONNECT6, "connect6"),
        (SOCK_SENDMSG6, "sendmsg6"),
        (SOCK_RECVMSG6, "recvmsg6"),
        (SOCK_GETPEERNAME6, "getpeername6"),
    ];
}

/// Default capacity of each map: what the object declares, and what `ambassador run` creates
/// unless `--max-services`, `--max-backends`, `--max-slots` or `--max-flows` say otherwise (the
/// loader sets every map's size at load time). About 44 MiB of kernel memory on a 2-CPU host,
/// 32 MiB more with the socket datapath; see the README's "Capacity".
pub mod limits {
    /// Services (frontends). Service ids are 1..=services, indexing per-CPU counter arrays.
    pub const DEFAULT_SERVICES: u32 = 4_096;
    /// Backends over all services (active and terminating).
    pub const DEFAULT_BACKENDS: u32 = 16_384;
    /// Slots over all services (a backend takes as many as its weight).
    pub const DEFAULT_SLOTS: u32 = 65_536;
    /// Flows tracked at once; the least recently used entry is evicted beyond this.
    pub const DEFAULT_FLOWS: u32 = 65_536;
    /// Longest service name (a DNS label).
    pub const MAX_NAME_LEN: usize = 63;
}

/// IP protocol numbers the datapath handles.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// The port of a frontend-address marker: the service map holds one entry with this port per
/// frontend address and protocol (no real frontend uses port 0), so the datapath can tell a
/// packet to a frontend address (dropped when it cannot be translated) from anything else.
pub const FRONTEND_MARKER_PORT: u16 = 0;

/// Why a packet took the path it took. Shared by kernel and user space: the kernel counts
/// each verdict in the [`map_names::REASONS`] per-CPU array at this index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A packet to a frontend was rewritten to a backend.
    Forwarded = 0,
    /// A reply from a backend had its source restored to the frontend.
    ReverseNat = 1,
    /// Dropped: the frontend has no active backend.
    NoBackend = 2,
    /// Dropped: an IPv4 fragment addressed to a frontend (ports are unknowable).
    Fragment = 3,
    /// Dropped: a packet to a frontend whose L4 header is missing or truncated.
    Malformed = 4,
    /// Dropped: the conntrack entry for a new flow could not be written.
    CtInsertFailed = 5,
    /// Dropped: the chosen slot points at a backend that does not exist (a control-plane bug).
    BackendMissing = 6,
    /// Dropped: a kernel helper failed while rewriting the packet.
    RewriteFailed = 7,
    /// Dropped on purpose: a backend refused a new flow (RST to its SYN) while the service has
    /// another backend; the flow was re-pointed there, and the client's SYN retransmission
    /// lands on it instead of the client seeing the refusal.
    Failover = 8,
    /// Translated: an ICMP error about a translated flow (its quoted packet, and the outer
    /// address that was the backend or the frontend), so the client's or the backend's stack
    /// matches it to its socket (path MTU discovery through a frontend).
    IcmpError = 9,
}

impl Reason {
    /// Number of reasons (the size of the reasons array).
    pub const COUNT: u32 = 10;
    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Forwarded,
        Reason::ReverseNat,
        Reason::NoBackend,
        Reason::Fragment,
        Reason::Malformed,
        Reason::CtInsertFailed,
        Reason::BackendMissing,
        Reason::RewriteFailed,
        Reason::Failover,
        Reason::IcmpError,
    ];

    /// Stable name for logs, status and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ReverseNat => "reverse_nat",
            Reason::NoBackend => "no_backend",
            Reason::Fragment => "fragment",
            Reason::Malformed => "malformed",
            Reason::CtInsertFailed => "ct_insert_failed",
            Reason::BackendMissing => "backend_missing",
            Reason::RewriteFailed => "rewrite_failed",
            Reason::Failover => "failover",
            Reason::IcmpError => "icmp_error",
        }
    }

    /// Whether packets counted under this reason were dropped.
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::Forwarded | Reason::ReverseNat | Reason::IcmpError
        )
    }
}

/// An IP address as the maps hold it, in network byte order: `u32` for IPv4, 16 bytes for
/// IPv6. The map types below are generic over it; the `4` and `6` aliases are the two
/// families (separate maps with the same shapes, Cilium's way).
pub trait Addr: Copy + PartialEq + Eq + core::hash::Hash + core::fmt::Debug + 'static {
    /// The explicit padding that aligns [`CtEntry`]'s and [`SockNat`]'s timestamps after an
    /// address of this size.
    type Pad: Copy + Default + PartialEq + Eq + core::fmt::Debug + 'static;
    /// The explicit padding that ends [`SockKey`] on its 8-byte alignment.
    type KeyPad: Copy + Default + PartialEq + Eq + core::hash::Hash + core::fmt::Debug + 'static;
}
impl Addr for u32 {
    type Pad = u32;
    type KeyPad = [u8; 0];
}
impl Addr for [u8; 16] {
    type Pad = u64;
    type KeyPad = u32;
}

/// Key of the service map: a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey<A> {
    /// Frontend (virtual) address, network byte order.
    pub vip_be: A,
    /// Frontend port, network byte order.
    pub port_be: u16,
    /// IP protocol ([`proto::TCP`] or [`proto::UDP`]).
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
}

/// An IPv4 frontend.
pub type ServiceKey4 = ServiceKey<u32>;
/// An IPv6 frontend.
pub type ServiceKey6 = ServiceKey<[u8; 16]>;

/// Value of the service map (both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue4 {
    /// Index into the per-service counters and key of the slot and name maps.
    pub service_id: u32,
    /// Number of slots (0 means no active backend: packets are dropped and counted).
    pub count: u32,
}

/// Key of the slot map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// Service the slot belongs to.
    pub service_id: u32,
    /// Slot index, `0..count`.
    pub slot: u32,
}

/// Backend flag: the backend takes no new flows; its established flows continue.
pub const BACKEND_TERMINATING: u32 = 1;

/// Value of the backend map (keyed by a `u32` backend id that is never reused).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend<A> {
    /// Backend address, network byte order.
    pub addr_be: A,
    /// Backend port, network byte order.
    pub port_be: u16,
    /// Always zero.
    pub pad: u16,
    /// Service that owns the backend.
    pub service_id: u32,
    /// `BACKEND_*` flags.
    pub flags: u32,
}

/// An IPv4 backend.
pub type Backend4 = Backend<u32>;
/// An IPv6 backend.
pub type Backend6 = Backend<[u8; 16]>;

/// Conntrack key: a flow's 5-tuple as seen in its packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey<A> {
    /// Source address, network byte order.
    pub saddr_be: A,
    /// Destination address, network byte order.
    pub daddr_be: A,
    /// Source port, network byte order.
    pub sport_be: u16,
    /// Destination port, network byte order.
    pub dport_be: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub pad: [u8; 3],
}

/// An IPv4 flow.
pub type CtKey4 = CtKey<u32>;
/// An IPv6 flow.
pub type CtKey6 = CtKey<[u8; 16]>;

impl<A: Addr> CtKey<A> {
    /// The key of a packet from `saddr_be:sport_be` to `daddr_be:dport_be` (all in network
    /// byte order) with IP protocol `proto`.
    #[inline(always)]
    pub const fn new(saddr_be: A, sport_be: u16, daddr_be: A, dport_be: u16, proto: u8) -> Self {
        Self {
            saddr_be,
            daddr_be,
            sport_be,
            dport_be,
            proto,
            pad: [0; 3],
        }
    }
}

/// Conntrack flag: a FIN or RST was seen; the flow is closing.
pub const CT_CLOSING: u32 = 1;
/// Conntrack flag: the backend answered (a SYN-ACK): the flow is past SYN-SENT, so it is
/// never re-pointed to another backend.
pub const CT_REPLIED: u32 = 2;
/// Conntrack flag: the flow was re-pointed after its backend refused it; the next SYN is the
/// first the new backend sees.
pub const CT_RETRY: u32 = 4;
/// Conntrack flag: the flow was re-pointed once already; a second refusal reaches the client
/// (every backend may be dead: the client must hear it rather than wait through its
/// retransmissions).
pub const CT_FAILED_OVER: u32 = 8;

/// Why a backend became suspect.
pub mod suspicion {
    /// It refused a new flow: a RST answered the SYN.
    pub const REFUSED: u32 = 1;
    /// It stayed silent: the client retransmitted a SYN that was never answered.
    pub const SILENT: u32 = 2;
    /// (An event only) it answered a new flow again: no longer suspect.
    pub const ANSWERED: u32 = 3;

    /// How long new flows avoid a backend after `strikes` (1 or more) failures in a row: 1 s,
    /// doubled per failure after the first, up to 64 s.
    pub const fn backoff_ns(strikes: u32) -> u64 {
        let doublings = strikes.saturating_sub(1);
        let shift = if doublings < 6 { doublings } else { 6 };
        1_000_000_000 << shift
    }
}

/// Value of the suspect map: a backend this host's datapath saw refuse or ignore a new flow.
/// New flows avoid it until `retry_ns`; then one new flow may try it, and a SYN-ACK from it
/// clears it (the entry is deleted), another failure doubles the wait.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Suspect {
    /// `bpf_ktime_get_ns` when it first failed (this time).
    pub since_ns: u64,
    /// `bpf_ktime_get_ns` from which a new flow may try it again.
    pub retry_ns: u64,
    /// Failures in a row (the backoff is 1 s doubled per failure after the first, up to 64 s).
    pub strikes: u32,
    /// The last failure's `suspicion::*`.
    pub reason: u32,
}

/// A backend health transition, written by the datapath to the ring buffer for the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthEvent {
    /// The backend.
    pub backend_id: u32,
    /// The service of the flow that saw it.
    pub service_id: u32,
    /// A `suspicion::*`: REFUSED or SILENT (now suspect), ANSWERED (no longer suspect).
    pub reason: u32,
    /// Failures in a row (0 for ANSWERED).
    pub strikes: u32,
    /// `bpf_ktime_get_ns` of the transition.
    pub at_ns: u64,
}

/// Forward conntrack value: where the flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry<A: Addr> {
    /// Backend chosen when the flow started.
    pub backend_id: u32,
    /// Service the flow belongs to.
    pub service_id: u32,
    /// Backend address, network byte order (copied so the rewrite never changes mid-flow).
    pub backend_addr_be: A,
    /// Backend port, network byte order.
    pub backend_port_be: u16,
    /// Always zero.
    pub pad: u16,
    /// `CT_*` flags.
    pub flags: u32,
    /// Always zero.
    pub pad2: A::Pad,
    /// `bpf_ktime_get_ns` when the flow started.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` when a packet of the flow was last seen (updated at most once a second).
    pub last_seen_ns: u64,
}

/// An IPv4 flow's entry.
pub type CtEntry4 = CtEntry<u32>;
/// An IPv6 flow's entry.
pub type CtEntry6 = CtEntry<[u8; 16]>;

/// Reverse NAT value: the frontend a reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNat<A> {
    /// Frontend address, network byte order.
    pub vip_be: A,
    /// Frontend port, network byte order.
    pub vport_be: u16,
    /// Always zero.
    pub pad: u16,
    /// Service the flow belongs to.
    pub service_id: u32,
    /// Backend of the flow.
    pub backend_id: u32,
}

/// An IPv4 flow's frontend.
pub type RevNat4 = RevNat<u32>;
/// An IPv6 flow's frontend.
pub type RevNat6 = RevNat<[u8; 16]>;

/// Key of the socket datapath's maps: a socket (its cookie) and an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey<A: Addr> {
    /// The kernel's socket cookie (`bpf_get_socket_cookie`; unique while the kernel runs).
    pub cookie: u64,
    /// A frontend (forward map) or backend (reverse map) address, network byte order.
    pub addr_be: A,
    /// Its port, network byte order.
    pub port_be: u16,
    /// Always zero.
    pub pad: u16,
    /// Always zero (empty for IPv4).
    pub pad2: A::KeyPad,
}

impl<A: Addr> SockKey<A> {
    /// The key of socket `cookie` and address `addr_be:port_be` (network byte order).
    #[inline(always)]
    pub fn new(cookie: u64, addr_be: A, port_be: u16) -> Self {
        Self {
            cookie,
            addr_be,
            port_be,
            pad: 0,
            pad2: A::KeyPad::default(),
        }
    }
}

/// An IPv4 socket translation's key.
pub type SockKey4 = SockKey<u32>;
/// An IPv6 socket translation's key.
pub type SockKey6 = SockKey<[u8; 16]>;

/// Socket entry flag: made by `connect` (the socket is connected to the backend); otherwise
/// by `sendmsg` on an unconnected UDP socket.
pub const SOCK_CONNECTED: u32 = 1;

/// Value of the socket datapath's maps: the other end of a translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockNat<A: Addr> {
    /// The backend (forward map) or frontend (reverse map) address, network byte order.
    pub addr_be: A,
    /// Its port, network byte order.
    pub port_be: u16,
    /// IP protocol of the socket.
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
    /// Service of the frontend.
    pub service_id: u32,
    /// Backend chosen.
    pub backend_id: u32,
    /// `SOCK_*` flags.
    pub flags: u32,
    /// Always zero.
    pub pad2: A::Pad,
    /// `bpf_ktime_get_ns` of the translation, refreshed by each datagram of an unconnected
    /// socket (a connected socket's entries live until the socket is closed).
    pub last_seen_ns: u64,
}

/// An IPv4 socket translation.
pub type SockNat4 = SockNat<u32>;
/// An IPv6 socket translation.
pub type SockNat6 = SockNat<[u8; 16]>;

/// Per-service counters (one per CPU; user space sums them with `+=`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct ServiceStats {
    /// Packets rewritten frontend -> backend.
    pub packets: u64,
    /// IPv4 bytes (IP total length) of those packets.
    pub bytes: u64,
    /// Replies rewritten backend -> frontend.
    pub reply_packets: u64,
    /// IPv4 bytes of those replies.
    pub reply_bytes: u64,
    /// Flows started (conntrack entries created).
    pub new_flows: u64,
    /// Packets to this service that were dropped (see the reasons for why).
    pub drops: u64,
}

impl core::ops::AddAssign for ServiceStats {
    fn add_assign(&mut self, o: Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
        self.new_flows += o.new_flows;
        self.drops += o.drops;
    }
}

/// Value of the name map: a service name, NUL padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// UTF-8 (in practice ASCII: a DNS label) padded with zeros.
    pub bytes: [u8; 64],
}

impl ServiceName {
    /// The name, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let len = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bytes.len());
        core::str::from_utf8(&self.bytes[..len]).ok()
    }

    /// Encodes `name`; `None` if it does not fit.
    pub fn new(name: &str) -> Option<Self> {
        let src = name.as_bytes();
        if src.len() > limits::MAX_NAME_LEN {
            return None;
        }
        let mut bytes = [0u8; 64];
        bytes[..src.len()].copy_from_slice(src);
        Some(Self { bytes })
    }
}

/// Where the daemon's desired state comes from.
pub mod source {
    /// No daemon has written its state yet.
    pub const NONE: u32 = 0;
    /// A static configuration file.
    pub const FILE: u32 = 1;
    /// etcd.
    pub const ETCD: u32 = 2;
}

/// The daemon's control-plane state, so `status` can report it from the pinned maps alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonInfo {
    /// The daemon's process id (in its own pid namespace).
    pub pid: u32,
    /// A `source::*` value.
    pub source: u32,
    /// 1 while the etcd watch is established.
    pub etcd_connected: u32,
    /// Endpoints the backend policy currently leaves out (`--allow-backend`, refused ranges).
    pub refused: u32,
    /// Last etcd revision applied.
    pub etcd_revision: u64,
    /// Unix time (ms) when `etcd_connected` last changed.
    pub state_since_unix_ms: u64,
    /// Unix time (ms) of the daemon's last write here (a heartbeat).
    pub heartbeat_unix_ms: u64,
    /// Values skipped because they did not parse, since the daemon started.
    pub malformed: u64,
    /// Services left out because another service holds their frontend.
    pub conflicts: u64,
    /// Unix time (ms) when a desired state was last applied to the maps.
    pub applied_unix_ms: u64,
    /// Services and endpoints left out of the last applied state because a map was full
    /// (`--max-services`, `--max-backends`, `--max-slots`).
    pub over_capacity: u32,
    /// The daemon's flow timeouts in seconds (`--tcp-timeout`, `--tcp-closing-timeout`,
    /// `--udp-timeout`), so `status` counts live flows as its garbage collection does; 0: not
    /// recorded (the defaults apply).
    pub tcp_timeout_s: u32,
    /// See `tcp_timeout_s`.
    pub tcp_closing_timeout_s: u32,
    /// See `tcp_timeout_s`.
    pub udp_timeout_s: u32,
}

const _: () = {
    assert!(core::mem::size_of::<DaemonInfo>() == 80);
    assert!(core::mem::size_of::<ServiceKey4>() == 8);
    assert!(core::mem::size_of::<ServiceValue4>() == 8);
    assert!(core::mem::size_of::<SlotKey>() == 8);
    assert!(core::mem::size_of::<Backend4>() == 16);
    assert!(core::mem::size_of::<CtKey4>() == 16);
    assert!(core::mem::size_of::<CtEntry4>() == 40);
    assert!(core::mem::size_of::<RevNat4>() == 16);
    assert!(core::mem::size_of::<ServiceKey6>() == 20);
    assert!(core::mem::size_of::<Backend6>() == 28);
    assert!(core::mem::size_of::<CtKey6>() == 40);
    assert!(core::mem::size_of::<CtEntry6>() == 56);
    assert!(core::mem::size_of::<RevNat6>() == 28);
    assert!(core::mem::size_of::<ServiceStats>() == 48);
    assert!(core::mem::size_of::<ServiceName>() == 64);
    assert!(core::mem::size_of::<SockKey4>() == 16);
    assert!(core::mem::size_of::<SockNat4>() == 32);
    assert!(core::mem::size_of::<SockKey6>() == 32);
    assert!(core::mem::size_of::<SockNat6>() == 48);
    assert!(core::mem::size_of::<Suspect>() == 24);
    assert!(core::mem::size_of::<HealthEvent>() == 24);
    assert!(Reason::ALL.len() == Reason::COUNT as usize);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is #[repr(C)], Copy, has explicit padding (no implicit holes; the
    // size assertions above prove it) and every bit pattern is a valid value.
    unsafe impl<A: Addr> aya::Pod for ServiceKey<A> {}
    unsafe impl aya::Pod for ServiceValue4 {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl<A: Addr> aya::Pod for Backend<A> {}
    unsafe impl<A: Addr> aya::Pod for CtKey<A> {}
    unsafe impl<A: Addr> aya::Pod for CtEntry<A> {}
    unsafe impl<A: Addr> aya::Pod for RevNat<A> {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for DaemonInfo {}
    unsafe impl<A: Addr> aya::Pod for SockKey<A> {}
    unsafe impl<A: Addr> aya::Pod for SockNat<A> {}
    unsafe impl aya::Pod for Suspect {}
    unsafe impl aya::Pod for HealthEvent {}
}

#[cfg(test)]
mod tests {
    use super::suspicion::backoff_ns;

    #[test]
    fn suspect_backoff_doubles_from_one_second_up_to_64() {
        let s = |strikes| backoff_ns(strikes) / 1_000_000_000;
        assert_eq!(
            [s(1), s(2), s(3), s(7), s(8), s(u32::MAX)],
            [1, 2, 4, 64, 64, 64]
        );
        assert_eq!(s(0), 1);
    }
}
