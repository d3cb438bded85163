//! The SOCKS5 door end to end, as a user outside the fleet would meet it: `ambassador socks`
//! on the gateway (the forwarding host's namespace) follows a real etcd; web servers
//! (busybox httpd) in the backend namespaces; curl with `--socks5-hostname` in the client
//! namespace, which runs no ambassador.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use ambassador_tests::*;

const DOOR: &str = "10.200.0.1:1080";
const VIP: &str = "10.96.0.10:80";

struct Bed {
    topo: Topology,
    etcd: Etcd,
    www: Vec<Proc>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Bed {
    /// `backends` web servers, each answering its name (`b1`, `b2`...) at port 8080.
    fn new(backends: usize) -> Self {
        let topo = Topology::new(backends);
        let etcd = Etcd::single(&topo.fwd);
        let mut dirs = Vec::new();
        let www = (1..=backends)
            .map(|i| {
                let dir = temp_dir("www");
                std::fs::write(dir.path().join("index.html"), format!("b{i}\n")).unwrap();
                let ip = Topology::backend_addr(i, 8080);
                let args: Vec<String> =
                    ["httpd", "-f", "-p", &ip, "-h", dir.path().to_str().unwrap()]
                        .map(String::from)
                        .to_vec();
                dirs.push(dir);
                Proc::spawn(
                    &topo.backends[i - 1].name,
                    "httpd",
                    &PathBuf::from("/bin/busybox"),
                    &args,
                )
            })
            .collect();
        let bed = Self {
            topo,
            etcd,
            www,
            _dirs: dirs,
        };
        for i in 1..=backends {
            let addr: SocketAddr = Topology::backend_addr(i, 8080).parse().unwrap();
            let up = bed.topo.fwd.run(move || {
                wait_until(Duration::from_secs(5), || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
            });
            assert!(up, "httpd b{i} did not listen:\n{}", bed.www[i - 1].log());
        }
        bed
    }

    fn ctl(&self, args: &[&str]) -> String {
        let urls = self.etcd.urls();
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&["--etcd", &urls]);
        ambassador_ok(&self.topo.fwd, &full)
    }

    /// `ambassador socks` on the gateway, listening at `DOOR` for the client's subnet, with
    /// `extra` flags; returns once it has its names from etcd.
    fn door(&self, extra: &[&str]) -> SocksDoor {
        SocksDoor::start(
            &self.topo.fwd,
            &self.etcd.urls(),
            "0.0.0.0:1080",
            "10.200.0.0/24",
            extra,
        )
    }

    /// Service `web` at `VIP` with the web servers `backends` (1-based) as its endpoints.
    fn web(&self, backends: &[usize]) {
        self.ctl(&["service", "set", "web", "--frontend", VIP]);
        for &i in backends {
            let (addr, id) = (Topology::backend_addr(i, 8080), format!("b{i}"));
            self.ctl(&["endpoint", "add", "web", &addr, "--id", &id]);
        }
    }

    /// `web` moves: the new endpoint (b2) is added, then the old one (b1) removed.
    fn move_web_from_b1_to_b2(&self) {
        let b2 = Topology::backend_addr(2, 8080);
        self.ctl(&["endpoint", "add", "web", &b2, "--id", "b2"]);
        self.ctl(&["endpoint", "rm", "web", "b1"]);
    }

    /// `curl --socks5-hostname` from the client: (exit code, body).
    fn curl(&self, url: &str, extra: &[&str]) -> (i32, String) {
        curl_socks(&self.topo.client, DOOR, url, extra)
    }
}

#[test]
fn curl_reaches_a_service_and_an_endpoint_by_name_through_the_door() {
    if !require_root("curl_reaches_a_service_and_an_endpoint_by_name_through_the_door") {
        return;
    }
    let bed = Bed::new(2);
    bed.web(&[1]);
    let door = bed.door(&[]);
    assert_eq!(
        bed.curl("http://web.ambassador.internal/", &[]),
        (0, "b1".into()),
        "{}",
        door.proc.log()
    );
    // The frontend as an address, as a client that resolved the name itself would give it.
    assert_eq!(bed.curl("http://10.96.0.10/", &[]), (0, "b1".into()));
    // An endpoint by its name, at its own port and at its service's.
    let ep = "10-200-1-2.endpoints.ambassador.internal";
    assert_eq!(
        bed.curl(&format!("http://{ep}:8080/"), &[]),
        (0, "b1".into())
    );
    assert_eq!(bed.curl(&format!("http://{ep}/"), &[]), (0, "b1".into()));
    // A change in etcd is followed.
    bed.move_web_from_b1_to_b2();
    let moved = wait_until(Duration::from_secs(5), || {
        bed.curl("http://web.ambassador.internal/", &[]).1 == "b2"
    });
    assert!(moved, "{}", door.proc.log());
    assert!(door.metric("ambassador_socks_connected_total", &[]) >= 5.0);
    assert_eq!(door.metric("ambassador_socks_etcd_connected", &[]), 1.0);
}

#[test]
fn a_service_moving_between_backends_fails_no_fetch() {
    if !require_root("a_service_moving_between_backends_fails_no_fetch") {
        return;
    }
    let mut bed = Bed::new(2);
    bed.web(&[1]);
    let door = bed.door(&[]);
    // Fetch every 100 ms while the container moves from b1 to b2: the new one registered,
    // the old one deregistered and stopped at once (its removal may not have reached the
    // door yet: the door leaves a refusing endpoint for the next one).
    let (tx, rx) = std::sync::mpsc::channel();
    let client = bed.topo.client.name.clone();
    let fetcher = std::thread::spawn(move || {
        let mut results = Vec::new();
        while rx.try_recv().is_err() {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &client, "curl", "-sS", "--max-time", "5"])
                .args(["--socks5-hostname", DOOR, "http://web.ambassador.internal/"])
                .output()
                .unwrap();
            results.push((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
        results
    });
    std::thread::sleep(Duration::from_secs(1));
    bed.move_web_from_b1_to_b2();
    bed.www[0].kill();
    std::thread::sleep(Duration::from_secs(2));
    tx.send(()).unwrap();
    let results = fetcher.join().unwrap();
    let failed: Vec<_> = results
        .iter()
        .filter(|(code, body)| *code != Some(0) || body.is_empty())
        .collect();
    assert!(results.len() >= 15, "{results:?}");
    assert!(
        failed.is_empty(),
        "{} of {} fetches failed: {failed:?}\n{}",
        failed.len(),
        results.len(),
        door.proc.log()
    );
    assert_eq!(results.last().unwrap().1, "b2");
    eprintln!("{} fetches through the move, 0 failed", results.len());
}

#[test]
fn an_endpoint_that_refuses_is_left_for_the_next_before_the_client_hears() {
    if !require_root("an_endpoint_that_refuses_is_left_for_the_next_before_the_client_hears") {
        return;
    }
    let mut bed = Bed::new(2);
    bed.web(&[1, 2]);
    let door = bed.door(&[]);
    // b1 crashes and stays registered (its lease has not expired yet).
    bed.www[0].kill();
    for _ in 0..20 {
        assert_eq!(
            bed.curl("http://web.ambassador.internal/", &[]),
            (0, "b2".into()),
            "{}",
            door.proc.log()
        );
    }
    // It was tried, refused, and then left alone while suspect (10 s): once, maybe twice.
    let failures = door.metric("ambassador_socks_endpoint_failures_total", &[]);
    assert!((1.0..=2.0).contains(&failures), "{failures}");
}

#[test]
fn the_door_refuses_what_it_should_and_says_why() {
    if !require_root("the_door_refuses_what_it_should_and_says_why") {
        return;
    }
    let bed = Bed::new(1);
    bed.web(&[1]);
    let door = bed.door(&["--handshake-timeout", "1"]);
    // curl exits 97 when the proxy refuses (its "proxy handshake error").
    for (url, reason) in [
        ("http://nope.ambassador.internal/", "unknown_name"),
        ("http://example.com/", "outside_domain"),
        ("http://web.ambassador.internal:8080/", "wrong_port"),
        ("http://10.200.1.2:8080/", "destination_not_allowed"),
        ("http://127.0.0.1:2379/", "destination_not_allowed"),
    ] {
        let (code, _) = bed.curl(url, &[]);
        assert_eq!(code, 97, "{url}");
        let n = door.metric(
            "ambassador_socks_destinations_refused_total",
            &[("reason", reason)],
        );
        assert!(n >= 1.0, "{url}: {reason} {n}");
    }

    // A client outside --allow-client (a backend host) is closed before a byte is read.
    let door_addr: SocketAddr = "10.200.1.1:1080".parse().unwrap();
    let closed = bed.topo.backends[0].run(move || -> std::io::Result<usize> {
        let mut s = TcpStream::connect_timeout(&door_addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let _ = s.write_all(&[5, 1, 0]);
        let mut buf = [0u8; 16];
        Ok(s.read(&mut buf).unwrap_or(0))
    });
    assert_eq!(
        closed.unwrap(),
        0,
        "the door answered a client it does not allow"
    );
    assert_eq!(
        door.metric("ambassador_socks_clients_refused_total", &[]),
        1.0
    );

    // Raw handshakes from the allowed client.
    let door_addr: SocketAddr = DOOR.parse().unwrap();
    let exchange = move |send: Vec<u8>, read_for: Duration| -> Vec<u8> {
        let mut s = TcpStream::connect_timeout(&door_addr, Duration::from_secs(2)).unwrap();
        s.write_all(&send).unwrap();
        s.set_read_timeout(Some(read_for)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };
    let client = &bed.topo.client;
    // Not SOCKS at all: closed.
    let got =
        client.run(move || exchange(b"GET / HTTP/1.0\r\n\r\n".to_vec(), Duration::from_secs(3)));
    assert!(got.is_empty(), "{got:?}");
    // BIND (command 2): "command not supported" (7).
    let bind = vec![5, 1, 0, 5, 2, 0, 1, 10, 96, 0, 10, 0, 80];
    let got = client.run(move || exchange(bind, Duration::from_secs(3)));
    assert_eq!(&got[..2], &[5, 0], "{got:?}");
    assert_eq!(got.get(3), Some(&7), "{got:?}");
    // A greeting, then silence: closed after the handshake deadline (1 s).
    let t0 = Instant::now();
    let got = client.run(move || exchange(vec![5, 1, 0], Duration::from_secs(5)));
    assert_eq!(got, vec![5, 0]);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(door.metric("ambassador_socks_handshake_timeouts_total", &[]) >= 1.0);
    assert!(door.metric("ambassador_socks_handshake_failures_total", &[]) >= 2.0);
    // Still serving.
    assert_eq!(
        bed.curl("http://web.ambassador.internal/", &[]),
        (0, "b1".into())
    );
    assert_eq!(door.metric("ambassador_socks_connections_active", &[]), 0.0);
}

#[test]
fn a_users_file_requires_a_username_and_password() {
    if !require_root("a_users_file_requires_a_username_and_password") {
        return;
    }
    let bed = Bed::new(1);
    bed.web(&[1]);
    let dir = temp_dir("socks-users");
    let users = dir.path().join("users");
    std::fs::write(&users, "# the door's users\nalice:correct horse\n").unwrap();
    let door = bed.door(&["--users-file", users.to_str().unwrap()]);
    let url = "http://web.ambassador.internal/";
    assert_eq!(
        bed.curl(url, &["--proxy-user", "alice:correct horse"]),
        (0, "b1".into())
    );
    assert_ne!(bed.curl(url, &["--proxy-user", "alice:wrong"]).0, 0);
    assert_ne!(bed.curl(url, &[]).0, 0);
    assert!(
        door.metric("ambassador_socks_handshake_failures_total", &[]) >= 2.0,
        "{}",
        door.proc.log()
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        vec!["socks", "--listen", "nowhere"],
        vec!["socks", "--allow-client", "10.0.0.0/99"],
        vec!["socks", "--max-connections", "0"],
        vec!["socks", "--idle-timeout", "0"],
        vec!["socks", "--copy", "sendfile"],
        vec!["socks", "--users-file"],
    ] {
        let out = ambassador(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = temp_dir("socks-users");
    let users = dir.path().join("users");
    std::fs::write(&users, "no colon here\n").unwrap();
    let out = ambassador(&["socks", "--users-file", users.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("line 1: expected user:password"), "{err}");
}

#[test]
fn allowed_destinations_open_addresses_and_names_that_resolve_into_them() {
    if !require_root("allowed_destinations_open_addresses_and_names_that_resolve_into_them") {
        return;
    }
    let bed = Bed::new(1);
    bed.web(&[1]);
    let door = bed.door(&["--allow-destination", "10.200.1.0/24"]);
    // An address inside the range, as it is.
    assert_eq!(bed.curl("http://10.200.1.2:8080/", &[]), (0, "b1".into()));
    // A name outside the domain is resolved by the door, then checked: localhost is not
    // inside the range.
    assert_eq!(bed.curl("http://localhost:8080/", &[]).0, 97);
    let n = door.metric(
        "ambassador_socks_destinations_refused_total",
        &[("reason", "destination_not_allowed")],
    );
    assert_eq!(n, 1.0);
    // Outside the range, still refused.
    assert_eq!(bed.curl("http://10.200.0.1:2379/", &[]).0, 97);
}
