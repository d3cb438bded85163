//! Failover in the datapath: a backend that refuses new flows (its process died) or ignores
//! them (its link is cut) is left before any lease could expire, with no failed connection.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ambassador_tests::*;

const VIP: &str = "10.96.0.10:80";
const VIP6: &str = "[fd00:96::10]:80";

/// The address family a failover case runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ip {
    V4,
    V6,
}

impl Ip {
    fn vip(self) -> &'static str {
        match self {
            Ip::V4 => VIP,
            Ip::V6 => VIP6,
        }
    }

    fn backend(self, i: usize) -> String {
        match self {
            Ip::V4 => Topology::backend_addr(i, 8080),
            Ip::V6 => Topology::backend_addr6(i, 8080),
        }
    }
}

/// One connection: when it started, how long it took, and the server that answered (or why
/// it failed).
type Attempt = (Instant, Duration, Result<String, String>);

/// One new connection every 5 ms (connect, read the server's identity) with a 5 s budget each,
/// recording how long each took and where it went.
struct Stream {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    fn start(client: &NetNs, vip: &str) -> Self {
        let addr: SocketAddr = vip.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = client.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = tcp_connect_here(addr, Duration::from_secs(5))
                    .map(|(_, who)| who)
                    .map_err(|e| e.to_string());
                v.lock().unwrap().push((t0, t0.elapsed(), r));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Connections that started at or after `t` and went to `who`.
    fn went_to_since(&self, who: &str, t: Instant) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t0, _, r)| *t0 >= t && r.as_deref() == Ok(who))
            .count()
    }

    /// Stops; of the connections that started after `broken`: (all, failed, delayed past
    /// 300 ms, slowest). One already established with the backend when it broke (its reply lost
    /// with the link) is not a new flow: no datapath can save it, and it is left out.
    fn finish(mut self, broken: Instant) -> (usize, Vec<String>, usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap();
        let after: Vec<&Attempt> = seen.iter().filter(|(t0, _, _)| *t0 >= broken).collect();
        let failed = after
            .iter()
            .filter_map(|(_, _, r)| r.as_ref().err().cloned())
            .collect();
        let delayed = after
            .iter()
            .filter(|(_, d, _)| *d > Duration::from_millis(300))
            .count();
        let slowest = after.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
        (after.len(), failed, delayed, slowest)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn backend(pin: &std::path::Path, addr: &str) -> serde_json::Value {
    let web = service_status(pin, "web").expect("service web");
    web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr)
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in {web}"))
}

/// The whole scenario: two backends, a stream of new connections, `fail` breaks backend 1,
/// `heal` mends it; nothing may fail, only the first connections that meet the dead backend
/// may wait for a SYN retransmission, and the mended backend is used again. `reason`: what the
/// status may say of backend 1 (`a|b`: either).
fn failover(
    case: &str,
    reason: &str,
    ip: Ip,
    fail: impl FnOnce(&Topology),
    heal: impl FnOnce(&Topology),
) -> String {
    let topo = Topology::new(2);
    if ip == Ip::V6 {
        topo.add_ipv6();
    }
    let (vip, b1, b2) = (ip.vip(), ip.backend(1), ip.backend(2));
    let mut s1 = Some(TcpServer::start(&topo.backends[0], &b1, "b1"));
    let _s2 = TcpServer::start(&topo.backends[1], &b2, "b2");
    let (pin, _cfg, mut d) = Daemon::run_web(&topo, vip, &b1, &b2, &[]);
    let watch = monitor(&topo.fwd, &mut d, &pin.path, &["--kind", "failover"]);

    let stream = Stream::start(&topo.client, vip);
    assert!(wait_until(Duration::from_secs(10), || stream.count() >= 200));
    if case == "killed" {
        s1.take(); // the backend's process is gone: its port answers RST
    }
    fail(&topo);
    // From here on the break is in effect: a connection that started earlier may have been
    // established with b1 just before (then its reply is lost with the link), and no datapath
    // can save an established connection.
    let broken = Instant::now();
    let n = stream.count();
    assert!(wait_until(Duration::from_secs(20), || stream.count() >= n + 400));
    let suspect = backend(&pin.path, &b1);
    let found = suspect["suspect"]["reason"].as_str().unwrap_or_default();
    assert!(reason.split('|').any(|r| r == found), "{suspect}");
    d.wait_log("suspect on this host", Duration::from_secs(2));
    // `ambassador monitor` saw flows re-pointed away from it, whichever way it failed (a RST,
    // an ICMP error, silence).
    let repointed = || {
        monitor_events(&watch)
            .iter()
            .filter(|e| {
                e["backend"] == b1.as_str() && e["service"] == "web" && e["frontend"] == vip
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || repointed() >= 1),
        "no failover event for {b1}:\n{}",
        watch.log()
    );
    // Mended: after the backoff one new flow tries it, it answers, it is used again.
    heal(&topo);
    let s1 = s1.or_else(|| Some(TcpServer::start(&topo.backends[0], &b1, "b1")));
    let healed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(90), || stream
            .went_to_since("b1", healed)
            >= 20),
        "b1 is never used again: {}\n{}",
        backend(&pin.path, &b1),
        d.log()
    );
    assert!(backend(&pin.path, &b1)["suspect"].is_null());
    d.wait_log("in use again", Duration::from_secs(2));
    let (all, failed, delayed, slowest) = stream.finish(broken);
    assert!(
        failed.is_empty(),
        "{} of {all} connections failed after b1 broke ({:?} ago): {:?}",
        failed.len(),
        broken.elapsed(),
        &failed[..failed.len().min(5)]
    );
    // Only connections that met the broken backend wait, for one retransmission (1 s), and
    // backoff tries add one each.
    assert!(slowest < Duration::from_millis(3500), "slowest {slowest:?}");
    assert!(delayed < 20, "{delayed} of {all} connections delayed");
    let st = status(&pin.path);
    drop(s1);
    format!(
        "{case}: {all} connections, 0 failed, {delayed} delayed past 300 ms, slowest {slowest:?}; verdicts {}",
        st["reasons"]
    )
}

/// Runs `case` `AMBASSADOR_FAILOVER_RUNS` times in a row (default 1: once is the default
/// run's; before calling failover done, run it 50 times: `AMBASSADOR_FAILOVER_RUNS=50 cargo
/// test -p ambassador-tests --test failover is_left`). Every run goes to its end; the test
/// fails, listing them, if any run did.
fn every_time(case: impl Fn() -> String + std::panic::RefUnwindSafe) {
    let runs: usize = std::env::var("AMBASSADOR_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut failed = Vec::new();
    for run in 1..=runs {
        match std::panic::catch_unwind(&case) {
            Ok(summary) => eprintln!("run {run} of {runs}: {summary}"),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                eprintln!("run {run} of {runs}: FAILED: {why}");
                failed.push(format!("run {run}: {why}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn a_backend_whose_process_died_is_left_with_no_failed_connection() {
    if !require_root("a_backend_whose_process_died_is_left_with_no_failed_connection") {
        return;
    }
    every_time(|| failover("killed", "refused", Ip::V4, |_| {}, |_| {}));
}

#[test]
fn a_backend_whose_link_is_cut_is_left_with_no_failed_connection() {
    if !require_root("a_backend_whose_link_is_cut_is_left_with_no_failed_connection") {
        return;
    }
    every_time(|| {
        failover(
            "link cut",
            // Silent at first; once the forwarding host's neighbour entry for b1 has failed
            // (about 3 s of unanswered probes), its stack answers the client's SYNs with ICMP
            // host unreachable, which the datapath reads as a refusal.
            "silent|refused",
            Ip::V4,
            |topo| {
                topo.backends[0].ip(&["link", "set", "eth0", "down"]);
            },
            |topo| {
                topo.backends[0].ip(&["link", "set", "eth0", "up"]);
                topo.backends[0].ip(&["route", "replace", "default", "via", "10.200.1.1"]);
            },
        )
    });
}

/// The silent case: the backend's address black-holed on the forwarding host (its
/// packets vanish there: no ICMP, no carrier change).
#[test]
fn a_backend_whose_address_is_black_holed_is_left_with_no_failed_connection() {
    if !require_root("a_backend_whose_address_is_black_holed_is_left_with_no_failed_connection") {
        return;
    }
    every_time(|| {
        failover(
            "black-holed",
            "silent",
            Ip::V4,
            |topo| {
                topo.fwd.ip(&["route", "add", "blackhole", "10.200.1.2/32"]);
            },
            |topo| {
                topo.fwd.ip(&["route", "del", "blackhole", "10.200.1.2/32"]);
            },
        )
    });
}

/// A backend that comes back while the other dies: b1's process killed (suspect, its backoff
/// growing while it stays dead), then b1 started again at the moment b2's process is killed.
/// Both are suspect then; a flow that meets dead b2 is re-pointed to b1 all the same (the only
/// other one), b1 answers, and new flows go to it: no connection fails.
fn comes_back_as_the_other_dies() -> String {
    let topo = Topology::new(2);
    let (b1, b2) = (Ip::V4.backend(1), Ip::V4.backend(2));
    let mut s1 = Some(TcpServer::start(&topo.backends[0], &b1, "b1"));
    let mut s2 = Some(TcpServer::start(&topo.backends[1], &b2, "b2"));
    let (pin, _cfg, d) = Daemon::run_web(&topo, VIP, &b1, &b2, &[]);
    let stream = Stream::start(&topo.client, VIP);
    assert!(wait_until(Duration::from_secs(10), || stream.count() >= 200));
    s1.take();
    let broken = Instant::now();
    // b1 dead long enough to fail a backoff trial or two.
    assert!(wait_until(Duration::from_secs(20), || backend(
        &pin.path, &b1
    )["suspect"]["strikes"]
        .as_u64()
        .is_some_and(|s| s >= 2)));
    s1 = Some(TcpServer::start(&topo.backends[0], &b1, "b1"));
    s2.take();
    let swapped = Instant::now();
    let n = stream.count();
    assert!(wait_until(Duration::from_secs(20), || stream.count() >= n + 400));
    assert!(
        stream.went_to_since("b1", swapped) >= 300,
        "b1 is not used again: {}\n{}",
        backend(&pin.path, &b1),
        d.log()
    );
    assert!(!backend(&pin.path, &b2)["suspect"].is_null());
    let (all, failed, delayed, slowest) = stream.finish(broken);
    assert!(
        failed.is_empty(),
        "{} of {all} connections failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(slowest < Duration::from_millis(3500), "slowest {slowest:?}");
    drop(s1);
    format!("b1 back as b2 dies: {all} connections, 0 failed, {delayed} delayed past 300 ms, slowest {slowest:?}")
}

#[test]
fn a_backend_that_comes_back_as_the_other_dies_is_used_with_no_failed_connection() {
    if !require_root(
        "a_backend_that_comes_back_as_the_other_dies_is_used_with_no_failed_connection",
    ) {
        return;
    }
    every_time(comes_back_as_the_other_dies);
}

#[test]
fn a_backend_answering_icmp_unreachable_is_left_with_no_failed_connection() {
    if !require_root("a_backend_answering_icmp_unreachable_is_left_with_no_failed_connection") {
        return;
    }
    // The backend host rejects the port with an ICMP error, as a firewall or a host whose
    // route to the backend is gone does.
    eprintln!("{}", rejected(Ip::V4, "icmp-host-unreachable"));
}

#[test]
fn an_ipv6_backend_answering_icmpv6_unreachable_is_left_with_no_failed_connection() {
    if !require_root(
        "an_ipv6_backend_answering_icmpv6_unreachable_is_left_with_no_failed_connection",
    ) {
        return;
    }
    // As for IPv4, with an ICMPv6 "port unreachable".
    eprintln!("{}", rejected(Ip::V6, "icmp6-port-unreachable"));
}

/// The failover case of a backend host that rejects its port with the ICMP error `with`
/// (iptables or ip6tables `REJECT --reject-with`).
fn rejected(ip: Ip, with: &'static str) -> String {
    let tool = match ip {
        Ip::V4 => "iptables",
        Ip::V6 => "ip6tables",
    };
    let rule = move |op: &'static str| {
        [
            tool,
            "-w",
            op,
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "REJECT",
            "--reject-with",
            with,
        ]
    };
    failover(
        &format!("{with} (reject)"),
        "refused",
        ip,
        |topo| {
            topo.backends[0].exec(&rule("-A"));
        },
        |topo| {
            topo.backends[0].exec(&rule("-D"));
        },
    )
}

/// One connection from `client` to `addr` (10 s at most): how long it took, and whether it was
/// accepted.
fn connect_timed(client: &NetNs, addr: &str) -> (Duration, std::io::Result<()>) {
    let addr: SocketAddr = addr.parse().unwrap();
    client.run(move || {
        let t0 = Instant::now();
        let r = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10));
        (t0.elapsed(), r.map(|_| ()))
    })
}

#[test]
fn with_no_live_backend_left_the_client_is_refused_not_left_hanging() {
    if !require_root("with_no_live_backend_left_the_client_is_refused_not_left_hanging") {
        return;
    }
    let topo = Topology::new(2);
    let pin = PinDir::new();
    // "one" has a single backend; "both" has two. No server listens anywhere: every backend
    // refuses.
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"one\"\nfrontend = \"10.96.0.11:80\"\nendpoints = [\"{}\"]\n\n\
         [[service]]\nname = \"both\"\nfrontend = \"10.96.0.12:80\"\nendpoints = [\"{}\", \"{}\"]\n",
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
    ));
    let mut d = Daemon::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, &[]);
    d.wait_ready();
    for (vip, within) in [
        // No other backend: the refusal reaches the client at once, as without failover.
        ("10.96.0.11:80", Duration::from_millis(500)),
        // Both refuse: the first two refusals are withheld (the other might live, or have
        // come back), the third, two SYN retransmissions (1 s, then 2 s) later, is not.
        ("10.96.0.12:80", Duration::from_millis(3800)),
    ] {
        let (took, result) = connect_timed(&topo.client, vip);
        let err = result.expect_err("nothing listens");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{vip}: {err}"
        );
        assert!(took < within, "{vip}: refused after {took:?}");
    }
    // Every backend of "both" is suspect now, and new flows still go somewhere (refused again,
    // never dropped by us).
    let st = status(&pin.path);
    let both = service_status(&pin.path, "both").unwrap();
    assert!(
        both["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| !b["suspect"].is_null()),
        "{st}"
    );
    let (took, result) = connect_timed(&topo.client, "10.96.0.12:80");
    assert!(result.is_err());
    assert!(took < Duration::from_millis(3800), "refused after {took:?}");
}

#[test]
fn the_sock_datapath_avoids_a_backend_tc_found_dead() {
    if !require_root("the_sock_datapath_avoids_a_backend_tc_found_dead") {
        return;
    }
    let topo = Topology::new(2);
    let (b1, b2) = (
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
    );
    let s1 = TcpServer::start(&topo.backends[0], &b1, "b1");
    let _s2 = TcpServer::start(&topo.backends[1], &b2, "b2");
    let cg = Cgroup::new();
    let extra = ["--datapath", "tc,sock", "--cgroup-path", cg.arg()];
    let (pin, _cfg, d) = Daemon::run_web(&topo, VIP, &b1, &b2, &extra);
    drop(s1);
    // The client behind c0 (tc) meets the dead backend and the datapath marks it suspect.
    let stream = Stream::start(&topo.client, VIP);
    assert!(
        wait_until(Duration::from_secs(10), || !backend(&pin.path, &b1)
            ["suspect"]
            .is_null()),
        "b1 never became suspect: {}",
        d.log()
    );
    let broken = Instant::now();
    // A process of the host (sock, translated at connect()) goes only to the live backend,
    // without waiting: sock sees no packets, but it honours what tc found.
    let probe = env!("CARGO_BIN_EXE_amb-probe");
    let out = cg.run(&topo.fwd, probe, &["tcp-idents", VIP, "50", "0"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 50, "{text}");
    assert!(text.lines().all(|l| l.starts_with("ok b2 ")), "{text}");
    let (_, failed, _, _) = stream.finish(broken);
    assert!(failed.is_empty(), "{failed:?}");
}
