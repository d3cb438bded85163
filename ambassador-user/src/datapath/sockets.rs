//! Sockets the socket datapath connected to a backend that is no longer a usable one: found
//! with a sock_diag dump and destroyed with SOCK_DESTROY (the netlink-packet-sock-diag and
//! netlink-sys crates), so the application sees an error and reconnects to a live backend.
//!
//! Why not the kernel's `bpf_sock_destroy` from a socket iterator (Linux 6.5+): it is a kfunc,
//! and the aya release this project builds with (0.14) cannot relocate kfunc calls. SOCK_DESTROY
//! does the same from user space on any kernel built with `CONFIG_INET_DIAG_DESTROY` (Linux
//! 4.5 for TCP, 4.10 for UDP; Debian and most distributions enable it). Without it, such a
//! socket keeps its backend until the application reconnects; the daemon says so once.
//!
//! sock_diag sees the daemon's own network namespace: host processes and `--network host`
//! containers. Processes in other namespaces are translated all the same, but their sockets are
//! not destroyed.

use std::{collections::BTreeSet, io, net::SocketAddr};

use netlink_packet_core::{NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use crate::{
    core::{model::Proto, reconcile::Installed},
    datapath::{maps::SockEntry, netlink},
};

/// A connected IPv4 or IPv6 socket of this network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// The kernel's socket cookie (what the datapath's maps are keyed by).
    pub cookie: u64,
    /// TCP or UDP.
    pub proto: Proto,
    /// Where it is connected to; an IPv6 socket's IPv4-mapped peer is its IPv4 address (the
    /// socket datapath translated it as one).
    pub peer: SocketAddr,
    /// The socket's family (`AF_INET` or `AF_INET6`) and the kernel's identity of it, for
    /// SOCK_DESTROY.
    family: u8,
    id: SocketId,
}

impl Connected {
    fn from_header(family: u8, proto: Proto, h: &InetResponseHeader) -> Option<Self> {
        let ip = h.socket_id.destination_address.to_canonical();
        let c = h.socket_id.cookie;
        // The kernel stores the cookie as two host-order u32 halves, low half first.
        let low = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        let high = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
        Some(Self {
            cookie: u64::from(high) << 32 | u64::from(low),
            proto,
            peer: SocketAddr::new(ip, h.socket_id.destination_port),
            family,
            id: h.socket_id.clone(),
        })
    }
}

fn protocol(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

/// The connected (or connecting) IPv4 and IPv6 sockets of `proto` in this network namespace.
pub fn connected(proto: Proto) -> io::Result<Vec<Connected>> {
    let states = match proto {
        Proto::Tcp => StateFlags::ESTABLISHED | StateFlags::SYN_SENT | StateFlags::CLOSE_WAIT,
        // A connected UDP socket is "established"; an unconnected one is "close".
        Proto::Udp => StateFlags::ESTABLISHED,
    };
    let mut out = Vec::new();
    for (family, socket_id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: protocol(proto),
            extensions: ExtensionFlags::empty(),
            states: states.clone(),
            socket_id,
        });
        netlink::exchange(
            NETLINK_SOCK_DIAG,
            request,
            NLM_F_REQUEST | NLM_F_DUMP,
            |p| {
                if let NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) = p {
                    out.extend(Connected::from_header(family, proto, &r.header));
                }
            },
        )?;
    }
    Ok(out)
}

/// Destroys one socket: its owner's next call fails with ECONNABORTED. A socket that is gone
/// already is no error.
pub fn destroy(socket: &Connected) -> io::Result<()> {
    let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
        family: socket.family,
        protocol: protocol(socket.proto),
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: socket.id.clone(),
    }));
    let ack = netlink::exchange::<_, SockDiagMessage>(
        NETLINK_SOCK_DIAG,
        request,
        NLM_F_REQUEST | NLM_F_ACK,
        |_| {},
    );
    match ack {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The socket datapath's connected sockets (their reverse entries) whose backend must no
/// longer be talked to: a backend that is gone (or now at another address), and for UDP, also
/// one that left its service (terminating). A TCP connection to a terminating backend is left
/// to end by itself, as in the TC datapath. Empty in the steady state: then no socket is even
/// listed.
pub fn doomed<'a>(entries: &'a [SockEntry], installed: &Installed) -> Vec<&'a SockEntry> {
    entries
        .iter()
        .filter(|e| e.reverse && e.connected)
        .filter(|e| match installed.backends.get(&e.backend_id) {
            None => true,
            Some(b) if b.addr != e.backend => true,
            Some(b) => b.terminating && e.proto == Proto::Udp,
        })
        .collect()
}

/// Of `sockets`, those that `doomed` entries describe (the same cookie, connected to the same
/// backend).
pub fn stale<'a>(sockets: &'a [Connected], doomed: &[&SockEntry]) -> Vec<&'a Connected> {
    let keys: BTreeSet<(u64, SocketAddr)> = doomed.iter().map(|e| (e.cookie, e.backend)).collect();
    sockets
        .iter()
        .filter(|s| keys.contains(&(s.cookie, s.peer)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reconcile::InstalledBackend;

    fn socket(cookie: u64, proto: Proto, peer: &str) -> Connected {
        Connected {
            cookie,
            proto,
            peer: peer.parse().unwrap(),
            family: AF_INET,
            id: SocketId::new_v4(),
        }
    }

    fn entry(
        cookie: u64,
        proto: Proto,
        backend: &str,
        backend_id: u32,
        connected: bool,
    ) -> SockEntry {
        SockEntry {
            reverse: true,
            cookie,
            frontend: "10.96.0.1:53".parse().unwrap(),
            backend: backend.parse().unwrap(),
            proto,
            service_id: 1,
            backend_id,
            connected,
            last_seen_ns: 0,
        }
    }

    #[test]
    fn only_our_sockets_to_unusable_backends_are_stale() {
        let mut installed = Installed::default();
        for (id, addr, terminating) in [
            (1, "10.0.1.1:53", false),
            (2, "10.0.1.2:53", true),
            (3, "10.0.1.3:53", false),
        ] {
            installed.backends.insert(
                id,
                InstalledBackend {
                    service_id: 1,
                    addr: addr.parse().unwrap(),
                    terminating,
                },
            );
        }
        let sockets = [
            socket(10, Proto::Udp, "10.0.1.1:53"), // live backend: kept
            socket(11, Proto::Udp, "10.0.1.2:53"), // UDP to a terminating backend: stale
            socket(12, Proto::Tcp, "10.0.1.2:53"), // TCP to a terminating backend: kept
            socket(13, Proto::Udp, "10.0.1.9:53"), // backend 9 is gone: stale
            socket(14, Proto::Udp, "10.0.1.3:53"), // not translated by us: kept
            socket(15, Proto::Udp, "10.0.1.3:53"), // entry from sendmsg, not connect: kept
            socket(16, Proto::Udp, "10.0.1.5:53"), // backend 3 moved address: stale
        ];
        let (udp, tcp) = (Proto::Udp, Proto::Tcp);
        let entries = [
            entry(10, udp, "10.0.1.1:53", 1, true),
            entry(11, udp, "10.0.1.2:53", 2, true),
            entry(12, tcp, "10.0.1.2:53", 2, true),
            entry(13, udp, "10.0.1.9:53", 9, true),
            entry(15, udp, "10.0.1.3:53", 3, false),
            entry(16, udp, "10.0.1.5:53", 3, true),
        ];
        let doomed = doomed(&entries, &installed);
        let cookies: Vec<u64> = stale(&sockets, &doomed).iter().map(|s| s.cookie).collect();
        assert_eq!(cookies, vec![11, 13, 16]);
        // Nothing doomed (the steady state): nothing to list.
        installed.backends.get_mut(&2).unwrap().terminating = false;
        installed.backends.get_mut(&3).unwrap().addr = "10.0.1.5:53".parse().unwrap();
        assert_eq!(
            super::doomed(&entries[..2], &installed),
            Vec::<&SockEntry>::new()
        );
    }
}
