//! The XDP datapath, for hosts that forward other machines' traffic (gateways): one program on
//! the client-facing interfaces and on the interfaces towards the backends. A frame to a
//! frontend is translated to a backend, a backend's reply back to its frontend (the same
//! maps, load balancing, connection table and counters as TC), and either is forwarded from
//! here: a FIB lookup gives the next hop's interface and addresses, the hop is counted, and
//! the frame is redirected (or sent back out, `XDP_TX`) without ever becoming a socket buffer.
//! Whatever the FIB cannot resolve (no neighbour entry yet, local delivery, a frame too big
//! for the next link), and whatever is for an interface that cannot transmit a redirected
//! frame (the daemon keeps that table, `XDP_TARGETS`), goes to the stack, already
//! translated, which forwards or answers it as for any packet: nothing is lost. Each outcome
//! is counted. Frames that are none of ours pass untouched.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibLookup, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};

use ambassador_common::xdp::{target, Forward};

use crate::{
    family::{per_family, Family},
    frame::Frame,
    maps::XDP_TARGETS,
    nat, stats,
    verdict::Verdict,
};

/// Offsets of the Ethernet addresses.
const ETH_DEST: usize = 0;
const ETH_SOURCE: usize = 6;

/// The program: a verdict for one frame.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    per_family!(translate, ctx)
        .flatten()
        .unwrap_or(xdp_action::XDP_PASS)
}

/// One IPv4 or IPv6 TCP or UDP frame (`None`: not one): to a frontend, or a backend's reply.
#[inline(always)]
fn translate<A: Family>(ctx: &XdpContext) -> Option<u32> {
    let verdict = match dnat::<A>(ctx)? {
        Verdict::Pass => rnat::<A>(ctx)?,
        handled => handled,
    };
    let Verdict::Done(reason) = verdict else {
        return Some(xdp_action::XDP_PASS);
    };
    stats::count_reason(reason);
    Some(if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        forward::<A>(ctx)
    })
}

/// A frame to a frontend goes to a backend. Each step is a function of its own (a BPF-to-BPF
/// call), as for TC, so their stack frames are not added up.
#[inline(never)]
fn dnat<A: Family>(ctx: &XdpContext) -> Option<Verdict> {
    let ip = &A::parse(ctx)?;
    Some(nat::dnat_packet(ctx, ip))
}

/// A backend's reply comes from the frontend.
#[inline(never)]
fn rnat<A: Family>(ctx: &XdpContext) -> Option<Verdict> {
    let ip = &A::parse(ctx)?;
    Some(nat::rnat_packet(ctx, ip))
}

/// Sends a translated frame on to its next hop, or to the stack when the FIB has no complete
/// answer or the next hop's interface cannot transmit a redirected frame (the kernel would
/// drop it: a veth whose peer has neither GRO nor an XDP program, a driver without
/// `ndo_xdp_xmit`). Whatever goes to the stack is untouched beyond the translation: the stack
/// counts the hop and writes the link addresses itself.
#[inline(never)]
fn forward<A: Family>(ctx: &XdpContext) -> u32 {
    let Some(ip) = A::parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: plain integers; every field the lookup reads is set below.
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    A::fib_addrs(&mut fib, ip.saddr_be, ip.daddr_be);
    fib.l4_protocol = ip.proto;
    fib.__bindgen_anon_1.tot_len = ip.tot_len;
    let ingress = ctx.ingress_ifindex() as u32;
    fib.ifindex = ingress;
    // SAFETY: the helper reads and fills `fib`, of the size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    let unforwarded = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => None,
        BPF_FIB_LKUP_RET_NO_NEIGH => Some(Forward::NoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Some(Forward::FragNeeded),
        _ => Some(Forward::NotForwarded),
    };
    if let Some(outcome) = unforwarded {
        stats::count_forward(outcome);
        return xdp_action::XDP_PASS;
    }
    if !can_send(ingress, fib.ifindex) {
        stats::count_forward(Forward::TargetCannotXmit);
        return xdp_action::XDP_PASS;
    }
    if A::count_hop(ctx).is_err() {
        stats::count_forward(Forward::NotForwarded);
        return xdp_action::XDP_PASS;
    }
    if ctx.store(ETH_DEST, &fib.dmac).is_err() || ctx.store(ETH_SOURCE, &fib.smac).is_err() {
        stats::count_forward(Forward::NotForwarded);
        return xdp_action::XDP_PASS;
    }
    if fib.ifindex == ingress {
        stats::count_forward(Forward::SentBack);
        xdp_action::XDP_TX
    } else {
        stats::count_forward(Forward::Redirected);
        // SAFETY: a plain helper call; the kernel checks the interface.
        unsafe { bpf_redirect(fib.ifindex, 0) as u32 }
    }
}

/// Whether a frame that came in on `ingress` can be redirected (or sent back) to `target`:
/// `target` transmits frames redirected from a driver (`XDP_TX` on a veth goes to its peer the
/// same way), or the program on `ingress` runs in generic mode (the stack transmits). The
/// target is asked first: it is the usual answer, and then one lookup a frame is enough.
#[inline(always)]
fn can_send(ingress: u32, target: u32) -> bool {
    // SAFETY: plain reads of `u32` values the daemon writes whole.
    let flags = |i: u32| unsafe { XDP_TARGETS.get(&i) }.copied().unwrap_or(0);
    flags(target) & target::NDO_XMIT != 0 || flags(ingress) & target::GENERIC != 0
}
