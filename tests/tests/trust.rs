//! The trust model (README, "Trust model") on a real etcd with authentication on, set up by
//! `ambassador auth`: etcd refuses what a credential may not write, and every daemon refuses
//! what a host's record or the VIP ranges do not allow, in the `tc` and `sock` datapaths.

use std::{path::Path, time::Duration};

use ambassador_tests::*;

const PROBE: &str = env!("CARGO_BIN_EXE_amb-probe");
const WEB: &str = "10.96.0.10:80";

/// A credential: the flags that present it.
#[derive(Clone)]
struct Cred(Vec<String>);

impl Cred {
    fn password(dir: &Path, user: &str) -> Self {
        Self(vec![
            "--etcd-user".into(),
            user.into(),
            "--etcd-password-file".into(),
            dir.join(format!("{user}.password")).display().to_string(),
        ])
    }

    fn cert(certs: &Certs, name: &str) -> Self {
        Self(vec![
            "--etcd-cacert".into(),
            certs.path("ca.crt"),
            "--etcd-cert".into(),
            certs.path(&format!("{name}.crt")),
            "--etcd-key".into(),
            certs.path(&format!("{name}.key")),
        ])
    }

    fn none() -> Self {
        Self(vec![])
    }
}

/// `ARGS --etcd URL CRED`.
fn with_cred<'a>(url: &'a str, cred: &'a Cred, args: &[&'a str]) -> Vec<&'a str> {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--etcd", url]);
    full.extend(cred.0.iter().map(String::as_str));
    full
}

/// `ambassador ARGS --etcd URL CRED` in `ns`.
fn amb(ns: &NetNs, url: &str, cred: &Cred, args: &[&str]) -> std::process::Output {
    ambassador_in(ns, &with_cred(url, cred, args))
}

/// The same, its output; panics unless it succeeds.
fn ok(ns: &NetNs, url: &str, cred: &Cred, args: &[&str]) -> String {
    ambassador_ok(ns, &with_cred(url, cred, args))
}

/// `auth add-host HOST --address NET --service SERVICE CREDS` as `root`; its output.
fn add_host(
    ns: &NetNs,
    url: &str,
    root: &Cred,
    host: &str,
    net: &str,
    service: &str,
    creds: &[&str],
) -> String {
    let mut args = vec![
        "auth",
        "add-host",
        host,
        "--address",
        net,
        "--service",
        service,
    ];
    args.extend_from_slice(creds);
    ok(ns, url, root, &args)
}

/// Asserts that etcd refused the command, naming the key and the user.
fn refused(ns: &NetNs, url: &str, cred: &Cred, args: &[&str], key: &str, user: &str) {
    let out = amb(ns, url, cred, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{args:?}: {err}");
    assert!(
        err.contains("etcd refused") && err.contains(key) && err.contains(user),
        "{args:?} should be refused on {key} for {user}: {err}"
    );
}

/// What every credential may not do, with password auth: `auth init` and `auth add-host`
/// create the users; the host, reader and no credential are refused by etcd itself.
#[test]
fn auth_confines_each_credential_to_its_own_keys() {
    if !require_root("auth_confines_each_credential_to_its_own_keys") {
        return;
    }
    let ns = NetNs::new("tr");
    let etcd = Etcd::single(&ns);
    let url = etcd.urls();
    let creds = temp_dir("creds");
    let dir = creds.path().to_str().unwrap();
    let init = ok(
        &ns,
        &url,
        &Cred::none(),
        &["auth", "init", "--credentials-dir", dir],
    );
    assert!(init.contains("created user ambassador-admin"), "{init}");
    assert!(init.contains("etcd authentication: enabled"), "{init}");
    let root = Cred::password(creds.path(), "root");
    // Idempotent, as root: everything is kept, no password changes.
    let admin_pw = std::fs::read_to_string(creds.path().join("ambassador-admin.password")).unwrap();
    let again = ok(
        &ns,
        &url,
        &root,
        &["auth", "init", "--credentials-dir", dir],
    );
    assert!(
        again.contains("kept user ambassador-admin and its password"),
        "{again}"
    );
    assert_eq!(
        std::fs::read_to_string(creds.path().join("ambassador-admin.password")).unwrap(),
        admin_pw
    );
    for (host, net) in [("h2", "10.0.2.0/24"), ("h3", "10.0.3.0/24")] {
        let out = add_host(
            &ns,
            &url,
            &root,
            host,
            net,
            "db",
            &["--credentials-dir", dir],
        );
        assert!(out.contains(&format!("ambassador-host-{host}")), "{out}");
    }
    let admin = Cred::password(creds.path(), "ambassador-admin");
    let h2 = Cred::password(creds.path(), "ambassador-host-h2");
    let reader = Cred::password(creds.path(), "ambassador-reader");
    ok(
        &ns,
        &url,
        &admin,
        &["service", "set", "db", "--port", "6379"],
    );

    let h2u = "ambassador-host-h2";
    // A host writes its own corner, and nothing else.
    ok(
        &ns,
        &url,
        &h2,
        &[
            "endpoint",
            "add",
            "db",
            "10.0.2.5:6379",
            "--host",
            "h2",
            "--ttl",
            "30",
        ],
    );
    let p = "/ambassador/v1";
    refused(
        &ns,
        &url,
        &h2,
        &["endpoint", "add", "db", "10.0.2.5:6379", "--host", "h3"],
        &format!("{p}/hosts/h3/endpoints/db/"),
        h2u,
    );
    refused(
        &ns,
        &url,
        &h2,
        &["endpoint", "add", "db", "10.0.2.5:6379"],
        &format!("{p}/endpoints/db/"),
        h2u,
    );
    refused(
        &ns,
        &url,
        &h2,
        &["service", "set", "db", "--frontend", "10.96.0.99:1"],
        &format!("{p}/services/db"),
        h2u,
    );
    refused(
        &ns,
        &url,
        &h2,
        &["service", "set", "evil", "--port", "80"],
        &format!("{p}/services/evil"),
        h2u,
    );
    refused(
        &ns,
        &url,
        &h2,
        &["vip", "range", "10.0.0.0/8"],
        &format!("{p}/settings/vip-range"),
        h2u,
    );
    refused(
        &ns,
        &url,
        &h2,
        &[
            "auth",
            "add-host",
            "h2",
            "--address",
            "0.0.0.0/0",
            "--service",
            "*",
            "--credentials-dir",
            dir,
        ],
        "role",
        h2u,
    );
    // A reader reads, and writes nothing.
    let env = ok(&ns, &url, &reader, &["env", "db"]);
    assert!(env.contains("DB_PORT=tcp://10.96.0.1:6379"), "{env}");
    let ls = ok(&ns, &url, &reader, &["endpoint", "ls", "db"]);
    assert!(ls.contains("10.0.2.5:6379") && ls.contains("h2"), "{ls}");
    let ru = "ambassador-reader";
    refused(
        &ns,
        &url,
        &reader,
        &["endpoint", "add", "db", "10.0.2.6:6379", "--host", "h2"],
        &format!("{p}/hosts/h2/endpoints/db/"),
        ru,
    );
    refused(
        &ns,
        &url,
        &reader,
        &["service", "rm", "db"],
        &format!("{p}/services/db"),
        ru,
    );
    refused(
        &ns,
        &url,
        &reader,
        &["vip", "range", "10.0.0.0/8"],
        &format!("{p}/settings/vip-range"),
        ru,
    );
    // The SOCKS door needs nothing more than the reader: it only follows the registry.
    let read_only: Vec<&str> = reader.0.iter().map(String::as_str).collect();
    let door = SocksDoor::start(&ns, &url, "127.0.0.1:1080", "127.0.0.0/8", &read_only);
    let log = door.proc.log();
    assert!(log.contains("services=1"), "{log}");
    assert!(!log.contains("permission denied"), "{log}");
    // No credential: etcd says authentication is on.
    let out = amb(&ns, &url, &Cred::none(), &["service", "ls"]);
    assert_eq!(out.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication on"));
}

/// The same with client certificates: users without passwords, each its certificate's CN.
#[test]
fn certificate_users_are_confined_like_password_users() {
    if !require_root("certificate_users_are_confined_like_password_users") {
        return;
    }
    let ns = NetNs::new("tc");
    let certs = Certs::new();
    let etcd = Etcd::single_tls(&ns, &certs);
    let url = etcd.urls();
    let root = Cred::cert(&certs, "client"); // CN root
    let init = ok(&ns, &url, &root, &["auth", "init", "--cert-auth"]);
    assert!(
        init.contains("created user ambassador-reader (no password"),
        "{init}"
    );
    add_host(
        &ns,
        &url,
        &root,
        "h2",
        "10.0.2.0/24",
        "db*",
        &["--cert-auth"],
    );
    for user in [
        "ambassador-admin",
        "ambassador-host-h2",
        "ambassador-reader",
    ] {
        certs.client(user, user);
    }
    let admin = Cred::cert(&certs, "ambassador-admin");
    let h2 = Cred::cert(&certs, "ambassador-host-h2");
    let reader = Cred::cert(&certs, "ambassador-reader");
    ok(
        &ns,
        &url,
        &admin,
        &["service", "set", "db", "--port", "6379"],
    );
    ok(
        &ns,
        &url,
        &h2,
        &["endpoint", "add", "db", "10.0.2.5:6379", "--host", "h2"],
    );
    let who = "client certificate";
    refused(
        &ns,
        &url,
        &h2,
        &["endpoint", "add", "db", "10.0.2.5:6379", "--host", "h3"],
        "/ambassador/v1/hosts/h3/",
        who,
    );
    refused(
        &ns,
        &url,
        &h2,
        &["service", "set", "db2", "--frontend", "10.96.0.99:1"],
        "/ambassador/v1/services/db2",
        who,
    );
    refused(
        &ns,
        &url,
        &reader,
        &["endpoint", "add", "db", "10.0.2.6:6379", "--host", "h2"],
        "/ambassador/v1/hosts/h2/",
        who,
    );
    assert!(ok(&ns, &url, &reader, &["service", "ls"]).contains("db"));
}

/// Every daemon checks again what it applies, with a read-only credential: a frontend outside
/// the VIP ranges is never translated by `tc` or `sock`; a host's endpoint outside its record
/// is refused and the rest of the service works; a VIP range change says what it does.
#[test]
fn daemons_refuse_foreign_frontends_and_endpoints_outside_their_hosts_record() {
    if !require_root("daemons_refuse_foreign_frontends_and_endpoints_outside_their_hosts_record") {
        return;
    }
    let topo = Topology::new(3);
    let _servers = topo.greeters(8080);
    let etcd = Etcd::single(&topo.fwd);
    let url = etcd.urls();
    let creds = temp_dir("creds");
    let dir = creds.path().to_str().unwrap();
    let fwd = &topo.fwd;
    ok(
        fwd,
        &url,
        &Cred::none(),
        &["auth", "init", "--credentials-dir", dir],
    );
    let root = Cred::password(creds.path(), "root");
    // h2 may serve web from backend 1's subnet; h3 may serve only api.
    add_host(
        fwd,
        &url,
        &root,
        "h2",
        "10.200.1.0/24",
        "web",
        &["--credentials-dir", dir],
    );
    add_host(
        fwd,
        &url,
        &root,
        "h3",
        "10.200.3.0/24",
        "api",
        &["--credentials-dir", dir],
    );
    let admin = Cred::password(creds.path(), "ambassador-admin");
    let h2 = Cred::password(creds.path(), "ambassador-host-h2");
    let h3 = Cred::password(creds.path(), "ambassador-host-h3");
    let b = |i| Topology::backend_addr(i, 8080);
    ok(
        fwd,
        &url,
        &admin,
        &["service", "set", "web", "--frontend", WEB],
    );
    // A hostile (or mistaken) service at backend 3's real address, pointing at backend 1.
    let bank = b(3);
    let note = ok(
        fwd,
        &url,
        &admin,
        &["service", "set", "bank", "--frontend", &bank],
    );
    assert!(note.contains("outside the VIP range"), "{note}");
    ok(fwd, &url, &admin, &["endpoint", "add", "bank", &b(1)]);
    // An allocated service, which outlives a range change.
    ok(
        fwd,
        &url,
        &admin,
        &["service", "set", "alloc", "--port", "80"],
    );
    ok(fwd, &url, &admin, &["endpoint", "add", "alloc", &b(1)]);
    ok(
        fwd,
        &url,
        &h2,
        &["endpoint", "add", "web", &b(1), "--host", "h2"],
    );
    ok(
        fwd,
        &url,
        &h2,
        &["endpoint", "add", "web", &b(2), "--host", "h2"],
    ); // outside h2's addresses
    ok(
        fwd,
        &url,
        &h3,
        &["endpoint", "add", "web", &b(3), "--host", "h3"],
    ); // a service h3 may not serve

    let cg = Cgroup::new();
    let pin = PinDir::new();
    let reader = Cred::password(creds.path(), "ambassador-reader");
    let mut extra = vec!["--datapath", "tc,sock", "--cgroup-path", cg.arg()];
    extra.extend(reader.0.iter().map(String::as_str));
    let mut d = Daemon::run_etcd(fwd, "c0", &url, &pin.path, &extra);
    d.wait_ready();
    let settled = wait_until(Duration::from_secs(10), || {
        let c = &status(&pin.path)["control_plane"];
        c["refused_frontends"] == 1 && c["refused_host_endpoints"] == 2
    });
    let st = status(&pin.path);
    assert!(settled, "{st}\n{}", d.log());
    assert_eq!(st["control_plane"]["trust"], "hosts", "{st}");
    assert_eq!(active_backends(&pin.path, "web"), [b(1)], "{}", d.log());
    assert!(service_status(&pin.path, "bank").is_none(), "{st}");
    let log = d.log();
    assert!(log.contains("frontend 10.200.3.2:8080 refused"), "{log}");
    assert!(log.contains("may not advertise 10.200.2.2"), "{log}");
    assert!(log.contains("\"h3\" may not serve \"web\""), "{log}");

    // tc: a client's packets to the foreign frontend reach the real machine there.
    for _ in 0..4 {
        assert_eq!(tcp_connect(&topo.client, &bank).expect("bank").1, "b3");
        assert_eq!(tcp_connect(&topo.client, WEB).expect("web").1, "b1");
    }
    // sock: so do the sockets of a process in the covered cgroup.
    let idents = |addr: &str| -> Vec<String> {
        let out = cg.run(fwd, PROBE, &["tcp-idents", addr, "4", "0"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(idents(&bank), vec!["ok b3"; 4]);
    assert_eq!(idents(WEB), vec!["ok b1"; 4]);

    // A range change that would drop web (set by hand) is refused, and says so; forced, web
    // is refused everywhere and alloc (an allocation) stays; set back, web returns.
    let out = amb(fwd, &url, &admin, &["vip", "range", "10.97.0.0/16"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web (10.96.0.10:80)"));
    let forced = ok(
        fwd,
        &url,
        &admin,
        &["vip", "range", "10.97.0.0/16", "--force"],
    );
    assert!(
        forced.contains("service web (10.96.0.10:80) is now outside the range"),
        "{forced}"
    );
    assert!(wait_until(Duration::from_secs(10), || service_status(
        &pin.path, "web"
    )
    .is_none()));
    assert_eq!(status(&pin.path)["control_plane"]["refused_frontends"], 2);
    assert_eq!(active_backends(&pin.path, "alloc"), [b(1)]);
    let back = ok(fwd, &url, &admin, &["vip", "range", "10.96.0.0/12"]);
    assert!(
        back.contains("service web (10.96.0.10:80) is now inside the range"),
        "{back}"
    );
    assert!(wait_until(Duration::from_secs(10), || active_backends(
        &pin.path, "web"
    ) == [b(1)]));
    assert_eq!(tcp_connect(&topo.client, WEB).expect("web").1, "b1");

    // The host record widened by the admin: h2's second endpoint applies.
    add_host(
        fwd,
        &url,
        &root,
        "h2",
        "10.200.0.0/16",
        "web",
        &["--credentials-dir", dir],
    );
    assert!(wait_until(Duration::from_secs(10), || active_backends(
        &pin.path, "web"
    )
    .len()
        == 2));
    let metrics_page = status(&pin.path);
    assert_eq!(
        metrics_page["control_plane"]["refused_host_endpoints"], 1,
        "{metrics_page}"
    );
}

/// A local configuration file is trusted (any frontend), except at one of the host's own
/// addresses: that would capture the host's own services.
#[test]
fn a_configuration_file_may_not_capture_the_hosts_own_addresses() {
    if !require_root("a_configuration_file_may_not_capture_the_hosts_own_addresses") {
        return;
    }
    let topo = Topology::new(2);
    let _servers = topo.greeters(8080);
    let b1 = Topology::backend_addr(1, 8080);
    // b2's real address is not this host's: a file may redirect it. 10.200.0.1 is this
    // host's own (c0).
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"elsewhere\"\nfrontend = \"{}\"\nendpoints = [\"{b1}\"]\n\n\
         [[service]]\nname = \"mine\"\nfrontend = \"10.200.0.1:8080\"\nendpoints = [\"{b1}\"]\n",
        Topology::backend_addr(2, 8080)
    ));
    let pin = PinDir::new();
    let mut d = Daemon::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, &[]);
    d.wait_ready();
    let st = status(&pin.path);
    assert_eq!(st["control_plane"]["trust"], "local", "{st}");
    assert_eq!(st["control_plane"]["refused_frontends"], 1, "{st}");
    assert!(service_status(&pin.path, "mine").is_none(), "{st}");
    assert!(
        d.log().contains("one of this host's own addresses"),
        "{}",
        d.log()
    );
    let elsewhere = Topology::backend_addr(2, 8080);
    assert_eq!(
        tcp_connect(&topo.client, &elsewhere).expect("elsewhere").1,
        "b1"
    );
}

/// Changes of users and roles on a three-member cluster while other commands write: etcd
/// refuses a write stamped with an auth revision that a change overtook before the write's
/// turn in the log ("revision of auth store is old"), which happens whenever an admin changes
/// users as hosts write, and, with several members, even to the admin's own next write (a
/// lagging member stamps it). One CI run of the testbed failed so. Four hosts are added at
/// once, each host's first write and an admin write right behind its own change: every
/// command renews its token and writes again instead of failing.
#[test]
fn auth_changes_on_a_cluster_never_fail_a_write() {
    if !require_root("auth_changes_on_a_cluster_never_fail_a_write") {
        return;
    }
    let ns = NetNs::new("tc");
    let etcd = Etcd::cluster(&ns, 3);
    let url = etcd.urls();
    let creds = temp_dir("creds");
    let dir = creds.path().to_str().unwrap();
    ok(
        &ns,
        &url,
        &Cred::none(),
        &["auth", "init", "--credentials-dir", dir],
    );
    let root = Cred::password(creds.path(), "root");
    let admin = Cred::password(creds.path(), "ambassador-admin");
    std::thread::scope(|s| {
        for i in 0..4 {
            let (ns, url, root, admin, creds) = (&ns, &url, &root, &admin, &creds);
            s.spawn(move || {
                for round in 0..3 {
                    let host = format!("h{i}");
                    let net = format!("10.0.{i}.0/24");
                    let out = add_host(
                        ns,
                        url,
                        root,
                        &host,
                        &net,
                        "db",
                        &["--credentials-dir", dir],
                    );
                    assert!(out.contains("host record:"), "{out}");
                    let own = Cred::password(creds.path(), &format!("ambassador-host-{host}"));
                    let addr = format!("10.0.{i}.5:6379");
                    ok(
                        ns,
                        url,
                        &own,
                        &["endpoint", "add", "db", &addr, "--host", &host],
                    );
                    let svc = format!("s{i}-{round}");
                    ok(ns, url, admin, &["service", "set", &svc, "--port", "80"]);
                }
            });
        }
    });
    let ls = ok(&ns, &url, &admin, &["endpoint", "ls", "db"]);
    assert_eq!(ls.matches(":6379").count(), 4, "{ls}");
}
