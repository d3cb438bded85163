//! ICMP errors about translated flows, translated too. A router on the way to a backend that
//! says "fragmentation needed", or a backend's host that says "port unreachable", quotes the
//! packet as the backend saw it (client -> backend); the client's stack matches an error to
//! a socket by that quote, and its socket is connected to the frontend, so untranslated the
//! error is ignored and path MTU discovery through a frontend stalls (a black hole). Both
//! directions are handled: errors on their way to a client (the quote's destination goes back
//! to the frontend) and errors a client sends about a reply (the quote's source goes back to
//! the backend, and so does the error's destination, the frontend).

use ambassador_common::{csum, proto, CtKey4, Reason};
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};

use crate::{
    conntrack,
    maps::CONNTRACK,
    nat::{Side, Verdict},
    parse::{self, IcmpError, ETH_HLEN, IP_CSUM, IP_DADDR, IP_SADDR, L4_DPORT, L4_SPORT},
};

/// Sizes of the fields a checksum update replaces (the low bits of the helper's flags).
const CSUM_ADDR: u64 = 4;
/// See [`CSUM_ADDR`].
const CSUM_WORD: u64 = 2;

/// Egress of a client-facing interface: an ICMP error on its way to a client about a packet
/// the client sent through a frontend. A "destination unreachable" about a flow that never
/// got an answer is the backend refusing it (failover, as for a RST); anything else is
/// translated back to the frontend.
#[inline(always)]
pub fn to_client(ctx: &TcContext) -> Verdict {
    let Some(e) = parse::icmp_error(ctx) else {
        return Verdict::Pass;
    };
    // The key of the backend's replies to the quoted (client -> backend) packet.
    let reply = CtKey4::new(
        e.inner_daddr_be,
        e.inner_dport_be,
        e.inner_saddr_be,
        e.inner_sport_be,
        e.inner_proto,
    );
    let Some(rev) = conntrack::reverse_of::<u32>(&reply) else {
        return Verdict::Pass;
    };
    if e.icmp_type == parse::ICMP_DEST_UNREACH
        && e.icmp_code != parse::ICMP_FRAG_NEEDED
        && e.inner_proto == proto::TCP
        && conntrack::refused(&reply, &rev, unsafe { bpf_ktime_get_ns() })
    {
        return Verdict::Done(Reason::Failover);
    }
    // An error from the backend itself comes from the frontend; a router's keeps its source.
    let outer = (e.saddr_be == e.inner_daddr_be).then_some((IP_SADDR, e.saddr_be, rev.vip_be));
    match translate(ctx, &e, Side::Destination, rev.vip_be, rev.vport_be, outer) {
        Ok(()) => Verdict::Done(Reason::IcmpError),
        Err(_) => Verdict::Done(Reason::RewriteFailed),
    }
}

/// Ingress of a client-facing interface: an ICMP error a client sends about a reply it got
/// from a frontend (a router on the client's side saying "fragmentation needed" about the
/// backend's data, say). It goes to the backend, about the packet the backend sent.
#[inline(always)]
pub fn from_client(ctx: &TcContext) -> Verdict {
    let Some(e) = parse::icmp_error(ctx) else {
        return Verdict::Pass;
    };
    // The flow's forward key: the quoted packet went frontend -> client.
    let key = CtKey4::new(
        e.inner_daddr_be,
        e.inner_dport_be,
        e.inner_saddr_be,
        e.inner_sport_be,
        e.inner_proto,
    );
    // SAFETY: plain integers, replaced whole.
    let Some(flow) = (unsafe { CONNTRACK.get(&key) }) else {
        return Verdict::Pass;
    };
    let (addr_be, port_be) = (flow.backend_addr_be, flow.backend_port_be);
    let outer = (e.daddr_be == e.inner_saddr_be).then_some((IP_DADDR, e.daddr_be, addr_be));
    match translate(ctx, &e, Side::Source, addr_be, port_be, outer) {
        Ok(()) => Verdict::Done(Reason::IcmpError),
        Err(_) => Verdict::Done(Reason::RewriteFailed),
    }
}

/// Rewrites one end of the quoted packet (address and port, its IPv4 header checksum and,
/// when quoted, its L4 checksum), the ICMP checksum over all of them, and optionally an outer
/// address (`(offset, old, new)`) with the outer header's checksum.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    e: &IcmpError,
    side: Side,
    new_addr_be: u32,
    new_port_be: u16,
    outer: Option<(usize, u32, u32)>,
) -> Result<(), i64> {
    let (old_addr_be, old_port_be, addr_off, port_off) = match side {
        Side::Source => (e.inner_saddr_be, e.inner_sport_be, IP_SADDR, L4_SPORT),
        Side::Destination => (e.inner_daddr_be, e.inner_dport_be, IP_DADDR, L4_DPORT),
    };
    let (old_addr, new_addr) = (u32::from_be(old_addr_be), u32::from_be(new_addr_be));
    // The quoted L4 checksum covers the ports and, through the pseudo header, the addresses.
    // A UDP checksum of zero means "none" and stays zero.
    if let Some(off) = parse::inner_l4_csum_off(ctx, e) {
        let old_be: u16 = ctx.load(off)?;
        if !(e.inner_proto == proto::UDP && old_be == 0) {
            let mut new = csum::replace4(u16::from_be(old_be), old_addr, new_addr);
            new = csum::replace2(new, u16::from_be(old_port_be), u16::from_be(new_port_be));
            if e.inner_proto == proto::UDP && new == 0 {
                new = 0xffff;
            }
            ctx.store(off, &new.to_be(), 0)?;
            ctx.l4_csum_replace(
                e.icmp_csum_off,
                old_be as u64,
                new.to_be() as u64,
                CSUM_WORD,
            )?;
        }
    }
    let inner_csum = csum::replace4(e.inner_csum, old_addr, new_addr);
    ctx.store(e.inner_off + addr_off, &new_addr_be, 0)?;
    ctx.store(e.inner_off + IP_CSUM, &inner_csum.to_be(), 0)?;
    ctx.l4_csum_replace(
        e.icmp_csum_off,
        old_addr_be as u64,
        new_addr_be as u64,
        CSUM_ADDR,
    )?;
    ctx.l4_csum_replace(
        e.icmp_csum_off,
        e.inner_csum.to_be() as u64,
        inner_csum.to_be() as u64,
        CSUM_WORD,
    )?;
    ctx.store(e.inner_l4_off + port_off, &new_port_be, 0)?;
    ctx.l4_csum_replace(
        e.icmp_csum_off,
        old_port_be as u64,
        new_port_be as u64,
        CSUM_WORD,
    )?;
    if let Some((off, old_be, new_be)) = outer {
        let ip_csum = parse::ip_csum(ctx).ok_or(-1i64)?;
        ctx.store(ETH_HLEN + off, &new_be, 0)?;
        let new_csum = csum::replace4(ip_csum, u32::from_be(old_be), u32::from_be(new_be));
        ctx.store(ETH_HLEN + IP_CSUM, &new_csum.to_be(), 0)?;
    }
    Ok(())
}
