//! The socket datapath with the real kernel: cgroup programs attached to a cgroup each test
//! makes for itself (never the machine's root), real clients (curl, redis-cli, and the
//! `amb-probe` socket client) run inside that cgroup from the forwarding host's own network
//! namespace, real servers in the backends' namespaces.

use std::{collections::BTreeMap, path::Path, time::Duration};

use ambassador_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_amb-probe");
const VIP_TCP: &str = "10.96.0.10:80";
const VIP_UDP: &str = "10.96.0.10:53";
const VIP_HTTP: &str = "10.96.0.11:80";
const VIP_REDIS: &str = "10.96.0.12:6379";
const VIP_EMPTY: &str = "10.96.0.13:80";
/// Pinned links of the socket datapath: one per address program, and `sock_release`.
const SOCK_LINKS: usize = ambassador_common::program_names::SOCK_ADDR.len() + 1;

/// `web` (TCP, b1 weight 3, b2 weight 1), `dns` (UDP, the given backends), `http` (busybox
/// httpd on b1), `redis` (redis-server on b2), `empty` (no backend).
fn config(udp_backends: &[usize]) -> String {
    let udp: Vec<String> = udp_backends
        .iter()
        .map(|i| format!("\"{}\"", Topology::backend_addr(*i, 5353)))
        .collect();
    format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP_TCP}\"\nendpoints = [{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\", weight = 1 }}]\n\n\
         [[service]]\nname = \"dns\"\nfrontend = \"{VIP_UDP}\"\nproto = \"udp\"\nendpoints = [{}]\n\n\
         [[service]]\nname = \"http\"\nfrontend = \"{VIP_HTTP}\"\nendpoints = [\"{}\"]\n\n\
         [[service]]\nname = \"redis\"\nfrontend = \"{VIP_REDIS}\"\nendpoints = [\"{}\"]\n\n\
         [[service]]\nname = \"empty\"\nfrontend = \"{VIP_EMPTY}\"\nendpoints = []\n",
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
        udp.join(", "),
        Topology::backend_addr(1, 8081),
        Topology::backend_addr(2, 6379),
    )
}

/// `web`'s servers: each backend answers on 8080 with its name ("b1", "b2").
fn web_servers(topo: &Topology) -> [TcpServer; 2] {
    [1, 2].map(|i| {
        TcpServer::start(
            &topo.backends[i - 1],
            &Topology::backend_addr(i, 8080),
            &format!("b{i}"),
        )
    })
}

/// `dns`'s servers: each backend answers on 5353 with its name.
fn dns_servers(topo: &Topology) -> [UdpServer; 2] {
    [1, 2].map(|i| {
        UdpServer::start(
            &topo.backends[i - 1],
            &Topology::backend_addr(i, 5353),
            &format!("b{i}"),
        )
    })
}

/// `ambassador run --datapath DATAPATH --cgroup-path CG --config CFG --pin-path PIN EXTRA...`
/// in the forwarding host's namespace, waited for.
fn run_sock(topo: &Topology, cg: &Cgroup, cfg: &TempFile, pin: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "run",
        "--cgroup-path",
        cg.arg(),
        "--config",
        cfg.as_str(),
        "--pin-path",
        pin.to_str().unwrap(),
    ];
    if !extra.contains(&"--datapath") {
        args.extend(["--datapath", "sock"]);
    }
    args.extend(extra);
    let mut d = Daemon::start(&topo.fwd, &args);
    d.wait_ready();
    d
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the probe in the cgroup, from the forwarding host; its output lines.
fn probe(cg: &Cgroup, ns: &NetNs, args: &[&str]) -> Vec<String> {
    let out = cg.run(ns, PROBE, args);
    assert!(
        out.status.success(),
        "amb-probe {args:?}: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).lines().map(str::to_owned).collect()
}

/// An HTTP server (busybox httpd) in `ns` at `addr` whose index page is `body`.
fn httpd(ns: &NetNs, addr: &str, body: &str) -> (Proc, TempDir) {
    let root = temp_dir("amb-httpd");
    std::fs::write(root.path().join("index.html"), body).unwrap();
    let args: Vec<String> = [
        "httpd",
        "-f",
        "-p",
        addr,
        "-h",
        root.path().to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    let p = Proc::spawn(&ns.name, "httpd", Path::new("busybox"), &args);
    (p, root)
}

#[test]
fn sock_real_clients_reach_frontends_see_the_vip_and_weights_spread() {
    if !require_root("sock_real_clients_reach_frontends_see_the_vip_and_weights_spread") {
        return;
    }
    let topo = Topology::new(2);
    let _web = web_servers(&topo);
    let _dns = dns_servers(&topo);
    let (_httpd, _root) = httpd(
        &topo.backends[0],
        &Topology::backend_addr(1, 8081),
        "hello from b1\n",
    );
    let _redis = redis_server(&topo.backends[1], "10.200.2.2");
    wait_for_port(&topo.backends[0], &Topology::backend_addr(1, 8081));
    wait_for_port(&topo.backends[1], &Topology::backend_addr(2, 6379));
    let cg = Cgroup::new();
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[1, 2]));
    let mut d = run_sock(&topo, &cg, &cfg, &pin.path, &[]);
    let flows = monitor(&topo.fwd, &mut d, &pin.path, &["--service", "http,empty"]);

    // curl: the page through the frontend; its peer (getpeername) is the frontend.
    let out = cg.run(
        &topo.fwd,
        "curl",
        &[
            "-sS",
            "-m",
            &stretched(Duration::from_secs(3)).as_secs().to_string(),
            "-w",
            "peer %{remote_ip}:%{remote_port}",
            &format!("http://{VIP_HTTP}/"),
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "curl: {text}{:?}", out.stderr);
    assert!(text.contains("hello from b1"), "{text}");
    assert!(text.contains(&format!("peer {VIP_HTTP}")), "{text}");
    // `ambassador monitor` saw the connection translated by `sock`, with the socket's cookie.
    let seen = || {
        monitor_events(&flows).into_iter().find(|e| {
            e["kind"] == "flow"
                && e["datapath"] == "sock"
                && e["service"] == "http"
                && e["frontend"] == VIP_HTTP
                && e["backend"] == Topology::backend_addr(1, 8081).as_str()
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || seen().is_some()),
        "{}",
        flows.log()
    );
    assert!(
        seen().unwrap()["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("socket cookie ")),
        "{}",
        flows.log()
    );

    // redis-cli: a real protocol client through the frontend.
    let (host, port) = VIP_REDIS.split_once(':').unwrap();
    let redis_cli = |args: &[&str]| {
        let mut full = vec!["-h", host, "-p", port];
        full.extend_from_slice(args);
        let out = cg.run(&topo.fwd, "redis-cli", &full);
        stdout(&out).trim().to_owned()
    };
    assert_eq!(redis_cli(&["SET", "greeting", "through-the-vip"]), "OK");
    assert_eq!(redis_cli(&["GET", "greeting"]), "through-the-vip");

    // UDP, unconnected: recvfrom reports the frontend as the source.
    let lines = probe(&cg, &topo.fwd, &["udp-sendto", VIP_UDP]);
    assert!(
        lines[0].starts_with(&format!("from {VIP_UDP} b")),
        "{lines:?}"
    );
    // UDP, connected: getpeername reports the frontend; request and reply work.
    let lines = probe(&cg, &topo.fwd, &["udp-connected", VIP_UDP, "3", "0"]);
    assert_eq!(lines[0], format!("peer {VIP_UDP}"), "{lines:?}");
    assert!(
        lines[1..].iter().all(|l| l.starts_with("ok b")),
        "{lines:?}"
    );

    // Weights: 3:1 over 400 connections; every one's peer is the frontend.
    let lines = probe(&cg, &topo.fwd, &["tcp-idents", VIP_TCP, "400", "0"]);
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let mut f = l.split_whitespace();
        assert_eq!(f.next(), Some("ok"), "{l}");
        *by_backend.entry(f.next().unwrap().to_owned()).or_default() += 1;
        assert_eq!(f.next(), Some(VIP_TCP), "{l}");
    }
    let (b1, b2) = (by_backend["b1"], by_backend["b2"]);
    assert_eq!(b1 + b2, 400);
    // Each pick is random: b1's count is binomial (400, 3/4), 300 with a standard deviation of
    // 8.7. Five of them either side fails one run in millions; a 1:1 split (200) still fails.
    assert!(b1.abs_diff(300) <= 43, "weights 3:1 gave {b1}:{b2}");

    // A frontend without backends refuses: no hang (curl's exit code would be 28, its
    // deadline), no leak to the VIP.
    let out = cg.run(
        &topo.fwd,
        "curl",
        &[
            "-sS",
            "-m",
            &stretched(Duration::from_secs(5)).as_secs().to_string(),
            &format!("http://{VIP_EMPTY}/"),
        ],
    );
    assert_eq!(out.status.code(), Some(7), "curl: {:?}", out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Couldn't connect"),
        "{out:?}"
    );

    // Counted per service like the tc datapath, and no packet was rewritten by tc.
    let web = service_status(&pin.path, "web").unwrap();
    assert_eq!(web["counters"]["new_flows"], 400, "{web}");
    assert_eq!(web["flows"], 0, "{web}");
    let empty = service_status(&pin.path, "empty").unwrap();
    assert_eq!(empty["counters"]["drops"], 1, "{empty}");
    // `ambassador monitor` saw that refusal, and why.
    assert!(
        wait_until(Duration::from_secs(5), || monitor_events(&flows)
            .iter()
            .any(|e| {
                e["kind"] == "drop"
                    && e["datapath"] == "sock"
                    && e["service"] == "empty"
                    && e["frontend"] == VIP_EMPTY
                    && e["reason"] == "no_backend"
            })),
        "{}",
        flows.log()
    );
    // The reply the unconnected socket received with recvfrom (recv on a connected socket asks
    // for no source address, so the kernel runs no recvmsg program for it).
    let dns = service_status(&pin.path, "dns").unwrap();
    assert_eq!(dns["counters"]["reply_packets"], 1, "{dns}");
    assert_eq!(dns["counters"]["packets"], 1, "{dns}");
    assert_eq!(dns["counters"]["new_flows"], 2, "{dns}");
    let st = status(&pin.path);
    assert_eq!(st["control_plane"]["datapaths"][0], "sock", "{st}");
    assert!(st["reasons"]["no_backend"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn sock_terminating_backend_keeps_its_connection_and_a_udp_socket_to_a_removed_backend_is_destroyed(
) {
    if !require_root(
        "sock_terminating_backend_keeps_its_connection_and_a_udp_socket_to_a_removed_backend_is_destroyed",
    ) {
        return;
    }
    let topo = Topology::new(2);
    let _web = web_servers(&topo);
    let _dns = dns_servers(&topo);
    let cg = Cgroup::new();
    let pin = PinDir::new();
    // dns has only b1 at first.
    let cfg = TempFile::new(&config(&[1]));
    let d = run_sock(&topo, &cg, &cfg, &pin.path, &[]);

    // A long TCP connection (weights 3:1: retry until it lands on b1) and a connected UDP
    // client sending every 50 ms.
    let mut hold = None;
    for _ in 0..20 {
        let mut p = cg.spawn(
            &topo.fwd,
            "tcp-hold",
            PROBE,
            &["tcp-hold", VIP_TCP, "60", "50"],
        );
        assert!(wait_until(Duration::from_secs(3), || p
            .log()
            .contains("ident ")));
        if p.log().contains("ident b1") {
            hold = Some(p);
            break;
        }
        p.kill();
    }
    let mut hold = hold.expect("a connection to b1 in 20 tries");
    let mut udp = cg.spawn(
        &topo.fwd,
        "udp-connected",
        PROBE,
        &["udp-connected", VIP_UDP, "80", "50"],
    );
    assert!(wait_until(Duration::from_secs(3), || udp
        .log()
        .contains("ok b1:")));

    // b1 leaves both services: web's b1 becomes terminating, dns's b1 too.
    cfg.write(&config(&[2]).replace(
        &format!(
            "{{ addr = \"{}\", weight = 3 }}, ",
            Topology::backend_addr(1, 8080)
        ),
        "",
    ));
    d.signal(libc::SIGHUP);

    // The UDP socket is destroyed: its owner sees an error, reconnects, and reaches b2.
    assert!(
        wait_until(Duration::from_secs(5), || udp.log().contains("ok b2:")),
        "the UDP client never moved to b2:\n{}\n{}",
        udp.log(),
        d.log()
    );
    let log = udp.log();
    let err = log.find("err ").expect("an error told the client");
    let reconnected = log.find("reconnected peer").expect("a reconnection");
    assert!(err < reconnected, "{log}");
    assert!(
        log[reconnected..].starts_with(&format!("reconnected peer {VIP_UDP}")),
        "{log}"
    );
    assert!(
        !log[reconnected..].contains("ok b1:"),
        "b1 answered after it left:\n{log}"
    );
    assert!(
        d.log()
            .contains("destroyed a socket connected to a backend that went"),
        "{}",
        d.log()
    );
    // New TCP connections go to b2 only; the old one to b1 goes on until its end.
    let lines = probe(&cg, &topo.fwd, &["tcp-idents", VIP_TCP, "20", "0"]);
    assert!(lines.iter().all(|l| l.starts_with("ok b2 ")), "{lines:?}");
    assert_eq!(hold.wait_exit(Duration::from_secs(10)), Some(0));
    let log = hold.log();
    assert_eq!(log.matches("\nok").count(), 60, "{log}");
    assert!(!log.contains("err"), "{log}");
    udp.kill();
}

#[test]
fn sock_forwarding_survives_sigkill_and_restart_and_uninstall_detaches() {
    if !require_root("sock_forwarding_survives_sigkill_and_restart_and_uninstall_detaches") {
        return;
    }
    let topo = Topology::new(2);
    let _web = web_servers(&topo);
    let cg = Cgroup::new();
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[1]));
    let links = || -> Vec<String> {
        let mut l: Vec<String> = std::fs::read_dir(pin.path.join("links"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        l.sort();
        l
    };
    let mut d = run_sock(&topo, &cg, &cfg, &pin.path, &[]);
    let first = links();
    assert_eq!(first.len(), SOCK_LINKS, "{first:?}");

    // A new connection every 10 ms across a SIGKILL, a restart and a SIGTERM.
    let mut clients = cg.spawn(
        &topo.fwd,
        "tcp-idents",
        PROBE,
        &["tcp-idents", VIP_TCP, "400", "10"],
    );
    std::thread::sleep(Duration::from_millis(500));
    d.kill();
    std::thread::sleep(Duration::from_millis(500));
    let mut d = run_sock(&topo, &cg, &cfg, &pin.path, &[]);
    let second = links();
    assert_eq!(second.len(), SOCK_LINKS, "{second:?}");
    assert!(
        first.iter().all(|l| !second.contains(l)),
        "the new daemon's links replace the old ones: {first:?} -> {second:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
    assert_eq!(clients.wait_exit(Duration::from_secs(30)), Some(0));
    let log = clients.log();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("ok ")).count(),
        400,
        "{log}"
    );
    // With no daemon at all, still translated.
    let lines = probe(&cg, &topo.fwd, &["tcp-idents", VIP_TCP, "3", "0"]);
    assert!(lines.iter().all(|l| l.starts_with("ok b")), "{lines:?}");

    let out = ambassador_in(
        &topo.fwd,
        &["uninstall", "--pin-path", pin.path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("sock_connect4_"), "{}", stdout(&out));
    let out = cg.run(&topo.fwd, PROBE, &["tcp-idents", VIP_TCP, "1", "0"]);
    assert!(
        stdout(&out).starts_with("err "),
        "still translated after uninstall: {}",
        stdout(&out)
    );
}

#[test]
fn tc_and_sock_together_translate_each_connection_once() {
    if !require_root("tc_and_sock_together_translate_each_connection_once") {
        return;
    }
    let topo = Topology::new(2);
    let _web = web_servers(&topo);
    let cg = Cgroup::new();
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[1]));
    let _d = run_sock(
        &topo,
        &cg,
        &cfg,
        &pin.path,
        &["--datapath", "tc,sock", "--iface", "c0"],
    );
    let st = status(&pin.path);
    assert_eq!(
        st["control_plane"]["datapaths"],
        serde_json::json!(["sock", "tc c0"]),
        "{st}"
    );
    // A client in the covered cgroup but in its own network namespace (a container when
    // the cgroup root is covered): translated at connect(), so its packets cross c0 with the
    // backend's address and tc leaves them alone.
    let mut held = cg.spawn(
        &topo.client,
        "tcp-hold",
        PROBE,
        &["tcp-hold", VIP_TCP, "40", "50"],
    );
    assert!(wait_until(Duration::from_secs(3), || held
        .log()
        .contains("ident ")));
    assert!(
        held.log().contains(&format!("peer {VIP_TCP}")),
        "{}",
        held.log()
    );
    let web = service_status(&pin.path, "web").unwrap();
    assert_eq!(web["sockets"], 1, "{web}");
    assert_eq!(web["flows"], 0, "{web}");
    // A client outside the cgroup: tc translates it.
    let (_conn, ident) = tcp_connect(&topo.client, VIP_TCP).expect("through tc");
    assert!(ident.starts_with('b'), "{ident}");
    let web = service_status(&pin.path, "web").unwrap();
    assert_eq!(web["flows"], 1, "{web}");
    assert_eq!(held.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!held.log().contains("err"), "{}", held.log());
    // The closed socket's translation went with it (sock_release).
    let web = service_status(&pin.path, "web").unwrap();
    assert_eq!(web["sockets"], 0, "{web}");
}

#[test]
fn sock_flags_are_checked_before_anything_is_attached() {
    if !require_root("sock_flags_are_checked_before_anything_is_attached") {
        return;
    }
    let ns = NetNs::new("s");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[1]));
    let pin_arg = pin.path.to_str().unwrap();
    let not_cgroup = temp_dir("amb-not-cgroup");
    let out = ambassador_in(
        &ns,
        &[
            "run",
            "--datapath",
            "sock",
            "--cgroup-path",
            not_cgroup.path().to_str().unwrap(),
            "--config",
            cfg.as_str(),
            "--pin-path",
            pin_arg,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("is not a cgroup v2 directory"), "{err}");
    assert!(err.contains("--cgroupns=host"), "{err}");
    for (args, says) in [
        (
            &["--datapath", "tc"][..],
            "the tc datapath (the default) needs --iface",
        ),
        // Never host-wide by default: without --iface and --datapath, a usage error.
        (&[][..], "use --datapath sock"),
        (
            &["--datapath", "sock", "--iface", "lo"][..],
            "--iface is for the tc or xdp datapath",
        ),
        (
            &["--iface", "lo", "--cgroup-path", "/sys/fs/cgroup"][..],
            "--cgroup-path is for the sock datapath",
        ),
        (&["--datapath", "xdp"][..], "the xdp datapath needs --iface"),
        (
            &["--datapath", "tc,xdp", "--iface", "lo"][..],
            "tc and xdp both translate",
        ),
        (&["--datapath", "udp"][..], "invalid value 'udp'"),
    ] {
        let mut full = vec!["run", "--config", cfg.as_str(), "--pin-path", pin_arg];
        full.extend_from_slice(args);
        let out = ambassador_in(&ns, &full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            err.contains("Usage: ambassador run") || err.contains("try '--help'"),
            "{args:?}: {err}"
        );
    }
    assert!(!pin.path.join("links").exists(), "nothing was attached");
}

/// On a kernel without the hooks the socket datapath needs (before 5.18: the kernel matrix
/// boots Debian 11's 5.10), `run --datapath sock` is refused in one line that names the
/// version it needs and this kernel's, with exit 69, and nothing is attached; on a kernel
/// that has them the same command starts and attaches every program.
#[test]
fn sock_is_refused_by_version_where_the_kernel_lacks_its_hooks() {
    if !require_root("sock_is_refused_by_version_where_the_kernel_lacks_its_hooks") {
        return;
    }
    let ns = NetNs::new("s");
    let cg = Cgroup::new();
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[1]));
    let args = [
        "run",
        "--datapath",
        "sock",
        "--cgroup-path",
        cg.arg(),
        "--config",
        cfg.as_str(),
        "--pin-path",
        pin.path.to_str().unwrap(),
    ];
    let links = || std::fs::read_dir(pin.path.join("links")).map_or(0, Iterator::count);
    match ambassador_user::datapath::loader::check_sock_kernel() {
        Ok(()) => {
            let mut d = Daemon::start(&ns, &args);
            d.wait_ready();
            assert_eq!(links(), SOCK_LINKS, "{}", d.log());
        }
        Err(_) => {
            let out = ambassador_in(&ns, &args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(69), "{err}");
            // As a person writes a version (Debian's kernels say theirs in `uname -v`).
            let version = aya::util::KernelVersion::current().unwrap();
            for says in [
                "the socket datapath",
                "needs Linux 5.18 or later",
                &format!("this kernel is {version};"),
                "use --datapath tc",
            ] {
                assert!(err.contains(says), "{says:?} not in: {err}");
            }
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert_eq!(links(), 0, "nothing attached");
        }
    }
}

/// IPv6 sockets: an IPv6 frontend (connect6, sendmsg6, recvmsg6, getpeername6, and a connected
/// UDP socket destroyed when its backend leaves, found by sock_diag over AF_INET6), and an IPv4
/// frontend dialled as an IPv4-mapped address (what dual-stack runtimes do), which the kernel
/// sends as IPv4 and the `*4` hooks never see.
#[test]
fn sock_ipv6_sockets_and_ipv4_mapped_addresses_are_translated() {
    if !require_root("sock_ipv6_sockets_and_ipv4_mapped_addresses_are_translated") {
        return;
    }
    const VIP6_TCP: &str = "[fd00:96::10]:80";
    const VIP6_UDP: &str = "[fd00:96::10]:53";
    const MAPPED_TCP: &str = "[::ffff:10.96.0.10]:80";
    const MAPPED_UDP: &str = "[::ffff:10.96.0.10]:53";
    let topo = Topology::new(2);
    topo.add_ipv6();
    let b6 = Topology::backend_addr6;
    let _web = web_servers(&topo);
    let _dns = dns_servers(&topo);
    let _web6 =
        [1, 2].map(|i| TcpServer::start(&topo.backends[i - 1], &b6(i, 8080), &format!("b{i}")));
    let _dns6 =
        [1, 2].map(|i| UdpServer::start(&topo.backends[i - 1], &b6(i, 5353), &format!("b{i}")));
    let services = |udp: usize| {
        format!(
            "{}\n[[service]]\nname = \"web6\"\nfrontend = \"{VIP6_TCP}\"\nendpoints = [\"{}\", \"{}\"]\n\n\
             [[service]]\nname = \"dns6\"\nfrontend = \"{VIP6_UDP}\"\nproto = \"udp\"\nendpoints = [\"{}\"]\n",
            config(&[udp]),
            b6(1, 8080),
            b6(2, 8080),
            b6(udp, 5353),
        )
    };
    let cg = Cgroup::new();
    let pin = PinDir::new();
    let cfg = TempFile::new(&services(1));
    let d = run_sock(&topo, &cg, &cfg, &pin.path, &[]);

    // TCP over IPv6: both backends, and getpeername says the frontend.
    let lines = probe(&cg, &topo.fwd, &["tcp-idents", VIP6_TCP, "30", "0"]);
    let seen: BTreeMap<&str, usize> = lines.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.split(' ').nth(1).unwrap_or("")).or_default() += 1;
        m
    });
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {VIP6_TCP}"))),
        "{lines:?}"
    );
    assert!(
        seen.contains_key("b1") && seen.contains_key("b2"),
        "{seen:?}"
    );
    // UDP over IPv6, unconnected: the reply comes from the frontend (recvmsg6).
    let lines = probe(&cg, &topo.fwd, &["udp-sendto", VIP6_UDP]);
    assert!(
        lines[0].starts_with(&format!("from {VIP6_UDP} b1")),
        "{lines:?}"
    );
    // IPv4-mapped: an IPv4 service through IPv6 sockets, reported as the mapped frontend.
    let lines = probe(&cg, &topo.fwd, &["tcp-idents", MAPPED_TCP, "10", "0"]);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("ok b") && l.ends_with(&format!(" {MAPPED_TCP}"))),
        "{lines:?}"
    );
    let lines = probe(&cg, &topo.fwd, &["udp-sendto", MAPPED_UDP]);
    assert!(
        lines[0].starts_with(&format!("from {MAPPED_UDP} b1")),
        "{lines:?}"
    );
    let st = status(&pin.path);
    let forwarded = st["reasons"]["forwarded"].as_u64().unwrap_or(0);
    assert!(forwarded >= 42, "{st}");

    // Connected UDP sockets, IPv6 and IPv4-mapped, whose backend leaves: destroyed, and
    // their owners reconnect to the new one.
    let clients = [VIP6_UDP, MAPPED_UDP].map(|vip| {
        cg.spawn(
            &topo.fwd,
            "udp-connected",
            PROBE,
            &["udp-connected", vip, "80", "50"],
        )
    });
    for c in &clients {
        assert!(
            wait_until(Duration::from_secs(3), || c.log().contains("ok b1:")),
            "{}",
            c.log()
        );
    }
    cfg.write(&services(2));
    d.signal(libc::SIGHUP);
    for (c, vip) in clients.iter().zip([VIP6_UDP, MAPPED_UDP]) {
        assert!(
            wait_until(Duration::from_secs(5), || c.log().contains("ok b2:")),
            "the UDP client of {vip} never moved to b2:\n{}\n{}",
            c.log(),
            d.log()
        );
        let log = c.log();
        let reconnected = log.find("reconnected peer").expect("a reconnection");
        assert!(
            log[reconnected..].starts_with(&format!("reconnected peer {vip}")),
            "{log}"
        );
        assert!(!log[reconnected..].contains("ok b1:"), "{log}");
    }
    for mut c in clients {
        c.kill();
    }
}
