//! Every map of the datapath. Names and layouts are shared with user space through
//! `ambassador_common`; all maps are pinned by name under the daemon's pin directory. The sizes
//! declared here are the defaults: the loader sets each one from `ambassador run`'s settings.

use crate::scratch::{Scratch, EGRESS};
use ambassador_common::{
    limits, xdp::Forward, Backend4, Backend6, CtEntry4, CtEntry6, CtKey4, CtKey6, DaemonInfo,
    Reason, RevNat4, RevNat6, ServiceKey4, ServiceKey6, ServiceName, ServiceStats, ServiceValue4,
    SlotKey, SockKey4, SockKey6, SockNat4, SockNat6, Suspect,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// Frontends: (VIP, port, proto) -> service id and slot count.
#[map(name = "amb_svc4_v1")]
pub static SERVICES: HashMap<ServiceKey4, ServiceValue4> =
    HashMap::pinned(limits::DEFAULT_SERVICES, 0);

/// (service id, slot) -> backend id; slots `0..count` of each service are always filled.
#[map(name = "amb_slot_v1")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(limits::DEFAULT_SLOTS, 0);

/// backend id -> address, owner service and flags (terminating backends stay until drained).
#[map(name = "amb_be4_v1")]
pub static BACKENDS: HashMap<u32, Backend4> = HashMap::pinned(limits::DEFAULT_BACKENDS, 0);

/// Client's original tuple -> the flow's backend.
#[map(name = "amb_ct4_v1")]
pub static CONNTRACK: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// Backend's reply tuple -> the frontend to restore.
#[map(name = "amb_rnat4_v1")]
pub static REVERSE_NAT: LruHashMap<CtKey4, RevNat4> = LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// IPv6 frontends: (address, port, proto) -> service id and slot count (one service id
/// space for both families: the slot, name and counter maps are shared).
#[map(name = "amb_svc6_v1")]
pub static SERVICES6: HashMap<ServiceKey6, ServiceValue4> =
    HashMap::pinned(limits::DEFAULT_SERVICES, 0);

/// backend id -> IPv6 address, owner service and flags (ids are shared with `BACKENDS`).
#[map(name = "amb_be6_v1")]
pub static BACKENDS6: HashMap<u32, Backend6> = HashMap::pinned(limits::DEFAULT_BACKENDS, 0);

/// IPv6 flows: client's original tuple -> the flow's backend.
#[map(name = "amb_ct6_v1")]
pub static CONNTRACK6: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// IPv6 flows: backend's reply tuple -> the frontend to restore.
#[map(name = "amb_rnat6_v1")]
pub static REVERSE_NAT6: LruHashMap<CtKey6, RevNat6> = LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// Counters per service id.
#[map(name = "amb_sstat_v1")]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::pinned(limits::DEFAULT_SERVICES + 1, 0);

/// Counters per verdict reason.
#[map(name = "amb_reason_v3")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(Reason::COUNT, 0);

/// service id -> name. Only user space reads and writes it; it lives in the object so the
/// loader creates and pins it with the others.
#[map(name = "amb_names_v1")]
pub static NAMES: HashMap<u32, ServiceName> = HashMap::pinned(limits::DEFAULT_SERVICES, 0);

/// The daemon's control-plane state, for `status`. User space only, like `NAMES`.
#[map(name = "amb_info_v3")]
pub static INFO: Array<DaemonInfo> = Array::pinned(1, 0);

/// Socket datapath: (socket, frontend) -> the backend an unconnected UDP socket's datagrams
/// to that frontend go to (a socket keeps its backend, as a flow does in the TC datapath).
#[map(name = "amb_skfwd4_v1")]
pub static SOCK_FORWARD: LruHashMap<SockKey4, SockNat4> =
    LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// Socket datapath: (socket, backend) -> the frontend to report in `recvmsg` and
/// `getpeername` (Cilium's `lb4_reverse_sk`).
#[map(name = "amb_skrev4_v1")]
pub static SOCK_REVERSE: LruHashMap<SockKey4, SockNat4> =
    LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// [`SOCK_FORWARD`] for IPv6 frontends.
#[map(name = "amb_skfwd6_v1")]
pub static SOCK_FORWARD6: LruHashMap<SockKey6, SockNat6> =
    LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// [`SOCK_REVERSE`] for IPv6 backends.
#[map(name = "amb_skrev6_v1")]
pub static SOCK_REVERSE6: LruHashMap<SockKey6, SockNat6> =
    LruHashMap::pinned(limits::DEFAULT_FLOWS, 0);

/// Per-CPU scratch space of the IPv4 connection table (a slot per TC hook); not pinned: it
/// holds nothing between two packets.
#[map(name = "amb_scratch4")]
pub static SCRATCH: PerCpuArray<Scratch<u32>> = PerCpuArray::with_max_entries(EGRESS + 1, 0);

/// [`SCRATCH`] for IPv6.
#[map(name = "amb_scratch6")]
pub static SCRATCH6: PerCpuArray<Scratch<[u8; 16]>> = PerCpuArray::with_max_entries(EGRESS + 1, 0);

/// backend id -> suspicion: backends this host saw refuse or ignore a new flow (see `health`).
#[map(name = "amb_suspect_v1")]
pub static SUSPECTS: HashMap<u32, Suspect> = HashMap::pinned(limits::DEFAULT_BACKENDS, 0);

/// Backend health transitions, for the daemon to log and count.
#[map(name = "amb_health_v1")]
pub static HEALTH_EVENTS: RingBuf = RingBuf::pinned(64 * 1024, 0);

/// Flow events for `ambassador monitor`, written only while [`MONITOR`] is on.
#[map(name = "amb_events_v1")]
pub static EVENTS: RingBuf = RingBuf::pinned(ambassador_common::monitor::RING_BYTES, 0);

/// The monitor switch: entry 0 is 1 while a monitor listens (the daemon sets it).
#[map(name = "amb_monitor_v1")]
pub static MONITOR: Array<u32> = Array::pinned(1, 0);

/// Flow events lost because [`EVENTS`] was full.
#[map(name = "amb_evlost_v1")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// interface index -> `ambassador_common::xdp::target` flags, kept by the daemon: which
/// interfaces the XDP program may redirect to.
#[map(name = "amb_xdptgt_v1")]
pub static XDP_TARGETS: HashMap<u32, u32> = HashMap::pinned(limits::XDP_TARGETS, 0);

/// What the XDP program did with the frames it translated, per outcome.
#[map(name = "amb_xdpfwd_v1")]
pub static XDP_FORWARD: PerCpuArray<u64> = PerCpuArray::pinned(Forward::COUNT, 0);
