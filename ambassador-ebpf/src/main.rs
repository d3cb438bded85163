//! ambassador's datapaths. `tc`: DNAT of frontend traffic to a backend on a client-facing
//! interface's ingress, and the reverse rewrite of replies on its egress. `sock`: cgroup
//! programs that translate a socket's destination once, at `connect()` or `sendmsg()`.
//! `xdp`: both translations before the stack, on a gateway's interfaces, the frame forwarded
//! from there.
#![no_std]
#![no_main]

mod conntrack;
mod family;
mod frame;
mod health;
mod icmp;
mod lb;
mod maps;
mod monitor;
mod nat;
mod parse;
mod scratch;
mod sock;
mod stats;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, SockContext, TcContext, XdpContext},
};

/// Leave the packet to the next program or the stack (TC_ACT_UNSPEC; TCX_NEXT under TCX).
const TC_ACT_NEXT: i32 = -1;
/// Drop the packet.
const TC_ACT_SHOT: i32 = aya_ebpf::bindings::TC_ACT_SHOT as i32;

/// Ingress of a client-facing interface: a packet to a frontend goes to a backend.
#[classifier]
pub fn amb_tc_dnat(ctx: TcContext) -> i32 {
    verdict(nat::dnat(&ctx))
}

/// Egress of a client-facing interface: a backend's reply appears to come from the frontend.
#[classifier]
pub fn amb_tc_rnat(ctx: TcContext) -> i32 {
    verdict(nat::rnat(&ctx))
}

/// XDP on a gateway's interfaces (clients' and backends'): frames to a frontend go to a
/// backend, backends' replies come from the frontend, both forwarded from here.
#[xdp]
pub fn amb_xdp(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

/// cgroup `connect4`: a socket connecting to a frontend connects to a backend.
#[cgroup_sock_addr(connect4)]
pub fn amb_sk_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, sock::Call::Connect)
}

/// cgroup `sendmsg4`: a datagram to a frontend on an unconnected UDP socket goes to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn amb_sk_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward4(&ctx, sock::Call::Sendmsg)
}

/// cgroup `recvmsg4`: a datagram from a backend appears to come from its frontend.
#[cgroup_sock_addr(recvmsg4)]
pub fn amb_sk_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx, sock::Peer::Recvmsg)
}

/// cgroup `getpeername4`: a socket connected to a backend reports its frontend.
#[cgroup_sock_addr(getpeername4)]
pub fn amb_sk_getpeer4(ctx: SockAddrContext) -> i32 {
    sock::reverse4(&ctx, sock::Peer::Getpeername)
}

/// cgroup `connect6`: `connect4` for IPv6 sockets (and IPv4-mapped frontends).
#[cgroup_sock_addr(connect6)]
pub fn amb_sk_connect6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, sock::Call::Connect)
}

/// cgroup `sendmsg6`: `sendmsg4` for IPv6 sockets.
#[cgroup_sock_addr(sendmsg6)]
pub fn amb_sk_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::forward6(&ctx, sock::Call::Sendmsg)
}

/// cgroup `recvmsg6`: `recvmsg4` for IPv6 sockets.
#[cgroup_sock_addr(recvmsg6)]
pub fn amb_sk_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx, sock::Peer::Recvmsg)
}

/// cgroup `getpeername6`: `getpeername4` for IPv6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn amb_sk_getpeer6(ctx: SockAddrContext) -> i32 {
    sock::reverse6(&ctx, sock::Peer::Getpeername)
}

/// cgroup `sock_release`: a closed socket's translation is forgotten.
#[cgroup_sock(sock_release)]
pub fn amb_sk_release(ctx: SockContext) -> i32 {
    sock::release(&ctx)
}

#[inline(always)]
fn verdict(result: verdict::Verdict) -> i32 {
    match result {
        verdict::Verdict::Pass => TC_ACT_NEXT,
        verdict::Verdict::Done(reason) => {
            stats::count_reason(reason);
            if reason.is_drop() {
                TC_ACT_SHOT
            } else {
                TC_ACT_NEXT
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
