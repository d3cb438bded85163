//! The SOCKS5 door's byte copy, each way it can copy (`--copy read-write`, the default, and
//! `--copy splice`): 48 MiB each way arrive byte for byte through the door, a half-close
//! is carried across, the byte counters add up, a silent tunnel is closed after the idle
//! timeout, and a download whose client never writes is not.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use ambassador_tests::*;

const DOOR: &str = "10.200.0.1:1080";
/// Echoes what it reads; at the client's end of stream, ends its own.
const ECHO_PORT: u16 = 9000;
/// Sends a byte every [`TRICKLE_EVERY`], [`TRICKLE_BYTES`] times, and never reads.
const TRICKLE_PORT: u16 = 9001;
const TRICKLE_EVERY: Duration = Duration::from_millis(250);
const TRICKLE_BYTES: usize = 16;
/// The door's idle timeout in these tests (seconds).
const IDLE_SECS: u64 = 2;
const STREAM_BYTES: usize = 48 << 20;

/// The servers in the backend's namespace, each a thread per connection (they end with the
/// namespace's test process).
fn servers(ns: &NetNs) {
    for port in [ECHO_PORT, TRICKLE_PORT] {
        let addr: SocketAddr = Topology::backend_addr(1, port).parse().unwrap();
        let listener = ns.run(move || TcpListener::bind(addr).unwrap());
        std::thread::spawn(move || {
            while let Ok((s, _)) = listener.accept() {
                std::thread::spawn(move || match port {
                    ECHO_PORT => echo(s),
                    _ => trickle(s),
                });
            }
        });
    }
}

fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 100_000];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn trickle(mut s: TcpStream) {
    for _ in 0..TRICKLE_BYTES {
        std::thread::sleep(TRICKLE_EVERY);
        if s.write_all(b".").is_err() {
            return;
        }
    }
}

/// A SOCKS5 CONNECT to `name:port` without authentication, as RFC 1928 spells it.
fn tunnel(name: &str, port: u16) -> TcpStream {
    let door: SocketAddr = DOOR.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&door, stretched(Duration::from_secs(2))).unwrap();
    s.set_read_timeout(Some(stretched(Duration::from_secs(5))))
        .unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut chosen = [0u8; 2];
    s.read_exact(&mut chosen).unwrap();
    assert_eq!(chosen, [5, 0]);
    let mut request = vec![5, 1, 0, 3, name.len() as u8];
    request.extend_from_slice(name.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 10]; // an IPv4 bound address
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[..2], [5, 0], "the door refused {name}:{port}");
    s
}

/// Bytes that no offset or chunking mistake can reproduce (xorshift).
fn pattern(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The hosts, etcd with the services `echo` and `trickle`, and the door on the gateway with
/// `extra` flags (under `prlimit --nofile=NOFILE` when given).
fn bed(extra: &[&str], nofile: Option<&str>) -> (Topology, Etcd, SocksDoor) {
    let topo = Topology::new(1);
    let etcd = Etcd::single(&topo.fwd);
    let urls = etcd.urls();
    let ctl = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--etcd", &urls]);
        ambassador_ok(&topo.fwd, &all)
    };
    servers(&topo.backends[0]);
    for (name, port, vip) in [
        ("echo", ECHO_PORT, "10.96.0.20"),
        ("trickle", TRICKLE_PORT, "10.96.0.21"),
    ] {
        let frontend = format!("{vip}:{port}");
        ctl(&["service", "set", name, "--frontend", &frontend]);
        let endpoint = Topology::backend_addr(1, port);
        ctl(&["endpoint", "add", name, &endpoint, "--id", name]);
    }
    let door = SocksDoor::start_limited(
        &topo.fwd,
        &urls,
        "0.0.0.0:1080",
        "10.200.0.0/24",
        extra,
        nofile,
    );
    (topo, etcd, door)
}

/// A line sent through a tunnel to the echo comes back.
fn echoes(s: &mut TcpStream) {
    s.write_all(b"ping\n").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping\n");
}

/// `copy` names the way to copy, or None for the default (which must be read-write).
fn copies_every_byte_and_closes_only_idle_tunnels(copy: Option<&str>) {
    let idle = IDLE_SECS.to_string();
    let mut args = vec!["--idle-timeout", &idle];
    args.extend(copy.iter().flat_map(|c| ["--copy", c]));
    let (topo, _etcd, door) = bed(&args, None);
    let copy = copy.unwrap_or("read-write");
    let log = door.proc.log();
    assert!(log.contains(&format!("copy=\"{copy}\"")), "{log}");

    // 48 MiB out and back, written in uneven pieces while the echo is read, then a
    // half-close that must come back as the end of the stream.
    let sent = pattern(STREAM_BYTES);
    let back = topo.client.run(move || {
        let mut s = tunnel("echo.ambassador.internal", ECHO_PORT);
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut at, mut step) = (0, 1);
            while at < sent.len() {
                let end = (at + step).min(sent.len());
                w.write_all(&sent[at..end]).unwrap();
                at = end;
                step = step * 7 % 150_001 + 1;
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::with_capacity(STREAM_BYTES);
        s.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        back
    });
    assert_eq!(back.len(), STREAM_BYTES, "bytes echoed through the door");
    assert!(
        back == pattern(STREAM_BYTES),
        "the echo differs from what was sent"
    );
    let counted = wait_until(Duration::from_secs(5), || {
        door.metric("ambassador_socks_connections_active", &[]) == 0.0
    });
    assert!(counted, "the echo's tunnel stayed open at the door");
    for name in [
        "ambassador_socks_client_bytes_total",
        "ambassador_socks_destination_bytes_total",
    ] {
        assert_eq!(door.metric(name, &[]), STREAM_BYTES as f64, "{name}");
    }

    // A download whose client never writes is not idle: every byte arrives, over twice the
    // idle timeout.
    let got = topo.client.run(|| {
        let mut s = tunnel("trickle.ambassador.internal", TRICKLE_PORT);
        let mut got = vec![0u8; TRICKLE_BYTES];
        s.read_exact(&mut got).map(|()| got)
    });
    assert_eq!(got.unwrap(), vec![b'.'; TRICKLE_BYTES]);
    assert_eq!(
        door.metric("ambassador_socks_idle_timeouts_total", &[]),
        0.0
    );

    // A tunnel with no byte either way is closed after the idle timeout, not before.
    let (waited, read) = topo.client.run(|| {
        let mut s = tunnel("echo.ambassador.internal", ECHO_PORT);
        s.set_read_timeout(Some(stretched(Duration::from_secs(IDLE_SECS * 5))))
            .unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 1];
        let read = s.read(&mut buf).map_err(|e| e.kind());
        (t0.elapsed(), read)
    });
    assert_eq!(read, Ok(0), "the silent tunnel was not closed");
    assert!(
        waited >= Duration::from_millis(IDLE_SECS * 1000 - 100),
        "closed after {waited:?}, before the idle timeout"
    );
    assert_eq!(
        door.metric("ambassador_socks_idle_timeouts_total", &[]),
        1.0
    );
}

#[test]
fn splice_copies_every_byte_and_closes_only_idle_tunnels() {
    if !require_root("splice_copies_every_byte_and_closes_only_idle_tunnels") {
        return;
    }
    copies_every_byte_and_closes_only_idle_tunnels(Some("splice"));
}

#[test]
fn read_write_copies_every_byte_and_closes_only_idle_tunnels() {
    if !require_root("read_write_copies_every_byte_and_closes_only_idle_tunnels") {
        return;
    }
    // Read-write is the default: no `--copy`.
    copies_every_byte_and_closes_only_idle_tunnels(None);
}

/// The door's open files: a soft limit below what `--max-connections` needs is raised (to the
/// hard limit here, with a warning that even that is short); with no descriptor left for a
/// connection's pipes, it is copied through buffers instead of failing, and counted.
#[test]
fn the_door_raises_its_open_files_limit_and_copies_without_pipes_when_out_of_them() {
    if !require_root(
        "the_door_raises_its_open_files_limit_and_copies_without_pipes_when_out_of_them",
    ) {
        return;
    }
    // 1,000 spliced connections need 6,064 descriptors.
    let args = ["--copy", "splice", "--max-connections", "1000"];
    let (topo, _etcd, door) = bed(&args, Some("256:4096"));
    let pid = door.proc.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits.lines().find(|l| l.starts_with("Max open files"));
    let soft = soft.and_then(|l| l.split_whitespace().nth(3)).unwrap();
    assert_eq!(
        soft, "4096",
        "the soft limit was not raised to the hard one"
    );
    let log = door.proc.log();
    assert!(
        log.contains("raised the limit of open files from 256 to 4096"),
        "{log}"
    );
    assert!(log.contains("needs about 6064 open files"), "{log}");

    // Room for one spliced connection (two sockets, four pipe ends) and four descriptors
    // more: the next connection gets its two sockets, but not its pipes.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let prlimit = |n: usize| {
        let limit = format!("--nofile={n}:4096");
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &limit])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    prlimit(open + 6 + 4);
    topo.client.run(|| {
        let mut spliced = tunnel("echo.ambassador.internal", ECHO_PORT);
        echoes(&mut spliced);
        let mut buffered = tunnel("echo.ambassador.internal", ECHO_PORT);
        echoes(&mut buffered);
        echoes(&mut spliced);
    });
    prlimit(4096);
    let log = door.proc.log();
    assert!(log.contains("no pipe for splice(2)"), "{log}");
    assert_eq!(
        door.metric("ambassador_socks_splice_fallbacks_total", &[]),
        1.0
    );
}
