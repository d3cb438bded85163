//! The two translations: frontend -> backend on the way in (service lookup, then the flow's
//! backend from the connection table, or a new one from the load balancer), and backend ->
//! frontend on replies; and the rewrite both use.

use ambassador_common::{csum, proto, CtEntry4, Reason, CT_CLOSING, CT_REPLIED};
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
// Debug output exists only under `ambassador run --debug-datapath`: otherwise the loader sets
// AYA_LOG_LEVEL to 0, a constant the verifier sees, and these calls are removed as dead code.
use aya_log_ebpf::debug;

use crate::{
    conntrack, health, icmp, lb,
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

/// Sizes of the fields a checksum update replaces (the low bits of the helper's flags).
const CSUM_ADDR: u64 = 4;
/// See [`CSUM_ADDR`].
const CSUM_PORT: u64 = 2;

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
pub enum Side {
    Source,
    Destination,
}

/// Ingress of a client-facing interface.
#[inline(always)]
pub fn dnat(ctx: &TcContext) -> Verdict {
    parse::pull_headers(ctx);
    let Some(ip) = parse::ipv4(ctx) else {
        return icmp::from_client(ctx);
    };
    if ip.fragment {
        // Only the first fragment carries ports, so a fragment can never be matched to a
        // flow: drop it if it goes to a frontend address, leave it alone otherwise.
        return if lb::is_frontend_address(&ip) {
            Verdict::Done(Reason::Fragment)
        } else {
            Verdict::Pass
        };
    }
    let Some(l4) = parse::l4(ctx, &ip) else {
        return if lb::is_frontend_address(&ip) {
            Verdict::Done(Reason::Malformed)
        } else {
            Verdict::Pass
        };
    };
    let Some(svc) = lb::service(&ip, &l4) else {
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

#[inline(always)]
fn forward(ctx: &TcContext, ip: &Ipv4Packet, l4: &L4, service_id: u32, count: u32) -> Reason {
    let ct_key = conntrack::key(ip, l4);
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_only = ip.proto == proto::TCP
        && l4.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN;
    let closing = l4.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0;

    let (addr_be, port_be) = match conntrack::established(&ct_key, ip, l4, syn_only, closing, now) {
        Some(Ok(backend)) => backend,
        Some(Err(conntrack::InsertFailed)) => return Reason::CtInsertFailed,
        None => {
            let (backend_id, backend) = match lb::pick_backend(service_id, count) {
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
            if conntrack::create(&ct_key, ip, l4, &entry).is_err() {
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

/// Egress of a client-facing interface.
#[inline(always)]
pub fn rnat(ctx: &TcContext) -> Verdict {
    parse::pull_headers(ctx);
    let Some(ip) = parse::ipv4(ctx) else {
        return icmp::to_client(ctx);
    };
    if ip.fragment {
        return Verdict::Pass;
    }
    let Some(l4) = parse::l4(ctx, &ip) else {
        return Verdict::Pass;
    };
    let Some(rev) = conntrack::reverse(&ip, &l4) else {
        return Verdict::Pass;
    };
    if ip.proto == proto::TCP {
        let syn_ack = parse::TCP_SYN | parse::TCP_ACK;
        if l4.tcp_flags & syn_ack == syn_ack {
            conntrack::mark(&ip, &l4, &rev, CT_REPLIED);
            health::answered(rev.backend_id, rev.service_id, unsafe {
                bpf_ktime_get_ns()
            });
        } else if l4.tcp_flags & parse::TCP_RST != 0
            && conntrack::refused(&conntrack::key(&ip, &l4), &rev, unsafe {
                bpf_ktime_get_ns()
            })
        {
            debug!(
                ctx,
                "backend {:i}:{} refused {:i}:{}: flow re-pointed, RST withheld",
                u32::from_be(ip.saddr_be),
                u16::from_be(l4.sport_be),
                u32::from_be(ip.daddr_be),
                u16::from_be(l4.dport_be)
            );
            return Verdict::Done(Reason::Failover);
        }
    }
    if l4.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0 {
        conntrack::mark(&ip, &l4, &rev, CT_CLOSING);
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
            BPF_F_PSEUDO_HDR as u64 | mangled0 | CSUM_ADDR,
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
            mangled0 | CSUM_PORT,
        )?;
        ctx.store(ip.l4_off + port_off, &new_port_be, 0)?;
    }
    Ok(())
}
