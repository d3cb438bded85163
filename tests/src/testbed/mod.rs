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

mod build;
mod teardown;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

pub use teardown::down;

use crate::image;

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
    build::network(&tb);
    for (i, h) in HOSTS.iter().enumerate() {
        log(&format!(
            "{}: starting dockerd and importing the images",
            h.name
        ));
        build::start_dockerd(&tb, h.name, i + 1);
        for img in &images {
            img.import(&tb.socket(h.name));
        }
    }

    log("etcd (one member per host, as containers, the seed's way; h4's through its NAT) and ambassador `run` and `register` containers on every host");
    let envs = build::host_envs(&tb);
    build::start_etcd(&tb, &envs);
    log("the trust model: `ambassador auth init`, then `auth add-host` for each host (its advertised address, the service db); every host's register with its own etcd identity, every `run` with the read-only one");
    build::secure(&tb, bin);
    build::start_ambassador(&tb, &envs, bin);
    tb
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
