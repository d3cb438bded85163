//! Program names as the kernel shows them (`bpftool prog show`).

/// TC ingress on a client-facing interface: frontend -> backend.
pub const TC_DNAT: &str = "amb_tc_dnat";
/// TC egress on a client-facing interface: backend -> frontend on replies.
pub const TC_RNAT: &str = "amb_tc_rnat";
/// XDP on a gateway's client- and backend-facing interfaces: both translations, and the
/// frame forwarded from there.
pub const XDP: &str = "amb_xdp";
/// cgroup `connect4`: a TCP or UDP socket connecting to a frontend connects to a backend.
pub const SOCK_CONNECT4: &str = "amb_sk_connect4";
/// cgroup `sendmsg4`: a datagram sent to a frontend on an unconnected UDP socket goes to
/// a backend.
pub const SOCK_SENDMSG4: &str = "amb_sk_sendmsg4";
/// cgroup `recvmsg4`: a datagram from a backend is reported as from the frontend.
pub const SOCK_RECVMSG4: &str = "amb_sk_recvmsg4";
/// cgroup `getpeername4`: a socket connected to a backend reports the frontend as its peer.
pub const SOCK_GETPEERNAME4: &str = "amb_sk_getpeer4";
/// cgroup `connect6`: [`SOCK_CONNECT4`] for IPv6 sockets (IPv6 frontends, and IPv4 ones
/// dialled as IPv4-mapped addresses).
pub const SOCK_CONNECT6: &str = "amb_sk_connect6";
/// cgroup `sendmsg6`: [`SOCK_SENDMSG4`] for IPv6 sockets.
pub const SOCK_SENDMSG6: &str = "amb_sk_sendmsg6";
/// cgroup `recvmsg6`: [`SOCK_RECVMSG4`] for IPv6 sockets.
pub const SOCK_RECVMSG6: &str = "amb_sk_recvmsg6";
/// cgroup `getpeername6`: [`SOCK_GETPEERNAME4`] for IPv6 sockets.
pub const SOCK_GETPEERNAME6: &str = "amb_sk_getpeer6";
/// cgroup `sock_release`: a closed socket's reverse entries go.
pub const SOCK_RELEASE: &str = "amb_sk_release";
/// The socket datapath's address programs, with the cgroup hook each attaches to.
pub const SOCK_ADDR: [(&str, &str); 8] = [
    (SOCK_CONNECT4, "connect4"),
    (SOCK_SENDMSG4, "sendmsg4"),
    (SOCK_RECVMSG4, "recvmsg4"),
    (SOCK_GETPEERNAME4, "getpeername4"),
    (SOCK_CONNECT6, "connect6"),
    (SOCK_SENDMSG6, "sendmsg6"),
    (SOCK_RECVMSG6, "recvmsg6"),
    (SOCK_GETPEERNAME6, "getpeername6"),
];
