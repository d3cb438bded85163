//! Flow events for `ambassador monitor`. Written only while the daemon's monitor switch is on:
//! with no monitor connected, an event site costs one array lookup and nothing reaches user
//! space. A full ring loses the event and counts it.

use ambassador_common::{
    monitor::{kind, FlowEvent},
    Reason,
};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    family::Family,
    maps::{EVENTS, EVENTS_LOST, MONITOR},
    parse::{IpPacket, L4},
};

/// Whether a monitor listens.
#[inline(always)]
pub fn on() -> bool {
    MONITOR.get(0).is_some_and(|v| *v != 0)
}

/// What an event says beyond the packet or socket it is about.
pub struct About<A> {
    /// A `monitor::kind`.
    pub kind: u8,
    /// A `monitor::datapath`.
    pub datapath: u8,
    pub reason: Reason,
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: (A, u16),
}

/// An event about a frame (`tc`, `xdp`) going to a frontend: the client and the frontend are
/// its source and destination.
#[inline(always)]
pub fn frame<A: Family>(about: &About<A>, ip: &IpPacket<A>, l4: &L4) {
    flow(
        about,
        (ip.saddr_be, l4.sport_be),
        (ip.daddr_be, l4.dport_be),
        ip.proto,
    );
}

/// An event about a flow between `client` and `frontend`.
#[inline(always)]
pub fn flow<A: Family>(about: &About<A>, client: (A, u16), frontend: (A, u16), proto: u8) {
    if on() {
        write(about, (client.0.octets().0, client.1), frontend, proto, 0);
    }
}

/// An event about a socket (`sock`): the client's address is unknown (the kernel picks it
/// after the call), the socket's cookie says which socket it is.
#[inline(always)]
pub fn socket<A: Family>(about: &About<A>, frontend: (A, u16), proto: u8, cookie: u64) {
    if on() {
        write(about, ([0; 16], 0), frontend, proto, cookie);
    }
}

/// Ends of a staged event: an address (by reference: no copy on the stack) and its port.
pub type End<'a, A> = (&'a A, u16);

/// A failover event (a new flow sent away from `backend`), staged in per-CPU scratch memory:
/// the connection table's paths, the ICMP error path among them, have no stack to spare.
/// `event` is the scratch's slot; `ids` the service's and the backend's.
#[inline(always)]
pub fn failover<A: Family>(
    event: &mut FlowEvent,
    datapath: u8,
    ids: (u32, u32),
    client: End<A>,
    frontend: End<A>,
    backend: End<A>,
    proto: u8,
) {
    if !on() {
        return;
    }
    // SAFETY: the helper has no preconditions.
    event.at_ns = unsafe { bpf_ktime_get_ns() };
    event.cookie = 0;
    client.0.put_octets(&mut event.client);
    frontend.0.put_octets(&mut event.frontend);
    backend.0.put_octets(&mut event.backend);
    (event.service_id, event.backend_id) = ids;
    event.pad0 = 0;
    event.client_port_be = client.1;
    event.frontend_port_be = frontend.1;
    event.backend_port_be = backend.1;
    event.kind = kind::FAILOVER;
    event.datapath = datapath;
    event.reason = Reason::Failover as u8;
    event.proto = proto;
    event.family = A::FAMILY;
    event.pad = 0;
    if EVENTS.output::<FlowEvent>(&*event, 0).is_err() {
        count_lost();
    }
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot belongs to this CPU while the program runs.
        unsafe { *lost += 1 };
    }
}

/// Reserves a record and writes every field in place (nothing is built on the stack).
#[inline(always)]
fn write<A: Family>(
    about: &About<A>,
    client: ([u8; 16], u16),
    frontend: (A, u16),
    proto: u8,
    cookie: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count_lost();
        return;
    };
    let e = entry.as_mut_ptr();
    let (frontend_addr, family) = frontend.0.octets();
    // SAFETY: the reserved record is this program's until submitted; each field is written
    // through the raw pointer (no reference to uninitialised memory is made).
    unsafe {
        (*e).at_ns = bpf_ktime_get_ns();
        (*e).cookie = cookie;
        (*e).client = client.0;
        (*e).frontend = frontend_addr;
        (*e).backend = about.backend.0.octets().0;
        (*e).service_id = about.service_id;
        (*e).backend_id = about.backend_id;
        (*e).pad0 = 0;
        (*e).client_port_be = client.1;
        (*e).frontend_port_be = frontend.1;
        (*e).backend_port_be = about.backend.1;
        (*e).kind = about.kind;
        (*e).datapath = about.datapath;
        (*e).reason = about.reason as u8;
        (*e).proto = proto;
        (*e).family = family;
        (*e).pad = 0;
    }
    entry.submit(0);
}
