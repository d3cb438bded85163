//! Bounds-checked header access. Offsets are named once here, so no rewrite can write a
//! field through another field's offset.

use ambassador_common::proto;
use aya_ebpf::programs::TcContext;

use crate::frame::Frame;

pub const ETH_HLEN: usize = 14;
/// Offset of the ethertype in the Ethernet header.
const ETH_TYPE: usize = 12;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IPv6 header field offsets, relative to the start of the IPv6 header.
const IP6_PAYLOAD_LEN: usize = 4;
const IP6_NEXT: usize = 6;
pub const IP6_HOP_LIMIT: usize = 7;
pub const IP6_SADDR: usize = 8;
pub const IP6_DADDR: usize = 24;
const IP6_HLEN: usize = 40;
/// IPv6 extension headers the parser walks (hop-by-hop, routing, destination options), and
/// the fragment header.
const IP6_HOPOPTS: u8 = 0;
const IP6_ROUTING: u8 = 43;
const IP6_FRAGMENT: u8 = 44;
const IP6_DSTOPTS: u8 = 60;
/// The most extension headers walked before the L4 header; a packet with more is left alone.
const IP6_MAX_EXT: usize = 4;

/// IPv4 header field offsets, relative to the start of the IPv4 header.
pub const IP_TOT_LEN: usize = 2;
pub const IP_FRAG_OFF: usize = 6;
pub const IP_TTL: usize = 8;
pub const IP_PROTO: usize = 9;
pub const IP_CSUM: usize = 10;
pub const IP_SADDR: usize = 12;
pub const IP_DADDR: usize = 16;
const IP_MIN_HLEN: usize = 20;
/// More-fragments flag and fragment offset in the IPv4 flags/offset field.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// L4 field offsets, relative to the start of the L4 header.
pub const L4_SPORT: usize = 0;
pub const L4_DPORT: usize = 2;
pub const TCP_FLAGS: usize = 13;
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The fields of an IP packet the datapath reads: `A` is `u32` for IPv4, `[u8; 16]` for
/// IPv6. Addresses and ports are in network byte order, exactly as on the wire.
pub struct IpPacket<A> {
    pub saddr_be: A,
    pub daddr_be: A,
    /// The L4 protocol (for IPv6: after the extension headers).
    pub proto: u8,
    /// Bytes of the IP packet (host order), used for byte counters.
    pub tot_len: u16,
    /// True for any fragment: more-fragments set or a non-zero offset.
    pub fragment: bool,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
}

/// An IPv4 packet.
pub type Ipv4Packet = IpPacket<u32>;
/// An IPv6 packet.
pub type Ipv6Packet = IpPacket<[u8; 16]>;

/// Ports and TCP flags; absent when the L4 header is truncated.
pub struct L4 {
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
    /// Offset of the L4 checksum from the start of the frame.
    pub csum_off: usize,
}

#[inline(always)]
fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &impl Frame, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// The frame's ethertype.
#[inline(always)]
pub fn ethertype(ctx: &impl Frame) -> Option<u16> {
    read::<u16>(ctx, ETH_TYPE).map(u16::from_be)
}

/// Makes the headers the parser reads in place (Ethernet and the fixed IPv4 header; the rest
/// is read and written with the kernel's copying helpers, which reach page fragments) part of
/// the linear buffer when the packet keeps them in page fragments, as frames from AF_PACKET
/// rings and tap devices, some drivers and some GRO paths may: direct packet access only sees
/// the linear part, and without this such packets would pass untranslated (Cilium's
/// revalidate-and-pull). One comparison when they are linear already, the usual case. A
/// failed pull leaves the packet as it was (it then passes untouched).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    const DIRECT: usize = ETH_HLEN + IP_MIN_HLEN;
    // Pointer plus constant against the end: the comparison the verifier accepts even
    // without CAP_PERFMON (it refuses subtracting packet pointers).
    if ctx.data() + DIRECT > ctx.data_end() && ctx.len() as usize >= DIRECT {
        let _ = ctx.pull_data(DIRECT as u32);
    }
}

/// The length of the IPv4 header `hdr` starts, if it is an IPv4 header of a valid length.
#[inline(always)]
fn header_len(hdr: &[u8; IP_MIN_HLEN]) -> Option<usize> {
    let ihl = ((hdr[0] & 0x0f) as usize) * 4;
    (hdr[0] >> 4 == 4 && ihl >= IP_MIN_HLEN).then_some(ihl)
}

/// The address at `off` (IP_SADDR or IP_DADDR) of the IPv4 header `hdr`, network byte order.
#[inline(always)]
fn addr_at(hdr: &[u8; IP_MIN_HLEN], off: usize) -> u32 {
    u32::from_ne_bytes([hdr[off], hdr[off + 1], hdr[off + 2], hdr[off + 3]])
}

/// Parses Ethernet + IPv4 for TCP or UDP; `None` for anything else (which the datapath
/// leaves alone, including IPv4 headers too broken for the stack to accept).
#[inline(always)]
pub fn ipv4(ctx: &impl Frame) -> Option<Ipv4Packet> {
    let ethertype = u16::from_be(read::<u16>(ctx, ETH_TYPE)?);
    if ethertype != ETH_P_IP {
        return None;
    }
    // One read covers the fixed header, so the verifier sees a single bounds check.
    let hdr: [u8; IP_MIN_HLEN] = read(ctx, ETH_HLEN)?;
    let ihl = header_len(&hdr)?;
    let proto = hdr[IP_PROTO];
    if proto != proto::TCP && proto != proto::UDP {
        return None;
    }
    let frag = u16::from_be_bytes([hdr[IP_FRAG_OFF], hdr[IP_FRAG_OFF + 1]]);
    Some(Ipv4Packet {
        saddr_be: addr_at(&hdr, IP_SADDR),
        daddr_be: addr_at(&hdr, IP_DADDR),
        proto,
        tot_len: u16::from_be_bytes([hdr[IP_TOT_LEN], hdr[IP_TOT_LEN + 1]]),
        fragment: frag & (IP_MF | IP_OFFSET) != 0,
        l4_off: ETH_HLEN + ihl,
    })
}

/// Parses Ethernet + IPv6, walking up to [`IP6_MAX_EXT`] extension headers, for TCP or UDP;
/// `None` for anything else (which the datapath leaves alone). A fragment header marks the
/// packet a fragment (only the first carries ports). Bounds-checked copies throughout: the L4
/// offset depends on the extension headers.
#[inline(always)]
pub fn ipv6(ctx: &impl Frame) -> Option<Ipv6Packet> {
    let ethertype = u16::from_be(read::<u16>(ctx, ETH_TYPE)?);
    if ethertype != ETH_P_IPV6 {
        return None;
    }
    // The fixed part and the addresses, each loaded where it is kept (no copy of the whole
    // header: the stack is short).
    let head: [u8; 8] = Frame::load(ctx, ETH_HLEN).ok()?;
    if head[0] >> 4 != 6 {
        return None;
    }
    let mut next = head[IP6_NEXT];
    let mut off = ETH_HLEN + IP6_HLEN;
    let mut fragment = false;
    for _ in 0..IP6_MAX_EXT {
        match next {
            IP6_HOPOPTS | IP6_ROUTING | IP6_DSTOPTS => {
                let ext: [u8; 2] = Frame::load(ctx, off).ok()?;
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            IP6_FRAGMENT => {
                let ext: [u8; 4] = Frame::load(ctx, off).ok()?;
                next = ext[0];
                // Offset (13 bits) and more-fragments: any of them set makes a fragment.
                fragment = u16::from_be_bytes([ext[2], ext[3]]) & 0xfff9 != 0;
                off += 8;
            }
            _ => break,
        }
    }
    if next != proto::TCP && next != proto::UDP {
        return None;
    }
    let payload = u16::from_be_bytes([head[IP6_PAYLOAD_LEN], head[IP6_PAYLOAD_LEN + 1]]);
    Some(Ipv6Packet {
        saddr_be: Frame::load(ctx, ETH_HLEN + IP6_SADDR).ok()?,
        daddr_be: Frame::load(ctx, ETH_HLEN + IP6_DADDR).ok()?,
        proto: next,
        tot_len: payload.saturating_add(IP6_HLEN as u16),
        fragment,
        l4_off: off,
    })
}

/// Reads ports (and TCP flags) through the kernel's bounds-checked copy: the L4 offset
/// depends on the IP options or extension headers, which direct packet access would make hard
/// to verify.
#[inline(always)]
pub fn l4<A>(ctx: &impl Frame, ip: &IpPacket<A>) -> Option<L4> {
    let off = ip.l4_off;
    if ip.proto == proto::TCP {
        let hdr: [u8; TCP_MIN_HLEN] = Frame::load(ctx, off).ok()?;
        Some(L4 {
            sport_be: u16::from_ne_bytes([hdr[L4_SPORT], hdr[L4_SPORT + 1]]),
            dport_be: u16::from_ne_bytes([hdr[L4_DPORT], hdr[L4_DPORT + 1]]),
            tcp_flags: hdr[TCP_FLAGS],
            csum_off: off + TCP_CSUM,
        })
    } else {
        let hdr: [u8; UDP_HLEN] = Frame::load(ctx, off).ok()?;
        Some(L4 {
            sport_be: u16::from_ne_bytes([hdr[L4_SPORT], hdr[L4_SPORT + 1]]),
            dport_be: u16::from_ne_bytes([hdr[L4_DPORT], hdr[L4_DPORT + 1]]),
            tcp_flags: 0,
            csum_off: off + UDP_CSUM,
        })
    }
}

/// IP protocol number of ICMP.
const IPPROTO_ICMP: u8 = 1;
/// ICMP error types that carry the offending packet's headers.
pub const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Code of "destination unreachable": fragmentation needed and DF set (path MTU discovery).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMP header length before the embedded packet.
const ICMP_HLEN: usize = 8;
/// Offset of the ICMP checksum in the ICMP header.
const ICMP_CSUM: usize = 2;

/// An ICMP or ICMPv6 error (destination unreachable, time exceeded, parameter problem,
/// packet too big) about a TCP or UDP packet: the outer addresses, and the embedded packet's
/// header fields and where they are. Addresses and ports in network byte order.
pub struct IcmpError<A> {
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The outer header's addresses.
    pub saddr_be: A,
    pub daddr_be: A,
    /// Offset of the ICMP checksum from the start of the frame.
    pub icmp_csum_off: usize,
    /// The embedded packet: its IP header's offset, addresses, protocol and (IPv4) checksum.
    pub inner_off: usize,
    pub inner_saddr_be: A,
    pub inner_daddr_be: A,
    pub inner_proto: u8,
    pub inner_csum: u16,
    /// Offset of the embedded L4 header, and its ports.
    pub inner_l4_off: usize,
    pub inner_sport_be: u16,
    pub inner_dport_be: u16,
}

/// Parses an ICMP error about a TCP or UDP packet (Ethernet + IPv4 + ICMP + the embedded IPv4
/// header and ports); `None` for anything else. Bounds-checked copies throughout: the offsets
/// depend on two IP header lengths.
#[inline(always)]
pub fn icmp_error(ctx: &TcContext) -> Option<IcmpError<u32>> {
    let ethertype = u16::from_be(read::<u16>(ctx, ETH_TYPE)?);
    if ethertype != ETH_P_IP {
        return None;
    }
    let hdr: [u8; IP_MIN_HLEN] = ctx.load(ETH_HLEN).ok()?;
    let ihl = header_len(&hdr)?;
    if hdr[IP_PROTO] != IPPROTO_ICMP {
        return None;
    }
    let icmp_off = ETH_HLEN + ihl;
    let [icmp_type, icmp_code]: [u8; 2] = ctx.load(icmp_off).ok()?;
    if !matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let inner_off = icmp_off + ICMP_HLEN;
    let inner: [u8; IP_MIN_HLEN] = ctx.load(inner_off).ok()?;
    let inner_ihl = header_len(&inner)?;
    let inner_proto = inner[IP_PROTO];
    if inner_proto != proto::TCP && inner_proto != proto::UDP {
        return None;
    }
    let inner_l4_off = inner_off + inner_ihl;
    let ports: [u8; 4] = ctx.load(inner_l4_off).ok()?;
    Some(IcmpError {
        icmp_type,
        icmp_code,
        saddr_be: addr_at(&hdr, IP_SADDR),
        daddr_be: addr_at(&hdr, IP_DADDR),
        icmp_csum_off: icmp_off + ICMP_CSUM,
        inner_off,
        inner_saddr_be: addr_at(&inner, IP_SADDR),
        inner_daddr_be: addr_at(&inner, IP_DADDR),
        inner_proto,
        inner_csum: u16::from_be_bytes([inner[IP_CSUM], inner[IP_CSUM + 1]]),
        inner_l4_off,
        inner_sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        inner_dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}

/// IP protocol number of ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 error types that carry the offending packet.
pub const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_PARAMETER_PROBLEM: u8 = 4;

/// Parses an ICMPv6 error about a TCP or UDP packet (Ethernet + IPv6 + ICMPv6 + the embedded
/// IPv6 header and ports); `None` for anything else, including errors whose outer or
/// embedded packet carries extension headers (rare on errors, and left alone).
#[inline(always)]
pub fn icmp6_error(ctx: &TcContext) -> Option<IcmpError<[u8; 16]>> {
    let head: [u8; 8] = ctx.load(ETH_HLEN).ok()?;
    if head[0] >> 4 != 6 || head[IP6_NEXT] != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp_off = ETH_HLEN + IP6_HLEN;
    let [icmp_type, icmp_code]: [u8; 2] = ctx.load(icmp_off).ok()?;
    if !matches!(
        icmp_type,
        ICMP6_DEST_UNREACH | ICMP6_PACKET_TOO_BIG | ICMP6_TIME_EXCEEDED | ICMP6_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let inner_off = icmp_off + ICMP_HLEN;
    let inner: [u8; 8] = ctx.load(inner_off).ok()?;
    let inner_proto = inner[IP6_NEXT];
    if inner[0] >> 4 != 6 || (inner_proto != proto::TCP && inner_proto != proto::UDP) {
        return None;
    }
    let inner_l4_off = inner_off + IP6_HLEN;
    let ports: [u8; 4] = ctx.load(inner_l4_off).ok()?;
    Some(IcmpError {
        icmp_type,
        icmp_code,
        saddr_be: ctx.load(ETH_HLEN + IP6_SADDR).ok()?,
        daddr_be: ctx.load(ETH_HLEN + IP6_DADDR).ok()?,
        icmp_csum_off: icmp_off + ICMP_CSUM,
        inner_off,
        inner_saddr_be: ctx.load(inner_off + IP6_SADDR).ok()?,
        inner_daddr_be: ctx.load(inner_off + IP6_DADDR).ok()?,
        inner_proto,
        inner_csum: 0,
        inner_l4_off,
        inner_sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        inner_dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}

/// The offset of the embedded packet's L4 checksum, when the ICMP error carries it (an ICMP
/// error need only carry the first 8 bytes of the L4 header: a UDP checksum always, a TCP one
/// only when the router quoted more).
#[inline(always)]
pub fn inner_l4_csum_off<A>(ctx: &TcContext, e: &IcmpError<A>) -> Option<usize> {
    let off = e.inner_l4_off
        + if e.inner_proto == proto::TCP {
            TCP_CSUM
        } else {
            UDP_CSUM
        };
    (off + 2 <= ctx.len() as usize).then_some(off)
}

/// Reads the IPv4 header checksum (host order value of the wire field).
#[inline(always)]
pub fn ip_csum(ctx: &impl Frame) -> Option<u16> {
    read::<u16>(ctx, ETH_HLEN + IP_CSUM).map(u16::from_be)
}
