//! The connection table with the real kernel: what a flow's entry must not keep. A client may
//! open a new connection on the very tuple of one that just closed (its port is free at once
//! when it closed with a RST, or when the server closed first); that connection is new, and
//! gets a backend of its own, with failover, as any other.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use ambassador_tests::*;
use socket2::{Domain, SockAddr, Socket, Type};

const VIP: &str = "10.96.0.10:80";

/// One connection from `port` (of the calling thread's namespace) to `vip`: the server's
/// identity line. It is closed with a RST (SO_LINGER 0), which leaves no TIME_WAIT: the same
/// tuple can carry the next connection at once.
fn from_port(port: u16, vip: SocketAddr) -> std::io::Result<String> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        port,
    ))))?;
    s.connect_timeout(&vip.into(), stretched(Duration::from_secs(5)))?;
    s.set_linger(Some(Duration::ZERO))?;
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(stretched(Duration::from_secs(5))))?;
    let mut ident = String::new();
    BufReader::new(stream).read_line(&mut ident)?;
    Ok(ident.trim().to_owned())
}

/// Before: the forward entry of the answered connection still held b1, so the new SYN went to
/// b1, whose process had died, and its RST, taken for the reset of an answered connection,
/// reached the client: "Connection refused". One in 779 connections of the kernel matrix's
/// failover run on 6.1 met this.
#[test]
fn a_new_connection_on_the_tuple_of_an_answered_one_is_failed_over_from_its_dead_backend() {
    if !require_root(
        "a_new_connection_on_the_tuple_of_an_answered_one_is_failed_over_from_its_dead_backend",
    ) {
        return;
    }
    let topo = Topology::new(2);
    let (b1, b2) = (
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
    );
    let s1 = TcpServer::start(&topo.backends[0], &b1, "b1");
    let _s2 = TcpServer::start(&topo.backends[1], &b2, "b2");
    let (pin, _cfg, d) = Daemon::run_web(&topo, VIP, &b1, &b2, &[]);
    let vip: SocketAddr = VIP.parse().unwrap();

    // A port whose connection b1 answered (each pick is even odds: 64 ports are plenty).
    let port = topo
        .client
        .run(move || (40_000..40_064).find(|p| from_port(*p, vip).is_ok_and(|w| w == "b1")))
        .expect("a connection answered by b1 in 64 tries");
    let flows = service_status(&pin.path, "web").unwrap()["counters"]["new_flows"].clone();
    drop(s1); // b1's process is gone: its port answers RST

    // The same tuple at once: a new connection, answered by b2 (directly, or after b1's
    // refusal re-pointed it), and counted as a new flow.
    let again = topo
        .client
        .run(move || from_port(port, vip).map_err(|e| e.to_string()));
    assert_eq!(again.as_deref(), Ok("b2"), "port {port}\n{}", d.log());
    let web = service_status(&pin.path, "web").unwrap();
    assert_eq!(
        web["counters"]["new_flows"].as_u64(),
        flows.as_u64().map(|n| n + 1),
        "{web}"
    );
}
