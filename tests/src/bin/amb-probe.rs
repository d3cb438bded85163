//! A small client for the socket datapath's tests: it does exactly one kind of socket call
//! sequence and prints what the kernel told it, one line per event, so a test can run it inside
//! a cgroup (which only a whole process can join) and read the outcome.
//!
//! ```text
//! amb-probe udp-sendto ADDR               unconnected socket: sendto, then recvfrom
//!                                         -> "from SRC REPLY"
//! amb-probe udp-connected ADDR N MS       connected socket: N rounds of send/recv every MS;
//!                                         on an error, reconnect with a new socket
//!                                         -> "peer ADDR", then "ok REPLY" | "err ERROR" |
//!                                            "reconnected peer ADDR"
//! amb-probe tcp-idents ADDR N MS          N connections, one every MS; reads each server's
//!                                         first line -> "ok IDENT PEER" | "err ERROR"
//! amb-probe tcp-hold ADDR N MS            one connection: "peer ADDR", "ident IDENT", then N
//!                                         echo rounds every MS -> "ok" | "err ERROR" (ends)
//! ```
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::LazyLock,
    time::Duration,
};

/// How long a connect or a reply may take: 2 s, stretched where the tests run slower
/// (`AMBASSADOR_TEST_SLOWDOWN`, set in emulated VMs).
static TIMEOUT: LazyLock<Duration> =
    LazyLock::new(|| ambassador_tests::stretched(Duration::from_secs(2)));

/// A UDP socket of `addr`'s family: an IPv6 one (dual-stack) for an IPv6 or IPv4-mapped
/// address.
fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
}

fn udp_connected(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = udp_socket(addr)?;
    s.connect(addr)?;
    s.set_read_timeout(Some(*TIMEOUT))?;
    Ok(s)
}

fn tcp(addr: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, String)> {
    let s = TcpStream::connect_timeout(&addr, *TIMEOUT)?;
    s.set_read_timeout(Some(*TIMEOUT))?;
    let peer = s.peer_addr()?.to_string();
    Ok((BufReader::new(s), peer))
}

fn line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut l = String::new();
    if r.read_line(&mut l)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(l.trim().to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: amb-probe udp-sendto|udp-connected|tcp-idents|tcp-hold ADDR [N MS]";
    let (Some(mode), Some(addr)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is ip:port");
    let n: usize = args.get(2).map_or(1, |v| v.parse().expect("N"));
    let every = Duration::from_millis(args.get(3).map_or(0, |v| v.parse().expect("MS")));
    match mode.as_str() {
        "udp-sendto" => {
            let s = udp_socket(addr).expect("bind");
            s.set_read_timeout(Some(*TIMEOUT)).expect("timeout");
            s.send_to(b"probe", addr).expect("sendto");
            let mut buf = [0u8; 2048];
            let (len, from) = s.recv_from(&mut buf).expect("recvfrom");
            println!("from {from} {}", String::from_utf8_lossy(&buf[..len]));
        }
        "udp-connected" => {
            let mut s = udp_connected(addr).expect("connect");
            println!("peer {}", s.peer_addr().expect("getpeername"));
            let mut buf = [0u8; 2048];
            for _ in 0..n {
                let result = s.send(b"probe").and_then(|_| s.recv(&mut buf));
                match result {
                    Ok(len) => println!("ok {}", String::from_utf8_lossy(&buf[..len])),
                    Err(e) => {
                        println!("err {e}");
                        match udp_connected(addr) {
                            Ok(new) => {
                                s = new;
                                println!("reconnected peer {}", s.peer_addr().expect("peer"));
                            }
                            Err(e) => println!("err reconnecting: {e}"),
                        }
                    }
                }
                std::thread::sleep(every);
            }
        }
        "tcp-idents" => {
            for _ in 0..n {
                match tcp(addr).and_then(|(mut r, peer)| Ok((line(&mut r)?, peer))) {
                    Ok((ident, peer)) => println!("ok {ident} {peer}"),
                    Err(e) => println!("err {e}"),
                }
                std::thread::sleep(every);
            }
        }
        "tcp-hold" => {
            let (mut r, peer) = tcp(addr).expect("connect");
            println!("peer {peer}");
            println!("ident {}", line(&mut r).expect("ident"));
            for _ in 0..n {
                let round = writeln!(r.get_mut(), "x").and_then(|_| line(&mut r));
                match round {
                    Ok(_) => println!("ok"),
                    Err(e) => {
                        println!("err {e}");
                        return;
                    }
                }
                std::thread::sleep(every);
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
