//! Types shared by the eBPF datapath and user space.
//!
//! Every key and value is `#[repr(C)]` with explicit padding and a size assertion, so the
//! kernel and user space agree byte for byte. Fields in network byte order end in `_be`;
//! everything else is in host order. Only user space's `datapath/maps/` converts between the two.
#![no_std]

pub mod csum;
pub mod monitor;
pub mod xdp;

pub mod map_names;

pub mod program_names;

pub mod limits;

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

mod reason;
pub use reason::Reason;

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
    /// Always zero. A byte and a word rather than `[u8; 3]`: the compiler zeroes an odd-sized
    /// array with a call to `memset`, a BPF-to-BPF call whose frame pushed the XDP program's
    /// deepest call chain past the 512 bytes of stack Linux 6.1's verifier allows.
    pub pad: u8,
    /// Always zero.
    pub pad2: u16,
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
            pad: 0,
            pad2: 0,
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
/// Conntrack flag: the flow was re-pointed once already after a refusal.
pub const CT_FAILED_OVER: u32 = 8;
/// Conntrack flag: the flow was re-pointed twice; a third refusal reaches the client (every
/// backend may be dead: the client must hear it, after two SYN retransmissions, about 3 s,
/// rather than wait through all of them). Two, not one: the first backend to refuse may have
/// come back by the time the second refuses (one backend restarted as another dies).
pub const CT_FAILED_OVER_TWICE: u32 = 16;

pub mod suspicion;

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

pub mod source;

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
    /// Services whose frontend this host refuses (outside the VIP ranges and
    /// `--allow-frontend`, or one of the host's own addresses).
    pub refused_frontends: u32,
    /// Endpoints published by a host that its host record does not allow.
    pub refused_host_endpoints: u32,
    /// A `trust::*` value: the cluster's trust mode as last seen.
    pub trust: u32,
    /// Explicit padding (zero).
    pub _pad: u32,
}

pub mod trust;

const _: () = {
    assert!(core::mem::size_of::<DaemonInfo>() == 96);
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
    unsafe impl aya::Pod for monitor::FlowEvent {}
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
