//! The socket datapath: cgroup programs that translate at `connect()` and `sendmsg()`, so a
//! socket is connected (or sends) straight to a backend and no packet is ever rewritten; and
//! the reverse at `recvmsg()` and `getpeername()`, so the application sees the frontend.
//!
//! Backends come from the same service, slot and backend maps as the TC datapath (weights,
//! terminating backends, counters per service). A socket translated here carries a backend's
//! address from then on, so the TC programs never match it again.
//!
//! The logic is written once, generic over the address family; the entry points only read
//! and write the context's address. An IPv6 socket dialling an IPv4-mapped address
//! (`::ffff:10.96.0.1`, what dual-stack runtimes do for an IPv4 name) is an IPv4 translation:
//! the kernel sends IPv4 packets for it and the `*4` hooks never see it.

use ambassador_common::{
    monitor::{datapath, kind},
    proto, Backend, Reason, SockKey, SockNat, SOCK_CONNECTED,
};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};
use aya_log_ebpf::debug;

use crate::{
    family::{self, Family},
    lb, monitor, stats,
};

/// Return value of a cgroup socket program: let the call go on.
pub const ALLOW: i32 = 1;
/// Return value of a cgroup socket program: fail the call (with the errno set by
/// `bpf_set_retval`).
const REJECT: i32 = 0;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// errno of a `connect()` or `sendmsg()` to a frontend with no backend: as if nothing listened.
const ECONNREFUSED: i32 = 111;
/// errno when the socket's reverse entry cannot be written.
const ENOMEM: i32 = 12;
/// An unconnected socket's entries are refreshed at most this often.
const REFRESH_NS: u64 = 1_000_000_000;
/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:0:0/96`) as it lies in memory.
const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Which call is being translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `connect()` of a TCP or UDP socket.
    Connect,
    /// `sendmsg()`/`sendto()` with an address, on an unconnected UDP socket.
    Sendmsg,
}

/// Which call is being answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `recvmsg()`/`recvfrom()` on a UDP socket: the datagram's source.
    Recvmsg,
    /// `getpeername()`: the socket's peer.
    Getpeername,
}

/// The context's address words in memory order (`user_ip6`, or `dst_ip6` of a socket).
#[inline(always)]
fn bytes(w: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for i in 0..4 {
        out[4 * i..4 * i + 4].copy_from_slice(&w[i].to_ne_bytes());
    }
    out
}

/// The IPv4 address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) stands for.
#[inline(always)]
fn mapped_v4(w: [u32; 4]) -> Option<u32> {
    (w[0] == 0 && w[1] == 0 && w[2] == MAPPED_WORD).then_some(w[3])
}

/// The call's destination (`user_ip6`), each word read whole as the verifier wants.
#[inline(always)]
fn user_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: the context the kernel passed.
    unsafe {
        [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ]
    }
}

/// Writes the call's destination (`user_ip6`) word by word.
#[inline(always)]
fn set_user_ip6(sa: *mut bpf_sock_addr, w: [u32; 4], port_be: u16) {
    // SAFETY: as above; user_port is written as the 32-bit field it is.
    unsafe {
        (*sa).user_ip6[0] = w[0];
        (*sa).user_ip6[1] = w[1];
        (*sa).user_ip6[2] = w[2];
        (*sa).user_ip6[3] = w[3];
        (*sa).user_port = u32::from(port_be);
    }
}

/// The call's IP protocol, if the datapath handles it.
#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<u8> {
    // SAFETY: the context the kernel passed.
    match unsafe { (*sa).protocol } {
        6 => Some(proto::TCP),
        17 => Some(proto::UDP),
        _ => None,
    }
}

/// `connect4` and `sendmsg4`: a frontend destination becomes a backend.
#[inline(always)]
pub fn forward4(ctx: &SockAddrContext, call: Call) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    // SAFETY: the context the kernel passed; each field is read whole, as the verifier wants.
    let (vip_be, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let mut to = None;
    let done = translate::<u32>(
        ctx,
        call,
        &Dest {
            addr_be: vip_be,
            port_be,
            proto,
        },
        &mut to,
    );
    match done.map(|()| to) {
        Ok(Some(backend)) => {
            // SAFETY: as above; user_port is written as the 32-bit field it is.
            unsafe {
                (*sa).user_ip4 = backend.addr_be;
                (*sa).user_port = u32::from(backend.port_be);
            }
            ALLOW
        }
        Ok(None) => ALLOW,
        Err(Rejected) => REJECT,
    }
}

/// `connect6` and `sendmsg6`: the same for IPv6 sockets; an IPv4-mapped frontend becomes an
/// IPv4-mapped backend.
#[inline(always)]
pub fn forward6(ctx: &SockAddrContext, call: Call) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let w = user_ip6(sa);
    // SAFETY: as above.
    let port_be = unsafe { (*sa).user_port as u16 };
    let written = match mapped_v4(w) {
        Some(addr_be) => {
            let mut to = None;
            let dest = Dest {
                addr_be,
                port_be,
                proto,
            };
            translate::<u32>(ctx, call, &dest, &mut to)
                .map(|()| to.map(|b| ([0, 0, MAPPED_WORD, b.addr_be], b.port_be)))
        }
        None => {
            let mut to = None;
            let dest = Dest {
                addr_be: bytes(w),
                port_be,
                proto,
            };
            translate::<[u8; 16]>(ctx, call, &dest, &mut to)
                .map(|()| to.map(|b| (family::words(&b.addr_be), b.port_be)))
        }
    };
    match written {
        Ok(Some((w, port_be))) => {
            set_user_ip6(sa, w, port_be);
            ALLOW
        }
        Ok(None) => ALLOW,
        Err(Rejected) => REJECT,
    }
}

/// Writes into `to` the backend a call to `dest` goes to instead (left `None`: not a frontend),
/// with the socket's entries written; `Err`: the call must fail (its errno is set).
/// A BPF function of its own: an IPv6 program holds both families' translations, and their
/// frames side by side exceed the 512-byte stack. The backend goes out through `to`, never
/// as a returned value: the compiler may return a large value through a pointer to the
/// caller's stack, which 6.1's verifier refuses ("cannot return stack pointer to the caller";
/// 6.12's accepts it; the kernel matrix boots both).
#[inline(never)]
fn translate<A: Family>(
    ctx: &SockAddrContext,
    call: Call,
    dest: &Dest<A>,
    to: &mut Option<Backend<A>>,
) -> Result<(), Rejected> {
    let Dest {
        addr_be: vip_be,
        port_be,
        proto,
    } = *dest;
    let Some(svc) = lb::frontend::<A>(vip_be, port_be, proto) else {
        return Ok(());
    };
    // SAFETY: the helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let now = unsafe { bpf_ktime_get_ns() };
    let fwd_key = SockKey::new(cookie, vip_be, port_be);
    let kept = match call {
        Call::Sendmsg => kept_backend::<A>(&fwd_key, now),
        Call::Connect => None,
    };
    let (backend_id, backend, up_to_date) = match kept {
        Some(Kept::Fresh(id, b)) => (id, b, true),
        Some(Kept::Stale(id, b)) => (id, b, false),
        None => match lb::pick_backend::<A>(svc.service_id, svc.count, 0, lb::Retry::Never) {
            Ok((id, b)) => (id, b, false),
            Err(reason) => {
                let about = monitor::About {
                    kind: kind::DROP,
                    datapath: datapath::SOCK,
                    reason,
                    service_id: svc.service_id,
                    backend_id: 0,
                    backend: (vip_be, 0),
                };
                monitor::socket(&about, (vip_be, port_be), proto, cookie);
                return Err(reject(reason, svc.service_id, ECONNREFUSED));
            }
        },
    };
    let new_flow = kept.is_none();
    if !up_to_date {
        let flags = match call {
            Call::Connect => SOCK_CONNECTED,
            Call::Sendmsg => 0,
        };
        let reverse = SockNat {
            addr_be: vip_be,
            port_be,
            proto,
            pad: 0,
            service_id: svc.service_id,
            backend_id,
            flags,
            pad2: Default::default(),
            last_seen_ns: now,
        };
        let rev_key = SockKey::new(cookie, backend.addr_be, backend.port_be);
        if A::sock_reverse().insert(&rev_key, &reverse, 0).is_err() {
            return Err(reject(Reason::CtInsertFailed, svc.service_id, ENOMEM));
        }
        if call == Call::Sendmsg {
            let forward = SockNat {
                addr_be: backend.addr_be,
                port_be: backend.port_be,
                ..reverse
            };
            if A::sock_forward().insert(&fwd_key, &forward, 0).is_err() {
                return Err(reject(Reason::CtInsertFailed, svc.service_id, ENOMEM));
            }
        }
    }
    stats::count_reason(Reason::Forwarded);
    stats::with_service(svc.service_id, |s| {
        if call == Call::Sendmsg {
            s.packets += 1;
        }
        if new_flow {
            s.new_flows += 1;
        }
    });
    if new_flow {
        let about = monitor::About {
            kind: kind::FLOW,
            datapath: datapath::SOCK,
            reason: Reason::Forwarded,
            service_id: svc.service_id,
            backend_id,
            backend: (backend.addr_be, backend.port_be),
        };
        monitor::socket(&about, (vip_be, port_be), proto, cookie);
        debug!(
            ctx,
            "sock {}: {:i}:{} proto {}: service {} backend {} {:i}:{}",
            if call == Call::Connect {
                "connect"
            } else {
                "sendmsg"
            },
            vip_be.shown(),
            u16::from_be(port_be),
            proto,
            svc.service_id,
            backend_id,
            backend.addr_be.shown(),
            u16::from_be(backend.port_be)
        );
    }
    *to = Some(backend);
    Ok(())
}

/// Where a call goes: passed by reference, since a BPF function takes at most five
/// arguments (a returned value counts as one).
#[derive(Clone, Copy)]
struct Dest<A> {
    addr_be: A,
    port_be: u16,
    proto: u8,
}

/// The backend an unconnected socket already sends this frontend's datagrams to.
enum Kept<A> {
    /// Its entries were refreshed within [`REFRESH_NS`].
    Fresh(u32, Backend<A>),
    /// Its entries need refreshing.
    Stale(u32, Backend<A>),
}

/// The socket's backend for this frontend, while it still exists at the same address (a
/// terminating one included: like a TC flow, the socket keeps it).
#[inline(always)]
fn kept_backend<A: Family>(key: &SockKey<A>, now: u64) -> Option<Kept<A>> {
    // SAFETY: plain integers, replaced whole.
    let entry = *unsafe { A::sock_forward().get(key) }?;
    let backend = *unsafe { A::backends().get(&entry.backend_id) }?;
    if !backend.addr_be.same(entry.addr_be) || backend.port_be != entry.port_be {
        return None;
    }
    if now.wrapping_sub(entry.last_seen_ns) > REFRESH_NS {
        Some(Kept::Stale(entry.backend_id, backend))
    } else {
        Some(Kept::Fresh(entry.backend_id, backend))
    }
}

/// A call that must fail: its errno is set, the program returns [`REJECT`] (a constant the
/// verifier can see: a verdict passed back through a BPF-to-BPF call's memory is not).
struct Rejected;

/// Fails the call with `errno`, counting why.
#[inline(always)]
fn reject(reason: Reason, service_id: u32, errno: i32) -> Rejected {
    stats::count_reason(reason);
    stats::with_service(service_id, |s| s.drops += 1);
    // SAFETY: sets the error the failed call returns (Linux 5.18+; checked by the loader).
    unsafe { bpf_set_retval(-errno) };
    Rejected
}

/// `recvmsg4` and `getpeername4`: a backend the socket was translated to is reported as the
/// frontend, while the frontend still exists.
#[inline(always)]
pub fn reverse4(ctx: &SockAddrContext, call: Peer) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `forward4`.
    let (addr_be, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    if let Some(nat) = frontend_of::<u32>(ctx, call, addr_be, port_be) {
        // SAFETY: as in `forward4`.
        unsafe {
            (*sa).user_ip4 = nat.addr_be;
            (*sa).user_port = u32::from(nat.port_be);
        }
    }
    ALLOW
}

/// `recvmsg6` and `getpeername6`: the same for IPv6 sockets (and IPv4-mapped peers).
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext, call: Peer) -> i32 {
    let sa = ctx.sock_addr;
    let w = user_ip6(sa);
    // SAFETY: as in `forward4`.
    let port_be = unsafe { (*sa).user_port as u16 };
    let frontend = match mapped_v4(w) {
        Some(addr_be) => frontend_of::<u32>(ctx, call, addr_be, port_be)
            .map(|nat| ([0, 0, MAPPED_WORD, nat.addr_be], nat.port_be)),
        None => frontend_of::<[u8; 16]>(ctx, call, bytes(w), port_be)
            .map(|nat| (family::words(&nat.addr_be), nat.port_be)),
    };
    if let Some((w, port_be)) = frontend {
        set_user_ip6(sa, w, port_be);
    }
    ALLOW
}

/// The frontend to report for peer `addr_be:port_be` of the context's socket, counted.
#[inline(always)]
fn frontend_of<A: Family>(
    ctx: &SockAddrContext,
    call: Peer,
    addr_be: A,
    port_be: u16,
) -> Option<SockNat<A>> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey::new(cookie, addr_be, port_be);
    // SAFETY: plain integers, replaced whole.
    let nat = (unsafe { A::sock_reverse().get(&key) }).copied()?;
    lb::frontend::<A>(nat.addr_be, nat.port_be, nat.proto)?;
    if call == Peer::Recvmsg {
        stats::count_reason(Reason::ReverseNat);
        stats::with_service(nat.service_id, |s| s.reply_packets += 1);
    }
    Some(nat)
}

/// `sock_release`: a connected socket's reverse entry goes with it (an unconnected socket's
/// entries expire with the UDP timeout instead: the daemon's garbage collection).
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the context the kernel passed.
    let (family, dport_be) = unsafe { ((*sk).family, (*sk).dst_port) };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if family == AF_INET {
        let dst_be = unsafe { (*sk).dst_ip4 };
        if dst_be != 0 {
            let _ = u32::sock_reverse().remove(&SockKey::new(cookie, dst_be, dport_be));
        }
    } else if family == AF_INET6 {
        // SAFETY: as above, word by word.
        let w = unsafe {
            [
                (*sk).dst_ip6[0],
                (*sk).dst_ip6[1],
                (*sk).dst_ip6[2],
                (*sk).dst_ip6[3],
            ]
        };
        match mapped_v4(w) {
            Some(dst_be) => {
                let _ = u32::sock_reverse().remove(&SockKey::new(cookie, dst_be, dport_be));
            }
            None if w != [0; 4] => {
                let _ =
                    <[u8; 16]>::sock_reverse().remove(&SockKey::new(cookie, bytes(w), dport_be));
            }
            None => {}
        }
    }
    ALLOW
}
