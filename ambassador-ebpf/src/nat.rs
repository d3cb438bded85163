//! Frontend -> backend translation with conntrack, and the reverse translation of replies.

use ambassador_common::{
    csum, proto, Backend4, CtEntry4, CtKey4, Reason, RevNat4, ServiceKey4, SlotKey,
    BACKEND_TERMINATING, CT_CLOSING,
};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
// Debug output exists only under `ambassador run --debug-datapath`: otherwise the loader sets
// AYA_LOG_LEVEL to 0, a constant the verifier sees, and these calls are removed as dead code.
use aya_log_ebpf::debug;

use crate::{
    maps::{BACKENDS, CONNTRACK, REVERSE_NAT, SERVICES, SLOTS},
    parse::{self, Ipv4Packet, ETH_HLEN, IP_CSUM, IP_DADDR, IP_SADDR, L4, L4_DPORT, L4_SPORT},
    stats,
};

/// What became of a packet.
pub enum Verdict {
    /// Not ours: untouched, uncounted.
    Pass,
    /// Handled (rewritten or dropped) for this reason.
    Done(Reason),
}

/// A conntrack entry's last-seen time is refreshed at most this often, to keep the hot path
/// from writing the entry on every packet.
const REFRESH_NS: u64 = 1_000_000_000;

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// Ingress of a client-facing interface.
#[inline(always)]
pub fn dnat(ctx: &TcContext) -> Verdict {
    let Some(ip) = parse::ipv4(ctx) else {
        return Verdict::Pass;
    };
    if ip.fragment {
        // Only the first fragment carries ports, so a fragment can never be matched to a
        // flow: drop it if it goes to a frontend address, leave it alone otherwise.
        return if is_frontend_address(&ip) {
            Verdict::Done(Reason::Fragment)
        } else {
            Verdict::Pass
        };
    }
    let Some(l4) = parse::l4(ctx, &ip) else {
        return if is_frontend_address(&ip) {
            Verdict::Done(Reason::Malformed)
        } else {
            Verdict::Pass
        };
    };
    let svc_key = ServiceKey4 {
        vip_be: ip.daddr_be,
        port_be: l4.dport_be,
        proto: ip.proto,
        pad: 0,
    };
    // SAFETY: entries of this map are only replaced whole by user space; a concurrent update
    // yields either the old or the new value of these two plain integers.
    let Some(svc) = (unsafe { SERVICES.get(&svc_key) }).copied() else {
        return Verdict::Pass;
    };
    let verdict = forward(ctx, &ip, &l4, svc.service_id, svc.count);
    stats::with_service(svc.service_id, |s| match verdict {
        Reason::Forwarded => {
            s.packets += 1;
            s.bytes += ip.tot_len as u64;
        }
        _ => s.drops += 1,
    });
    if !matches!(verdict, Reason::Forwarded) {
        debug!(
            ctx,
            "drop {}: {:i}:{} -> {:i}:{} proto {} (service {})",
            verdict.name(),
            u32::from_be(ip.saddr_be),
            u16::from_be(l4.sport_be),
            u32::from_be(ip.daddr_be),
            u16::from_be(l4.dport_be),
            ip.proto,
            svc.service_id
        );
    }
    Verdict::Done(verdict)
}

/// A frontend address is marked in the service map with port 0 (no real frontend uses it).
#[inline(always)]
fn is_frontend_address(ip: &Ipv4Packet) -> bool {
    let key = ServiceKey4 {
        vip_be: ip.daddr_be,
        port_be: 0,
        proto: ip.proto,
        pad: 0,
    };
    SERVICES.get_ptr(&key).is_some()
}

#[inline(always)]
fn forward(ctx: &TcContext, ip: &Ipv4Packet, l4: &L4, service_id: u32, count: u32) -> Reason {
    let ct_key = CtKey4::new(ip.saddr_be, l4.sport_be, ip.daddr_be, l4.dport_be, ip.proto);
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_only = ip.proto == proto::TCP
        && l4.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN;
    let closing = l4.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0;

    let (addr_be, port_be) = match CONNTRACK.get_ptr_mut(&ct_key) {
        Some(entry) if flow_usable(entry, syn_only) => {
            // SAFETY: a pointer from a map lookup stays valid for this program run; racing
            // writers only change plain integers.
            let e = unsafe { &mut *entry };
            if closing {
                e.flags |= CT_CLOSING;
            }
            if now.wrapping_sub(e.last_seen_ns) > REFRESH_NS {
                e.last_seen_ns = now;
                // Re-assert the reply mapping in case the LRU evicted it.
                if insert_reverse(ip, l4, e.backend_addr_be, e.backend_port_be, e).is_err() {
                    return Reason::CtInsertFailed;
                }
            }
            (e.backend_addr_be, e.backend_port_be)
        }
        _ => {
            let (backend_id, backend) = match pick_backend(service_id, count) {
                Ok(b) => b,
                Err(reason) => return reason,
            };
            let entry = CtEntry4 {
                backend_id,
                service_id,
                backend_addr_be: backend.addr_be,
                backend_port_be: backend.port_be,
                pad: 0,
                flags: if closing { CT_CLOSING } else { 0 },
                pad2: 0,
                created_ns: now,
                last_seen_ns: now,
            };
            if CONNTRACK.insert(&ct_key, &entry, 0).is_err()
                || insert_reverse(ip, l4, backend.addr_be, backend.port_be, &entry).is_err()
            {
                return Reason::CtInsertFailed;
            }
            stats::with_service(service_id, |s| s.new_flows += 1);
            debug!(
                ctx,
                "new flow {:i}:{} -> {:i}:{} proto {}: service {} backend {} {:i}:{}",
                u32::from_be(ip.saddr_be),
                u16::from_be(l4.sport_be),
                u32::from_be(ip.daddr_be),
                u16::from_be(l4.dport_be),
                ip.proto,
                service_id,
                backend_id,
                u32::from_be(backend.addr_be),
                u16::from_be(backend.port_be)
            );
            (backend.addr_be, backend.port_be)
        }
    };

    if rewrite(ctx, ip, l4, Side::Destination, addr_be, port_be).is_err() {
        return Reason::RewriteFailed;
    }
    Reason::Forwarded
}

/// An existing flow keeps its backend while the backend exists; a new connection (a bare SYN
/// that reuses the tuple) does not go to a terminating backend.
#[inline(always)]
fn flow_usable(entry: *mut CtEntry4, syn_only: bool) -> bool {
    // SAFETY: see `forward`.
    let backend_id = unsafe { (*entry).backend_id };
    match BACKENDS.get_ptr(&backend_id) {
        None => false,
        Some(b) => !(syn_only && unsafe { (*b).flags } & BACKEND_TERMINATING != 0),
    }
}

#[inline(always)]
fn pick_backend(service_id: u32, count: u32) -> Result<(u32, Backend4), Reason> {
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

#[inline(always)]
fn insert_reverse(
    ip: &Ipv4Packet,
    l4: &L4,
    backend_addr_be: u32,
    backend_port_be: u16,
    entry: &CtEntry4,
) -> Result<(), i32> {
    let reply = CtKey4::new(
        backend_addr_be,
        backend_port_be,
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
    REVERSE_NAT.insert(&reply, &value, 0)
}

/// Egress of a client-facing interface.
#[inline(always)]
pub fn rnat(ctx: &TcContext) -> Verdict {
    let Some(ip) = parse::ipv4(ctx) else {
        return Verdict::Pass;
    };
    if ip.fragment {
        return Verdict::Pass;
    }
    let Some(l4) = parse::l4(ctx, &ip) else {
        return Verdict::Pass;
    };
    let key = CtKey4::new(ip.saddr_be, l4.sport_be, ip.daddr_be, l4.dport_be, ip.proto);
    // SAFETY: plain integers, replaced whole.
    let Some(rev) = (unsafe { REVERSE_NAT.get(&key) }).copied() else {
        return Verdict::Pass;
    };
    if l4.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0 {
        mark_closing(&ip, &l4, &rev);
    }
    if rewrite(ctx, &ip, &l4, Side::Source, rev.vip_be, rev.vport_be).is_err() {
        stats::with_service(rev.service_id, |s| s.drops += 1);
        return Verdict::Done(Reason::RewriteFailed);
    }
    stats::with_service(rev.service_id, |s| {
        s.reply_packets += 1;
        s.reply_bytes += ip.tot_len as u64;
    });
    Verdict::Done(Reason::ReverseNat)
}

/// Marks the forward entry of a flow whose backend sent FIN or RST.
#[inline(always)]
fn mark_closing(ip: &Ipv4Packet, l4: &L4, rev: &RevNat4) {
    let fwd = CtKey4::new(ip.daddr_be, l4.dport_be, rev.vip_be, rev.vport_be, ip.proto);
    if let Some(entry) = CONNTRACK.get_ptr_mut(&fwd) {
        // SAFETY: see `forward`.
        unsafe { (*entry).flags |= CT_CLOSING };
    }
}

/// Rewrites one end's address and port, with the L4 checksum (pseudo header included) and
/// the IPv4 header checksum kept correct.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4Packet,
    l4: &L4,
    side: Side,
    new_addr_be: u32,
    new_port_be: u16,
) -> Result<(), i64> {
    let (old_addr_be, old_port_be, addr_off, port_off) = match side {
        Side::Source => (ip.saddr_be, l4.sport_be, IP_SADDR, L4_SPORT),
        Side::Destination => (ip.daddr_be, l4.dport_be, IP_DADDR, L4_DPORT),
    };
    // A UDP checksum of zero means "none" and must stay zero.
    let mangled0 = if ip.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let ip_csum = parse::ip_csum(ctx).ok_or(-1i64)?;

    if old_addr_be != new_addr_be {
        ctx.l4_csum_replace(
            l4.csum_off,
            old_addr_be as u64,
            new_addr_be as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled0 | 4,
        )?;
        ctx.store(ETH_HLEN + addr_off, &new_addr_be, 0)?;
        let new_csum = csum::replace4(
            ip_csum,
            u32::from_be(old_addr_be),
            u32::from_be(new_addr_be),
        );
        ctx.store(ETH_HLEN + IP_CSUM, &new_csum.to_be(), 0)?;
    }
    if old_port_be != new_port_be {
        ctx.l4_csum_replace(
            l4.csum_off,
            old_port_be as u64,
            new_port_be as u64,
            mangled0 | 2,
        )?;
        ctx.store(ip.l4_off + port_off, &new_port_be, 0)?;
    }
    Ok(())
}
