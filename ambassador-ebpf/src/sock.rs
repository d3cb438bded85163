//! The socket datapath: cgroup programs that translate at `connect()` and `sendmsg()`, so a
//! socket is connected (or sends) straight to a backend and no packet is ever rewritten; and
//! the reverse at `recvmsg()` and `getpeername()`, so the application sees the frontend.
//!
//! Backends come from the same service, slot and backend maps as the TC datapath (weights,
//! terminating backends, counters per service). A socket translated here carries a backend's
//! address from then on, so the TC programs never match it again.

use ambassador_common::{proto, Backend4, Reason, SockKey4, SockNat4, SOCK_CONNECTED};
use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};
use aya_log_ebpf::debug;

use crate::{
    lb,
    maps::{BACKENDS, SOCK_FORWARD, SOCK_REVERSE},
    stats,
};

/// Return value of a cgroup socket program: let the call go on.
pub const ALLOW: i32 = 1;
/// Return value of a cgroup socket program: fail the call (with the errno set by
/// `bpf_set_retval`).
const REJECT: i32 = 0;
const AF_INET: u32 = 2;
/// errno of a `connect()` or `sendmsg()` to a frontend with no backend: as if nothing listened.
const ECONNREFUSED: i32 = 111;
/// errno when the socket's reverse entry cannot be written.
const ENOMEM: i32 = 12;
/// An unconnected socket's entries are refreshed at most this often.
const REFRESH_NS: u64 = 1_000_000_000;

/// Which call is being translated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `connect()` of a TCP or UDP socket.
    Connect,
    /// `sendmsg()`/`sendto()` with an address, on an unconnected UDP socket.
    Sendmsg,
}

/// `connect4` and `sendmsg4`: a frontend destination becomes a backend.
#[inline(always)]
pub fn forward(ctx: &SockAddrContext, call: Call) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context the kernel passed; each field is read whole, as the verifier wants.
    let (vip_be, port_be, protocol) =
        unsafe { ((*sa).user_ip4, (*sa).user_port as u16, (*sa).protocol) };
    let proto = match protocol {
        6 => proto::TCP,
        17 => proto::UDP,
        _ => return ALLOW,
    };
    let Some(svc) = lb::frontend::<u32>(vip_be, port_be, proto) else {
        return ALLOW;
    };
    // SAFETY: the helper only reads the context's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let now = unsafe { bpf_ktime_get_ns() };
    let fwd_key = SockKey4 {
        cookie,
        addr_be: vip_be,
        port_be,
        pad: 0,
    };
    let kept = match call {
        Call::Sendmsg => kept_backend(&fwd_key, now),
        Call::Connect => None,
    };
    let (backend_id, backend, up_to_date) = match kept {
        Some(Kept::Fresh(id, b)) => (id, b, true),
        Some(Kept::Stale(id, b)) => (id, b, false),
        None => match lb::pick_backend::<u32>(svc.service_id, svc.count) {
            Ok((id, b)) => (id, b, false),
            Err(reason) => return reject(reason, svc.service_id, ECONNREFUSED),
        },
    };
    let new_flow = kept.is_none();
    if !up_to_date {
        let flags = match call {
            Call::Connect => SOCK_CONNECTED,
            Call::Sendmsg => 0,
        };
        let reverse = SockNat4 {
            addr_be: vip_be,
            port_be,
            proto,
            pad: 0,
            service_id: svc.service_id,
            backend_id,
            flags,
            pad2: 0,
            last_seen_ns: now,
        };
        let rev_key = SockKey4 {
            cookie,
            addr_be: backend.addr_be,
            port_be: backend.port_be,
            pad: 0,
        };
        if SOCK_REVERSE.insert(&rev_key, &reverse, 0).is_err() {
            return reject(Reason::CtInsertFailed, svc.service_id, ENOMEM);
        }
        if call == Call::Sendmsg {
            let forward = SockNat4 {
                addr_be: backend.addr_be,
                port_be: backend.port_be,
                ..reverse
            };
            if SOCK_FORWARD.insert(&fwd_key, &forward, 0).is_err() {
                return reject(Reason::CtInsertFailed, svc.service_id, ENOMEM);
            }
        }
    }
    // SAFETY: as above; user_port is written as the 32-bit field it is.
    unsafe {
        (*sa).user_ip4 = backend.addr_be;
        (*sa).user_port = u32::from(backend.port_be);
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
        debug!(
            ctx,
            "sock {}: {:i}:{} proto {}: service {} backend {} {:i}:{}",
            if call == Call::Connect {
                "connect"
            } else {
                "sendmsg"
            },
            u32::from_be(vip_be),
            u16::from_be(port_be),
            proto,
            svc.service_id,
            backend_id,
            u32::from_be(backend.addr_be),
            u16::from_be(backend.port_be)
        );
    }
    ALLOW
}

/// The backend an unconnected socket already sends this frontend's datagrams to.
enum Kept {
    /// Its entries were refreshed within [`REFRESH_NS`].
    Fresh(u32, Backend4),
    /// Its entries need refreshing.
    Stale(u32, Backend4),
}

/// The socket's backend for this frontend, while it still exists at the same address (a
/// terminating one included: like a TC flow, the socket keeps it).
#[inline(always)]
fn kept_backend(key: &SockKey4, now: u64) -> Option<Kept> {
    // SAFETY: plain integers, replaced whole.
    let entry = *unsafe { SOCK_FORWARD.get(key) }?;
    let backend = *unsafe { BACKENDS.get(&entry.backend_id) }?;
    if backend.addr_be != entry.addr_be || backend.port_be != entry.port_be {
        return None;
    }
    if now.wrapping_sub(entry.last_seen_ns) > REFRESH_NS {
        Some(Kept::Stale(entry.backend_id, backend))
    } else {
        Some(Kept::Fresh(entry.backend_id, backend))
    }
}

/// Fails the call with `errno`, counting why.
#[inline(always)]
fn reject(reason: Reason, service_id: u32, errno: i32) -> i32 {
    stats::count_reason(reason);
    stats::with_service(service_id, |s| s.drops += 1);
    // SAFETY: sets the error the failed call returns (Linux 5.18+; checked by the loader).
    unsafe { bpf_set_retval(-errno) };
    REJECT
}

/// Which call is being answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// `recvmsg()`/`recvfrom()` on a UDP socket: the datagram's source.
    Recvmsg,
    /// `getpeername()`: the socket's peer.
    Getpeername,
}

/// `recvmsg4` and `getpeername4`: a backend the socket was translated to is reported as the
/// frontend, while the frontend still exists.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, call: Peer) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `forward`.
    let (addr_be, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey4 {
        cookie,
        addr_be,
        port_be,
        pad: 0,
    };
    // SAFETY: plain integers, replaced whole.
    let Some(nat) = (unsafe { SOCK_REVERSE.get(&key) }).copied() else {
        return ALLOW;
    };
    if lb::frontend::<u32>(nat.addr_be, nat.port_be, nat.proto).is_none() {
        return ALLOW;
    }
    // SAFETY: as in `forward`.
    unsafe {
        (*sa).user_ip4 = nat.addr_be;
        (*sa).user_port = u32::from(nat.port_be);
    }
    if call == Peer::Recvmsg {
        stats::count_reason(Reason::ReverseNat);
        stats::with_service(nat.service_id, |s| s.reply_packets += 1);
    }
    ALLOW
}

/// `sock_release`: a connected socket's reverse entry goes with it (an unconnected socket's
/// entries expire with the UDP timeout instead: the daemon's garbage collection).
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: the context the kernel passed.
    let (family, dst_be, dport_be) = unsafe { ((*sk).family, (*sk).dst_ip4, (*sk).dst_port) };
    if family != AF_INET || dst_be == 0 {
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey4 {
        cookie,
        addr_be: dst_be,
        port_be: dport_be,
        pad: 0,
    };
    let _ = SOCK_REVERSE.remove(&key);
    ALLOW
}
