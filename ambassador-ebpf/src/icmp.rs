//! ICMP and ICMPv6 errors about translated flows, translated too. A router on the way to a
//! backend that says "fragmentation needed" (IPv6: "packet too big"), or a backend's host that
//! says "port unreachable", quotes the packet as the backend saw it (client -> backend); the
//! client's stack matches an error to a socket by that quote, and its socket is connected to
//! the frontend, so untranslated the error is ignored and path MTU discovery through a
//! frontend stalls (a black hole). Both directions are handled: errors on their way to a
//! client (the quote's destination goes back to the frontend) and errors a client sends about
//! a reply (the quote's source goes back to the backend, and so does the error's destination,
//! the frontend).

use ambassador_common::{csum, monitor::datapath, proto, CtKey, Reason};
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, helpers::bpf_ktime_get_ns, programs::TcContext};

use crate::{
    conntrack,
    family::{per_family, word, Family},
    parse::{self, IcmpError, ETH_HLEN, IP_CSUM, L4_DPORT, L4_SPORT},
    scratch::{EGRESS, INGRESS},
    verdict::{Side, Verdict},
};

/// Sizes of the fields a checksum update replaces (the low bits of the helper's flags).
const CSUM_ADDR: u64 = 4;
/// See [`CSUM_ADDR`].
const CSUM_WORD: u64 = 2;

/// What differs between ICMP and ICMPv6 errors.
pub trait IcmpFamily: Family {
    /// Offsets of the addresses in the (outer or quoted) IP header, from its start.
    const HDR_SADDR: usize;
    /// See [`IcmpFamily::HDR_SADDR`].
    const HDR_DADDR: usize;
    /// The frame's ICMP error of this family, if it is one about a TCP or UDP packet.
    fn parse_error(ctx: &TcContext) -> Option<IcmpError<Self>>;
    /// Whether the error says the quoted packet's destination refused it ("destination
    /// unreachable", except IPv4's "fragmentation needed"): about a new flow's SYN, that
    /// re-points the flow, as a RST does.
    fn is_refusal(e: &IcmpError<Self>) -> bool;
    /// The quoted address changed from `old` to `new` at `off`: writes it, and keeps the
    /// quoted header's checksum (IPv4) and the ICMP checksum correct.
    fn rewrite_quoted(
        ctx: &TcContext,
        e: &IcmpError<Self>,
        off: usize,
        old: Self,
        new: Self,
    ) -> Result<(), i64>;
    /// The outer address changed from `old` to `new` at `off` (from the frame's start):
    /// writes it, and keeps the outer header's checksum (IPv4) or the ICMPv6 checksum (its
    /// pseudo header) correct.
    fn rewrite_outer(
        ctx: &TcContext,
        e: &IcmpError<Self>,
        off: usize,
        old: Self,
        new: Self,
    ) -> Result<(), i64>;
    /// A checksum over `old` changed to one over `new` (RFC 1624, word by word).
    fn csum_replace(check: u16, old: Self, new: Self) -> u16;
}

impl IcmpFamily for u32 {
    const HDR_SADDR: usize = parse::IP_SADDR;
    const HDR_DADDR: usize = parse::IP_DADDR;

    #[inline(always)]
    fn parse_error(ctx: &TcContext) -> Option<IcmpError<u32>> {
        parse::icmp_error(ctx)
    }

    fn is_refusal(e: &IcmpError<u32>) -> bool {
        e.icmp_type == parse::ICMP_DEST_UNREACH && e.icmp_code != parse::ICMP_FRAG_NEEDED
    }

    #[inline(always)]
    fn rewrite_quoted(
        ctx: &TcContext,
        e: &IcmpError<u32>,
        off: usize,
        old: u32,
        new: u32,
    ) -> Result<(), i64> {
        let inner_csum = csum::replace4(e.inner_csum, u32::from_be(old), u32::from_be(new));
        ctx.store(e.inner_off + off, &new, 0)?;
        ctx.store(e.inner_off + IP_CSUM, &inner_csum.to_be(), 0)?;
        ctx.l4_csum_replace(e.icmp_csum_off, old as u64, new as u64, CSUM_ADDR)?;
        ctx.l4_csum_replace(
            e.icmp_csum_off,
            e.inner_csum.to_be() as u64,
            inner_csum.to_be() as u64,
            CSUM_WORD,
        )?;
        Ok(())
    }

    #[inline(always)]
    fn rewrite_outer(
        ctx: &TcContext,
        _e: &IcmpError<u32>,
        off: usize,
        old: u32,
        new: u32,
    ) -> Result<(), i64> {
        let ip_csum = parse::ip_csum(ctx).ok_or(-1i64)?;
        ctx.store(off, &new, 0)?;
        let new_csum = csum::replace4(ip_csum, u32::from_be(old), u32::from_be(new));
        ctx.store(ETH_HLEN + IP_CSUM, &new_csum.to_be(), 0)?;
        Ok(())
    }

    fn csum_replace(check: u16, old: u32, new: u32) -> u16 {
        csum::replace4(check, u32::from_be(old), u32::from_be(new))
    }
}

impl IcmpFamily for [u8; 16] {
    const HDR_SADDR: usize = parse::IP6_SADDR;
    const HDR_DADDR: usize = parse::IP6_DADDR;

    #[inline(always)]
    fn parse_error(ctx: &TcContext) -> Option<IcmpError<[u8; 16]>> {
        parse::icmp6_error(ctx)
    }

    /// "Packet too big" is a type of its own in ICMPv6.
    fn is_refusal(e: &IcmpError<[u8; 16]>) -> bool {
        e.icmp_type == parse::ICMP6_DEST_UNREACH
    }

    /// No quoted header checksum; the address is four words of the ICMPv6 checksum.
    #[inline(always)]
    fn rewrite_quoted(
        ctx: &TcContext,
        e: &IcmpError<[u8; 16]>,
        off: usize,
        old: [u8; 16],
        new: [u8; 16],
    ) -> Result<(), i64> {
        ctx.store(e.inner_off + off, &new, 0)?;
        for i in 0..4 {
            let (o, n) = (word(&old, i), word(&new, i));
            if o != n {
                ctx.l4_csum_replace(e.icmp_csum_off, o as u64, n as u64, CSUM_ADDR)?;
            }
        }
        Ok(())
    }

    /// The ICMPv6 checksum covers the outer addresses through its pseudo header.
    #[inline(always)]
    fn rewrite_outer(
        ctx: &TcContext,
        e: &IcmpError<[u8; 16]>,
        off: usize,
        old: [u8; 16],
        new: [u8; 16],
    ) -> Result<(), i64> {
        for i in 0..4 {
            let (o, n) = (word(&old, i), word(&new, i));
            if o != n {
                ctx.l4_csum_replace(
                    e.icmp_csum_off,
                    o as u64,
                    n as u64,
                    BPF_F_PSEUDO_HDR as u64 | CSUM_ADDR,
                )?;
            }
        }
        ctx.store(off, &new, 0)?;
        Ok(())
    }

    fn csum_replace(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
        let mut c = check;
        for i in 0..4 {
            c = csum::replace4(c, u32::from_be(word(&old, i)), u32::from_be(word(&new, i)));
        }
        c
    }
}

/// Egress of a client-facing interface: an ICMP or ICMPv6 error on its way to a client.
#[inline(always)]
pub fn to_client(ctx: &TcContext) -> Verdict {
    per_family!(to_client_of, ctx).unwrap_or(Verdict::Pass)
}

/// An error about a packet the client sent through a frontend. A "destination unreachable"
/// about a flow that never got an answer is the backend refusing it (failover, as for a
/// RST); anything else is translated back to the frontend. One function per family (a
/// BPF-to-BPF call): each family's copies of headers get a stack frame of their own, within
/// BPF's 512 bytes.
#[inline(never)]
fn to_client_of<A: IcmpFamily>(ctx: &TcContext) -> Verdict {
    let Some(e) = &A::parse_error(ctx) else {
        return Verdict::Pass;
    };
    let Some(s) = conntrack::scratch::<A>(EGRESS) else {
        return Verdict::Pass;
    };
    // The key of the backend's replies to the quoted (client -> backend) packet.
    s.key = answer_key(e);
    let Some(rev) = conntrack::reverse_of::<A>(&s.key) else {
        return Verdict::Pass;
    };
    if e.inner_proto == proto::TCP
        && A::is_refusal(e)
        && conntrack::refused(s, &rev, unsafe { bpf_ktime_get_ns() }, datapath::TC)
    {
        return Verdict::Done(Reason::Failover);
    }
    // An error from the backend itself comes from the frontend; a router's keeps its source.
    let outer = e
        .saddr_be
        .same(e.inner_daddr_be)
        .then_some((A::SADDR_OFF, e.saddr_be, rev.vip_be));
    match translate(ctx, e, Side::Destination, rev.vip_be, rev.vport_be, outer) {
        Ok(()) => Verdict::Done(Reason::IcmpError),
        Err(_) => Verdict::Done(Reason::RewriteFailed),
    }
}

/// Ingress of a client-facing interface: an ICMP or ICMPv6 error a client sends about a
/// reply it got from a frontend (a router on the client's side saying "fragmentation needed"
/// about the backend's data, say). It goes to the backend, about the packet the backend sent.
#[inline(always)]
pub fn from_client(ctx: &TcContext) -> Verdict {
    per_family!(from_client_of, ctx).unwrap_or(Verdict::Pass)
}

/// One function per family, like [`to_client_of`].
#[inline(never)]
fn from_client_of<A: IcmpFamily>(ctx: &TcContext) -> Verdict {
    let Some(e) = &A::parse_error(ctx) else {
        return Verdict::Pass;
    };
    let Some(s) = conntrack::scratch::<A>(INGRESS) else {
        return Verdict::Pass;
    };
    // The flow's forward key: the quoted packet went frontend -> client.
    s.key = answer_key(e);
    // SAFETY: plain integers, replaced whole.
    let Some(flow) = (unsafe { A::conntrack().get(&s.key) }) else {
        return Verdict::Pass;
    };
    let (addr_be, port_be) = (flow.backend_addr_be, flow.backend_port_be);
    let outer = e
        .daddr_be
        .same(e.inner_saddr_be)
        .then_some((A::DADDR_OFF, e.daddr_be, addr_be));
    match translate(ctx, e, Side::Source, addr_be, port_be, outer) {
        Ok(()) => Verdict::Done(Reason::IcmpError),
        Err(_) => Verdict::Done(Reason::RewriteFailed),
    }
}

/// The connection-table key of a packet going the other way than the quoted one.
#[inline(always)]
fn answer_key<A: IcmpFamily>(e: &IcmpError<A>) -> CtKey<A> {
    CtKey::new(
        e.inner_daddr_be,
        e.inner_dport_be,
        e.inner_saddr_be,
        e.inner_sport_be,
        e.inner_proto,
    )
}

/// Rewrites one end of the quoted packet (address and port, its IPv4 header checksum and,
/// when quoted, its L4 checksum), the ICMP checksum over all of them, and optionally an outer
/// address (`(offset from the frame's start, old, new)`) with what covers it.
#[inline(always)]
fn translate<A: IcmpFamily>(
    ctx: &TcContext,
    e: &IcmpError<A>,
    side: Side,
    new_addr_be: A,
    new_port_be: u16,
    outer: Option<(usize, A, A)>,
) -> Result<(), i64> {
    let (old_addr_be, old_port_be, addr_off, port_off) = match side {
        Side::Source => (e.inner_saddr_be, e.inner_sport_be, A::HDR_SADDR, L4_SPORT),
        Side::Destination => (e.inner_daddr_be, e.inner_dport_be, A::HDR_DADDR, L4_DPORT),
    };
    // The quoted L4 checksum covers the ports and, through the pseudo header, the addresses.
    // A UDP checksum of zero (IPv4) means "none" and stays zero.
    if let Some(off) = parse::inner_l4_csum_off(ctx, e) {
        let old_be: u16 = ctx.load(off)?;
        if !(e.inner_proto == proto::UDP && old_be == 0) {
            let mut new = A::csum_replace(u16::from_be(old_be), old_addr_be, new_addr_be);
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
    A::rewrite_quoted(ctx, e, addr_off, old_addr_be, new_addr_be)?;
    ctx.store(e.inner_l4_off + port_off, &new_port_be, 0)?;
    ctx.l4_csum_replace(
        e.icmp_csum_off,
        old_port_be as u64,
        new_port_be as u64,
        CSUM_WORD,
    )?;
    if let Some((off, old_be, new_be)) = outer {
        A::rewrite_outer(ctx, e, off, old_be, new_be)?;
    }
    Ok(())
}
