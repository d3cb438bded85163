//! Flow events the datapath writes for `ambassador monitor`, only while the daemon has a
//! monitor connected (it sets [`crate::map_names::MONITOR`]'s one entry to 1).

/// What a [`FlowEvent`] reports.
pub mod kind {
    /// A new flow (or socket) translated to a backend.
    pub const FLOW: u8 = 1;
    /// A new flow sent away from a backend that refused it (its RST withheld).
    pub const FAILOVER: u8 = 2;
    /// A packet to a frontend dropped (`reason` says why).
    pub const DROP: u8 = 3;
}

/// Which datapath wrote a [`FlowEvent`].
pub mod datapath {
    /// TC programs on an interface.
    pub const TC: u8 = 1;
    /// The XDP program on an interface.
    pub const XDP: u8 = 2;
    /// The socket programs of a cgroup.
    pub const SOCK: u8 = 3;
}

/// One flow event. Addresses are network-order bytes: IPv4 in the first 4 (`family` 4), IPv6
/// in all 16 (`family` 6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` when it happened.
    pub at_ns: u64,
    /// The socket's cookie (`sock`; 0 otherwise).
    pub cookie: u64,
    /// The client (`sock`: unknown before the connect, all zero).
    pub client: [u8; 16],
    /// The frontend the client addressed.
    pub frontend: [u8; 16],
    /// The backend chosen (or left, for FAILOVER; zero for DROP).
    pub backend: [u8; 16],
    /// The service.
    pub service_id: u32,
    /// The backend's id (0: none).
    pub backend_id: u32,
    pub pad0: u32,
    /// Ports, network order.
    pub client_port_be: u16,
    pub frontend_port_be: u16,
    pub backend_port_be: u16,
    /// A [`kind`].
    pub kind: u8,
    /// A [`datapath`].
    pub datapath: u8,
    /// The [`crate::Reason`] (a DROP's cause).
    pub reason: u8,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub pad: u8,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 88);

/// Bytes of the ring buffer the events go through (a slow reader loses the newest, counted).
pub const RING_BYTES: u32 = 256 * 1024;
