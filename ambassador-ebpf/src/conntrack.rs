//! The connection table: a flow keeps its backend (forward entries, keyed by the client's
//! tuple), and replies find their frontend (reverse entries, keyed by the backend's tuple).
//! Both are LRU maps; a forward hit re-asserts its reverse entry now and then, in case the LRU
//! evicted it.
//!
//! Keys and values handed to the map helpers live in a per-CPU [`Scratch`] rather than on the
//! stack (Cilium's way): an IPv6 key is 40 bytes, and BPF's stack is 512 for a whole call
//! chain.

use ambassador_common::{
    suspicion, CtEntry, CtKey, RevNat, BACKEND_TERMINATING, CT_CLOSING, CT_FAILED_OVER,
    CT_FAILED_OVER_TWICE, CT_REPLIED, CT_RETRY,
};

use crate::{
    family::Family,
    health, monitor,
    parse::{IpPacket, L4},
    scratch::Scratch,
};

/// A SYN seen this long after the flow's first one, with no answer from its backend in
/// between, is the client's retransmission (Linux retransmits after 1 s): the backend is
/// silent.
const SILENT_AFTER_NS: u64 = 500_000_000;

/// A conntrack entry's last-seen time is refreshed at most this often, to keep the hot path
/// from writing the entry on every packet.
const REFRESH_NS: u64 = 1_000_000_000;

/// The reverse entry could not be written (the kernel refused the map update).
pub struct InsertFailed;

/// This CPU's scratch space of `hook` (`scratch::INGRESS` or `scratch::EGRESS`).
#[inline(always)]
pub fn scratch<A: Family>(hook: u32) -> Option<&'static mut Scratch<A>> {
    // SAFETY: a per-CPU slot that only this program uses while it runs (see `Scratch`).
    A::scratch().get_ptr_mut(hook).map(|p| unsafe { &mut *p })
}

/// The forward key of the packet's flow.
#[inline(always)]
pub fn key<A: Family>(ip: &IpPacket<A>, l4: &L4) -> CtKey<A> {
    CtKey::new(ip.saddr_be, l4.sport_be, ip.daddr_be, l4.dport_be, ip.proto)
}

/// The flow's backend (address, port; network byte order) if its entry may still be used:
/// the backend exists, a bare SYN that reuses the tuple (a new connection) does not go to a
/// terminating backend nor keep the backend of an earlier, answered connection, and a SYN
/// retransmitted to a backend that never answered goes elsewhere (the backend turns suspect).
/// Marks the flow closing, and refreshes it, on the way. The flow's key is `s.key`.
#[inline(always)]
pub fn established<A: Family>(
    s: &mut Scratch<A>,
    ip: &IpPacket<A>,
    l4: &L4,
    syn_only: bool,
    closing: bool,
    now: u64,
    datapath: u8,
) -> Option<Result<(A, u16), InsertFailed>> {
    let entry = A::conntrack().get_ptr_mut(&s.key)?;
    if !usable::<A>(entry, syn_only) {
        return None;
    }
    // SAFETY: a pointer from a map lookup stays valid for this program run; racing writers
    // only change plain integers.
    let e = unsafe { &mut *entry };
    if syn_only && e.flags & CT_REPLIED != 0 {
        // A bare SYN on a flow its backend answered: the client reuses the tuple of a closed
        // connection for a new one (its port is free when it closed with a RST, or the backend
        // closed first). A new connection gets a pick of its own: kept, it would go to the old
        // backend even when that one is suspect or dead, and its refusal, taken for the reset
        // of an answered connection, would reach the client. The old reverse entry goes.
        s.other = reply_key(ip, l4, e);
        let _ = A::reverse_nat().remove(&s.other);
        return None;
    }
    if syn_only {
        if e.flags & CT_RETRY != 0 {
            // The first SYN the re-pointed flow's new backend sees.
            e.flags &= !CT_RETRY;
            e.created_ns = now;
        } else if now.wrapping_sub(e.created_ns) > SILENT_AFTER_NS {
            health::failed(e.backend_id, e.service_id, suspicion::SILENT, now);
            monitor::failover(
                &mut s.event,
                datapath,
                (e.service_id, e.backend_id),
                (&ip.saddr_be, l4.sport_be),
                (&ip.daddr_be, l4.dport_be),
                (&e.backend_addr_be, e.backend_port_be),
                ip.proto,
            );
            s.other = reply_key(ip, l4, e);
            let _ = A::reverse_nat().remove(&s.other);
            return None;
        }
    }
    if closing {
        e.flags |= CT_CLOSING;
    }
    if now.wrapping_sub(e.last_seen_ns) > REFRESH_NS {
        e.last_seen_ns = now;
        if insert_reverse(&mut s.other, &mut s.rev, ip, l4, e).is_err() {
            return Some(Err(InsertFailed));
        }
    }
    Some(Ok((e.backend_addr_be, e.backend_port_be)))
}

#[inline(always)]
fn usable<A: Family>(entry: *mut CtEntry<A>, syn_only: bool) -> bool {
    // SAFETY: see `established`.
    let backend_id = unsafe { (*entry).backend_id };
    match A::backends().get_ptr(&backend_id) {
        None => false,
        Some(b) => !(syn_only && unsafe { (*b).flags } & BACKEND_TERMINATING != 0),
    }
}

/// Records a new flow: its forward entry (`s.entry` under `s.key`) and the reverse entry of
/// its replies.
#[inline(always)]
pub fn create<A: Family>(
    s: &mut Scratch<A>,
    ip: &IpPacket<A>,
    l4: &L4,
) -> Result<(), InsertFailed> {
    if A::conntrack().insert(&s.key, &s.entry, 0).is_err() {
        return Err(InsertFailed);
    }
    insert_reverse(&mut s.other, &mut s.rev, ip, l4, &s.entry)
}

/// The key of the replies to the client's packet `ip`/`l4` from `entry`'s backend.
#[inline(always)]
fn reply_key<A: Family>(ip: &IpPacket<A>, l4: &L4, entry: &CtEntry<A>) -> CtKey<A> {
    CtKey::new(
        entry.backend_addr_be,
        entry.backend_port_be,
        ip.saddr_be,
        l4.sport_be,
        ip.proto,
    )
}

/// Writes the reverse entry of `entry`'s flow, built in `reply` and `value`.
#[inline(always)]
fn insert_reverse<A: Family>(
    reply: &mut CtKey<A>,
    value: &mut RevNat<A>,
    ip: &IpPacket<A>,
    l4: &L4,
    entry: &CtEntry<A>,
) -> Result<(), InsertFailed> {
    *reply = reply_key(ip, l4, entry);
    *value = RevNat {
        vip_be: ip.daddr_be,
        vport_be: l4.dport_be,
        pad: 0,
        service_id: entry.service_id,
        backend_id: entry.backend_id,
    };
    A::reverse_nat()
        .insert(reply, value, 0)
        .map_err(|_| InsertFailed)
}

/// The reverse entry of the replies with key `reply`.
#[inline(always)]
pub fn reverse_of<A: Family>(reply: &CtKey<A>) -> Option<RevNat<A>> {
    // SAFETY: plain integers, replaced whole.
    (unsafe { A::reverse_nat().get(reply) }).copied()
}

/// The forward entry of the flow whose replies have the key `s.key` (its key is built in
/// `s.other`).
#[inline(always)]
fn forward_of<A: Family>(s: &mut Scratch<A>, rev: &RevNat<A>) -> Option<*mut CtEntry<A>> {
    s.other = CtKey::new(
        s.key.daddr_be,
        s.key.dport_be,
        rev.vip_be,
        rev.vport_be,
        s.key.proto,
    );
    A::conntrack().get_ptr_mut(&s.other)
}

/// Sets `flag` (`CT_CLOSING`: the backend sent FIN or RST; `CT_REPLIED`: it answered the SYN)
/// on the forward entry of the flow a backend's reply (key `s.key`) belongs to.
#[inline(always)]
pub fn mark<A: Family>(s: &mut Scratch<A>, rev: &RevNat<A>, flag: u32) {
    if let Some(entry) = forward_of(s, rev) {
        // SAFETY: see `established`.
        unsafe { (*entry).flags |= flag };
    }
}

/// The backend of the flow whose replies have the key `s.key` refused it (a RST, or an ICMP
/// "unreachable" about it). If the flow never got past SYN-SENT, the backend turns suspect
/// and, if the service has another backend and the flow was not re-pointed twice before, it is
/// re-pointed there (the client's SYN retransmission will land on it; a backend that is not
/// suspect if there is one) and true is returned: the refusal must not reach the client.
/// False: a reset of a real connection, a third refusal (`CT_FAILED_OVER_TWICE`), or no other
/// backend; the client gets it.
#[inline(always)]
pub fn refused<A: Family>(s: &mut Scratch<A>, rev: &RevNat<A>, now: u64, datapath: u8) -> bool {
    let Some(entry) = forward_of(s, rev) else {
        return false;
    };
    // SAFETY: see `established`.
    let e = unsafe { &mut *entry };
    if e.flags & CT_REPLIED != 0 {
        return false;
    }
    health::failed(e.backend_id, e.service_id, suspicion::REFUSED, now);
    if e.flags & CT_FAILED_OVER_TWICE != 0 {
        return false;
    }
    let again = if e.flags & CT_FAILED_OVER != 0 {
        CT_FAILED_OVER_TWICE
    } else {
        0
    };
    let Some(svc) = crate::lb::frontend(rev.vip_be, rev.vport_be, s.key.proto) else {
        return false;
    };
    // Another backend, one that is not suspect if there is one; else a suspect one all the
    // same: this one has just refused, and the other may have come back since it failed.
    let Ok((id, backend)) = crate::lb::pick_backend::<A>(
        svc.service_id,
        svc.count,
        e.backend_id,
        crate::lb::Retry::Suspects,
    ) else {
        return false;
    };
    // The refusal's reply key: from the backend that refused, to the client.
    let key = &s.key;
    monitor::failover(
        &mut s.event,
        datapath,
        (rev.service_id, rev.backend_id),
        (&key.daddr_be, key.dport_be),
        (&rev.vip_be, rev.vport_be),
        (&key.saddr_be, key.sport_be),
        key.proto,
    );
    let _ = A::reverse_nat().remove(&s.key);
    e.backend_id = id;
    e.backend_addr_be = backend.addr_be;
    e.backend_port_be = backend.port_be;
    e.flags = CT_RETRY | CT_FAILED_OVER | again;
    e.created_ns = now;
    e.last_seen_ns = now;
    s.rev = RevNat {
        vip_be: rev.vip_be,
        vport_be: rev.vport_be,
        pad: 0,
        service_id: svc.service_id,
        backend_id: id,
    };
    s.other = CtKey::new(
        backend.addr_be,
        backend.port_be,
        s.key.daddr_be,
        s.key.dport_be,
        s.key.proto,
    );
    A::reverse_nat().insert(&s.other, &s.rev, 0).is_ok()
}
