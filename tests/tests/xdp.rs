//! The XDP datapath on a gateway, with the real kernel: client namespace -> gateway (the
//! forwarding namespace, `ambassador run --datapath xdp --iface c0`) -> backend namespaces,
//! veth pairs with native XDP. Frames are translated and redirected at XDP, so the gateway's
//! stack never forwards them.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ambassador_tests::*;

const VIP_TCP: &str = "10.96.0.10:80";
const VIP_UDP: &str = "10.96.0.10:53";

/// The gateway topology: XDP redirects into a veth need the receiving end's NAPI, which GRO
/// turns on (or an XDP program of its own): on the client's and the backends' ends.
fn gateway() -> Topology {
    let topo = Topology::new(2);
    for ns in [&topo.client, &topo.backends[0], &topo.backends[1]] {
        ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]);
    }
    topo
}

fn config() -> String {
    let b = Topology::backend_addr;
    format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP_TCP}\"\nendpoints = [\"{}\", \"{}\"]\n\n\
         [[service]]\nname = \"dns\"\nfrontend = \"{VIP_UDP}\"\nproto = \"udp\"\nendpoints = [\"{}\", \"{}\"]\n",
        b(1, 8080),
        b(2, 8080),
        b(1, 5353),
        b(2, 5353)
    )
}

fn run_xdp(topo: &Topology, pin: &PinDir, cfg: &TempFile) -> Daemon {
    let mut d = Daemon::start(
        &topo.fwd,
        &[
            "run",
            "--datapath",
            "xdp",
            "--iface",
            "c0",
            "--config",
            cfg.as_str(),
            "--pin-path",
            pin.path.to_str().unwrap(),
        ],
    );
    d.wait_ready();
    d
}

/// `status --json` as the gateway's namespace sees it (the XDP modes come from its links).
fn gateway_status(topo: &Topology, pin: &PinDir) -> serde_json::Value {
    let out = ambassador_ok(
        &topo.fwd,
        &["status", "--json", "--pin-path", pin.path.to_str().unwrap()],
    );
    serde_json::from_str(&out).unwrap()
}

/// Whether the kernel says which interfaces take redirected frames (Linux 6.3+). Before that
/// the daemon sends frames for a veth through the stack, translated (the kernel matrix boots
/// 5.10 and 6.1).
fn redirects_reported() -> bool {
    ambassador_user::datapath::netdev::xdp_features()
        .expect("asking for the XDP features")
        .is_some()
}

/// The share of translated frames the gateway's stack forwarded, checked against what the
/// kernel allows: under one in `one_in` where the program redirects them (the first frames of
/// a neighbour not yet resolved go through the stack), most of them where it cannot know that
/// a veth takes them (and the log says what would).
fn check_forwarded_by(
    by_stack: u64,
    translated: u64,
    one_in: u64,
    log: &str,
    st: &serde_json::Value,
) {
    if redirects_reported() {
        assert!(
            by_stack * one_in < translated,
            "the stack forwarded {by_stack} of {translated} translated frames: not redirected at XDP"
        );
    } else {
        assert!(
            by_stack * 2 > translated,
            "the stack forwarded only {by_stack} of {translated} translated frames, on a kernel that cannot say whether a veth takes redirects"
        );
        assert!(log.contains("Linux 6.3 or later"), "{log}");
        // `status` gives the same reason for every interface, not a GRO fix that would not help.
        let interfaces = st["xdp"]["interfaces"].as_array().expect("xdp interfaces");
        assert!(
            interfaces.iter().all(|i| i["takes_redirects"] == false
                && i["fix"]
                    .as_str()
                    .is_some_and(|f| f.contains("Linux 6.3 or later"))),
            "{st}"
        );
    }
}

/// Whether `iface` in `ns` has an XDP program attached, from `ip link`.
fn has_xdp(ns: &NetNs, iface: &str) -> bool {
    ns.ip(&["link", "show", iface]).contains("xdp")
}

/// 40 TCP connections, each greeted by its backend and echoing through the VIP, and 40 UDP
/// sockets whose replies all come from the frontend: every one answered, by both backends.
fn forty_each(topo: &Topology, u: &[UdpServer; 2]) {
    let before = u[0].received() + u[1].received();
    // TCP: 40 connections, each greeted by its backend and echoing through the VIP.
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..40 {
        let (mut conn, ident) = tcp_connect(&topo.client, VIP_TCP).expect("connect via XDP");
        assert_eq!(
            tcp_echo(&mut conn, &format!("ping {i}")).unwrap(),
            format!("ping {i}")
        );
        *seen.entry(ident).or_default() += 1;
    }
    assert!(seen.len() == 2, "both backends: {seen:?}");
    // UDP: 40 sockets; every reply comes from the frontend.
    let mut udp_seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut socks = Vec::new();
    for _ in 0..40 {
        let sock = udp_client(&topo.client, VIP_UDP);
        sock.send(b"q").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("UDP reply through the VIP");
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        *udp_seen
            .entry(reply.split(':').next().unwrap().to_owned())
            .or_default() += 1;
        socks.push(sock);
    }
    assert!(udp_seen.len() == 2, "{udp_seen:?}");
    assert_eq!(u[0].received() + u[1].received() - before, 40);
}

#[test]
fn xdp_gateway_translates_and_forwards_tcp_and_udp_before_the_stack() {
    if !require_root("xdp_gateway_translates_and_forwards_tcp_and_udp_before_the_stack") {
        return;
    }
    let topo = gateway();
    let b = Topology::backend_addr;
    let _t = [1, 2].map(|i| TcpServer::start(&topo.backends[i - 1], &b(i, 8080), &format!("b{i}")));
    let u = [1, 2].map(|i| UdpServer::start(&topo.backends[i - 1], &b(i, 5353), &format!("b{i}")));
    let pin = PinDir::new();
    let cfg = TempFile::new(&config());
    let mut d = run_xdp(&topo, &pin, &cfg);
    let flows = monitor(&topo.fwd, &mut d, &pin.path, &["--kind", "flow"]);
    // The client-facing interface, and the two towards the backends, found from the routes.
    let datapaths = |st: &serde_json::Value| -> Vec<String> {
        st["control_plane"]["datapaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let want = ["xdp b1 (native)", "xdp b2 (native)", "xdp c0 (native)"];
    assert!(
        wait_until(Duration::from_secs(10), || datapaths(&gateway_status(
            &topo, &pin
        )) == want),
        "{:?}",
        datapaths(&gateway_status(&topo, &pin))
    );
    let forwarded_before = topo.fwd.snmp("Ip", "ForwDatagrams");

    forty_each(&topo, &u);

    // Translated and forwarded at XDP: the gateway's stack forwarded (almost) nothing; the
    // first frames of a neighbour not yet resolved go through it.
    let st = gateway_status(&topo, &pin);
    let translated = st["reasons"]["forwarded"].as_u64().unwrap()
        + st["reasons"]["reverse_nat"].as_u64().unwrap();
    let by_stack = topo.fwd.snmp("Ip", "ForwDatagrams") - forwarded_before;
    assert!(translated >= 400, "{st}");
    check_forwarded_by(by_stack, translated, 20, &d.log(), &st);
    for ns in [&topo.client, &topo.backends[0], &topo.backends[1]] {
        for (group, field) in [("Tcp", "InCsumErrors"), ("Udp", "InCsumErrors")] {
            assert_eq!(ns.snmp(group, field), 0, "{group} {field} in {}", ns.name);
        }
        assert_eq!(ns.snmp("Ip", "InHdrErrors"), 0, "{}", ns.name);
    }
    let web = &st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()["counters"];
    assert_eq!(web["new_flows"], 40, "{web}");
    // `ambassador monitor` saw each of them, translated by `xdp`, once.
    let web_flows = || {
        monitor_events(&flows)
            .iter()
            .filter(|e| e["service"] == "web" && e["datapath"] == "xdp" && e["proto"] == "tcp")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || web_flows() >= 40),
        "{}",
        flows.log()
    );
    assert_eq!(web_flows(), 40, "{}", flows.log());
}

#[test]
fn xdp_survives_kill_and_restart_without_outage_and_uninstall_detaches() {
    if !require_root("xdp_survives_kill_and_restart_without_outage_and_uninstall_detaches") {
        return;
    }
    let topo = gateway();
    let b = Topology::backend_addr;
    let _t = [1, 2].map(|i| TcpServer::start(&topo.backends[i - 1], &b(i, 8080), &format!("b{i}")));
    let pin = PinDir::new();
    let cfg = TempFile::new(&config());
    let mut d = run_xdp(&topo, &pin, &cfg);
    assert!(wait_until(Duration::from_secs(10), || {
        has_xdp(&topo.fwd, "b1") && has_xdp(&topo.fwd, "b2")
    }));

    // A new connection every 10 ms through a SIGKILL and a restart.
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (stop.clone(), results.clone());
    let addr: SocketAddr = VIP_TCP.parse().unwrap();
    let stream = topo.client.spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let got = tcp_connect_here(addr, Duration::from_secs(2)).map(|(_, who)| who);
            r.lock().unwrap().push(got.map_err(|e| e.to_string()));
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let count = || results.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(5), || count() >= 50));
    d.kill();
    let n = count();
    assert!(wait_until(Duration::from_secs(5), || count() >= n + 50));
    assert!(
        has_xdp(&topo.fwd, "c0"),
        "the pinned link keeps XDP attached"
    );
    let mut d = run_xdp(&topo, &pin, &cfg);
    d.wait_log("XDP datapath adopted", Duration::from_secs(5));
    let n = count();
    assert!(wait_until(Duration::from_secs(5), || count() >= n + 50));
    stop.store(true, Ordering::Relaxed);
    stream.join().unwrap();
    let results = results.lock().unwrap();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed across the kill and restart: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );

    // uninstall takes every attachment away.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    ambassador_ok(
        &topo.fwd,
        &["uninstall", "--pin-path", pin.path.to_str().unwrap()],
    );
    for iface in ["c0", "b1", "b2"] {
        assert!(!has_xdp(&topo.fwd, iface), "XDP still on {iface}");
    }
}

#[test]
fn xdp_gateway_forwards_ipv6_before_the_stack() {
    if !require_root("xdp_gateway_forwards_ipv6_before_the_stack") {
        return;
    }
    let topo = gateway();
    topo.add_ipv6();
    let b6 = Topology::backend_addr6;
    let _t =
        [1, 2].map(|i| TcpServer::start(&topo.backends[i - 1], &b6(i, 8080), &format!("b{i}")));
    let u = [1, 2].map(|i| UdpServer::start(&topo.backends[i - 1], &b6(i, 5353), &format!("b{i}")));
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"web6\"\nfrontend = \"[fd00:96::10]:80\"\nendpoints = [\"{}\", \"{}\"]\n\n\
         [[service]]\nname = \"dns6\"\nfrontend = \"[fd00:96::10]:53\"\nproto = \"udp\"\nendpoints = [\"{}\", \"{}\"]\n",
        b6(1, 8080),
        b6(2, 8080),
        b6(1, 5353),
        b6(2, 5353)
    ));
    let d = run_xdp(&topo, &pin, &cfg);
    assert!(wait_until(Duration::from_secs(10), || {
        has_xdp(&topo.fwd, "b1") && has_xdp(&topo.fwd, "b2")
    }));
    let forwarded_before = topo.fwd.snmp6("Ip6OutForwDatagrams");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..30 {
        let (mut conn, ident) =
            tcp_connect(&topo.client, "[fd00:96::10]:80").expect("connect via XDP over IPv6");
        assert_eq!(
            tcp_echo(&mut conn, &format!("ping {i}")).unwrap(),
            format!("ping {i}")
        );
        *seen.entry(ident).or_default() += 1;
    }
    assert!(seen.len() == 2, "both backends: {seen:?}");
    let mut socks = Vec::new();
    for _ in 0..20 {
        let sock = udp_client(&topo.client, "[fd00:96::10]:53");
        sock.send(b"q").unwrap();
        let mut buf = [0u8; 64];
        sock.recv(&mut buf).expect("UDP reply through the IPv6 VIP");
        socks.push(sock);
    }
    assert_eq!(u[0].received() + u[1].received(), 20);
    let st = gateway_status(&topo, &pin);
    let translated = st["reasons"]["forwarded"].as_u64().unwrap()
        + st["reasons"]["reverse_nat"].as_u64().unwrap();
    let by_stack = topo.fwd.snmp6("Ip6OutForwDatagrams") - forwarded_before;
    assert!(translated >= 300, "{st}");
    check_forwarded_by(by_stack, translated, 10, &d.log(), &st);
    // TCP's counters are one for both families; UDP has its own for IPv6.
    for ns in [&topo.client, &topo.backends[0], &topo.backends[1]] {
        assert_eq!(ns.snmp("Tcp", "InCsumErrors"), 0, "{}", ns.name);
        assert_eq!(ns.snmp6("Udp6InCsumErrors"), 0, "{}", ns.name);
    }
}

/// The case: a veth gateway whose peers have no GRO (the default). A native XDP
/// program's redirect into such a veth is dropped by the kernel, so the daemon keeps a table of
/// which interfaces take redirected frames (the kernel's XDP features) and the program hands
/// frames for the others to the stack, translated: every connection is answered, the status
/// and the log say why and how to fix it. With GRO turned on afterwards, the daemon notices
/// and the frames are redirected again.
#[test]
fn xdp_gateway_without_gro_forwards_every_frame_and_says_why() {
    if !require_root("xdp_gateway_without_gro_forwards_every_frame_and_says_why") {
        return;
    }
    let topo = Topology::new(2);
    let peers = [&topo.client, &topo.backends[0], &topo.backends[1]];
    for ns in peers {
        let features = ns.exec(&["ethtool", "-k", "eth0"]);
        assert!(
            features.contains("generic-receive-offload: off"),
            "the default veth has GRO off, or this test proves nothing: {features}"
        );
    }
    let b = Topology::backend_addr;
    let _t = [1, 2].map(|i| TcpServer::start(&topo.backends[i - 1], &b(i, 8080), &format!("b{i}")));
    let u = [1, 2].map(|i| UdpServer::start(&topo.backends[i - 1], &b(i, 5353), &format!("b{i}")));
    let pin = PinDir::new();
    let cfg = TempFile::new(&config());
    let mut d = run_xdp(&topo, &pin, &cfg);
    let ifaces = |st: &serde_json::Value| -> Vec<(String, bool)> {
        st["xdp"]["interfaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i["name"].as_str().unwrap().to_owned(),
                            i["takes_redirects"].as_bool().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let none_take = |st: &serde_json::Value| {
        let i = ifaces(st);
        i.len() == 3 && i.iter().all(|(_, takes)| !takes)
    };
    assert!(
        wait_until(Duration::from_secs(10), || none_take(&gateway_status(
            &topo, &pin
        ))),
        "{}",
        gateway_status(&topo, &pin)
    );
    d.wait_log("cannot take redirected frames", Duration::from_secs(5));
    forty_each(&topo, &u);
    let st = gateway_status(&topo, &pin);
    let fwd = &st["xdp"]["forward"];
    assert_eq!(fwd["redirected"], 0, "{st}");
    assert!(fwd["target_cannot_xmit"].as_u64().unwrap() >= 160, "{st}");
    let fix = st["xdp"]["interfaces"][0]["fix"]
        .as_str()
        .unwrap_or_default();
    assert!(fix.contains("GRO"), "{st}");
    let text = ambassador_ok(
        &topo.fwd,
        &["status", "--pin-path", pin.path.to_str().unwrap()],
    );
    assert!(
        text.contains("does not (frames through the stack"),
        "{text}"
    );

    // GRO on the peers: the daemon sees it within a second or two, and frames are redirected.
    for ns in peers {
        ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]);
    }
    assert!(
        wait_until(Duration::from_secs(10), || ifaces(&gateway_status(
            &topo, &pin
        ))
        .iter()
        .all(|(_, takes)| *takes)),
        "{}",
        gateway_status(&topo, &pin)
    );
    let forwarded_before = topo.fwd.snmp("Ip", "ForwDatagrams");
    forty_each(&topo, &u);
    let st = gateway_status(&topo, &pin);
    assert!(
        st["xdp"]["forward"]["redirected"].as_u64().unwrap() >= 150,
        "{st}"
    );
    let by_stack = topo.fwd.snmp("Ip", "ForwDatagrams") - forwarded_before;
    assert!(
        by_stack < 20,
        "the stack forwarded {by_stack} frames after GRO went on: {st}"
    );
}
