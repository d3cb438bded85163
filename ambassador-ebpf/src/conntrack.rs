//! The connection table: a flow keeps its backend (forward entries, keyed by the client's
//! tuple), and replies find their frontend (reverse entries, keyed by the backend's tuple).
//! Both are LRU maps; a forward hit re-asserts its reverse entry now and then, in case the LRU
//! evicted it.

use ambassador_common::{CtEntry4, CtKey4, RevNat4, BACKEND_TERMINATING, CT_CLOSING};

use crate::{
    maps::{BACKENDS, CONNTRACK, REVERSE_NAT},
    parse::{Ipv4Packet, L4},
};

/// A conntrack entry's last-seen time is refreshed at most this often, to keep the hot path
/// from writing the entry on every packet.
const REFRESH_NS: u64 = 1_000_000_000;

/// The reverse entry could not be written (the kernel refused the map update).
pub struct InsertFailed;

/// The forward key of the packet's flow.
#[inline(always)]
pub fn key(ip: &Ipv4Packet, l4: &L4) -> CtKey4 {
    CtKey4::new(ip.saddr_be, l4.sport_be, ip.daddr_be, l4.dport_be, ip.proto)
}

/// The flow's backend (address, port; network byte order) if its entry may still be used:
/// the backend exists, and a bare SYN that reuses the tuple (a new connection) does not go to
/// a terminating backend. Marks the flow closing, and refreshes it, on the way.
#[inline(always)]
pub fn established(
    key: &CtKey4,
    ip: &Ipv4Packet,
    l4: &L4,
    syn_only: bool,
    closing: bool,
    now: u64,
) -> Option<Result<(u32, u16), InsertFailed>> {
    let entry = CONNTRACK.get_ptr_mut(key)?;
    if !usable(entry, syn_only) {
        return None;
    }
    // SAFETY: a pointer from a map lookup stays valid for this program run; racing writers
    // only change plain integers.
    let e = unsafe { &mut *entry };
    if closing {
        e.flags |= CT_CLOSING;
    }
    if now.wrapping_sub(e.last_seen_ns) > REFRESH_NS {
        e.last_seen_ns = now;
        if insert_reverse(ip, l4, e).is_err() {
            return Some(Err(InsertFailed));
        }
    }
    Some(Ok((e.backend_addr_be, e.backend_port_be)))
}

#[inline(always)]
fn usable(entry: *mut CtEntry4, syn_only: bool) -> bool {
    // SAFETY: see `established`.
    let backend_id = unsafe { (*entry).backend_id };
    match BACKENDS.get_ptr(&backend_id) {
        None => false,
        Some(b) => !(syn_only && unsafe { (*b).flags } & BACKEND_TERMINATING != 0),
    }
}

/// Records a new flow: its forward entry and the reverse entry of its replies.
#[inline(always)]
pub fn create(
    key: &CtKey4,
    ip: &Ipv4Packet,
    l4: &L4,
    entry: &CtEntry4,
) -> Result<(), InsertFailed> {
    if CONNTRACK.insert(key, entry, 0).is_err() {
        return Err(InsertFailed);
    }
    insert_reverse(ip, l4, entry)
}

#[inline(always)]
fn insert_reverse(ip: &Ipv4Packet, l4: &L4, entry: &CtEntry4) -> Result<(), InsertFailed> {
    let reply = CtKey4::new(
        entry.backend_addr_be,
        entry.backend_port_be,
        ip.saddr_be,
        l4.sport_be,
        ip.proto,
    );
    let value = RevNat4 {
        vip_be: ip.daddr_be,
        vport_be: l4.dport_be,
        pad: 0,
        service_id: entry.service_id,
        backend_id: entry.backend_id,
    };
    REVERSE_NAT
        .insert(&reply, &value, 0)
        .map_err(|_| InsertFailed)
}

/// The frontend a backend's reply must appear to come from.
#[inline(always)]
pub fn reverse(ip: &Ipv4Packet, l4: &L4) -> Option<RevNat4> {
    // SAFETY: plain integers, replaced whole.
    (unsafe { REVERSE_NAT.get(&key(ip, l4)) }).copied()
}

/// Marks the forward entry of a flow whose backend sent FIN or RST.
#[inline(always)]
pub fn mark_closing(ip: &Ipv4Packet, l4: &L4, rev: &RevNat4) {
    let fwd = CtKey4::new(ip.daddr_be, l4.dport_be, rev.vip_be, rev.vport_be, ip.proto);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&fwd) {
        // SAFETY: see `established`.
        unsafe { (*entry).flags |= CT_CLOSING };
    }
}
