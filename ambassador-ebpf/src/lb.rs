//! Load balancing: which service a packet is for, and which backend a new flow goes to
//! (Katran keeps this apart from the connection table, and so do we).

use ambassador_common::{
    Backend, Reason, ServiceKey, ServiceValue4, SlotKey, FRONTEND_MARKER_PORT,
};
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};

use crate::{
    family::Family,
    health,
    maps::SLOTS,
    parse::{IpPacket, L4},
};

/// The service whose frontend the packet is addressed to.
#[inline(always)]
pub fn service<A: Family>(ip: &IpPacket<A>, l4: &L4) -> Option<ServiceValue4> {
    frontend(ip.daddr_be, l4.dport_be, ip.proto)
}

/// The service of frontend `vip_be:port_be` (network byte order) for IP protocol `proto`.
#[inline(always)]
pub fn frontend<A: Family>(vip_be: A, port_be: u16, proto: u8) -> Option<ServiceValue4> {
    let key = ServiceKey {
        vip_be,
        port_be,
        proto,
        pad: 0,
    };
    // SAFETY: entries of this map are only replaced whole by user space; a concurrent update
    // yields either the old or the new value of these two plain integers.
    (unsafe { A::services().get(&key) }).copied()
}

/// Whether the packet goes to a frontend address (any port): see [`FRONTEND_MARKER_PORT`].
#[inline(always)]
pub fn is_frontend_address<A: Family>(ip: &IpPacket<A>) -> bool {
    let key = ServiceKey {
        vip_be: ip.daddr_be,
        port_be: FRONTEND_MARKER_PORT,
        proto: ip.proto,
        pad: 0,
    };
    A::services().get_ptr(&key).is_some()
}

/// How many slots after a random one are looked at for a backend that is not suspect.
const SCAN: u32 = 64;

/// Whether a new flow may be the one that tries a suspect backend again once its backoff
/// has ended (see `health`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It may: TC sees the try's answer and withholds a refusal from the client (the flow is
    /// re-pointed).
    Suspects,
    /// It may not: the socket datapath sees no packets, so its client would get the refusal.
    /// A suspect stays avoided until a TC flow's try clears it or its entry changes.
    Never,
}

/// A backend for a new flow of service `service_id`, whose slots `0..count` are filled: a
/// random slot (a backend holds as many slots as its weight). A suspect backend (see `health`)
/// is passed over for the next slots' backends; when every one of them is suspect, one of them
/// stands: never a black hole of our own making. Backend `except` is never picked (the one
/// that has just refused the flow being re-pointed; 0, no backend's id: none).
#[inline(always)]
pub fn pick_backend<A: Family>(
    service_id: u32,
    count: u32,
    except: u32,
    retry: Retry,
) -> Result<(u32, Backend<A>), Reason> {
    let id = pick_id::<A>(service_id, count, except, retry)?;
    let backend = *unsafe { A::backends().get(&id) }.ok_or(Reason::BackendMissing)?;
    Ok((id, backend))
}

/// The backend id [`pick_backend`] picks. The scan looks at ids only and copies one backend
/// after it: a loop that copied an IPv6 backend per slot would take the stack the rest of a
/// program needs. Its state is kept small (one id, 0 for none), as the verifier walks the
/// loop once per state.
#[inline(always)]
fn pick_id<A: Family>(
    service_id: u32,
    count: u32,
    except: u32,
    retry: Retry,
) -> Result<u32, Reason> {
    if count == 0 {
        return Err(Reason::NoBackend);
    }
    let start = unsafe { bpf_get_prandom_u32() } % count;
    let first = slot_id::<A>(service_id, start)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let mut standing = 0;
    if first != except {
        if !health::avoided(first, now, retry == Retry::Suspects) {
            return Ok(first);
        }
        standing = first;
    }
    for i in 1..SCAN {
        if i >= count {
            break;
        }
        let slot = (start + i) % count;
        if let Ok(other) = slot_id::<A>(service_id, slot) {
            if other != except {
                if !health::avoided(other, now, retry == Retry::Suspects) {
                    return Ok(other);
                }
                standing = other;
            }
        }
    }
    if standing == 0 {
        Err(Reason::NoBackend)
    } else {
        Ok(standing)
    }
}

/// The id of the backend in slot `slot` of `service_id`, if that backend exists.
#[inline(always)]
fn slot_id<A: Family>(service_id: u32, slot: u32) -> Result<u32, Reason> {
    let slot_key = SlotKey { service_id, slot };
    // SAFETY: u32 values are replaced atomically.
    let backend_id = *unsafe { SLOTS.get(&slot_key) }.ok_or(Reason::BackendMissing)?;
    A::backends()
        .get_ptr(&backend_id)
        .map(|_| backend_id)
        .ok_or(Reason::BackendMissing)
}
