//! Fault tests against the real datapath: more flows than the conntrack table holds.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use ambassador_tests::{traffic::Traffic, *};

const VIP_TCP: &str = "10.96.0.10:80";
const VIP_UDP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const UDP_PORT: u16 = 53;
/// The conntrack capacity the flood test runs with (`--max-flows`; above the default).
const MAX_FLOWS: u32 = 262_144;
/// Extra client addresses the flood comes from (each gives ~64k source ports).
const FLOOD_SOURCES: u8 = 5;

/// The one's-complement sum of `data` folded to 16 bits, as used by IP checksums.
fn csum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for chunk in part.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP datagram from `src` to the UDP frontend, with its IPv4 header (the kernel fills in
/// the IP checksum and length on a raw socket).
fn datagram(src: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&UDP_PORT.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&VIP_UDP.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let c = match csum(&[&pseudo, &udp]) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let total = 20 + udp.len() as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&VIP_UDP.octets());
    ip.extend_from_slice(&udp);
    ip
}

/// Sends one datagram from every (source address, port) pair: that many UDP flows. Runs in
/// the caller's network namespace. Returns the datagrams sent.
fn flood(sources: &[Ipv4Addr], ports: std::ops::RangeInclusive<u16>) -> u64 {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(VIP_UDP).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0;
    for ip in sources {
        for port in ports.clone() {
            let pkt = datagram(SocketAddrV4::new(*ip, port), b"flood");
            loop {
                // SAFETY: valid buffer and address for the duration of the call.
                let n = unsafe {
                    libc::sendto(
                        fd.as_raw_fd(),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&dst as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if n >= 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                // A full transmit queue: wait a little rather than lose the flow.
                assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "sendto: {e}");
                std::thread::sleep(Duration::from_micros(50));
            }
            sent += 1;
        }
    }
    sent
}

#[test]
fn more_flows_than_the_conntrack_table_holds_break_neither_new_nor_established_flows() {
    if !require_root(
        "more_flows_than_the_conntrack_table_holds_break_neither_new_nor_established_flows",
    ) {
        return;
    }
    let topo = Topology::new(2);
    let b = |i, p| Topology::backend_addr(i, p);
    let _t1 = TcpServer::start(&topo.backends[0], &b(1, 8080), "b1");
    let _t2 = TcpServer::start(&topo.backends[1], &b(2, 8080), "b2");
    let _u = UdpServer::start(&topo.backends[0], &b(1, UDP_PORT), "b1");
    let sources: Vec<Ipv4Addr> = (0..FLOOD_SOURCES)
        .map(|i| Ipv4Addr::new(10, 200, 0, 10 + i))
        .collect();
    for s in &sources {
        topo.client
            .ip(&["addr", "add", &format!("{s}/24"), "dev", "eth0"]);
    }
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP_TCP}\"\nendpoints = [\"{}\", \"{}\"]\n\n\
         [[service]]\nname = \"dns\"\nfrontend = \"{VIP_UDP}:{UDP_PORT}\"\nproto = \"udp\"\nendpoints = [\"{}\"]\n",
        b(1, 8080),
        b(2, 8080),
        b(1, UDP_PORT)
    ));
    let mut d = Daemon::run_file(
        &topo.fwd,
        "c0",
        cfg.as_str(),
        &pin.path,
        &["--max-flows", &MAX_FLOWS.to_string()],
    );
    d.wait_ready();

    // Two backends: a flow that lost its entry would be re-balanced, and its next packet
    // could land on the other backend (a reset). The long-lived connection must not.
    let traffic = Traffic::start(&topo.client, VIP_TCP);
    traffic.wait_more(20);
    let started = Instant::now();
    let srcs = sources.clone();
    let sent = topo.client.run(move || flood(&srcs, 1024..=65535));
    let took = started.elapsed();
    traffic.wait_more(50);
    let outcome = traffic.finish();

    let st = status(&pin.path);
    let dns = service_status(&pin.path, "dns").unwrap();
    let new_flows = dns["counters"]["new_flows"].as_u64().unwrap();
    eprintln!(
        "{sent} UDP flows in {took:?} ({:.0}/s) against a {MAX_FLOWS}-entry table: {new_flows} created, \
         {} tracked at the end; TCP meanwhile: {outcome:?}",
        sent as f64 / took.as_secs_f64(),
        st["flows"]
    );
    assert!(
        sent > MAX_FLOWS as u64 && new_flows >= MAX_FLOWS as u64 + 10_000,
        "the table was not overrun: {sent} sent, {new_flows} flows created"
    );
    assert!(
        st["flows"].as_u64().unwrap() <= MAX_FLOWS as u64,
        "{}",
        st["flows"]
    );
    outcome.assert_nothing_lost();
    assert_eq!(st["reasons"]["ct_insert_failed"], 0, "{}", st["reasons"]);
    assert_eq!(st["reasons"]["no_backend"], 0, "{}", st["reasons"]);
    assert_eq!(topo.backends[0].snmp("Udp", "InCsumErrors"), 0);
    assert_eq!(dns["counters"]["drops"], 0, "{dns}");
    // And a new flow after it all.
    let (_, who) = tcp_connect(&topo.client, VIP_TCP).expect("a new flow after the flood");
    assert!(who == "b1" || who == "b2");
}
