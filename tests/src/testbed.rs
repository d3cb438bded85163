//! The multi-host testbed of the seed experiment, built from network namespaces:
//!
//! ```text
//!                 switch (bridge br0, 10.210.1.0/24)
//!      ┌───────────┬───────────┬───────────┬──────────────┐
//!   h1 .1       h2 .2       h3 .3       nat .254 (public) ─ NAT ─ 10.210.4.0/24: h4 .2
//!  client      backend     backend                                 backend "in another cloud"
//! ```
//!
//! Every host runs its own dockerd and an etcd member as a container (one 4-member cluster; h4's
//! peers reach it through its NAT's forwarded ports); every
//! host runs `ambassador run` (attached to its docker0, with the capabilities it needs) and
//! `ambassador register` as containers of the project's image. h4 is only reachable through the NAT's public address and
//! a forwarded port, and its register advertises exactly that.
//!
//! Everything is named after a prefix (namespaces, /var/tmp/PREFIX, /sys/fs/bpf/PREFIX-*), so
//! [`down`] finds and removes all of it even after a crash, and tests can run beside the demo.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{image, sh, wait_until};

/// The name clients use for the testbed's database service (its frontend address is
/// allocated by `service set db --port 6379`; the responder on each host's docker0 answers it).
pub const DB_NAME: &str = "db.ambassador.internal";
/// The database service's frontend port.
pub const DB_FRONTEND_PORT: u16 = 6379;
/// The host port every backend host publishes the database on (and the NAT forwards).
pub const DB_PORT: u16 = 16379;
/// Debian's Docker client.
const DOCKER: &str = "/usr/bin/docker";

/// One testbed host.
#[derive(Clone, Copy, Debug)]
pub struct Host {
    /// Its name (h1..h4).
    pub name: &'static str,
    /// Its own address and prefix length.
    pub addr: &'static str,
    /// The address other hosts reach it at (its own, or its NAT's public address).
    pub advertise: Ipv4Addr,
    /// Its default gateway, if any.
    pub gateway: Option<&'static str>,
}

/// The hosts.
pub const HOSTS: [Host; 4] = [
    Host {
        name: "h1",
        addr: "10.210.1.1/24",
        advertise: Ipv4Addr::new(10, 210, 1, 1),
        gateway: None,
    },
    Host {
        name: "h2",
        addr: "10.210.1.2/24",
        advertise: Ipv4Addr::new(10, 210, 1, 2),
        gateway: None,
    },
    Host {
        name: "h3",
        addr: "10.210.1.3/24",
        advertise: Ipv4Addr::new(10, 210, 1, 3),
        gateway: None,
    },
    Host {
        name: "h4",
        addr: "10.210.4.2/24",
        advertise: Ipv4Addr::new(10, 210, 1, 254),
        gateway: Some("10.210.4.1"),
    },
];

/// The etcd user of every host's `ambassador run`: it only reads.
const READER: &str = "ambassador-reader";

/// The etcd members' client URLs (etcd runs on h1-h3).
pub const ETCD: &str = "http://10.210.1.1:2379,http://10.210.1.2:2379,http://10.210.1.3:2379";

/// A testbed, by prefix.
#[derive(Clone, Debug)]
pub struct Testbed {
    /// Names of everything start with it.
    pub prefix: String,
    /// Lease TTL of the registers (seconds).
    pub ttl: u32,
}

impl Testbed {
    /// The namespace of `host` (h1..h4, sw, nat).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The testbed's directory.
    pub fn dir(&self) -> PathBuf {
        Path::new("/var/tmp").join(&self.prefix)
    }

    /// The Docker socket of `host`.
    pub fn socket(&self, host: &str) -> String {
        format!("unix://{}/{host}/docker.sock", self.dir().display())
    }

    /// The pin directory of `host`'s `ambassador run`.
    pub fn pin(&self, host: &str) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}-{host}", self.prefix))
    }

    /// `docker ARGS` on `host`; panics unless it succeeds; returns stdout.
    pub fn docker(&self, host: &str, args: &[&str]) -> String {
        crate::docker_at(&self.socket(host), args)
    }

    /// `docker ARGS` on `host`: its stdout, or why it failed.
    pub fn docker_output(&self, host: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(DOCKER)
            .args(["-H", &self.socket(host)])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// `docker ARGS` on `host`, started (its output kept for [`std::process::Child::wait_with_output`]).
    pub fn docker_spawn(&self, host: &str, args: &[&str]) -> std::process::Child {
        Command::new(DOCKER)
            .args(["-H", &self.socket(host)])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting docker {args:?} on {host}: {e}"))
    }

    /// `docker ARGS` on `host`, whatever the outcome.
    pub fn docker_try(&self, host: &str, args: &[&str]) -> bool {
        Command::new(DOCKER)
            .args(["-H", &self.socket(host)])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The cgroup whose processes `host`'s `run` serves with the `sock` datapath (the
    /// testbed's own, never the machine's root).
    pub fn cgroup(&self, host: &str) -> PathBuf {
        crate::cgroup2_root()
            .expect("cgroup v2 is mounted")
            .join(format!("{}-{host}", self.prefix))
    }

    /// Runs `program ARGS` as a process of `host`'s cgroup, in its network namespace.
    pub fn run_in_cgroup(&self, host: &str, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="$ns" "$@""#)
            .arg("sh")
            .arg(self.cgroup(host))
            .arg(format!("/run/netns/{}", self.ns(host)))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// Where `ambassador auth` wrote the etcd passwords.
    pub fn credentials(&self) -> PathBuf {
        self.dir().join("credentials")
    }

    /// The etcd identities: (host, `run`'s user, `register`'s user).
    pub fn identities(&self) -> Vec<(&'static str, String, String)> {
        HOSTS
            .iter()
            .map(|h| {
                (
                    h.name,
                    READER.to_owned(),
                    format!("ambassador-host-{}", h.name),
                )
            })
            .collect()
    }

    /// `ambassador ARGS --etcd ETCD` inside h1, with the host's binary, as the admin.
    pub fn ctl(&self, bin: &Path, args: &[&str]) -> String {
        self.ctl_as(bin, "ambassador-admin", args)
    }

    /// `ambassador ARGS --etcd ETCD` inside h1 as etcd user `user` (its password from
    /// [`Testbed::credentials`]).
    pub fn ctl_as(&self, bin: &Path, user: &str, args: &[&str]) -> String {
        let password = self.credentials().join(format!("{user}.password"));
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns("h1")))
            .arg(bin)
            .args(args)
            .args(["--etcd", ETCD, "--etcd-user", user, "--etcd-password-file"])
            .arg(&password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ambassador {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The network namespace of a container (for joining it).
    pub fn container_netns(&self, host: &str, name: &str) -> String {
        let pid = self.docker(host, &["inspect", "-f", "{{.State.Pid}}", name]);
        format!("/proc/{pid}/ns/net")
    }

    /// Starts the database on `host` (a labelled container publishing [`DB_PORT`]).
    pub fn start_db(&self, host: &str) {
        let _ = self.docker_try(host, &["rm", "-f", &db_name(host)]);
        let args = db_run_args(host);
        self.docker(host, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// The database's container on `host`.
pub fn db_name(host: &str) -> String {
    format!("db-{host}")
}

/// `docker` arguments that start the database on `host`: a container labelled for the
/// register, publishing [`DB_PORT`], that knows its host's name.
pub fn db_run_args(host: &str) -> Vec<String> {
    [
        "run",
        "-d",
        "--name",
        &db_name(host),
        "--label",
        "ambassador.service=db",
        "-p",
        &format!("{DB_PORT}:6379"),
        "-e",
        &format!("HOST_ID={host}"),
        image::REDIS,
    ]
    .map(str::to_owned)
    .to_vec()
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

/// Builds the testbed (after removing any leftover of the same prefix). `bin` is the
/// `ambassador` binary that goes into the image.
pub fn up(prefix: &str, bin: &Path, ttl: u32, log: &dyn Fn(&str)) -> Testbed {
    down(prefix);
    let tb = Testbed {
        prefix: prefix.to_owned(),
        ttl,
    };
    let dir = tb.dir();
    std::fs::create_dir_all(&dir).unwrap();

    log("building images (the Dockerfile, and docker import of rootfs tarballs: no registry needed)");
    let images_dir = dir.join("images");
    let images = [
        image::ambassador(bin, &images_dir.join("ambassador")),
        image::etcd(&images_dir),
        image::redis(&images_dir),
        image::busybox(&images_dir),
    ];

    log("building the network: switch, four hosts, a NAT router in front of h4");
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
    let nat = tb.ns("nat");
    ip(
        &nat,
        &[
            "link",
            "add",
            "lan0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &tb.ns("h4"),
        ],
    );
    ip(&nat, &["addr", "add", "10.210.4.1/24", "dev", "lan0"]);
    ip(&nat, &["link", "set", "lan0", "up"]);
    ip(
        &tb.ns("h4"),
        &["addr", "add", "10.210.4.2/24", "dev", "eth0"],
    );
    ip(&tb.ns("h4"), &["link", "set", "eth0", "up"]);
    ip(
        &tb.ns("h4"),
        &["route", "add", "default", "via", "10.210.4.1"],
    );
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

    for (i, h) in HOSTS.iter().enumerate() {
        log(&format!(
            "{}: starting dockerd and importing the images",
            h.name
        ));
        start_dockerd(&tb, h.name, i + 1);
        for img in &images {
            img.import(&tb.socket(h.name));
        }
    }

    log("etcd (one member per host, as containers, the seed's way; h4's through its NAT) and ambassador `run` and `register` containers on every host");
    let cluster: Vec<String> = HOSTS
        .iter()
        .map(|h| format!("{}=http://{}:2380", h.name, h.advertise))
        .collect();
    let cluster = cluster.join(",");
    let ttl = ttl.to_string();
    let mut envs = Vec::new();
    for h in &HOSTS {
        let cg = tb.cgroup(h.name);
        std::fs::create_dir_all(&cg).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.display()));
    }
    let cgroups: Vec<String> = HOSTS
        .iter()
        .map(|h| tb.cgroup(h.name).to_str().unwrap().to_owned())
        .collect();
    let owned: Vec<(String, String, String, String, String)> = HOSTS
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (
                tb.pin(h.name).to_str().unwrap().to_owned(),
                tb.socket(h.name),
                h.advertise.to_string(),
                h.addr.split('/').next().expect("address").to_owned(),
                // The responder listens on docker0 (dockerd's --bip), where the host's
                // containers reach it with `docker run --dns`.
                format!("{}:53", docker0(i + 1)),
            )
        })
        .collect();
    for ((h, (pin, socket, advertise, own, dns_listen)), cgroup) in
        HOSTS.iter().zip(&owned).zip(&cgroups)
    {
        let env = vec![
            // Both datapaths: the containers on docker0 (tc) and the processes of the host's
            // own cgroup (sock), through the compose file.
            ("DATAPATH", "tc,sock"),
            ("CGROUP_PATH", cgroup.as_str()),
            ("DOCKER_HOST", socket.as_str()),
            ("DOCKER_SOCK", socket.trim_start_matches("unix://")),
            ("HOST_ID", h.name),
            ("ADVERTISE_IP", advertise.as_str()),
            ("ETCD", ETCD),
            ("TTL", ttl.as_str()),
            ("PIN_DIR", pin.as_str()),
            ("IFACE", "docker0"),
            ("DNS_LISTEN", dns_listen.as_str()),
            // Every second, so reconciles certainly meet draining containers in the scenario.
            ("RECONCILE", "1"),
            ("LOG", "info,ambassador_user::register=debug"),
        ];
        let etcd = [
            ("ETCD_SELF", own.as_str()),
            ("ETCD_ADVERTISE", advertise.as_str()),
            ("ETCD_CLUSTER", cluster.as_str()),
            ("ETCD_TOKEN", prefix),
        ];
        envs.push((env, etcd));
    }
    for (env, etcd) in &envs {
        let mut first = env.clone();
        first.extend(etcd);
        first.push(("SKIP_AMBASSADOR", "1"));
        script(None, "testbed-host.sh", &first);
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
    log("the trust model: `ambassador auth init`, then `auth add-host` for each host (its advertised address, the service db); every host's register with its own etcd identity, every `run` with the read-only one");
    secure(&tb, bin);
    let credentials = tb.credentials();
    for ((env, _), (_, run_user, register_user)) in envs.iter().zip(tb.identities()) {
        let mut second = env.clone();
        second.extend([
            ("CREDENTIALS_DIR", credentials.to_str().unwrap()),
            ("RUN_ETCD_USER", run_user.as_str()),
            ("REGISTER_ETCD_USER", register_user.as_str()),
        ]);
        script(None, "testbed-host.sh", &second);
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
    tb
}

/// Sets the trust model up on the testbed's etcd with `bin`: `auth init`, then each host's
/// identity, allowed to advertise its own address (h4: its NAT's) for the service db.
fn secure(tb: &Testbed, bin: &Path) {
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

fn start_dockerd(tb: &Testbed, host: &str, index: usize) {
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

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes `host`'s containers and stops its dockerd (by the pid in its pidfile).
fn stop_dockerd(tb: &Testbed, host: &str) {
    let dir = tb.dir().join(host);
    let Some(pid) = read_pid(&dir.join("docker.pid")).filter(|p| pid_alive(*p)) else {
        return;
    };
    let ids = Command::new(DOCKER)
        .args(["-H", &tb.socket(host), "ps", "-aq"])
        .output();
    if let Ok(out) = ids {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new(DOCKER)
                .args(["-H", &tb.socket(host), "rm", "-f"])
                .args(&ids)
                .output();
        }
    }
    // SAFETY: a dockerd this testbed started (its pidfile).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if !wait_until(Duration::from_secs(15), || !pid_alive(pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes everything of the testbed named `prefix`: containers, dockerds, processes left in
/// its namespaces, mounts, namespaces, pinned maps and files. Idempotent; works after a crash.
pub fn down(prefix: &str) {
    let tb = Testbed {
        prefix: prefix.to_owned(),
        ttl: 0,
    };
    // The engines stop in parallel: each takes a few seconds.
    std::thread::scope(|scope| {
        for h in HOSTS {
            let tb = &tb;
            scope.spawn(move || stop_dockerd(tb, h.name));
        }
    });
    // Whatever still runs inside the testbed's namespaces was started by it (a crashed dockerd's
    // containerd and shims, containers with host networking).
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ours: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect();
    for ns in &ours {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: a process inside this testbed's own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    // Mounts left under the testbed's directory (overlay layers, netns bind mounts), deepest first.
    let dir = tb.dir();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut ours_m: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect();
    ours_m.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours_m {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    for ns in &ours {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The hosts' cgroups (their processes were killed with the namespaces').
    if let Some(root) = crate::cgroup2_root() {
        for h in HOSTS {
            let cg = root.join(format!("{prefix}-{}", h.name));
            if cg.exists() {
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: a process in this testbed's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = wait_until(Duration::from_secs(2), || std::fs::remove_dir(&cg).is_ok());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A one-screen description of a running testbed.
pub fn status(prefix: &str) -> String {
    let tb = Testbed {
        prefix: prefix.to_owned(),
        ttl: 0,
    };
    let mut out = String::new();
    for h in HOSTS {
        let ps = Command::new(DOCKER)
            .args([
                "-H",
                &tb.socket(h.name),
                "ps",
                "--format",
                "{{.Names}} ({{.Status}})",
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .replace('\n', ", ")
            })
            .unwrap_or_default();
        let state = if ps.is_empty() { "down".to_owned() } else { ps };
        out.push_str(&format!(
            "{} {:<15} advertised as {:<13} {state}\n",
            h.name, h.addr, h.advertise
        ));
    }
    out
}
