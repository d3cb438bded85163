//! The Docker register end to end: Debian's dockerd runs inside the backend host's namespace
//! (images made with `docker import`, no registry), `ambassador register` writes its labelled
//! containers into Debian's etcd, and `ambassador run` on the forwarding host sends a client's
//! connections to them through the VIP.

use std::time::{Duration, Instant};

use ambassador_tests::*;

const VIP: &str = "10.96.0.10:80";
const IMAGE: &str = "amb-test/busybox:1";
const TTL: &str = "3";

/// client -- fwd (etcd, ambassador run) -- h2 (dockerd, ambassador register)
///                                       \- b2 (a static backend answering "b2")
struct Bed {
    topo: Topology,
    pin: PinDir,
    etcd: Etcd,
    dockerd: Dockerd,
    _daemon: Daemon,
    _b2: TcpServer,
}

impl Bed {
    fn new() -> Self {
        Self::with_daemon_args(&[])
    }

    /// The bed with `extra` arguments for the forwarding host's `ambassador run`.
    fn with_daemon_args(extra: &[&str]) -> Self {
        let topo = Topology::new(2);
        let etcd = Etcd::single(&topo.fwd);
        let dockerd = Dockerd::start(&topo.backends[0], "10.250.1.1/24");
        dockerd.import_busybox(IMAGE);
        let b2 = TcpServer::start(&topo.backends[1], &Topology::backend_addr(2, 8080), "b2");
        let pin = PinDir::new();
        let mut daemon = Daemon::run_etcd(&topo.fwd, "c0", &etcd.urls(), &pin.path, extra);
        daemon.wait_ready();
        let urls = etcd.urls();
        ambassador_ok(
            &topo.fwd,
            &["service", "set", "web", "--frontend", VIP, "--etcd", &urls],
        );
        let b2_addr = Topology::backend_addr(2, 8080);
        ambassador_ok(
            &topo.fwd,
            &[
                "endpoint",
                "add",
                "web",
                &b2_addr,
                "--id",
                "static-b2",
                "--etcd",
                &urls,
            ],
        );
        Self {
            topo,
            pin,
            etcd,
            dockerd,
            _daemon: daemon,
            _b2: b2,
        }
    }

    /// `ambassador register` on h2, reaching etcd on the forwarding host's address.
    fn register(&self) -> Daemon {
        self.register_with(&[])
    }

    /// [`Bed::register`] with `extra` arguments (credentials).
    fn register_with(&self, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "register",
            "--docker",
            &self.dockerd.socket,
            "--advertise-ip",
            "10.200.1.2",
            "--ttl",
            TTL,
            "--host-id",
            "h2",
            "--reconcile-interval",
            "2",
            "--etcd",
            "http://10.200.1.1:2379",
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut r = Daemon::start(&self.topo.backends[0], &args);
        r.wait_log("following Docker events", Duration::from_secs(15));
        r
    }

    /// Active backends registered from h2 (advertised at 10.200.1.2).
    fn docker_backends(&self) -> Vec<String> {
        active_backends(&self.pin.path, "web")
            .into_iter()
            .filter(|a| a.starts_with("10.200.1.2:"))
            .collect()
    }

    /// Who answers through the VIP, on one connection: a container's name (busybox httpd
    /// answers the request) or "b2" (the static backend greets first).
    fn who(&self) -> String {
        identify(&self.topo.client, VIP).unwrap_or_else(|e| format!("error: {e}"))
    }

    fn wait_docker_backends(&self, n: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        let ok = wait_until(timeout, || self.docker_backends().len() == n);
        assert!(
            ok,
            "expected {n} Docker backends, have {:?}",
            self.docker_backends()
        );
        start.elapsed()
    }
}

#[test]
fn labelled_containers_come_and_go_and_clients_follow_them_through_the_vip() {
    if !require_root("labelled_containers_come_and_go_and_clients_follow_them_through_the_vip") {
        return;
    }
    let bed = Bed::new();
    let reg = bed.register();

    // Unlabelled and unusable containers are ignored (the unusable one is reported once).
    bed.dockerd.run_web(IMAGE, "plain", &["-p", "8080"]);
    bed.dockerd
        .run_web(IMAGE, "unpublished", &["--label", "ambassador.service=web"]);

    let started = Instant::now();
    bed.dockerd.run_web(
        IMAGE,
        "c1",
        &["--label", "ambassador.service=web", "-p", "8080"],
    );
    bed.wait_docker_backends(1, Duration::from_secs(10));
    eprintln!(
        "docker run -> map updated: {:?} (includes the docker CLI)",
        started.elapsed()
    );
    let answers: Vec<String> = (0..40).map(|_| bed.who()).collect();
    assert!(answers.contains(&"c1".to_owned()), "{answers:?}");
    assert!(
        answers.iter().all(|a| a == "c1" || a == "b2"),
        "{answers:?}"
    );
    assert!(reg.log().contains("no published port"), "{}", reg.log());
    assert_eq!(
        reg.log().matches("no published port").count(),
        1,
        "reported once:\n{}",
        reg.log()
    );

    // Stopping it removes it; new connections go to the remaining backend.
    bed.dockerd.docker(&["stop", "-t", "1", "c1"]);
    bed.wait_docker_backends(0, Duration::from_secs(10));
    assert!((0..20).map(|_| bed.who()).all(|a| a == "b2"));

    // A weighted container, registered with its weight.
    bed.dockerd.run_web(
        IMAGE,
        "c2",
        &[
            "--label",
            "ambassador.service=web",
            "--label",
            "ambassador.weight=3",
            "-p",
            "8080",
        ],
    );
    bed.wait_docker_backends(1, Duration::from_secs(10));
    let web = service_status(&bed.pin.path, "web").unwrap();
    let c2 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"].as_str().unwrap().starts_with("10.200.1.2:"))
        .cloned();
    assert_eq!(c2.unwrap()["weight"], 3, "{web}");
    // The register's metrics: one container registered, one unusable, both connections up.
    let page = metrics::scrape(&bed.topo.backends[0].name, &reg.log());
    for (name, want) in [
        ("ambassador_register_containers", 1.0),
        ("ambassador_register_unusable_containers", 1.0),
        ("ambassador_register_etcd_connected", 1.0),
        ("ambassador_register_docker_connected", 1.0),
        ("ambassador_register_lease_grants_total", 1.0),
    ] {
        assert_eq!(
            metrics::value(&page, name, &[]),
            Some(want),
            "{name}:\n{page}"
        );
    }
    assert!(metrics::value(&page, "ambassador_register_puts_total", &[]).unwrap() >= 2.0);
    let ls = ambassador_ok(
        &bed.topo.fwd,
        &[
            "endpoint",
            "ls",
            "web",
            "--json",
            "--etcd",
            &bed.etcd.urls(),
        ],
    );
    let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"].as_str().unwrap().starts_with("h2-") && e["lease"] != 0),
        "{ls}"
    );
}

#[test]
fn a_killed_register_expires_with_its_lease_and_a_restarted_one_or_dockerd_is_followed_again() {
    if !require_root(
        "a_killed_register_expires_with_its_lease_and_a_restarted_one_or_dockerd_is_followed_again",
    ) {
        return;
    }
    let mut bed = Bed::new();
    let mut reg = bed.register();
    bed.dockerd.run_web(
        IMAGE,
        "c1",
        &[
            "--label",
            "ambassador.service=web",
            "-p",
            "8080",
            "--restart",
            "always",
        ],
    );
    bed.wait_docker_backends(1, Duration::from_secs(10));

    // etcd away for longer than the TTL: the register loses its lease, and when etcd is back
    // it grants a new one and writes its entries again.
    bed.etcd.members[0].kill();
    std::thread::sleep(Duration::from_secs(5));
    bed.etcd.members[0].start();
    bed.etcd.wait_healthy(Duration::from_secs(15));
    reg.wait_log("lost", Duration::from_secs(15));
    let ok = wait_until(Duration::from_secs(20), || {
        reg.log().matches("etcd lease granted").count() >= 2 && bed.docker_backends().len() == 1
    });
    assert!(
        ok,
        "not re-registered after the lease was lost:\n{}",
        reg.log()
    );

    // SIGKILL: no cleanup; the lease expires within its TTL and the entry goes with it.
    reg.kill();
    let gone = bed.wait_docker_backends(0, Duration::from_secs(3 + 5));
    eprintln!("register SIGKILLed -> entry gone after {gone:?} (TTL {TTL} s)");
    assert!((0..10).map(|_| bed.who()).all(|a| a == "b2"));

    // A restarted register registers the running container again.
    let _reg = bed.register();
    bed.wait_docker_backends(1, Duration::from_secs(10));

    // dockerd restarts (its containers stop and, with --restart always, start again, on a new
    // host port): the register reconnects, lists again, and follows.
    let before = bed.docker_backends();
    let mut dockerd = bed.dockerd;
    dockerd.stop();
    dockerd.restart();
    let ok = wait_until(Duration::from_secs(30), || {
        let now = active_backends(&bed.pin.path, "web")
            .into_iter()
            .filter(|a| a.starts_with("10.200.1.2:"))
            .collect::<Vec<_>>();
        now.len() == 1 && (0..10).any(|_| http_get(&bed.topo.client, VIP).is_ok_and(|b| b == "c1"))
    });
    assert!(
        ok,
        "not followed after the dockerd restart (before: {before:?})"
    );
}

#[test]
fn a_backend_host_cut_off_expires_with_its_lease_and_traffic_moves_then_returns() {
    if !require_root("a_backend_host_cut_off_expires_with_its_lease_and_traffic_moves_then_returns")
    {
        return;
    }
    let bed = Bed::new();
    let reg = bed.register();
    bed.dockerd.run_web(
        IMAGE,
        "c1",
        &["--label", "ambassador.service=web", "-p", "8080"],
    );
    bed.wait_docker_backends(1, Duration::from_secs(10));
    assert!(
        (0..40).map(|_| bed.who()).any(|a| a == "c1"),
        "c1 never answered"
    );

    // The host's only link goes down: neither its container nor its register (keeping the
    // lease alive) is reachable. The lease expires, the entry goes, clients move to b2.
    let cut = Instant::now();
    bed.topo.fwd.ip(&["link", "set", "b1", "down"]);
    let gone = bed.wait_docker_backends(0, Duration::from_secs(3 + 6));
    let answers: Vec<String> = (0..20).map(|_| bed.who()).collect();
    assert!(answers.iter().all(|a| a == "b2"), "{answers:?}");
    eprintln!(
        "host cut off -> its endpoint out of the maps after {gone:?} (TTL {TTL} s); \
         new connections that picked it in that window failed, none after"
    );
    assert!(gone <= Duration::from_secs(3 + 4), "{gone:?}");

    // Back online: the register notices it lost its lease, grants a new one and registers the
    // container again; clients find it.
    bed.topo.fwd.ip(&["link", "set", "b1", "up"]);
    let back = Instant::now();
    bed.wait_docker_backends(1, Duration::from_secs(30));
    eprintln!(
        "host back after {:?} cut -> registered again after {:?}",
        back - cut,
        back.elapsed()
    );
    assert!(reg.log().contains("lost"), "{}", reg.log());
    assert!(
        wait_until(Duration::from_secs(10), || bed.who() == "c1"),
        "c1 never answered again"
    );
}

#[test]
fn a_labelled_container_without_a_service_gets_one_and_names_follow_its_containers() {
    if !require_root(
        "a_labelled_container_without_a_service_gets_one_and_names_follow_its_containers",
    ) {
        return;
    }
    // The responder on the forwarding host's side of h2's link, where h2's containers reach it.
    let bed = Bed::with_daemon_args(&["--dns-listen", "10.200.1.1:53", "--dns-no-forward"]);
    let reg = bed.register();
    let dig_short = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["@10.200.1.1", "+short"];
        all.extend_from_slice(args);
        let mut lines: Vec<String> = dig(&bed.topo.client, &all)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    let name = "cache.ambassador.internal";
    assert!(dig_short(&[name]).is_empty(), "no service yet");

    // No operator step: the container's labels make the service, at an allocated address.
    bed.dockerd.run_web(
        IMAGE,
        "k1",
        &["--label", "ambassador.service=cache", "-p", "8080"],
    );
    let mut vip = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            vip = dig_short(&[name]).concat();
            !vip.is_empty()
        }),
        "{name} never answered:\n{}",
        reg.log()
    );
    assert!(
        vip.starts_with("10.96.0."),
        "allocated from the default range: {vip}"
    );
    assert_ne!(vip, "10.96.0.10", "web's frontend is not allocated again");
    assert!(
        reg.log()
            .contains("service created for its labelled containers"),
        "{}",
        reg.log()
    );
    assert_eq!(
        dig_short(&["_cache._tcp.ambassador.internal", "SRV"]),
        [format!("0 0 8080 {name}.")]
    );
    // Clients dial the name's address on the container's port.
    let frontend = format!("{vip}:8080");
    assert!(wait_until(Duration::from_secs(5), || {
        identify(&bed.topo.client, &frontend).is_ok_and(|who| who == "k1")
    }));

    // The endpoint records follow containers: for clients that run no ambassador.
    let eps = "_cache._tcp.endpoints.ambassador.internal";
    let published = |c: &str| {
        bed.dockerd
            .docker(&["port", c, "8080/tcp"])
            .lines()
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned()
    };
    let k1 = published("k1");
    assert_eq!(
        dig_short(&[eps, "SRV"]),
        [format!(
            "0 1 {k1} 10-200-1-2.endpoints.ambassador.internal."
        )]
    );
    bed.dockerd.run_web(
        IMAGE,
        "k2",
        &[
            "--label",
            "ambassador.service=cache",
            "--label",
            "ambassador.weight=2",
            "-p",
            "8080",
        ],
    );
    let k2 = published("k2");
    let mut both = vec![
        format!("0 1 {k1} 10-200-1-2.endpoints.ambassador.internal."),
        format!("0 2 {k2} 10-200-1-2.endpoints.ambassador.internal."),
    ];
    both.sort();
    assert!(
        wait_until(Duration::from_secs(10), || dig_short(&[eps, "SRV"]) == both),
        "{:?}",
        dig_short(&[eps, "SRV"])
    );
    bed.dockerd.docker(&["stop", "-t", "1", "k1"]);
    let left = [format!(
        "0 2 {k2} 10-200-1-2.endpoints.ambassador.internal."
    )];
    assert!(
        wait_until(Duration::from_secs(10), || dig_short(&[eps, "SRV"]) == left),
        "{:?}",
        dig_short(&[eps, "SRV"])
    );
    assert_eq!(
        dig_short(&["10-200-1-2.endpoints.ambassador.internal"]),
        ["10.200.1.2"]
    );
    // The service stays when its containers go: the name and address are stable.
    assert_eq!(dig_short(&[name]), [vip.clone()]);

    // A container whose resolver is the responder (`docker run --dns`) finds the service.
    let out = bed.dockerd.docker(&[
        "run",
        "--rm",
        "--dns",
        "10.200.1.1",
        IMAGE,
        "busybox",
        "nslookup",
        name,
    ]);
    assert!(out.contains(&vip), "{out}");
}

/// The register over IPv6 with a real dockerd (`--ipv6`, containers on fd00:250:1::/64):
/// published ports advertised at the host's IPv6 address, and containers' own IPv6 addresses
/// (`--address-mode container-ipv6`); each labelled service is created with an IPv6 frontend
/// (a service is one family), and clients reach the containers through it.
#[test]
fn ipv6_registers_advertise_published_ports_and_container_addresses() {
    if !require_root("ipv6_registers_advertise_published_ports_and_container_addresses") {
        return;
    }
    let topo = Topology::new(1);
    topo.add_ipv6();
    let h2 = &topo.backends[0];
    let etcd = Etcd::single(&topo.fwd);
    let dockerd = Dockerd::start_with(
        h2,
        "10.250.1.1/24",
        &["--ipv6", "--fixed-cidr-v6=fd00:250:1::/64"],
    );
    dockerd.import_busybox(IMAGE);
    // Containers' IPv6 addresses are routed through h2.
    h2.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    topo.fwd.ip(&[
        "-6",
        "route",
        "add",
        "fd00:250:1::/64",
        "via",
        "fd00:200:1::2",
    ]);
    let pin = PinDir::new();
    let mut daemon = Daemon::run_etcd(&topo.fwd, "c0", &etcd.urls(), &pin.path, &[]);
    daemon.wait_ready();
    let register = |extra: &[&str]| {
        let mut args = vec![
            "register",
            "--docker",
            &dockerd.socket,
            "--ttl",
            TTL,
            "--reconcile-interval",
            "2",
            "--etcd",
            "http://10.200.1.1:2379",
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut r = Daemon::start(h2, &args);
        r.wait_log("following Docker events", Duration::from_secs(15));
        r
    };
    let frontend_of = |service: &str| -> Option<String> {
        let out = ambassador_in(
            &topo.fwd,
            &["service", "get", service, "--json", "--etcd", &etcd.urls()],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["frontend"].as_str()?.to_owned())
    };
    let reached = |service: &str, who: &str| -> String {
        let mut frontend = String::new();
        let ok = wait_until(Duration::from_secs(15), || {
            frontend = frontend_of(service).unwrap_or_default();
            !frontend.is_empty() && identify(&topo.client, &frontend).is_ok_and(|w| w == who)
        });
        assert!(
            ok,
            "{who} is not reached through {service} ({frontend:?}): {:?}",
            service_status(&pin.path, service)
        );
        frontend
    };

    // Published: the host's IPv6 address and the port Docker published.
    let published = register(&["--advertise-ip", "fd00:200:1::2", "--host-id", "h2"]);
    dockerd.run_web(
        IMAGE,
        "p1",
        &["--label", "ambassador.service=pub6", "-p", "8080"],
    );
    let frontend = reached("pub6", "p1");
    assert!(
        frontend.starts_with("[fd00:10:96::"),
        "an IPv6 frontend from the IPv6 range: {frontend}"
    );
    let port = dockerd
        .docker(&["port", "p1", "8080/tcp"])
        .lines()
        .find_map(|l| l.rsplit(':').next().map(str::to_owned))
        .unwrap();
    assert_eq!(
        active_backends(&pin.path, "pub6"),
        [format!("[fd00:200:1::2]:{port}")],
        "{}",
        published.log()
    );

    // Container addresses: the container's own global IPv6 address and port.
    let direct = register(&["--address-mode", "container-ipv6", "--host-id", "h2c"]);
    dockerd.run_web(
        IMAGE,
        "k1",
        &["--label", "ambassador.service=dir6", "--expose", "8080"],
    );
    let frontend = reached("dir6", "k1");
    assert!(frontend.starts_with("[fd00:10:96::"), "{frontend}");
    let k1 = dockerd.docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}",
        "k1",
    ]);
    assert!(k1.starts_with("fd00:250:1:"), "{k1}");
    assert_eq!(
        active_backends(&pin.path, "dir6"),
        [format!("[{k1}]:8080")],
        "{}",
        direct.log()
    );
}

/// In trust mode hosts, with its own credential, a register writes only under its host's
/// prefix (its lease kept alive by that credential), and a container labelled with a service
/// its host record does not allow is not registered: said once in the register's log.
#[test]
fn a_confined_register_registers_only_what_its_host_record_allows() {
    if !require_root("a_confined_register_registers_only_what_its_host_record_allows") {
        return;
    }
    let bed = Bed::new();
    let urls = bed.etcd.urls();
    let creds = temp_dir("creds");
    let dir = creds.path().to_str().unwrap();
    let pw = |user: &str| {
        creds
            .path()
            .join(format!("{user}.password"))
            .display()
            .to_string()
    };
    let fwd = &bed.topo.fwd;
    ambassador_ok(
        fwd,
        &["auth", "init", "--credentials-dir", dir, "--etcd", &urls],
    );
    let root = [
        "--etcd",
        &urls,
        "--etcd-user",
        "root",
        "--etcd-password-file",
        &pw("root"),
    ];
    let mut add = vec![
        "auth",
        "add-host",
        "h2",
        "--address",
        "10.200.1.2/32",
        "--service",
        "web*",
        "--credentials-dir",
        dir,
    ];
    add.extend(root);
    ambassador_ok(fwd, &add);
    let h2pw = pw("ambassador-host-h2");
    let reg = bed.register_with(&[
        "--etcd-user",
        "ambassador-host-h2",
        "--etcd-password-file",
        &h2pw,
    ]);
    bed.dockerd.run_web(
        IMAGE,
        "allowed",
        &["--label", "ambassador.service=web", "-p", "8080"],
    );
    bed.dockerd.run_web(
        IMAGE,
        "forbidden",
        &["--label", "ambassador.service=db", "-p", "8080"],
    );
    bed.dockerd.run_web(
        IMAGE,
        "newsvc",
        &["--label", "ambassador.service=web2", "-p", "8080"],
    );
    let admin_pw = pw("ambassador-admin");
    let admin = [
        "--etcd",
        &urls,
        "--etcd-user",
        "ambassador-admin",
        "--etcd-password-file",
        &admin_pw,
    ];
    let ls = || -> serde_json::Value {
        let mut args = vec!["endpoint", "ls", "--json"];
        args.extend(admin);
        serde_json::from_str(&ambassador_ok(fwd, &args)).unwrap()
    };
    let registered = wait_until(Duration::from_secs(15), || {
        let eps = ls();
        let mine = |svc: &str| {
            eps.as_array()
                .unwrap()
                .iter()
                .any(|e| e["host"] == "h2" && e["service"] == svc && e["lease"] != 0)
        };
        mine("web") && mine("web2")
    });
    assert!(registered, "{}\n{}", ls(), reg.log());
    // Two reconciles (every 2 s) later: still not registered, and said once.
    std::thread::sleep(Duration::from_secs(5));
    let eps = ls();
    assert!(
        !eps.as_array().unwrap().iter().any(|e| e["service"] == "db"),
        "{eps}"
    );
    let log = reg.log();
    assert_eq!(
        log.matches("not registered: host \"h2\" may not serve \"db\"")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("trust=hosts"), "{log}");
    // web2 does not exist: its endpoint is registered, the service is not created (only an
    // admin does, in this mode), and the register says so once.
    let mut args = vec!["service", "ls", "--json"];
    args.extend(admin);
    let services = ambassador_ok(fwd, &args);
    assert!(!services.contains("\"db\""), "{services}");
    assert!(services.contains("\"web2\""), "{services}");
    assert!(services.contains("no service definition"), "{services}");
    assert_eq!(
        log.matches("only an admin creates services").count(),
        1,
        "{log}"
    );

    // An admin's change of etcd's users and roles (another host added) does not disturb the
    // register: it registers on, under the same lease (a token refused as older than the
    // change is renewed, not taken for a lost etcd).
    let mut add = vec![
        "auth",
        "add-host",
        "h9",
        "--address",
        "10.9.9.9/32",
        "--service",
        "web",
        "--credentials-dir",
        dir,
    ];
    add.extend(root);
    ambassador_ok(fwd, &add);
    bed.dockerd.run_web(
        IMAGE,
        "allowed2",
        &["--label", "ambassador.service=web", "-p", "8080"],
    );
    let both = wait_until(Duration::from_secs(15), || {
        ls().as_array()
            .unwrap()
            .iter()
            .filter(|e| e["host"] == "h2" && e["service"] == "web")
            .count()
            == 2
    });
    assert!(both, "{}\n{}", ls(), reg.log());
    let log = reg.log();
    assert_eq!(log.matches("etcd lease granted").count(), 1, "{log}");
}

#[test]
fn a_laptop_reaches_a_labelled_container_by_name_through_the_socks_door() {
    if !require_root("a_laptop_reaches_a_labelled_container_by_name_through_the_socks_door") {
        return;
    }
    // The seed thesis' closing experiment: the provider's register publishes the container at
    // its start; a user's browser, on a host running no ambassador, reaches its web page by
    // name through a SOCKS proxy that resolves names from those records.
    let bed = Bed::new();
    let _reg = bed.register();
    bed.dockerd.run_web(
        IMAGE,
        "site1",
        &["--label", "ambassador.service=site", "-p", "8080"],
    );
    let door = SocksDoor::start(
        &bed.topo.fwd,
        &bed.etcd.urls(),
        "0.0.0.0:1080",
        "10.200.0.0/24",
        &[],
    );
    let (client, at) = (&bed.topo.client, "10.200.0.1:1080");
    let url = "http://site.ambassador.internal:8080/";
    let reached = wait_until(Duration::from_secs(10), || {
        curl_socks(client, at, url, &[]) == (0, "site1".into())
    });
    assert!(
        reached,
        "{:?}\n{}",
        curl_socks(client, at, url, &[]),
        door.proc.log()
    );
    // By the endpoint's name: the host's advertised address and the published port.
    let published = bed.dockerd.docker(&["port", "site1", "8080/tcp"]);
    let port = published
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let endpoint = format!("http://10-200-1-2.endpoints.ambassador.internal:{port}/");
    assert_eq!(curl_socks(client, at, &endpoint, &[]), (0, "site1".into()));

    // Debian's Chromium, as the user's browser: the page's DOM, and a screenshot.
    let shot = screenshot_path("socks-chromium.png");
    let dom = chromium_through_socks(client, at, url, &shot);
    assert!(dom.contains("<body>site1"), "{dom}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "no screenshot at {}", shot.display());
    eprintln!(
        "Chromium loaded {url} through the door; screenshot: {}",
        shot.display()
    );
    assert!(door.metric("ambassador_socks_connected_total", &[]) >= 4.0);
}
