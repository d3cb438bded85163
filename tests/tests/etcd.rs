//! The etcd control plane end to end, with Debian's etcd-server started by the tests inside
//! the forwarding host's namespace: the operator commands write the v1 contract, the daemon
//! follows it, and the datapath forwards accordingly.

use std::time::{Duration, Instant};

use ambassador_tests::*;

const VIP: &str = "10.96.0.10:80";

struct Bed {
    topo: Topology,
    etcd: Etcd,
    pin: PinDir,
    _servers: Vec<TcpServer>,
}

impl Bed {
    fn new(backends: usize, cluster: usize) -> Self {
        let topo = Topology::new(backends);
        let etcd = if cluster == 1 {
            Etcd::single(&topo.fwd)
        } else {
            Etcd::cluster(&topo.fwd, cluster)
        };
        let servers = (1..=backends)
            .map(|i| {
                TcpServer::start(
                    &topo.backends[i - 1],
                    &Topology::backend_addr(i, 8080),
                    &format!("b{i}"),
                )
            })
            .collect();
        Self {
            topo,
            etcd,
            pin: PinDir::new(),
            _servers: servers,
        }
    }

    fn daemon(&self) -> Daemon {
        self.daemon_with(&[])
    }

    /// The daemon with `extra` arguments.
    fn daemon_with(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["--gc-interval", "1", "--metrics-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut d = Daemon::run_etcd(
            &self.topo.fwd,
            "c0",
            &self.etcd.urls(),
            &self.pin.path,
            &args,
        );
        d.wait_ready();
        d
    }

    /// The daemon's metrics page.
    fn metrics(&self, d: &Daemon) -> String {
        metrics::scrape(&self.topo.fwd.name, &d.log())
    }

    /// `ambassador ARGS --etcd URLS` in the forwarding host.
    fn ctl(&self, args: &[&str]) -> String {
        let urls = self.etcd.urls();
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&["--etcd", &urls]);
        ambassador_ok(&self.topo.fwd, &full)
    }

    /// Adds backend 2 with etcdctl, retried until the cluster accepts writes again, and waits
    /// until the daemon's maps hold it.
    fn add_b2_once_a_quorum_answers(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.etcd
                .ctl(&["put", "/ambassador/v1/endpoints/web/b2", &b(2)])
                .status
                .success()
        });
        assert!(ok, "the surviving members never accepted a write");
        self.wait_backends(&[b(1), b(2)]);
    }

    fn wait_backends(&self, want: &[String]) {
        let mut want = want.to_vec();
        want.sort();
        let ok = wait_until(Duration::from_secs(10), || {
            let mut have = active_backends(&self.pin.path, "web");
            have.sort();
            have == want
        });
        assert!(
            ok,
            "active backends never became {want:?}: {:?}",
            active_backends(&self.pin.path, "web")
        );
    }

    fn idents(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                tcp_connect(&self.topo.client, VIP)
                    .expect("connect through the VIP")
                    .1
            })
            .collect()
    }
}

fn b(i: usize) -> String {
    Topology::backend_addr(i, 8080)
}

#[test]
fn etcd_drives_forwarding_and_a_removed_endpoint_drains_gracefully() {
    if !require_root("etcd_drives_forwarding_and_a_removed_endpoint_drains_gracefully") {
        return;
    }
    let bed = Bed::new(2, 1);
    let d = bed.daemon();
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.wait_backends(&[b(1)]);
    let (mut long, ident) = tcp_connect(&bed.topo.client, VIP).unwrap();
    assert_eq!(ident, "b1");

    bed.ctl(&["endpoint", "add", "web", &b(2), "--id", "b2"]);
    bed.wait_backends(&[b(1), b(2)]);
    let seen = bed.idents(30);
    assert!(
        seen.contains(&"b1".into()) && seen.contains(&"b2".into()),
        "{seen:?}"
    );

    bed.ctl(&["endpoint", "rm", "web", "b1"]);
    bed.wait_backends(&[b(2)]);
    assert!(
        bed.idents(20).iter().all(|i| i == "b2"),
        "a new flow went to the removed endpoint"
    );
    assert_eq!(tcp_echo(&mut long, "still here").unwrap(), "still here");

    let ls: serde_json::Value =
        serde_json::from_str(&bed.ctl(&["service", "ls", "--json"])).unwrap();
    assert_eq!(ls[0]["name"], "web");
    assert_eq!(ls[0]["endpoints"].as_array().unwrap().len(), 1);
    let cp = &status(&bed.pin.path)["control_plane"];
    assert_eq!(cp["source"], "etcd");
    assert_eq!(cp["etcd_connected"], true);
    assert_eq!(cp["daemon_running"], true);

    // The metrics say what status says, and how long etcd changes took to reach the maps.
    let page = bed.metrics(&d);
    let web = service_status(&bed.pin.path, "web").unwrap();
    let svc = [("service", "web"), ("frontend", VIP), ("proto", "tcp")];
    for (metric, field) in [
        ("ambassador_service_new_flows_total", "new_flows"),
        ("ambassador_service_drops_total", "drops"),
    ] {
        assert_eq!(
            metrics::value(&page, metric, &svc),
            web["counters"][field].as_f64(),
            "{metric}:\n{page}"
        );
    }
    assert!(metrics::value(&page, "ambassador_service_packets_total", &svc).unwrap() >= 51.0 * 2.0);
    assert_eq!(
        metrics::value(&page, "ambassador_service_flows", &svc),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metrics::value(&page, "ambassador_etcd_connected", &[]),
        Some(1.0)
    );
    assert_eq!(
        metrics::value(&page, "ambassador_etcd_revision", &[]),
        cp["etcd_revision"].as_f64()
    );
    assert_eq!(
        metrics::value(
            &page,
            "ambassador_verdicts_total",
            &[("reason", "no_backend")]
        ),
        Some(0.0)
    );
    let lag = metrics::value(&page, "ambassador_control_plane_lag_seconds_count", &[]).unwrap();
    assert!(lag >= 4.0, "one observation per applied revision:\n{page}");
    assert!(metrics::value(&page, "ambassador_control_plane_lag_seconds_sum", &[]).unwrap() > 0.0);
    assert_eq!(
        metrics::get(&bed.topo.fwd.name, metrics::served_at(&d.log()), "/nope").0,
        "HTTP/1.1 404 Not Found"
    );

    // Removing the service removes its frontend.
    bed.ctl(&["service", "rm", "web", "--endpoints"]);
    assert!(wait_until(Duration::from_secs(10), || service_status(
        &bed.pin.path,
        "web"
    )
    .is_none()));
}

#[test]
fn malformed_and_hostile_values_are_skipped_and_counted_without_harming_other_services() {
    if !require_root(
        "malformed_and_hostile_values_are_skipped_and_counted_without_harming_other_services",
    ) {
        return;
    }
    let bed = Bed::new(2, 1);
    let d = bed.daemon();
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.wait_backends(&[b(1)]);

    let huge = "9".repeat(5000);
    let bad: [(&str, &str); 6] = [
        ("/ambassador/v1/services/broken", "{not json"),
        (
            "/ambassador/v1/services/Upper",
            r#"{"frontend":"10.96.0.20:80"}"#,
        ),
        ("/ambassador/v1/endpoints/web/port-zero", "10.200.2.2:0"),
        (
            "/ambassador/v1/endpoints/web/negative",
            r#"{"addr":"10.200.2.2:8080","weight":-3}"#,
        ),
        ("/ambassador/v1/endpoints/web/huge", &huge),
        ("/ambassador/v1/endpoints/web/scoped", "[fe80::1%2]:8080"),
    ];
    for (k, v) in bad {
        let out = bed.etcd.ctl(&["put", k, v]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A second service claiming web's frontend is left out (web keeps it: first by name).
    bed.ctl(&["service", "set", "zzz", "--frontend", VIP]);
    // Good changes after the garbage still apply: the watch goes on.
    bed.ctl(&["endpoint", "add", "web", &b(2), "--id", "b2"]);
    bed.wait_backends(&[b(1), b(2)]);
    let seen = bed.idents(30);
    assert!(
        seen.contains(&"b1".into()) && seen.contains(&"b2".into()),
        "{seen:?}"
    );

    let cp = &status(&bed.pin.path)["control_plane"];
    assert_eq!(cp["malformed"], 6, "{cp}");
    assert_eq!(cp["conflicts"], 1, "{cp}");
    for (k, _) in bad {
        assert!(d.log().contains(k), "no warning names {k}:\n{}", d.log());
    }
    // Each malformed value is warned about once, even when listed again after a reconnect.
    assert_eq!(
        d.log()
            .matches("/ambassador/v1/endpoints/web/port-zero")
            .count(),
        1,
        "{}",
        d.log()
    );
    // The operator sees them too.
    let ls = bed.ctl(&["endpoint", "ls", "web"]);
    assert_eq!(ls.matches("(malformed)").count(), 4, "{ls}");
}

#[test]
fn forwarding_survives_an_etcd_outage_and_a_daemon_restart_during_it_then_catches_up() {
    if !require_root(
        "forwarding_survives_an_etcd_outage_and_a_daemon_restart_during_it_then_catches_up",
    ) {
        return;
    }
    let mut bed = Bed::new(2, 1);
    let mut d = bed.daemon();
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.wait_backends(&[b(1)]);
    let (mut long, _) = tcp_connect(&bed.topo.client, VIP).unwrap();

    bed.etcd.members[0].kill();
    assert!(
        wait_until(Duration::from_secs(15), || status(&bed.pin.path)
            ["control_plane"]["etcd_connected"]
            == false),
        "status never noticed the outage:\n{}",
        d.log()
    );
    let text = String::from_utf8_lossy(
        &ambassador(&["status", "--pin-path", bed.pin.path.to_str().unwrap()]).stdout,
    )
    .into_owned();
    assert!(text.contains("etcd UNREACHABLE"), "{text}");
    let page = bed.metrics(&d);
    assert_eq!(
        metrics::value(&page, "ambassador_etcd_connected", &[]),
        Some(0.0),
        "{page}"
    );
    assert!(bed.idents(10).iter().all(|i| i == "b1"));
    assert_eq!(
        tcp_echo(&mut long, "during the outage").unwrap(),
        "during the outage"
    );

    // A daemon restarted while etcd is away adopts the pinned state and forwards with it.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(0));
    let _d2 = bed.daemon();
    assert!(bed.idents(10).iter().all(|i| i == "b1"));

    bed.etcd.members[0].start();
    bed.etcd.wait_healthy(Duration::from_secs(15));
    assert!(
        wait_until(Duration::from_secs(15), || status(&bed.pin.path)
            ["control_plane"]["etcd_connected"]
            == true),
        "the daemon never reconnected"
    );
    bed.ctl(&["endpoint", "add", "web", &b(2), "--id", "b2"]);
    bed.wait_backends(&[b(1), b(2)]);
}

#[test]
fn a_three_member_cluster_losing_its_leader_keeps_the_control_plane_working() {
    if !require_root("a_three_member_cluster_losing_its_leader_keeps_the_control_plane_working") {
        return;
    }
    let mut bed = Bed::new(2, 3);
    let d = bed.daemon();
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.wait_backends(&[b(1)]);

    let traffic = traffic::Traffic::start(&bed.topo.client, VIP);
    traffic.wait_more(20);
    let leader = bed.etcd.leader();
    bed.etcd.members[leader].kill();
    let killed = Instant::now();
    // Writes resume once the survivors elect a leader; the daemon (following one of the
    // three, the next if its own dies) follows them.
    bed.add_b2_once_a_quorum_answers();
    let degraded = killed.elapsed();
    let seen = bed.idents(30);
    assert!(seen.contains(&"b2".into()), "{seen:?}\n{}", d.log());
    traffic.wait_more(20);
    let outcome = traffic.finish();
    eprintln!(
        "leader killed -> a write accepted and forwarded to again after {degraded:?}; traffic: {outcome:?}"
    );
    outcome.assert_nothing_lost();
}

/// The members the daemon listed from, in order, from its log.
fn listed_from(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("etcd: listed"))
        .filter_map(|l| l.split("member=").nth(1))
        .map(|m| m.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

/// The daemon's TCP connections to etcd's client ports, established now (`ss` in its namespace).
fn etcd_connections(ns: &NetNs, pid: i32, members: &[String]) -> usize {
    let out = ns.exec(&["ss", "-tnpH", "state", "established"]);
    out.lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter(|l| {
            members
                .iter()
                .any(|m| l.contains(m.trim_start_matches("http://")))
        })
        .count()
}

#[test]
fn a_daemon_given_three_members_follows_one_and_moves_on_when_it_dies() {
    if !require_root("a_daemon_given_three_members_follows_one_and_moves_on_when_it_dies") {
        return;
    }
    let mut bed = Bed::new(2, 3);
    let mut d = bed.daemon();
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.wait_backends(&[b(1)]);
    let urls: Vec<String> = bed.etcd.members.iter().map(|m| m.url.clone()).collect();
    let first = listed_from(&d.log());
    assert_eq!(first.len(), 1, "{}", d.log());
    assert!(urls.contains(&first[0]), "{first:?} not in {urls:?}");
    // One connection, to that member (a balancer over the three would hold three).
    assert_eq!(
        etcd_connections(&bed.topo.fwd, d.pid(), &urls),
        1,
        "{}",
        bed.topo.fwd.exec(&["ss", "-tnp"])
    );

    let followed = bed.etcd.members.iter().position(|m| m.url == first[0]);
    bed.etcd.members[followed.unwrap()].kill();
    d.wait_log("retrying http://", Duration::from_secs(15));
    bed.add_b2_once_a_quorum_answers();
    let listed = listed_from(&d.log());
    assert_eq!(listed.len(), 2, "{}", d.log());
    assert_ne!(listed[1], first[0], "{}", d.log());
    assert!(urls.contains(&listed[1]), "{listed:?}");
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    if !require_root("etcd_over_tls_with_client_certificates") {
        return;
    }
    let topo = Topology::new(1);
    let _b1 = TcpServer::start(&topo.backends[0], &b(1), "b1");
    let certs = Certs::new();
    let etcd = Etcd::single_tls(&topo.fwd, &certs);
    let url = etcd.urls();
    assert!(url.starts_with("https://"));
    let (ca, cert, key) = (
        certs.path("ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let tls = [
        "--etcd",
        url.as_str(),
        "--etcd-cacert",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    let pin = PinDir::new();
    let mut args = vec![
        "run",
        "--iface",
        "c0",
        "--pin-path",
        pin.path.to_str().unwrap(),
    ];
    args.extend_from_slice(&tls);
    let mut d = Daemon::start(&topo.fwd, &args);
    d.wait_ready();

    let ctl = |cmd: &[&str]| {
        let mut full = cmd.to_vec();
        full.extend_from_slice(&tls);
        ambassador_ok(&topo.fwd, &full)
    };
    ctl(&["service", "set", "web", "--frontend", VIP]);
    ctl(&["endpoint", "add", "web", &b(1)]);
    assert!(
        wait_until(Duration::from_secs(10), || active_backends(
            &pin.path, "web"
        ) == [b(1)]),
        "{}",
        d.log()
    );
    assert_eq!(tcp_connect(&topo.client, VIP).unwrap().1, "b1");

    // Without a client certificate the server refuses; without the CA the client refuses.
    for partial in [&["--etcd-cacert", ca.as_str()][..], &[][..]] {
        let mut cmd = vec!["service", "ls", "--etcd", url.as_str()];
        cmd.extend_from_slice(partial);
        let out = ambassador_in(&topo.fwd, &cmd);
        assert_eq!(
            out.status.code(),
            Some(69),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("ambassador: etcd:"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn etcd_user_and_password_auth_and_the_password_never_shows() {
    if !require_root("etcd_user_and_password_auth_and_the_password_never_shows") {
        return;
    }
    const PASSWORD: &str = "Sup3r-Secret-pw";
    let bed = Bed::new(1, 1);
    for args in [
        &[
            "user",
            "add",
            &format!("root:{PASSWORD}"),
            "--interactive=false",
        ][..],
        &["auth", "enable"][..],
    ] {
        let out = bed.etcd.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let urls = bed.etcd.urls();
    let mut d = Daemon::start_env(
        &bed.topo.fwd,
        &[
            "run",
            "--iface",
            "c0",
            "--etcd",
            &urls,
            "--etcd-user",
            "root",
            "--pin-path",
            bed.pin.path.to_str().unwrap(),
        ],
        &[("AMBASSADOR_ETCD_PASSWORD", PASSWORD)],
    );
    d.wait_ready();
    let auth = [
        "--etcd",
        urls.as_str(),
        "--etcd-user",
        "root",
        "--etcd-password",
        PASSWORD,
    ];
    for cmd in [
        &["service", "set", "web", "--frontend", VIP][..],
        &["endpoint", "add", "web", &b(1)][..],
    ] {
        let mut full = cmd.to_vec();
        full.extend_from_slice(&auth);
        ambassador_ok(&bed.topo.fwd, &full);
    }
    bed.wait_backends(&[b(1)]);
    assert_eq!(tcp_connect(&bed.topo.client, VIP).unwrap().1, "b1");

    let out = ambassador_in(
        &bed.topo.fwd,
        &[
            "service",
            "ls",
            "--etcd",
            &urls,
            "--etcd-user",
            "root",
            "--etcd-password",
            "wrong",
        ],
    );
    // Refused by etcd's access control: EX_NOPERM, naming the user.
    assert_eq!(out.status.code(), Some(77));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(err.contains("etcd user \"root\""), "{err}");
    assert!(!err.contains("wrong"), "the password was echoed: {err}");
    assert!(
        !d.log().contains(PASSWORD),
        "the password appears in the daemon's log"
    );
    assert!(!status(&bed.pin.path).to_string().contains(PASSWORD));
}

#[test]
fn all_of_etcd_down_for_30_seconds_loses_no_connection_and_changes_flow_again_after() {
    if !require_root(
        "all_of_etcd_down_for_30_seconds_loses_no_connection_and_changes_flow_again_after",
    ) {
        return;
    }
    let mut bed = Bed::new(2, 1);
    let d = bed.daemon();
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.wait_backends(&[b(1)]);
    let traffic = traffic::Traffic::start(&bed.topo.client, VIP);
    traffic.wait_more(20);

    let down = Instant::now();
    bed.etcd.members[0].kill();
    assert!(
        wait_until(Duration::from_secs(15), || status(&bed.pin.path)
            ["control_plane"]["etcd_connected"]
            == false),
        "the outage was never noticed:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    let during = traffic.ok();
    assert!(during > 1000, "only {during} connections in 30 s");
    assert_eq!(
        traffic.failed(),
        0,
        "connections failed while etcd was away"
    );

    bed.etcd.members[0].start();
    let back = Instant::now();
    bed.etcd.wait_healthy(Duration::from_secs(15));
    assert!(
        wait_until(Duration::from_secs(20), || status(&bed.pin.path)
            ["control_plane"]["etcd_connected"]
            == true),
        "the daemon never reconnected:\n{}",
        d.log()
    );
    let reconnected = back.elapsed();
    let changed = Instant::now();
    bed.ctl(&["endpoint", "add", "web", &b(2), "--id", "b2"]);
    bed.wait_backends(&[b(1), b(2)]);
    let applied = changed.elapsed();
    traffic.wait_more(50);
    let outcome = traffic.finish();
    outcome.assert_nothing_lost();
    eprintln!(
        "etcd down {:?}: {outcome:?}; etcd restarted -> daemon reconnected {reconnected:?}; first change after -> maps {applied:?}",
        back - down
    );
    let page = bed.metrics(&d);
    assert_eq!(
        metrics::value(&page, "ambassador_etcd_connected", &[]),
        Some(1.0)
    );
}

/// Writes `ops` in transactions of at most 128 operations; returns the last revision.
async fn write_all(c: &mut etcd_client::Client, ops: Vec<etcd_client::TxnOp>) -> i64 {
    let mut rev = 0;
    for chunk in ops.chunks(128) {
        let resp = c
            .txn(etcd_client::Txn::new().and_then(chunk.to_vec()))
            .await
            .expect("etcd txn");
        rev = resp.header().map_or(rev, |h| h.revision());
    }
    rev
}

#[test]
fn ten_thousand_services_churning_while_traffic_runs_lose_nothing_and_converge() {
    if !require_root("ten_thousand_services_churning_while_traffic_runs_lose_nothing_and_converge")
    {
        return;
    }
    use ambassador_user::core::contract::{endpoint_key, service_key};
    use etcd_client::TxnOp;
    const SERVICES: usize = 10_000;
    let bed = Bed::new(2, 1);
    // Beyond the default capacity (4,096 services).
    let d = bed.daemon_with(&[
        "--max-services",
        "16384",
        "--max-backends",
        "65536",
        "--max-slots",
        "131072",
    ]);
    bed.ctl(&["service", "set", "web", "--frontend", VIP]);
    bed.ctl(&["endpoint", "add", "web", &b(1), "--id", "b1"]);
    bed.ctl(&["endpoint", "add", "web", &b(2), "--id", "b2"]);
    bed.wait_backends(&[b(1), b(2)]);

    let name = |s: usize| format!("s{s}");
    let frontend = |s: usize| format!("10.98.{}.{}:80", s / 250, s % 250 + 1);
    let endpoint =
        |s: usize, gen: usize| format!("10.{}.{}.{}:8080", 100 + gen % 50, s / 250, s % 250 + 1);
    let service = move |s: usize| {
        TxnOp::put(
            service_key("/ambassador", &name(s)),
            format!("{{\"frontend\":\"{}\",\"proto\":\"tcp\"}}", frontend(s)),
            None,
        )
    };
    let url = bed.etcd.members[0].url.clone();
    let traffic = traffic::Traffic::start(&bed.topo.client, VIP);
    let churn_for = Duration::from_secs(20);
    let (rev, rounds) = bed.topo.fwd.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut c = etcd_client::Client::connect([url], None).await.unwrap();
                let mut ops = Vec::new();
                for s in 0..SERVICES {
                    ops.push(service(s));
                    ops.push(TxnOp::put(
                        endpoint_key("/ambassador", &name(s), "e"),
                        endpoint(s, 0),
                        None,
                    ));
                }
                write_all(&mut c, ops).await;
                // Churn: every round moves 100 services' endpoints, removes 20 services and
                // brings back the 20 removed the round before.
                let start = std::time::Instant::now();
                let mut round = 1;
                while start.elapsed() < churn_for {
                    let mut ops = Vec::new();
                    for k in 0..100 {
                        let s = (round * 389 + k * 97) % SERVICES;
                        ops.push(TxnOp::put(
                            endpoint_key("/ambassador", &name(s), "e"),
                            endpoint(s, round),
                            None,
                        ));
                    }
                    for k in 0..20 {
                        let gone = (round * 613 + k * 7) % SERVICES;
                        ops.push(TxnOp::delete(service_key("/ambassador", &name(gone)), None));
                        let back = ((round - 1) * 613 + k * 7) % SERVICES;
                        if round > 1 {
                            ops.push(service(back));
                        }
                    }
                    write_all(&mut c, ops).await;
                    round += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Bring back the last round's services: the end state is all of them.
                let last: Vec<TxnOp> = (0..20)
                    .map(|k| service(((round - 1) * 613 + k * 7) % SERVICES))
                    .collect();
                let rev = write_all(&mut c, last).await;
                (rev, round - 1)
            })
    });
    let converged = wait_until(Duration::from_secs(120), || {
        status(&bed.pin.path)["control_plane"]["etcd_revision"]
            .as_i64()
            .is_some_and(|r| r >= rev)
    });
    assert!(converged, "revision {rev} never applied:\n{}", d.log());
    traffic.wait_more(20);
    let outcome = traffic.finish();
    outcome.assert_nothing_lost();

    let st = status(&bed.pin.path);
    let services = st["services"].as_array().unwrap();
    assert_eq!(services.len(), SERVICES + 1, "every service installed once");
    for s in [0, 1, 4_999, SERVICES - 1] {
        let svc = services.iter().find(|v| v["name"] == name(s)).unwrap();
        assert_eq!(svc["frontend"], frontend(s));
        assert_eq!(
            svc["backends"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["state"] == "active")
                .count(),
            1,
            "{svc}"
        );
    }
    let page = bed.metrics(&d);
    let lag_count =
        metrics::value(&page, "ambassador_control_plane_lag_seconds_count", &[]).unwrap();
    let lag_sum = metrics::value(&page, "ambassador_control_plane_lag_seconds_sum", &[]).unwrap();
    eprintln!(
        "{rounds} churn rounds (100 endpoint moves + 20 service removals/returns each) over {} services: \
         {outcome:?}; {lag_count} revisions applied, mean lag {:.1} ms",
        SERVICES,
        lag_sum / lag_count * 1000.0
    );
    assert_eq!(st["control_plane"]["malformed"], 0);
}

#[test]
fn allocated_frontends_never_collide_and_are_answered_by_name() {
    if !require_root("allocated_frontends_never_collide_and_are_answered_by_name") {
        return;
    }
    let bed = Bed::new(1, 1);
    let _d = bed.daemon_with(&["--dns-listen", "10.200.0.1:53", "--dns-no-forward"]);
    let default = bed.ctl(&["vip", "range"]);
    assert_eq!(
        default,
        "10.96.0.0/12 (0 allocated)\nfd00:10:96::/112 (0 allocated)\n"
    );
    bed.ctl(&["vip", "range", "10.97.0.0/24"]);
    // A manual frontend inside the range: allocation must step over it.
    bed.ctl(&["service", "set", "web", "--frontend", "10.97.0.1:80"]);

    // 12 services allocated at once, and 4 allocators racing for the same name.
    let urls = bed.etcd.urls();
    std::thread::scope(|scope| {
        for i in 0..16 {
            let (bed, urls) = (&bed, &urls);
            scope.spawn(move || {
                let name = if i < 12 {
                    format!("s{i}")
                } else {
                    "same".into()
                };
                let args = ["service", "set", &name, "--port", "80", "--etcd", urls];
                ambassador_ok(&bed.topo.fwd, &args);
            });
        }
    });
    let services: serde_json::Value =
        serde_json::from_str(&bed.ctl(&["service", "ls", "--json"])).unwrap();
    let mut frontends: Vec<String> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frontend"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(frontends.len(), 14, "{services}");
    frontends.sort();
    frontends.dedup();
    assert_eq!(
        frontends.len(),
        14,
        "two services share a frontend: {services}"
    );
    let vips: serde_json::Value = serde_json::from_str(&bed.ctl(&["vip", "ls", "--json"])).unwrap();
    let vips = vips.as_object().unwrap();
    assert_eq!(
        vips.len(),
        13,
        "one allocation per allocated service: {vips:?}"
    );
    assert!(
        !vips.contains_key("10.97.0.1"),
        "the manual frontend was allocated: {vips:?}"
    );
    let ip_of = |name: &str| {
        vips.iter()
            .find(|(_, v)| v.as_str() == Some(name))
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| panic!("{name} has no allocation: {vips:?}"))
    };
    let s1 = ip_of("s1");

    // Reached by name, through the allocated frontend.
    bed.ctl(&["endpoint", "add", "s1", &Topology::backend_addr(1, 8080)]);
    let name = "s1.ambassador.internal";
    assert!(
        wait_until(Duration::from_secs(5), || {
            dig(&bed.topo.client, &["@10.200.0.1", "+short", name]).trim() == s1
        }),
        "{name} never answered {s1}"
    );
    let (_, ident) = tcp_connect(&bed.topo.client, &format!("{s1}:80")).unwrap();
    assert_eq!(ident, "b1");
    // Docker-link variables.
    let env = bed.ctl(&["env", "s1"]);
    assert!(env.contains(&format!("S1_PORT=tcp://{s1}:80\n")), "{env}");
    assert!(
        env.contains(&format!("S1_PORT_80_TCP_ADDR={s1}\n")),
        "{env}"
    );

    // An allocated address is not taken by hand.
    let out = ambassador_in(
        &bed.topo.fwd,
        &[
            "service",
            "set",
            "other",
            "--frontend",
            &format!("{s1}:81"),
            "--etcd",
            &urls,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is allocated to service s1"));
    // Removing a service frees its address, and the name goes.
    let rm = bed.ctl(&["service", "rm", "s1"]);
    assert!(rm.contains(&format!("{s1} free again")), "{rm}");
    assert!(!bed.ctl(&["vip", "ls"]).contains(&format!("{s1} ")));
    assert!(wait_until(Duration::from_secs(5), || {
        dig(&bed.topo.client, &["@10.200.0.1", name]).contains("NXDOMAIN")
    }));

    // A range that leaves web (set by hand) out is refused unless forced, and says so.
    let out = ambassador_in(
        &bed.topo.fwd,
        &["vip", "range", "10.98.0.0/30", "--etcd", &urls],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web (10.97.0.1:80)"));
    let forced = bed.ctl(&["vip", "range", "10.98.0.0/30", "--force"]);
    assert!(
        forced.contains("service web (10.97.0.1:80) is now outside the range"),
        "{forced}"
    );
    // An exhausted range says so.
    bed.ctl(&["service", "set", "x1", "--port", "80"]);
    bed.ctl(&["service", "set", "x2", "--port", "80"]);
    let out = ambassador_in(
        &bed.topo.fwd,
        &["service", "set", "x3", "--port", "80", "--etcd", &urls],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no free frontend address left in 10.98.0.0/30"),
        "{err}"
    );

    // IPv6 (for IPv6 backends): from the IPv6 range, answered as AAAA, reached through it.
    bed.topo.add_ipv6();
    let _b6 = TcpServer::start(
        &bed.topo.backends[0],
        &Topology::backend_addr6(1, 8080),
        "b1",
    );
    bed.ctl(&["vip", "range", "fd00:10:97::/120"]);
    let set = bed.ctl(&["service", "set", "web6", "--port", "8080", "--ipv6"]);
    assert_eq!(
        set,
        "service web6 -> [fd00:10:97::1]:8080/tcp (address allocated)\n"
    );
    bed.ctl(&["endpoint", "add", "web6", &Topology::backend_addr6(1, 8080)]);
    let name = "web6.ambassador.internal";
    assert!(
        wait_until(Duration::from_secs(5), || {
            dig(&bed.topo.client, &["@10.200.0.1", "+short", "AAAA", name]).trim()
                == "fd00:10:97::1"
        }),
        "{name} never answered fd00:10:97::1"
    );
    let (_, ident) = tcp_connect(&bed.topo.client, "[fd00:10:97::1]:8080").unwrap();
    assert_eq!(ident, "b1");
    let ranges = bed.ctl(&["vip", "range"]);
    assert!(
        ranges.contains("fd00:10:97::/120 (1 allocated)"),
        "{ranges}"
    );
    let out = ambassador_in(
        &bed.topo.fwd,
        &[
            "service",
            "set",
            "x4",
            "--frontend",
            "[fd00:10:97::1]:80",
            "--etcd",
            &urls,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is allocated to service web6"),
        "{out:?}"
    );
    // A service stays one family.
    let out = ambassador_in(
        &bed.topo.fwd,
        &["service", "set", "web6", "--port", "81", "--etcd", &urls],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("of the other family"),
        "{out:?}"
    );
}
