//! Load balancing: which service a packet is for, and which backend a new flow goes to
//! (Katran keeps this apart from the connection table, and so do we).

use ambassador_common::{
    Backend4, Reason, ServiceKey4, ServiceValue4, SlotKey, FRONTEND_MARKER_PORT,
};
use aya_ebpf::helpers::bpf_get_prandom_u32;

use crate::{
    maps::{BACKENDS, SERVICES, SLOTS},
    parse::{Ipv4Packet, L4},
};

/// The service whose frontend the packet is addressed to.
#[inline(always)]
pub fn service(ip: &Ipv4Packet, l4: &L4) -> Option<ServiceValue4> {
    frontend(ip.daddr_be, l4.dport_be, ip.proto)
}

/// The service of frontend `vip_be:port_be` (network byte order) for IP protocol `proto`.
#[inline(always)]
pub fn frontend(vip_be: u32, port_be: u16, proto: u8) -> Option<ServiceValue4> {
    let key = ServiceKey4 {
        vip_be,
        port_be,
        proto,
        pad: 0,
    };
    // SAFETY: entries of this map are only replaced whole by user space; a concurrent update
    // yields either the old or the new value of these two plain integers.
    (unsafe { SERVICES.get(&key) }).copied()
}

/// Whether the packet goes to a frontend address (any port): see [`FRONTEND_MARKER_PORT`].
#[inline(always)]
pub fn is_frontend_address(ip: &Ipv4Packet) -> bool {
    let key = ServiceKey4 {
        vip_be: ip.daddr_be,
        port_be: FRONTEND_MARKER_PORT,
        proto: ip.proto,
        pad: 0,
    };
    SERVICES.get_ptr(&key).is_some()
}

/// A backend for a new flow of service `service_id`, whose slots `0..count` are filled: a
/// random slot (a backend holds as many slots as its weight).
#[inline(always)]
pub fn pick_backend(service_id: u32, count: u32) -> Result<(u32, Backend4), Reason> {
    if count == 0 {
        return Err(Reason::NoBackend);
    }
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    let slot_key = SlotKey { service_id, slot };
    // SAFETY: u32 values are replaced atomically.
    let backend_id = *unsafe { SLOTS.get(&slot_key) }.ok_or(Reason::BackendMissing)?;
    let backend = *unsafe { BACKENDS.get(&backend_id) }.ok_or(Reason::BackendMissing)?;
    Ok((backend_id, backend))
}
