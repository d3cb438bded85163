//! The `tc` datapath end to end: a client namespace, a forwarding host running
//! `ambassador run`, backend namespaces, real sockets.

use std::{collections::BTreeMap, time::Duration};

use ambassador_tests::*;

const VIP_TCP: &str = "10.96.0.10:80";
const VIP_UDP: &str = "10.96.0.10:53";

fn config(tcp_backends: &[String], udp_backends: &[String]) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP_TCP}\"\nproto = \"tcp\"\nendpoints = [{}]\n\n\
         [[service]]\nname = \"dns\"\nfrontend = \"{VIP_UDP}\"\nproto = \"udp\"\nendpoints = [{}]\n",
        list(tcp_backends),
        list(udp_backends)
    )
}

fn start(topo: &Topology, pin: &PinDir, cfg: &TempFile) -> Daemon {
    start_with(topo, pin, cfg, &[])
}

fn start_with(topo: &Topology, pin: &PinDir, cfg: &TempFile, extra: &[&str]) -> Daemon {
    let mut d = Daemon::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, extra);
    d.wait_ready();
    d
}

#[test]
fn tcp_and_udp_spread_over_backends_with_valid_checksums_and_exact_counters() {
    if !require_root("tcp_and_udp_spread_over_backends_with_valid_checksums_and_exact_counters") {
        return;
    }
    let topo = Topology::new(2);
    let b = |i, p| Topology::backend_addr(i, p);
    let _t1 = TcpServer::start(&topo.backends[0], &b(1, 8080), "b1");
    let _t2 = TcpServer::start(&topo.backends[1], &b(2, 8080), "b2");
    let u1 = UdpServer::start(&topo.backends[0], &b(1, 5353), "b1");
    let u2 = UdpServer::start(&topo.backends[1], &b(2, 5353), "b2");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(
        &[b(1, 8080), b(2, 8080)],
        &[b(1, 5353), b(2, 5353)],
    ));
    let _d = start(&topo, &pin, &cfg);

    // TCP: 40 short connections, each greeted by its backend and echoing through the VIP.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..40 {
        let (mut conn, ident) =
            tcp_connect(&topo.client, VIP_TCP).expect("connect through the VIP");
        assert_eq!(
            tcp_echo(&mut conn, &format!("ping {i}")).unwrap(),
            format!("ping {i}")
        );
        *seen.entry(ident).or_default() += 1;
    }
    assert_eq!(seen.values().sum::<u32>(), 40);
    assert!(
        seen.get("b1").is_some_and(|&n| n > 0) && seen.get("b2").is_some_and(|&n| n > 0),
        "{seen:?}"
    );

    // UDP: 50 datagrams from 50 sockets (50 flows); the reply appears to come from the VIP
    // (a connected socket only accepts datagrams from the address it connected to). Every
    // socket stays open to the end: a closed one frees its port, and the kernel may give
    // the same port to the next socket, which is then (rightly) the same flow.
    let payload = [7u8; 100];
    let mut udp_seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut socks = Vec::new();
    for _ in 0..50 {
        let sock = udp_client(&topo.client, VIP_UDP);
        sock.send(&payload).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("UDP reply through the VIP");
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (ident, rest) = reply.split_once(':').unwrap();
        assert_eq!(rest.as_bytes(), &payload);
        *udp_seen.entry(ident.to_owned()).or_default() += 1;
        socks.push(sock);
    }
    assert!(udp_seen.len() == 2, "UDP flows not spread: {udp_seen:?}");
    assert_eq!(u1.received() + u2.received(), 50);

    // Counters match the traffic: 50 UDP packets of 20 + 8 + 100 bytes each way.
    let dns = service_status(&pin.path, "dns").unwrap();
    let c = &dns["counters"];
    assert_eq!(c["packets"], 50, "{dns}");
    assert_eq!(c["bytes"], 50 * 128, "{dns}");
    assert_eq!(c["reply_packets"], 50, "{dns}");
    assert_eq!(c["reply_bytes"], 50 * (128 + 3), "{dns}"); // "bN:" prefix
    assert_eq!(c["new_flows"], 50, "{dns}");
    assert_eq!(c["drops"], 0, "{dns}");
    let web = service_status(&pin.path, "web").unwrap();
    assert_eq!(web["counters"]["new_flows"], 40, "{web}");
    assert!(
        web["counters"]["packets"].as_u64().unwrap() >= 40 * 4,
        "{web}"
    );
    assert_eq!(web["backends"].as_array().unwrap().len(), 2);

    // Checksums: offload is off on every link, so a wrong rewrite would be counted here.
    for ns in [&topo.client, &topo.backends[0], &topo.backends[1]] {
        assert_eq!(
            ns.snmp("Tcp", "InCsumErrors"),
            0,
            "TCP checksum errors in {}",
            ns.name
        );
        assert_eq!(
            ns.snmp("Udp", "InCsumErrors"),
            0,
            "UDP checksum errors in {}",
            ns.name
        );
        assert_eq!(
            ns.snmp("Ip", "InHdrErrors"),
            0,
            "IP header errors in {}",
            ns.name
        );
    }
}

#[test]
fn established_stream_survives_removal_of_its_backend_while_new_flows_move() {
    if !require_root("established_stream_survives_removal_of_its_backend_while_new_flows_move") {
        return;
    }
    let topo = Topology::new(2);
    let b = |i, p| Topology::backend_addr(i, p);
    let _t1 = TcpServer::start(&topo.backends[0], &b(1, 8080), "b1");
    let _t2 = TcpServer::start(&topo.backends[1], &b(2, 8080), "b2");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[b(1, 8080), b(2, 8080)], &[]));
    let d = start_with(
        &topo,
        &pin,
        &cfg,
        &["--gc-interval", "1", "--tcp-closing-timeout", "1"],
    );

    // A long-lived stream, on whichever backend it lands.
    let (mut long, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    let (keep, keep_ident) = if ident == "b1" {
        (b(2, 8080), "b2")
    } else {
        (b(1, 8080), "b1")
    };
    assert_eq!(tcp_echo(&mut long, "before").unwrap(), "before");

    // Take its backend out of the service.
    cfg.write(&config(std::slice::from_ref(&keep), &[]));
    d.signal(libc::SIGHUP);
    let removed = if ident == "b1" {
        b(1, 8080)
    } else {
        b(2, 8080)
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let web = service_status(&pin.path, "web").unwrap();
            web["backends"]
                .as_array()
                .unwrap()
                .iter()
                .any(|be| be["addr"] == removed.as_str() && be["state"] == "terminating")
        }),
        "backend never became terminating:\n{}",
        d.log()
    );

    // New connections all go to the remaining backend, while the old stream keeps working.
    for i in 0..20 {
        let (mut conn, id) = tcp_connect(&topo.client, VIP_TCP).unwrap();
        assert_eq!(
            id, keep_ident,
            "new flow {i} went to the terminating backend"
        );
        assert_eq!(tcp_echo(&mut conn, "x").unwrap(), "x");
        assert_eq!(
            tcp_echo(&mut long, &format!("during {i}")).unwrap(),
            format!("during {i}")
        );
    }
    let web = service_status(&pin.path, "web").unwrap();
    let term = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|be| be["addr"] == removed.as_str())
        .cloned();
    let term = term.expect("terminating backend listed");
    assert_eq!(
        term["flows"], 1,
        "the long stream is the terminating backend's one live flow: {web}"
    );
    assert_eq!(term["weight"], 0, "{web}");
    assert_eq!(tcp_echo(&mut long, "after").unwrap(), "after");

    // Once its last flow has closed, the terminating backend is drained away.
    drop(long);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let web = service_status(&pin.path, "web").unwrap();
            web["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|be| be["addr"] != removed.as_str())
        }),
        "terminating backend never drained:\n{}",
        d.log()
    );
}

#[test]
fn clsact_attachment_forwards_like_tcx() {
    if !require_root("clsact_attachment_forwards_like_tcx") {
        return;
    }
    // Kernels before 6.6 only have clsact; forcing it here tests that path on this kernel.
    let topo = Topology::new(1);
    let b = |p| Topology::backend_addr(1, p);
    let _t = TcpServer::start(&topo.backends[0], &b(8080), "b1");
    let _u = UdpServer::start(&topo.backends[0], &b(5353), "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[b(8080)], &[b(5353)]));
    let d = start_with(&topo, &pin, &cfg, &["--tc-attach", "clsact"]);
    assert!(d.log().contains("clsact"), "{}", d.log());
    let filters = topo
        .fwd
        .exec(&["tc", "filter", "show", "dev", "c0", "ingress"]);
    assert!(
        filters.contains("amb_tc_dnat"),
        "no clsact filter: {filters}"
    );

    let (mut conn, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");
    assert_eq!(tcp_echo(&mut conn, "hello").unwrap(), "hello");
    let sock = udp_client(&topo.client, VIP_UDP);
    sock.send(b"q").unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"b1:q");
    assert_eq!(topo.client.snmp("Tcp", "InCsumErrors"), 0);
    assert_eq!(topo.backends[0].snmp("Tcp", "InCsumErrors"), 0);

    // Stopping the daemon removes its filters (nothing is left on the interface).
    drop(d);
    let filters = topo
        .fwd
        .exec(&["tc", "filter", "show", "dev", "c0", "ingress"]);
    assert!(
        !filters.contains("amb_tc_dnat"),
        "filter left behind: {filters}"
    );
}

#[test]
fn a_restarted_daemon_adopts_the_pinned_state() {
    if !require_root("a_restarted_daemon_adopts_the_pinned_state") {
        return;
    }
    let topo = Topology::new(1);
    let b = |p| Topology::backend_addr(1, p);
    let _t = TcpServer::start(&topo.backends[0], &b(8080), "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[b(8080)], &[]));
    let d = start(&topo, &pin, &cfg);
    let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");
    let before = service_status(&pin.path, "web").unwrap();
    drop(d);
    // Status still reads the pinned maps with no daemon running.
    assert_eq!(
        service_status(&pin.path, "web").unwrap()["counters"],
        before["counters"]
    );

    let d = start(&topo, &pin, &cfg);
    assert!(
        d.log().contains("changes=0"),
        "a restart with the same file changes nothing:\n{}",
        d.log()
    );
    let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");
    let after = service_status(&pin.path, "web").unwrap();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["backends"][0]["id"], before["backends"][0]["id"]);
    assert_eq!(
        after["counters"]["new_flows"], 2,
        "counters carry over: {after}"
    );
}

#[test]
fn frontend_without_backends_drops_and_counts_instead_of_leaking() {
    if !require_root("frontend_without_backends_drops_and_counts_instead_of_leaking") {
        return;
    }
    let topo = Topology::new(1);
    // The leak detector: backend 1 owns the VIP itself and the forwarding host routes the VIP
    // to it, so a packet that escaped the datapath untranslated would arrive there.
    topo.backends[0].ip(&["addr", "add", "10.96.0.10/32", "dev", "lo"]);
    topo.fwd
        .ip(&["route", "add", "10.96.0.10/32", "via", "10.200.1.2"]);
    let detector = UdpServer::start(&topo.backends[0], VIP_UDP, "leak");
    let sock = udp_client(&topo.client, VIP_UDP);

    // Without ambassador, the detector does see the traffic (so it can see a leak).
    sock.send(b"probe").unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || detector.received() == 1),
        "detector is blind"
    );

    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[], &[]));
    let _d = start(&topo, &pin, &cfg);
    for _ in 0..10 {
        sock.send(b"must not leak").unwrap();
    }
    // A datagram larger than the MTU leaves the client as fragments: the datapath cannot see
    // ports in them, so fragments to a frontend address are dropped rather than leaked.
    sock.send(&[0u8; 3000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        detector.received(),
        1,
        "a packet to a backend-less frontend leaked to the VIP"
    );
    let dns = service_status(&pin.path, "dns").unwrap();
    assert_eq!(dns["counters"]["drops"], 10, "{dns}");
    assert_eq!(dns["counters"]["packets"], 0, "{dns}");
    let st = status(&pin.path);
    assert_eq!(st["reasons"]["no_backend"], 10, "{st}");
    assert_eq!(
        st["reasons"]["fragment"], 3,
        "3000 bytes over a 1500 MTU make 3 fragments: {st}"
    );
}

#[test]
fn bridge_covers_clients_that_join_later() {
    if !require_root("bridge_covers_clients_that_join_later") {
        return;
    }
    // The forwarding host has a bridge set up the way Docker sets up docker0: br_netfilter on
    // (netfilter sees packets while they cross the bridge), containers masqueraded on the way
    // out, and forwarding dropped unless conntrack knows the flow. Ambassador attaches to the
    // bridge, and a client plugged into it after the daemon started is served too.
    let fwd = NetNs::new("f");
    let backend = NetNs::new("b");
    fwd.ip(&["link", "add", "br0", "type", "bridge"]);
    fwd.ip(&["addr", "add", "10.201.0.1/24", "dev", "br0"]);
    fwd.ip(&["link", "set", "br0", "up"]);
    fwd.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    fwd.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    fwd.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.201.0.0/24",
        "!",
        "-o",
        "br0",
        "-j",
        "MASQUERADE",
    ]);
    fwd.exec(&["iptables", "-P", "FORWARD", "DROP"]);
    fwd.exec(&[
        "iptables", "-A", "FORWARD", "-i", "br0", "!", "-o", "br0", "-j", "ACCEPT",
    ]);
    fwd.exec(&[
        "iptables",
        "-A",
        "FORWARD",
        "-o",
        "br0",
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ]);
    veth(
        &fwd,
        "b1",
        "10.201.1.1/24",
        &backend,
        "eth0",
        "10.201.1.2/24",
    );
    backend.ip(&["route", "add", "default", "via", "10.201.1.1"]);
    let _srv = TcpServer::start(&backend, "10.201.1.2:8080", "b1");

    let pin = PinDir::new();
    let cfg = TempFile::new(
        "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10:80\"\nendpoints = [\"10.201.1.2:8080\"]\n",
    );
    let mut d = Daemon::run_file(&fwd, "br0", cfg.as_str(), &pin.path, &[]);
    d.wait_ready();

    let mut clients = Vec::new();
    for i in 2..4 {
        let c = NetNs::new("c");
        let port = format!("p{i}");
        veth(&c, "eth0", &format!("10.201.0.{i}/24"), &fwd, &port, "");
        fwd.ip(&["link", "set", &port, "master", "br0"]);
        d.wait_log(
            &format!("datapath attached iface={port}"),
            Duration::from_secs(5),
        );
        c.ip(&["route", "add", "default", "via", "10.201.0.1"]);
        let (mut conn, ident) =
            tcp_connect(&c, VIP_TCP).expect("client on the bridge reaches the VIP");
        assert_eq!(ident, "b1");
        assert_eq!(tcp_echo(&mut conn, "hi").unwrap(), "hi");
        clients.push(c);
    }
    assert_eq!(
        service_status(&pin.path, "web").unwrap()["counters"]["new_flows"],
        2
    );
}

#[test]
fn reload_applies_only_the_difference_and_refuses_a_bad_file() {
    if !require_root("reload_applies_only_the_difference_and_refuses_a_bad_file") {
        return;
    }
    let topo = Topology::new(2);
    let b = |i, p| Topology::backend_addr(i, p);
    let _t1 = TcpServer::start(&topo.backends[0], &b(1, 8080), "b1");
    let _t2 = TcpServer::start(&topo.backends[1], &b(2, 8080), "b2");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[b(1, 8080)], &[]));
    let d = start(&topo, &pin, &cfg);
    let (mut long, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");

    // A broken file: the daemon says where, and the running state stays.
    cfg.write(
        "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10:80\"\nendpoints = [\"10.200.2.2\"]\n",
    );
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log()
            .contains("configuration not reloaded")),
        "{}",
        d.log()
    );
    assert!(
        d.log().contains(&format!("{}:4:", cfg.as_str())),
        "the error names the line:\n{}",
        d.log()
    );
    let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");

    // Adding a backend keeps the existing backend's id and flows: only the difference applies.
    let before = service_status(&pin.path, "web").unwrap();
    cfg.write(&config(&[b(1, 8080), b(2, 8080)], &[]));
    d.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || {
        service_status(&pin.path, "web").unwrap()["backends"]
            .as_array()
            .unwrap()
            .len()
            == 2
    }));
    let after = service_status(&pin.path, "web").unwrap();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(
        after["backends"][0]["id"], before["backends"][0]["id"],
        "{before}\n{after}"
    );
    assert!(after["counters"]["packets"].as_u64() >= before["counters"]["packets"].as_u64());
    assert_eq!(tcp_echo(&mut long, "still").unwrap(), "still");
}

#[test]
fn startup_errors_are_one_clear_line_and_a_nonzero_exit() {
    if !require_root("startup_errors_are_one_clear_line_and_a_nonzero_exit") {
        return;
    }
    let topo = Topology::new(1);
    let pin = PinDir::new();
    let good = TempFile::new(&config(&[Topology::backend_addr(1, 8080)], &[]));

    let mut d = Daemon::run_file(&topo.fwd, "nope0", good.as_str(), &pin.path, &[]);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(64));
    assert!(
        d.log().contains("interface \"nope0\" does not exist"),
        "{}",
        d.log()
    );

    let bad = TempFile::new(
        "[[service]]\nname = \"web\"\nfrontend = \"10.96.0.10:80\"\nproto = \"sctp\"\n",
    );
    let mut d = Daemon::run_file(&topo.fwd, "c0", bad.as_str(), &pin.path, &[]);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(64));
    assert!(
        d.log().contains(&format!("{}:4:", bad.as_str())) && d.log().contains("sctp"),
        "{}",
        d.log()
    );

    let mut first = Daemon::run_file(&topo.fwd, "c0", good.as_str(), &pin.path, &[]);
    first.wait_ready();
    let mut second = Daemon::run_file(&topo.fwd, "c0", good.as_str(), &pin.path, &[]);
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(75));
    assert!(
        second.log().contains("another `ambassador run` is using"),
        "{}",
        second.log()
    );

    // Another pin directory does not help: the interface is taken.
    let pin2 = PinDir::new();
    let mut third = Daemon::run_file(&topo.fwd, "c0", good.as_str(), &pin2.path, &[]);
    assert_eq!(third.wait_exit(Duration::from_secs(10)), Some(75));
    assert!(
        third.log().contains("already has ambassador's"),
        "{}",
        third.log()
    );

    let out = ambassador(&["run", "--config", good.as_str()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing flag is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--iface"));

    let out = ambassador(&["status", "--pin-path", "/sys/fs/bpf/amb-does-not-exist"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ambassador maps pinned"));
}

#[test]
fn backends_outside_the_policy_are_refused_counted_and_never_reached() {
    if !require_root("backends_outside_the_policy_are_refused_counted_and_never_reached") {
        return;
    }
    let topo = Topology::new(2);
    let b = |i, p| Topology::backend_addr(i, p);
    let _t1 = TcpServer::start(&topo.backends[0], &b(1, 8080), "b1");
    let _t2 = TcpServer::start(&topo.backends[1], &b(2, 8080), "b2");
    let pin = PinDir::new();
    // b2 is outside --allow-backend; loopback and the frontend itself are never backends.
    let cfg = TempFile::new(&config(
        &[
            b(1, 8080),
            b(2, 8080),
            "127.0.0.1:8080".into(),
            "10.96.0.10:8080".into(),
        ],
        &[],
    ));
    let d = start_with(&topo, &pin, &cfg, &["--allow-backend", "10.200.1.0/24"]);
    for needle in [
        "endpoint 10.200.2.2:8080 refused: outside --allow-backend 10.200.1.0/24",
        "endpoint 127.0.0.1:8080 refused: loopback",
        "endpoint 10.96.0.10:8080 refused: it is a frontend address",
    ] {
        assert!(d.log().contains(needle), "{needle:?} not in:\n{}", d.log());
    }
    let st = status(&pin.path);
    assert_eq!(st["control_plane"]["refused_endpoints"], 3, "{st}");
    assert_eq!(active_backends(&pin.path, "web"), vec![b(1, 8080)]);
    for _ in 0..20 {
        let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
        assert_eq!(ident, "b1");
    }
    let text = ambassador_in(
        &topo.fwd,
        &["status", "--pin-path", pin.path.to_str().unwrap()],
    );
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("refused: 3 endpoints"),
        "{text:?}"
    );

    // A bad range is a usage error, before anything is loaded.
    let out = ambassador(&[
        "run",
        "--iface",
        "c0",
        "--config",
        cfg.as_str(),
        "--allow-backend",
        "10.1.2.3/16",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean 10.1.0.0/16"));
}

/// Bytes of the program behind the TCX link pinned at `link` (bpftool, translated form).
fn xlated_bytes(link: &std::path::Path) -> u64 {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("bpftool's JSON")
    };
    let link = json(&["link", "show", "pinned", link.to_str().unwrap()]);
    let id = link["prog_id"].as_u64().expect("prog_id").to_string();
    json(&["prog", "show", "id", &id])["bytes_xlated"]
        .as_u64()
        .expect("bytes_xlated")
}

#[test]
fn kernel_debug_output_appears_only_under_the_switch() {
    if !require_root("kernel_debug_output_appears_only_under_the_switch") {
        return;
    }
    let topo = Topology::new(1);
    let b1 = Topology::backend_addr(1, 8080);
    let _t1 = TcpServer::start(&topo.backends[0], &b1, "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(std::slice::from_ref(&b1), &[]));
    let dnat_link = pin.path.join("links/c0_ingress");

    let mut d = start_with(&topo, &pin, &cfg, &["--debug-datapath"]);
    let debug_size = xlated_bytes(&dnat_link);
    let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");
    udp_client(&topo.client, VIP_UDP).send(b"nobody").unwrap();
    d.wait_log(
        &format!("-> {VIP_TCP} proto 6: service "),
        Duration::from_secs(5),
    );
    d.wait_log("drop no_backend: 10.200.0.2:", Duration::from_secs(5));
    let log = d.log();
    let flow = log.lines().find(|l| l.contains("new flow 10.")).unwrap();
    assert!(
        flow.contains("ambassador::datapath") && flow.ends_with(&format!(" {b1}")),
        "{flow:?}"
    );
    assert!(
        log.contains(&format!("-> {VIP_UDP} proto 17 (service ")),
        "{log}"
    );
    drop(d);

    // The same datapath without the switch: nothing from the kernel, and the log statements
    // are not even in the program the kernel runs.
    let d = start(&topo, &pin, &cfg);
    let plain_size = xlated_bytes(&dnat_link);
    let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");
    udp_client(&topo.client, VIP_UDP).send(b"nobody").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = d.log();
    assert!(
        !log.contains("new flow 10.") && !log.contains("drop no_backend"),
        "{log}"
    );
    assert!(
        plain_size < debug_size,
        "the program without --debug-datapath is {plain_size} bytes, with it {debug_size}"
    );
    eprintln!("amb_tc_dnat: {plain_size} bytes translated, {debug_size} with --debug-datapath");
}

/// `ambassador run` with `caps` as the whole bounding set: root without the other capabilities.
fn run_with_caps(topo: &Topology, pin: &PinDir, cfg: &TempFile, caps: &str) -> Daemon {
    let bin = ambassador_tests::ambassador_bin();
    let mut args = vec![
        format!("--bounding-set=-all,{caps}"),
        "--".into(),
        bin.to_str().unwrap().into(),
    ];
    args.extend(Daemon::run_file_args("c0", cfg.as_str(), &pin.path));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start_bin(
        &topo.fwd,
        std::path::Path::new("/usr/bin/setpriv"),
        &args,
        &[],
    )
}

#[test]
fn the_daemon_forwards_with_only_cap_bpf_net_admin_and_perfmon() {
    if !require_root("the_daemon_forwards_with_only_cap_bpf_net_admin_and_perfmon") {
        return;
    }
    let topo = Topology::new(1);
    let b1 = Topology::backend_addr(1, 8080);
    let _t1 = TcpServer::start(&topo.backends[0], &b1, "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(std::slice::from_ref(&b1), &[]));

    let refused = |caps: &str, says: &str| {
        let mut d = run_with_caps(&topo, &pin, &cfg, caps);
        assert_eq!(
            d.wait_exit(Duration::from_secs(10)),
            Some(77),
            "{caps}: {}",
            d.log()
        );
        assert!(d.log().contains(says), "{caps}: {}", d.log());
    };
    // Without CAP_BPF: a clear refusal.
    refused("+net_admin,+perfmon", "permission denied");
    // Without CAP_PERFMON the verifier refuses the parser, and says why.
    refused("+bpf,+net_admin", "without CAP_PERFMON");

    let mut d = run_with_caps(&topo, &pin, &cfg, "+bpf,+net_admin,+perfmon");
    d.wait_ready();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39: nothing else.
    assert_eq!(eff, 1 << 12 | 1 << 38 | 1 << 39, "CapEff {eff:#x}");
    let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
    assert_eq!(ident, "b1");
}

/// Bytes of kernel memory of the maps pinned under `pin` (bpftool's `bytes_memlock`).
fn maps_memory(pin: &std::path::Path) -> u64 {
    ambassador_common::map_names::ALL
        .iter()
        .map(|name| {
            let out = sh(&[
                "bpftool",
                "-j",
                "map",
                "show",
                "pinned",
                pin.join(name).to_str().unwrap(),
            ]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["bytes_memlock"].as_u64().unwrap_or(0)
        })
        .sum()
}

#[test]
fn capacities_are_settings_a_full_map_is_reported_and_status_shows_use() {
    if !require_root("capacities_are_settings_a_full_map_is_reported_and_status_shows_use") {
        return;
    }
    let topo = Topology::new(2);
    let b = |i, p| Topology::backend_addr(i, p);
    let _t1 = TcpServer::start(&topo.backends[0], &b(1, 8080), "b1");
    let _t2 = TcpServer::start(&topo.backends[1], &b(2, 8080), "b2");
    let _t3 = TcpServer::start(&topo.backends[0], &b(1, 8081), "b1-8081");

    // Defaults: the maps a small host pays for.
    let pin_default = PinDir::new();
    let cfg = TempFile::new(&config(&[b(1, 8080)], &[]));
    let d = start(&topo, &pin_default, &cfg);
    let st = status(&pin_default.path);
    let cap = &st["capacity"];
    assert_eq!(cap["services"]["capacity"], 4096, "{st}");
    assert_eq!(cap["backends"]["capacity"], 16384, "{st}");
    assert_eq!(cap["slots"]["capacity"], 65536, "{st}");
    assert_eq!(cap["flows"]["capacity"], 65536, "{st}");
    let default_bytes = maps_memory(&pin_default.path);
    eprintln!(
        "maps at the default capacity: {:.1} MiB",
        default_bytes as f64 / f64::from(1 << 20)
    );
    // Removing the pins detaches the links, so the next daemon may take the interface.
    drop(d);
    drop(pin_default);

    // Two services, three backends: "web" (2 backends) and "dns" (1) fit; "zzz" does not, and
    // one endpoint of "web2" finds the backend map full.
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"dns\"\nfrontend = \"{VIP_UDP}\"\nproto = \"udp\"\nendpoints = [\"{}\"]\n\n\
         [[service]]\nname = \"web\"\nfrontend = \"{VIP_TCP}\"\nendpoints = [\"{}\", \"{}\", \"{}\"]\n\n\
         [[service]]\nname = \"zzz\"\nfrontend = \"10.96.0.11:80\"\nendpoints = [\"{}\"]\n",
        b(1, 53),
        b(1, 8080),
        b(2, 8080),
        b(1, 8081),
        b(1, 8080),
    ));
    let d = start_with(
        &topo,
        &pin,
        &cfg,
        &[
            "--max-services",
            "2",
            "--max-backends",
            "3",
            "--max-slots",
            "16",
            "--max-flows",
            "64",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let log = d.log();
    for needle in [
        "service zzz left out: the service map is full (2 services; raise --max-services)",
        "endpoint 10.200.1.2:8081 of web left out: the backend map is full (3 backends; raise --max-backends)",
    ] {
        assert!(log.contains(needle), "{needle:?} not in:\n{log}");
    }
    let st = status(&pin.path);
    assert_eq!(st["control_plane"]["over_capacity"], 2, "{st}");
    let cap = &st["capacity"];
    assert_eq!(cap["services"]["used"], 2, "{st}");
    assert_eq!(cap["services"]["capacity"], 2, "{st}");
    assert_eq!(cap["backends"]["used"], 3, "{st}");
    assert_eq!(cap["backends"]["capacity"], 3, "{st}");
    assert_eq!(cap["flows"]["capacity"], 64, "{st}");
    let small_bytes = maps_memory(&pin.path);
    assert!(
        small_bytes * 10 < default_bytes,
        "small maps {small_bytes} B, default {default_bytes} B"
    );
    // What fits forwards.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (_, ident) = tcp_connect(&topo.client, VIP_TCP).unwrap();
        seen.insert(ident);
    }
    assert_eq!(
        seen,
        ["b1", "b2"].map(String::from).into(),
        "web's two backends that fit"
    );
    let text = ambassador_in(
        &topo.fwd,
        &["status", "--pin-path", pin.path.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("capacity: services 2/2 (100%), backends 3/3 (100%)"),
        "{text}"
    );
    assert!(text.contains("OVER CAPACITY: 2"), "{text}");
    let page = metrics::scrape(&topo.fwd.name, &d.log());
    assert_eq!(
        metrics::value(&page, "ambassador_map_capacity", &[("map", "backends")]),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        metrics::value(&page, "ambassador_over_capacity", &[]),
        Some(2.0)
    );
    drop(d);

    // A restart keeps the pinned capacity; asking for another one is refused with what to do.
    let d = start(&topo, &pin, &cfg);
    assert_eq!(status(&pin.path)["capacity"]["services"]["capacity"], 2);
    drop(d);
    let mut d = Daemon::run_file(
        &topo.fwd,
        "c0",
        cfg.as_str(),
        &pin.path,
        &["--max-flows", "128"],
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(64));
    assert!(
        d.log()
            .contains("were created with --max-flows 64, not 128")
            && d.log().contains("ambassador uninstall"),
        "{}",
        d.log()
    );
}

/// `status` (and so `/metrics`) counts live flows with the daemon's own timeouts, as its
/// garbage collection does. It used the defaults: with `--udp-timeout 1`, a UDP flow idle for
/// three seconds still counted as live for 120 s.
#[test]
fn status_counts_live_flows_with_the_daemons_timeouts() {
    if !require_root("status_counts_live_flows_with_the_daemons_timeouts") {
        return;
    }
    let topo = Topology::new(1);
    let backend = Topology::backend_addr(1, 53);
    let _u = UdpServer::start(&topo.backends[0], &backend, "u1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[], std::slice::from_ref(&backend)));
    // The garbage collection waits an hour: expired entries stay in the table.
    let _d = start_with(
        &topo,
        &pin,
        &cfg,
        &["--udp-timeout", "1", "--gc-interval", "3600"],
    );
    let sock = udp_client(&topo.client, VIP_UDP);
    sock.send(b"ping").unwrap();
    let mut buf = [0u8; 64];
    sock.recv(&mut buf).expect("UDP reply through the VIP");
    assert_eq!(status(&pin.path)["flows"], 1);
    std::thread::sleep(Duration::from_secs(3));
    let st = status(&pin.path);
    assert_eq!(st["flows"], 0, "idle past --udp-timeout: not live: {st}");
    assert!(
        st["capacity"]["flows"]["used"].as_u64().unwrap() >= 1,
        "still in the table (not collected yet): {st}"
    );
}

/// The MAC address of `iface` in `ns`.
fn mac(ns: &NetNs, iface: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", iface]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_owned()
}

/// trafgen's byte list for a MAC address.
fn mac_bytes(mac: &str) -> String {
    mac.split(':')
        .map(|b| format!("0x{b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn frames_whose_headers_are_outside_the_linear_buffer_are_translated() {
    if !require_root("frames_whose_headers_are_outside_the_linear_buffer_are_translated") {
        return;
    }
    let topo = Topology::new(1);
    let server = UdpServer::start(&topo.backends[0], &Topology::backend_addr(1, 5353), "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[], &[Topology::backend_addr(1, 5353)]));
    let _d = start(&topo, &pin, &cfg);

    // UDP 10.200.0.2:40000 -> 10.96.0.10:53 with a 32-byte payload, sent from an AF_PACKET TX
    // ring (trafgen): the kernel keeps such a frame's bytes in page fragments, not in the
    // linear part of the buffer the datapath's direct reads see. The UDP checksum is 0 (none),
    // the IPv4 one computed by trafgen.
    let frame = format!(
        "{{\n  {dst},\n  {src},\n  0x08, 0x00,\n  \
         0x45, 0x00, const16(60), const16(1), 0x40, 0x00, 64, 17, csumip(14, 33),\n  \
         10, 200, 0, 2,\n  10, 96, 0, 10,\n  \
         const16(40000), const16(53), const16(40), const16(0),\n  \
         fill(0x61, 32)\n}}\n",
        dst = mac_bytes(&mac(&topo.fwd, "c0")),
        src = mac_bytes(&mac(&topo.client, "eth0")),
    );
    let conf = TempFile::new(&frame);
    // With transmit checksum offload (and so scatter-gather) on, as on most real interfaces,
    // the frame leaves the ring unlinearized; without it the kernel would copy it whole.
    topo.client
        .exec(&["ethtool", "-K", "eth0", "tx", "on", "sg", "on"]);
    eprintln!("{}", topo.fwd.exec(&["ethtool", "-k", "c0"]));
    topo.fwd.exec(&["ethtool", "-K", "c0", "gro", "off"]);
    topo.client.exec(&[
        "trafgen",
        "--dev",
        "eth0",
        "--conf",
        conf.as_str(),
        "--num",
        "1000",
        "--cpus",
        "1",
        "--gap",
        "100us",
        // Leave the machine's socket memory and IRQ affinity alone.
        "--no-sock-mem",
        "--notouch-irq",
        "--no-cpu-stats",
    ]);
    let delivered = wait_until(Duration::from_secs(5), || server.received() == 1000);
    let st = status(&pin.path);
    assert!(
        delivered,
        "{} of 1000 frames reached the backend through the frontend: {st}",
        server.received()
    );
    let dns = service_status(&pin.path, "dns").unwrap();
    assert_eq!(dns["counters"]["packets"], 1000, "{dns}");
}

/// A TAP device `name` in `ns` with a virtio-net header on every frame written to it: the
/// kernel makes a buffer whose linear part holds `hdr_len` bytes and puts the rest in page
/// fragments, as virtual machines' and containers' tap devices do. Closed on drop (the device
/// goes with the namespace).
struct Tap {
    fd: std::fs::File,
}

impl Tap {
    fn new(ns: &NetNs, name: &str) -> Self {
        let name = name.to_owned();
        let fd = ns.run(move || {
            use std::os::fd::AsRawFd as _;
            let fd = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("/dev/net/tun");
            // struct ifreq: the name, then the flags.
            let mut ifr = [0u8; 40];
            ifr[..name.len()].copy_from_slice(name.as_bytes());
            let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
            // SAFETY: a valid tun descriptor and a 40-byte ifreq.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            fd
        });
        Self { fd }
    }

    /// Writes `frame` with a virtio-net header whose header length is the Ethernet header
    /// alone: everything after it lands in page fragments.
    fn send(&mut self, frame: &[u8]) {
        use std::io::Write as _;
        // flags, gso_type (none), hdr_len, gso_size, csum_start, csum_offset.
        let mut buf = vec![0u8, 0];
        buf.extend_from_slice(&14u16.to_le_bytes());
        buf.extend_from_slice(&[0; 6]);
        buf.extend_from_slice(frame);
        self.fd.write_all(&buf).expect("writing to the tap device");
    }
}

#[test]
fn frames_from_a_tap_device_with_headers_in_page_fragments_are_translated() {
    if !require_root("frames_from_a_tap_device_with_headers_in_page_fragments_are_translated") {
        return;
    }
    let topo = Topology::new(1);
    let mut tap = Tap::new(&topo.fwd, "t0");
    topo.fwd.ip(&["addr", "add", "10.201.0.1/24", "dev", "t0"]);
    topo.fwd.ip(&["link", "set", "t0", "up"]);
    let server = UdpServer::start(&topo.backends[0], &Topology::backend_addr(1, 5353), "b1");
    let tcp = TcpServer::start(&topo.backends[0], &Topology::backend_addr(1, 8080), "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(
        &[Topology::backend_addr(1, 8080)],
        &[Topology::backend_addr(1, 5353)],
    ));
    let mut d = Daemon::run_file(&topo.fwd, "t0", cfg.as_str(), &pin.path, &[]);
    d.wait_ready();

    let mac: [u8; 6] = {
        let m = mac(&topo.fwd, "t0");
        let b: Vec<u8> = m
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect();
        b.try_into().unwrap()
    };
    let peer = [0x02, 0, 0, 0, 0, 0x02];
    for i in 0..200u16 {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(peer, mac)
            .ipv4([10, 201, 0, 2], [10, 96, 0, 10], 64)
            .udp(40000 + i, 53)
            .write(&mut frame, b"from a tap device")
            .unwrap();
        tap.send(&frame);
    }
    // A TCP SYN too: the new flow is created from headers in fragments.
    let mut syn = Vec::new();
    etherparse::PacketBuilder::ethernet2(peer, mac)
        .ipv4([10, 201, 0, 2], [10, 96, 0, 10], 64)
        .tcp(41000, 80, 1, 64000)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    tap.send(&syn);
    let delivered = wait_until(Duration::from_secs(5), || server.received() == 200);
    assert!(
        delivered,
        "{} of 200 datagrams from the tap device reached the backend: {}",
        server.received(),
        status(&pin.path)
    );
    let dns = service_status(&pin.path, "dns").unwrap();
    assert_eq!(dns["counters"]["packets"], 200, "{dns}");
    assert!(
        wait_until(Duration::from_secs(2), || {
            service_status(&pin.path, "web").unwrap()["counters"]["new_flows"] == 1
        }),
        "{}",
        status(&pin.path)
    );
    drop(tcp);
}

/// Writes `size` bytes to `addr` from `ns` in one go (path MTU discovery on, as by default),
/// then reads the [`sink`]'s answer.
fn bulk_write(ns: &NetNs, addr: &str, size: usize) -> std::io::Result<String> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    ns.run(move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_write_timeout(Some(Duration::from_secs(15)))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.write_all(&vec![0x5a; size])?;
        let mut ok = [0u8; 3];
        s.read_exact(&mut ok)?;
        Ok(String::from_utf8_lossy(&ok).into_owned())
    })
}

/// A server in `ns` at `addr` that reads `n` bytes from each connection, then answers "ok".
fn sink(ns: &NetNs, addr: &str, n: usize) -> std::thread::JoinHandle<()> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let listener = ns.run(move || std::net::TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = vec![0u8; n];
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(b"ok\n");
            }
        }
    })
}

#[test]
fn path_mtu_discovery_works_through_a_frontend() {
    if !require_root("path_mtu_discovery_works_through_a_frontend") {
        return;
    }
    let topo = Topology::new(1);
    // The link from the forwarding host to the backend carries 1280-byte packets; the backend
    // does not know it (its own MTU is 1500, so it offers a 1460-byte MSS).
    topo.fwd.ip(&["link", "set", "b1", "mtu", "1280"]);
    let size = 1 << 20;
    let server = sink(&topo.backends[0], &Topology::backend_addr(1, 9000), size);
    let pin = PinDir::new();
    let cfg = TempFile::new(&config(&[Topology::backend_addr(1, 9000)], &[]));
    let _d = start(&topo, &pin, &cfg);

    // 1 MiB with path MTU discovery on (Linux's default: DF set): the first full-size segment
    // meets the 1280 link, the forwarding host answers "fragmentation needed" quoting the
    // client -> backend packet, and only translated back does the client's stack match it
    // to its socket, lower the path MTU and resend smaller.
    let started = std::time::Instant::now();
    let answer = bulk_write(&topo.client, VIP_TCP, size);
    let st = status(&pin.path);
    assert_eq!(
        answer.as_deref().ok(),
        Some("ok\n"),
        "the 1 MiB write stalled ({answer:?} after {:?}): {st}",
        started.elapsed()
    );
    server.join().unwrap();
    eprintln!(
        "1 MiB through the frontend over a 1280-byte link in {:?}",
        started.elapsed()
    );
    let route = topo.client.exec(&["ip", "route", "get", "10.96.0.10"]);
    assert!(
        route.contains("mtu 1280"),
        "the client learned no path MTU: {route}"
    );
    assert!(st["reasons"]["icmp_error"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(topo.client.snmp("Tcp", "InCsumErrors"), 0);
    assert_eq!(topo.client.snmp("Icmp", "InCsumErrors"), 0);
}

#[test]
fn ipv6_tcp_and_udp_spread_over_backends_with_valid_checksums() {
    if !require_root("ipv6_tcp_and_udp_spread_over_backends_with_valid_checksums") {
        return;
    }
    let topo = Topology::new(2);
    topo.add_ipv6();
    let b6 = Topology::backend_addr6;
    let _t =
        [1, 2].map(|i| TcpServer::start(&topo.backends[i - 1], &b6(i, 8080), &format!("b{i}")));
    // The topology itself carries IPv6 to both backends.
    for i in [1, 2] {
        let (_, ident) = tcp_connect(&topo.client, &b6(i, 8080)).unwrap_or_else(|e| {
            panic!(
                "IPv6 without ambassador: {e}\n{}\n{}\n{}\n{}\n{}",
                topo.client.ip(&["-6", "route"]),
                topo.client.ip(&["-6", "addr"]),
                topo.fwd.ip(&["-6", "route"]),
                topo.fwd.ip(&["-6", "neigh"]),
                topo.backends[0].ip(&["-6", "addr"]),
            )
        });
        assert_eq!(ident, format!("b{i}"));
    }
    let u = [1, 2].map(|i| UdpServer::start(&topo.backends[i - 1], &b6(i, 5353), &format!("b{i}")));
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"web6\"\nfrontend = \"[fd00:96::10]:80\"\nendpoints = [\"{}\", \"{}\", \"10.200.1.2:8080\"]\n\n\
         [[service]]\nname = \"dns6\"\nfrontend = \"[fd00:96::10]:53\"\nproto = \"udp\"\nendpoints = [\"{}\", \"{}\"]\n\n\
         [[service]]\nname = \"web4\"\nfrontend = \"10.96.0.10:80\"\nendpoints = [\"{}\"]\n",
        b6(1, 8080),
        b6(2, 8080),
        b6(1, 5353),
        b6(2, 5353),
        Topology::backend_addr(1, 8080),
    ));
    let pin = PinDir::new();
    let d = start(&topo, &pin, &cfg);

    // TCP: new connections spread over both IPv6 backends, each answering through the VIP.
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let (mut conn, ident) = tcp_connect(&topo.client, "[fd00:96::10]:80")
            .unwrap_or_else(|e| panic!("connect over IPv6: {e}: {}", status(&pin.path)));
        assert_eq!(tcp_echo(&mut conn, "ping").unwrap(), "ping");
        *seen.entry(ident).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both backends used: {seen:?}");
    // UDP: the reply comes from the frontend (a connected socket only accepts that).
    let sock = udp_client(&topo.client, "[fd00:96::10]:53");
    for i in 0..20 {
        sock.send(format!("q{i}").as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("a reply from the frontend");
        assert!(buf[..n].ends_with(format!("q{i}").as_bytes()));
    }
    assert!(u.iter().map(UdpServer::received).sum::<u32>() == 20);
    // IPv4 beside it, unchanged.
    let _t4 = TcpServer::start(&topo.backends[0], &Topology::backend_addr(1, 8080), "b1v4");
    let (_, ident) = tcp_connect(&topo.client, "10.96.0.10:80").unwrap();
    assert_eq!(ident, "b1v4");

    for ns in [&topo.client, &topo.backends[0], &topo.backends[1]] {
        assert_eq!(ns.snmp("Tcp", "InCsumErrors"), 0);
        assert_eq!(ns.snmp6("Udp6InCsumErrors"), 0);
    }
    let web6 = service_status(&pin.path, "web6").unwrap();
    assert_eq!(web6["frontend"], "[fd00:96::10]:80", "{web6}");
    assert_eq!(web6["counters"]["new_flows"], 40, "{web6}");
    assert_eq!(web6["backends"].as_array().unwrap().len(), 2, "{web6}");
    // The IPv4 endpoint of an IPv6 service is refused, said and counted.
    assert!(
        d.log().contains("an IPv4 endpoint of an IPv6 frontend"),
        "{}",
        d.log()
    );
    assert_eq!(status(&pin.path)["control_plane"]["refused_endpoints"], 1);
}

#[test]
fn ipv6_path_mtu_discovery_works_through_a_frontend() {
    if !require_root("ipv6_path_mtu_discovery_works_through_a_frontend") {
        return;
    }
    let topo = Topology::new(1);
    topo.add_ipv6();
    // As for IPv4: a 1280-byte link (IPv6's minimum) the backend does not know about.
    topo.fwd.ip(&["link", "set", "b1", "mtu", "1280"]);
    let size = 1 << 20;
    let server = sink(&topo.backends[0], &Topology::backend_addr6(1, 9000), size);
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"bulk6\"\nfrontend = \"[fd00:96::10]:80\"\nendpoints = [\"{}\"]\n",
        Topology::backend_addr6(1, 9000)
    ));
    let _d = start(&topo, &pin, &cfg);
    let started = std::time::Instant::now();
    let answer = bulk_write(&topo.client, "[fd00:96::10]:80", size);
    let st = status(&pin.path);
    assert_eq!(
        answer.as_deref().ok(),
        Some("ok\n"),
        "the 1 MiB write stalled ({answer:?} after {:?}): {st}",
        started.elapsed()
    );
    server.join().unwrap();
    let route = topo
        .client
        .exec(&["ip", "-6", "route", "get", "fd00:96::10"]);
    assert!(
        route.contains("mtu 1280"),
        "the client learned no path MTU: {route}"
    );
    assert!(st["reasons"]["icmp_error"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(topo.client.snmp6("Icmp6InCsumErrors"), 0);
}
