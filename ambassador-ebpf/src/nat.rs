//! The two translations: frontend -> backend on the way in (service lookup, then the flow's
//! backend from the connection table, or a new one from the load balancer), and backend ->
//! frontend on replies; and the rewrite both use.

use ambassador_common::{monitor::kind, proto, CtEntry, Reason, CT_CLOSING, CT_REPLIED};
use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, helpers::bpf_ktime_get_ns, programs::TcContext};
// Debug output exists only under `ambassador run --debug-datapath`: otherwise the loader sets
// AYA_LOG_LEVEL to 0, a constant the verifier sees, and these calls are removed as dead code.
use aya_log_ebpf::debug;

use crate::{
    conntrack,
    family::{per_family, Family},
    frame::Frame,
    health, icmp, lb, monitor,
    parse::{self, IpPacket, L4, L4_DPORT, L4_SPORT},
    scratch::{EGRESS, INGRESS},
    stats,
    verdict::{Side, Verdict},
};

/// Size of a port in a checksum update (the low bits of the helper's flags).
const CSUM_PORT: u64 = 2;

/// Ingress of a client-facing interface.
#[inline(always)]
pub fn dnat(ctx: &TcContext) -> Verdict {
    parse::pull_headers(ctx);
    match per_family!(dnat_ip, ctx) {
        Some(handled) => handled.unwrap_or_else(|| icmp::from_client(ctx)),
        None => Verdict::Pass,
    }
}

/// DNAT of one IPv4 or IPv6 TCP or UDP packet; `None` if it is not one. A function per
/// family (a BPF-to-BPF call), so each family's copies get a stack frame of their own.
#[inline(never)]
fn dnat_ip<A: Family>(ctx: &TcContext) -> Option<Verdict> {
    let ip = &A::parse(ctx)?;
    Some(dnat_packet(ctx, ip))
}

#[inline(always)]
pub fn dnat_packet<A: Family>(ctx: &impl Frame, ip: &IpPacket<A>) -> Verdict {
    if ip.fragment {
        // Only the first fragment carries ports, so a fragment can never be matched to a
        // flow: drop it if it goes to a frontend address, leave it alone otherwise.
        return if lb::is_frontend_address(ip) {
            Verdict::Done(Reason::Fragment)
        } else {
            Verdict::Pass
        };
    }
    let Some(l4) = parse::l4(ctx, ip) else {
        return if lb::is_frontend_address(ip) {
            Verdict::Done(Reason::Malformed)
        } else {
            Verdict::Pass
        };
    };
    let Some(svc) = lb::service(ip, &l4) else {
        return Verdict::Pass;
    };
    let verdict = forward(ctx, ip, &l4, svc.service_id, svc.count);
    stats::with_service(svc.service_id, |s| match verdict {
        Reason::Forwarded => {
            s.packets += 1;
            s.bytes += ip.tot_len as u64;
        }
        _ => s.drops += 1,
    });
    if !matches!(verdict, Reason::Forwarded) {
        let about = monitor::About {
            kind: kind::DROP,
            datapath: ctx.datapath(),
            reason: verdict,
            service_id: svc.service_id,
            backend_id: 0,
            backend: (ip.daddr_be, 0),
        };
        monitor::frame(&about, ip, &l4);
        debug!(
            ctx,
            "drop {}: {:i}:{} -> {:i}:{} proto {} (service {})",
            verdict.name(),
            ip.saddr_be.shown(),
            u16::from_be(l4.sport_be),
            ip.daddr_be.shown(),
            u16::from_be(l4.dport_be),
            ip.proto,
            svc.service_id
        );
    }
    Verdict::Done(verdict)
}

#[inline(always)]
fn forward<A: Family>(
    ctx: &impl Frame,
    ip: &IpPacket<A>,
    l4: &L4,
    service_id: u32,
    count: u32,
) -> Reason {
    let Some(s) = conntrack::scratch::<A>(INGRESS) else {
        return Reason::CtInsertFailed;
    };
    s.key = conntrack::key(ip, l4);
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_only = ip.proto == proto::TCP
        && l4.tcp_flags & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN;
    let closing = l4.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0;

    let (addr_be, port_be) =
        match conntrack::established(s, ip, l4, syn_only, closing, now, ctx.datapath()) {
            Some(Ok(backend)) => backend,
            Some(Err(conntrack::InsertFailed)) => return Reason::CtInsertFailed,
            None => {
                let (backend_id, backend) =
                    match lb::pick_backend::<A>(service_id, count, 0, lb::Retry::Suspects) {
                        Ok(b) => b,
                        Err(reason) => return reason,
                    };
                s.entry = CtEntry {
                    backend_id,
                    service_id,
                    backend_addr_be: backend.addr_be,
                    backend_port_be: backend.port_be,
                    pad: 0,
                    flags: if closing { CT_CLOSING } else { 0 },
                    pad2: Default::default(),
                    created_ns: now,
                    last_seen_ns: now,
                };
                if conntrack::create(s, ip, l4).is_err() {
                    return Reason::CtInsertFailed;
                }
                stats::with_service(service_id, |s| s.new_flows += 1);
                let about = monitor::About {
                    kind: kind::FLOW,
                    datapath: ctx.datapath(),
                    reason: Reason::Forwarded,
                    service_id,
                    backend_id,
                    backend: (backend.addr_be, backend.port_be),
                };
                monitor::frame(&about, ip, l4);
                debug!(
                    ctx,
                    "new flow {:i}:{} -> {:i}:{} proto {}: service {} backend {} {:i}:{}",
                    ip.saddr_be.shown(),
                    u16::from_be(l4.sport_be),
                    ip.daddr_be.shown(),
                    u16::from_be(l4.dport_be),
                    ip.proto,
                    service_id,
                    backend_id,
                    backend.addr_be.shown(),
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
    match per_family!(rnat_ip, ctx) {
        Some(handled) => handled.unwrap_or_else(|| icmp::to_client(ctx)),
        None => Verdict::Pass,
    }
}

/// Reverse NAT of one IPv4 or IPv6 TCP or UDP packet; `None` if it is not one (a function per
/// family, like [`dnat_ip`]).
#[inline(never)]
fn rnat_ip<A: Family>(ctx: &TcContext) -> Option<Verdict> {
    let ip = &A::parse(ctx)?;
    Some(rnat_packet(ctx, ip))
}

#[inline(always)]
pub fn rnat_packet<A: Family>(ctx: &impl Frame, ip: &IpPacket<A>) -> Verdict {
    if ip.fragment {
        return Verdict::Pass;
    }
    let Some(l4) = parse::l4(ctx, ip) else {
        return Verdict::Pass;
    };
    let Some(s) = conntrack::scratch::<A>(EGRESS) else {
        return Verdict::Pass;
    };
    s.key = conntrack::key(ip, &l4);
    let Some(rev) = conntrack::reverse_of(&s.key) else {
        return Verdict::Pass;
    };
    if ip.proto == proto::TCP {
        let syn_ack = parse::TCP_SYN | parse::TCP_ACK;
        if l4.tcp_flags & syn_ack == syn_ack {
            conntrack::mark(s, &rev, CT_REPLIED);
            health::answered(rev.backend_id, rev.service_id, unsafe {
                bpf_ktime_get_ns()
            });
        } else if l4.tcp_flags & parse::TCP_RST != 0
            && conntrack::refused(s, &rev, unsafe { bpf_ktime_get_ns() }, ctx.datapath())
        {
            debug!(
                ctx,
                "backend {:i}:{} refused {:i}:{}: flow re-pointed, RST withheld",
                ip.saddr_be.shown(),
                u16::from_be(l4.sport_be),
                ip.daddr_be.shown(),
                u16::from_be(l4.dport_be)
            );
            return Verdict::Done(Reason::Failover);
        }
    }
    if l4.tcp_flags & (parse::TCP_FIN | parse::TCP_RST) != 0 {
        conntrack::mark(s, &rev, CT_CLOSING);
    }
    if rewrite(ctx, ip, &l4, Side::Source, rev.vip_be, rev.vport_be).is_err() {
        stats::with_service(rev.service_id, |s| s.drops += 1);
        return Verdict::Done(Reason::RewriteFailed);
    }
    stats::with_service(rev.service_id, |s| {
        s.reply_packets += 1;
        s.reply_bytes += ip.tot_len as u64;
    });
    Verdict::Done(Reason::ReverseNat)
}

/// Rewrites one end's address and port, with the L4 checksum (pseudo header included) and,
/// for IPv4, the header checksum kept correct.
#[inline(always)]
fn rewrite<A: Family>(
    ctx: &impl Frame,
    ip: &IpPacket<A>,
    l4: &L4,
    side: Side,
    new_addr_be: A,
    new_port_be: u16,
) -> Result<(), i64> {
    let (old_addr_be, old_port_be, addr_off, port_off) = match side {
        Side::Source => (ip.saddr_be, l4.sport_be, A::SADDR_OFF, L4_SPORT),
        Side::Destination => (ip.daddr_be, l4.dport_be, A::DADDR_OFF, L4_DPORT),
    };
    // A UDP checksum of zero means "none" (IPv4) and must stay zero.
    let mangled0 = if ip.proto == proto::UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    if !old_addr_be.same(new_addr_be) {
        A::rewrite_addr(
            ctx,
            addr_off,
            l4.csum_off,
            old_addr_be,
            new_addr_be,
            mangled0,
        )?;
    }
    if old_port_be != new_port_be {
        Frame::l4_csum_replace(
            ctx,
            l4.csum_off,
            old_port_be as u64,
            new_port_be as u64,
            mangled0 | CSUM_PORT,
        )?;
        Frame::store(ctx, ip.l4_off + port_off, &new_port_be)?;
    }
    Ok(())
}
