//! The two address families as one interface, so the load balancer, the connection table and
//! the translation are written once: `u32` is IPv4, `[u8; 16]` is IPv6 (network byte order
//! both). Each family has its own maps of the same shapes (Cilium's way); what differs is
//! where the addresses sit in the header and what a rewrite must keep correct (IPv4 has a
//! header checksum, IPv6 none; both L4 checksums cover the addresses through the pseudo
//! header).

use ambassador_common::{
    csum, Addr, Backend, CtEntry, CtKey, RevNat, ServiceKey, ServiceValue4, SockKey, SockNat,
};
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_F_PSEUDO_HDR},
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use aya_log_ebpf::macro_support::{Argument, IpFormatter};

use crate::{
    frame::Frame,
    maps::{
        BACKENDS, BACKENDS6, CONNTRACK, CONNTRACK6, REVERSE_NAT, REVERSE_NAT6, SCRATCH, SCRATCH6,
        SERVICES, SERVICES6, SOCK_FORWARD, SOCK_FORWARD6, SOCK_REVERSE, SOCK_REVERSE6,
    },
    parse::{
        self, IpPacket, ETH_HLEN, IP6_DADDR, IP6_HOP_LIMIT, IP6_SADDR, IP_CSUM, IP_DADDR, IP_SADDR,
        IP_TTL,
    },
    scratch::Scratch,
};

/// Size of one address word in a checksum update (the low bits of the helper's flags).
const CSUM_WORD: u64 = 4;

/// An address family of the datapath.
pub trait Family: Addr {
    /// How the debug log prints an address (`{:i}`).
    type Shown: Copy + IpFormatter + Argument;
    /// Offsets of the source and destination addresses from the start of the frame.
    const SADDR_OFF: usize;
    /// See [`Family::SADDR_OFF`].
    const DADDR_OFF: usize;

    /// Frontends.
    fn services() -> &'static HashMap<ServiceKey<Self>, ServiceValue4>;
    /// Backends by id.
    fn backends() -> &'static HashMap<u32, Backend<Self>>;
    /// Forward connection table.
    fn conntrack() -> &'static LruHashMap<CtKey<Self>, CtEntry<Self>>;
    /// Reverse NAT.
    fn reverse_nat() -> &'static LruHashMap<CtKey<Self>, RevNat<Self>>;
    /// Scratch space for connection-table keys and values.
    fn scratch() -> &'static PerCpuArray<Scratch<Self>>;
    /// Socket datapath: (socket, frontend) -> backend of an unconnected socket.
    fn sock_forward() -> &'static LruHashMap<SockKey<Self>, SockNat<Self>>;
    /// Socket datapath: (socket, backend) -> frontend.
    fn sock_reverse() -> &'static LruHashMap<SockKey<Self>, SockNat<Self>>;
    /// The packet's IP header of this family, if it is one (TCP or UDP).
    fn parse(ctx: &impl Frame) -> Option<IpPacket<Self>>;
    /// The address as the debug log prints it.
    fn shown(self) -> Self::Shown;
    /// Whether two addresses are equal (word by word: BPF has no `memcmp`).
    fn same(self, other: Self) -> bool;
    /// 4 or 6.
    const FAMILY: u8;
    /// The address as 16 network-order bytes (IPv4 in the first 4), and its family (4 or 6).
    fn octets(self) -> ([u8; 16], u8);
    /// Writes the address into `to` as [`Family::octets`] gives it, in place.
    fn put_octets(&self, to: &mut [u8; 16]);
    /// Writes `new` over the address `old` at `off` (SADDR_OFF or DADDR_OFF), with the L4
    /// checksum at `csum_off` (`l4_flags`: extra flags of its update) and any header checksum
    /// kept correct.
    fn rewrite_addr(
        ctx: &impl Frame,
        off: usize,
        csum_off: usize,
        old: Self,
        new: Self,
        l4_flags: u64,
    ) -> Result<(), i64>;
    /// Fills the family and the addresses of a FIB lookup for a packet `src` -> `dst`.
    fn fib_addrs(fib: &mut bpf_fib_lookup, src: Self, dst: Self);
    /// Counts one hop (IPv4's TTL, with the header checksum; IPv6's hop limit), as forwarding
    /// does; `Err` when it is spent (the stack answers with "time exceeded").
    fn count_hop(ctx: &impl Frame) -> Result<(), i64>;
}

/// `AF_INET` and `AF_INET6`, as a FIB lookup names the family.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

impl Family for u32 {
    const FAMILY: u8 = 4;
    type Shown = u32;
    const SADDR_OFF: usize = ETH_HLEN + IP_SADDR;
    const DADDR_OFF: usize = ETH_HLEN + IP_DADDR;

    fn services() -> &'static HashMap<ServiceKey<Self>, ServiceValue4> {
        &SERVICES
    }
    fn backends() -> &'static HashMap<u32, Backend<Self>> {
        &BACKENDS
    }
    fn conntrack() -> &'static LruHashMap<CtKey<Self>, CtEntry<Self>> {
        &CONNTRACK
    }
    fn reverse_nat() -> &'static LruHashMap<CtKey<Self>, RevNat<Self>> {
        &REVERSE_NAT
    }
    fn scratch() -> &'static PerCpuArray<Scratch<Self>> {
        &SCRATCH
    }
    fn sock_forward() -> &'static LruHashMap<SockKey<Self>, SockNat<Self>> {
        &SOCK_FORWARD
    }
    fn sock_reverse() -> &'static LruHashMap<SockKey<Self>, SockNat<Self>> {
        &SOCK_REVERSE
    }
    #[inline(always)]
    fn parse(ctx: &impl Frame) -> Option<IpPacket<u32>> {
        parse::ipv4(ctx)
    }
    fn shown(self) -> u32 {
        u32::from_be(self)
    }
    fn same(self, other: u32) -> bool {
        self == other
    }
    #[inline(always)]
    fn octets(self) -> ([u8; 16], u8) {
        let mut o = [0; 16];
        o[..4].copy_from_slice(&self.to_ne_bytes());
        (o, Self::FAMILY)
    }
    #[inline(always)]
    fn put_octets(&self, to: &mut [u8; 16]) {
        // Word by word: no `memset` or `memcpy` call (a BPF-to-BPF call with a frame).
        let words = to.as_mut_ptr().cast::<u32>();
        // SAFETY: 16 bytes, written as four unaligned words.
        unsafe {
            words.write_unaligned(*self);
            for i in 1..4 {
                words.add(i).write_unaligned(0);
            }
        }
    }

    #[inline(always)]
    fn rewrite_addr(
        ctx: &impl Frame,
        off: usize,
        csum_off: usize,
        old: u32,
        new: u32,
        l4_flags: u64,
    ) -> Result<(), i64> {
        let ip_csum = parse::ip_csum(ctx).ok_or(-1i64)?;
        Frame::l4_csum_replace(
            ctx,
            csum_off,
            old as u64,
            new as u64,
            BPF_F_PSEUDO_HDR as u64 | l4_flags | CSUM_WORD,
        )?;
        Frame::store(ctx, off, &new)?;
        let new_csum = csum::replace4(ip_csum, u32::from_be(old), u32::from_be(new));
        Frame::store(ctx, ETH_HLEN + IP_CSUM, &new_csum.to_be())?;
        Ok(())
    }

    fn fib_addrs(fib: &mut bpf_fib_lookup, src: u32, dst: u32) {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src;
        fib.__bindgen_anon_4.ipv4_dst = dst;
    }

    #[inline(always)]
    fn count_hop(ctx: &impl Frame) -> Result<(), i64> {
        // TTL and protocol are one 16-bit word of the header checksum.
        let word: [u8; 2] = ctx.load(ETH_HLEN + IP_TTL)?;
        if word[0] <= 1 {
            return Err(-1);
        }
        let ip_csum = parse::ip_csum(ctx).ok_or(-1i64)?;
        let old = u16::from_be_bytes(word);
        let new = old - 0x100;
        ctx.store(ETH_HLEN + IP_TTL, &(word[0] - 1))?;
        let new_csum = csum::replace2(ip_csum, old, new);
        ctx.store(ETH_HLEN + IP_CSUM, &new_csum.to_be())
    }
}

impl Family for [u8; 16] {
    const FAMILY: u8 = 6;
    type Shown = [u8; 16];
    const SADDR_OFF: usize = ETH_HLEN + IP6_SADDR;
    const DADDR_OFF: usize = ETH_HLEN + IP6_DADDR;

    fn services() -> &'static HashMap<ServiceKey<Self>, ServiceValue4> {
        &SERVICES6
    }
    fn backends() -> &'static HashMap<u32, Backend<Self>> {
        &BACKENDS6
    }
    fn conntrack() -> &'static LruHashMap<CtKey<Self>, CtEntry<Self>> {
        &CONNTRACK6
    }
    fn reverse_nat() -> &'static LruHashMap<CtKey<Self>, RevNat<Self>> {
        &REVERSE_NAT6
    }
    fn scratch() -> &'static PerCpuArray<Scratch<Self>> {
        &SCRATCH6
    }
    fn sock_forward() -> &'static LruHashMap<SockKey<Self>, SockNat<Self>> {
        &SOCK_FORWARD6
    }
    fn sock_reverse() -> &'static LruHashMap<SockKey<Self>, SockNat<Self>> {
        &SOCK_REVERSE6
    }
    #[inline(always)]
    fn parse(ctx: &impl Frame) -> Option<IpPacket<[u8; 16]>> {
        parse::ipv6(ctx)
    }
    fn shown(self) -> [u8; 16] {
        self
    }
    #[inline(always)]
    fn octets(self) -> ([u8; 16], u8) {
        (self, Self::FAMILY)
    }
    #[inline(always)]
    fn put_octets(&self, to: &mut [u8; 16]) {
        let (from, words) = (self.as_ptr().cast::<u32>(), to.as_mut_ptr().cast::<u32>());
        // SAFETY: 16 bytes each side, copied as four unaligned words.
        unsafe {
            for i in 0..4 {
                words.add(i).write_unaligned(from.add(i).read_unaligned());
            }
        }
    }
    #[inline(always)]
    fn same(self, other: [u8; 16]) -> bool {
        (0..4).all(|i| word(&self, i) == word(&other, i))
    }

    /// No header checksum; the pseudo header's address is four words of the L4 checksum.
    #[inline(always)]
    fn rewrite_addr(
        ctx: &impl Frame,
        off: usize,
        csum_off: usize,
        old: [u8; 16],
        new: [u8; 16],
        l4_flags: u64,
    ) -> Result<(), i64> {
        for i in 0..4 {
            let (o, n) = (word(&old, i), word(&new, i));
            if o != n {
                Frame::l4_csum_replace(
                    ctx,
                    csum_off,
                    o as u64,
                    n as u64,
                    BPF_F_PSEUDO_HDR as u64 | l4_flags | CSUM_WORD,
                )?;
            }
        }
        Frame::store(ctx, off, &new)?;
        Ok(())
    }

    fn fib_addrs(fib: &mut bpf_fib_lookup, src: [u8; 16], dst: [u8; 16]) {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(&src);
        fib.__bindgen_anon_4.ipv6_dst = words(&dst);
    }

    /// No header checksum.
    #[inline(always)]
    fn count_hop(ctx: &impl Frame) -> Result<(), i64> {
        let hops: u8 = ctx.load(ETH_HLEN + IP6_HOP_LIMIT)?;
        if hops <= 1 {
            return Err(-1);
        }
        ctx.store(ETH_HLEN + IP6_HOP_LIMIT, &(hops - 1))
    }
}

/// Word `i` (0..4) of an IPv6 address, as it lies in memory.
#[inline(always)]
pub fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// The four words of an IPv6 address, as it lies in memory (as the kernel's `__u32[4]`
/// fields hold it).
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    [word(a, 0), word(a, 1), word(a, 2), word(a, 3)]
}

/// `$f::<A>($ctx)` for the frame's address family, by its ethertype: `Some` of its result for
/// IPv4 (`u32`) and IPv6 (`[u8; 16]`), `None` for any other frame. The one place where an
/// ethertype picks a [`Family`].
macro_rules! per_family {
    ($f:ident, $ctx:expr) => {
        match $crate::parse::ethertype($ctx) {
            Some($crate::parse::ETH_P_IP) => Some($f::<u32>($ctx)),
            Some($crate::parse::ETH_P_IPV6) => Some($f::<[u8; 16]>($ctx)),
            _ => None,
        }
    };
}
pub(crate) use per_family;
