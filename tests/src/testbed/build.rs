//! Building a testbed, step by step: the network, each host's engine, its services (etcd,
//! `run`, `register`, with the provisioning script shared with the Vagrantfile) and the trust
//! model.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::{Testbed, DB_PORT, ETCD, HOSTS};
use crate::{image, sh, wait_until};

/// The switch, four hosts on it (h4 behind a NAT router, its public address forwarded).
pub(super) fn network(tb: &Testbed) {
    for n in ["sw", "nat", "h1", "h2", "h3", "h4"] {
        sh(&["ip", "netns", "add", &tb.ns(n)]);
        ip(&tb.ns(n), &["link", "set", "lo", "up"]);
    }
    let sw = tb.ns("sw");
    ip(&sw, &["link", "add", "br0", "type", "bridge"]);
    ip(&sw, &["link", "set", "br0", "up"]);
    for (n, addr) in [
        ("h1", "10.210.1.1/24"),
        ("h2", "10.210.1.2/24"),
        ("h3", "10.210.1.3/24"),
        ("nat", "10.210.1.254/24"),
    ] {
        let port = format!("p-{n}");
        ip(
            &tb.ns(n),
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw,
            ],
        );
        ip(&sw, &["link", "set", &port, "master", "br0", "up"]);
        ip(&tb.ns(n), &["addr", "add", addr, "dev", "eth0"]);
        ip(&tb.ns(n), &["link", "set", "eth0", "up"]);
    }
    let (nat, h4) = (tb.ns("nat"), tb.ns("h4"));
    ip(
        &nat,
        &[
            "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &h4,
        ],
    );
    ip(&nat, &["addr", "add", "10.210.4.1/24", "dev", "lan0"]);
    ip(&nat, &["link", "set", "lan0", "up"]);
    ip(&h4, &["addr", "add", "10.210.4.2/24", "dev", "eth0"]);
    ip(&h4, &["link", "set", "eth0", "up"]);
    ip(&h4, &["route", "add", "default", "via", "10.210.4.1"]);
    script(
        Some(&nat),
        "testbed-nat.sh",
        &[
            ("PUBLIC_IF", "eth0"),
            ("PRIVATE_NET", "10.210.4.0/24"),
            ("H4", "10.210.4.2"),
            ("PORTS", &format!("{DB_PORT} 2379 2380")),
        ],
    );
}

/// What `scripts/testbed-host.sh` needs for one host: its services' settings, and its etcd
/// member's.
pub(super) struct HostEnv {
    services: Vec<(&'static str, String)>,
    etcd: Vec<(&'static str, String)>,
}

/// Every host's settings (and makes each host's cgroup, which its `run` serves).
pub(super) fn host_envs(tb: &Testbed) -> Vec<HostEnv> {
    let cluster: Vec<String> = HOSTS
        .iter()
        .map(|h| format!("{}=http://{}:2380", h.name, h.advertise))
        .collect();
    let cluster = cluster.join(",");
    HOSTS
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let cgroup = tb.cgroup(h.name);
            std::fs::create_dir_all(&cgroup)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", cgroup.display()));
            let socket = tb.socket(h.name);
            let own = h.addr.split('/').next().expect("address").to_owned();
            let services = vec![
                // Both datapaths: the containers on docker0 (tc) and the processes of the
                // host's own cgroup (sock), through the compose file.
                ("DATAPATH", "tc,sock".to_owned()),
                ("CGROUP_PATH", cgroup.to_str().unwrap().to_owned()),
                (
                    "DOCKER_SOCK",
                    socket.trim_start_matches("unix://").to_owned(),
                ),
                ("DOCKER_HOST", socket),
                ("HOST_ID", h.name.to_owned()),
                ("ADVERTISE_IP", h.advertise.to_string()),
                ("ETCD", ETCD.to_owned()),
                ("TTL", tb.ttl.to_string()),
                ("PIN_DIR", tb.pin(h.name).to_str().unwrap().to_owned()),
                ("IFACE", "docker0".to_owned()),
                // The responder listens on docker0 (dockerd's --bip), where the host's
                // containers reach it with `docker run --dns`.
                ("DNS_LISTEN", format!("{}:53", docker0(i + 1))),
                // Every second, so reconciles certainly meet draining containers in the
                // scenario.
                ("RECONCILE", "1".to_owned()),
                ("LOG", "info,ambassador_user::register=debug".to_owned()),
            ];
            let etcd = vec![
                ("ETCD_SELF", own),
                ("ETCD_ADVERTISE", h.advertise.to_string()),
                ("ETCD_CLUSTER", cluster.clone()),
                ("ETCD_TOKEN", tb.prefix.clone()),
            ];
            HostEnv { services, etcd }
        })
        .collect()
}

/// Starts the etcd members (and nothing of ambassador yet) on every host, and waits for the
/// cluster to take a write.
pub(super) fn start_etcd(tb: &Testbed, envs: &[HostEnv]) {
    for env in envs {
        let mut vars = pairs(&env.services);
        vars.extend(pairs(&env.etcd));
        vars.push(("SKIP_AMBASSADOR", "1"));
        script(None, "testbed-host.sh", &vars);
    }
    let healthy = wait_until(Duration::from_secs(30), || {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", tb.ns("h1")))
            .args([
                "etcdctl",
                "--endpoints",
                ETCD,
                "--command-timeout=2s",
                "put",
                "/testbed",
                "up",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(healthy, "the etcd cluster did not form");
}

/// Starts `run` and `register` on every host, each with its own etcd identity, then the
/// client container on h1, and waits until every `run` answers.
pub(super) fn start_ambassador(tb: &Testbed, envs: &[HostEnv], bin: &Path) {
    let credentials = tb.credentials();
    for (env, (_, run_user, register_user)) in envs.iter().zip(tb.identities()) {
        let mut vars = pairs(&env.services);
        vars.extend([
            ("CREDENTIALS_DIR", credentials.to_str().unwrap()),
            ("RUN_ETCD_USER", run_user.as_str()),
            ("REGISTER_ETCD_USER", register_user.as_str()),
        ]);
        script(None, "testbed-host.sh", &vars);
    }
    let dns = docker0(1).to_string();
    tb.docker(
        "h1",
        &[
            "run",
            "-d",
            "--name",
            "client",
            "--dns",
            &dns,
            image::BUSYBOX,
        ],
    );
    let ready = wait_until(Duration::from_secs(20), || {
        HOSTS.iter().all(|h| {
            Command::new(bin)
                .args([
                    "status",
                    "--json",
                    "--pin-path",
                    tb.pin(h.name).to_str().unwrap(),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    });
    assert!(
        ready,
        "ambassador run did not come up on every host:\n{}",
        tb.docker("h1", &["logs", "ambassador-run"])
    );
}

/// Borrowed (name, value) pairs, as [`script`] takes them.
fn pairs<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Runs `scripts/NAME` (inside namespace `ns`, if given) with `env`: the provisioning shared
/// with the Vagrantfile.
fn script(ns: Option<&str>, name: &str, env: &[(&str, &str)]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "sh"]);
            c
        }
        None => Command::new("sh"),
    };
    let out = cmd.arg(&path).envs(env.iter().copied()).output().unwrap();
    assert!(
        out.status.success(),
        "{name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    sh(&full);
}

/// Sets the trust model up on the testbed's etcd with `bin`: `auth init`, then each host's
/// identity, allowed to advertise its own address (h4: its NAT's) for the service db.
pub(super) fn secure(tb: &Testbed, bin: &Path) {
    let creds = tb.credentials();
    let creds = creds.to_str().unwrap();
    let run = |args: &[&str], user: Option<&str>| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", tb.ns("h1")))
            .arg(bin)
            .args(args)
            .args(["--credentials-dir", creds, "--etcd", ETCD]);
        if let Some(user) = user {
            cmd.args(["--etcd-user", user, "--etcd-password-file"])
                .arg(tb.credentials().join(format!("{user}.password")));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "ambassador {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["auth", "init"], None);
    for h in &HOSTS {
        let addr = format!("{}/32", h.advertise);
        run(
            &[
                "auth",
                "add-host",
                h.name,
                "--address",
                &addr,
                "--service",
                "db",
            ],
            Some("root"),
        );
    }
}

/// The docker0 address of the `index`th host (1-based).
fn docker0(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, index as u8, 1)
}

pub(super) fn start_dockerd(tb: &Testbed, host: &str, index: usize) {
    let dir = tb.dir().join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
    // Detached on purpose: the testbed outlives `cargo xtask testbed up`; `down` stops it by the
    // pid in its pidfile.
    #[allow(
        clippy::zombie_processes,
        reason = "dockerd outlives this process; `down` stops it"
    )]
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", tb.ns(host)))
        .arg("/usr/sbin/dockerd")
        .arg(format!("--data-root={}/data", dir.display()))
        .arg(format!("--exec-root={}/exec", dir.display()))
        .arg(format!("--pidfile={}/docker.pid", dir.display()))
        .arg(format!("--host={}", tb.socket(host)))
        .arg("--storage-driver=overlay2")
        .arg(format!("--bip={}/24", docker0(index)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ok = wait_until(Duration::from_secs(30), || tb.docker_try(host, &["info"]));
    assert!(
        ok,
        "{host}: dockerd did not start; see {}/dockerd.log",
        dir.display()
    );
}
