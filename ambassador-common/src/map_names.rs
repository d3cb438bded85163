//! Map names: kernel object names are cut at 15 characters, and the pinned files under the
//! pin directory carry these names. The `_vN` suffix changes whenever a layout changes, so an
//! upgraded daemon never reads a map of an older layout as its own.

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
pub const INFO: &str = "amb_info_v3";
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
/// interface index -> [`crate::xdp::target`] flags: where the `xdp` datapath may redirect.
pub const XDP_TARGETS: &str = "amb_xdptgt_v1";
/// Per-CPU counters of the `xdp` datapath's forwarding, indexed by [`crate::xdp::Forward`].
pub const XDP_FORWARD: &str = "amb_xdpfwd_v1";
/// Ring buffer of flow events ([`crate::monitor::FlowEvent`]) for `ambassador monitor`.
pub const EVENTS: &str = "amb_events_v1";
/// One `u32`: 1 while a monitor listens (the datapath writes flow events only then).
pub const MONITOR: &str = "amb_monitor_v1";
/// Per-CPU count of flow events lost because the ring buffer was full.
pub const EVENTS_LOST: &str = "amb_evlost_v1";
/// Every map, in a stable order (for status, uninstall and tests).
pub const ALL: [&str; 24] = [
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
    XDP_TARGETS,
    XDP_FORWARD,
    EVENTS,
    MONITOR,
    EVENTS_LOST,
];
/// The socket datapath's maps (sized by whether `sock` runs, not by the capacity flags).
pub const SOCK: [&str; 4] = [SOCK_FORWARD, SOCK_REVERSE, SOCK_FORWARD6, SOCK_REVERSE6];
