//! Container images built offline (no registry is reachable): a root filesystem assembled from
//! host binaries and the shared libraries `ldd` names, imported with `docker import`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::TempDir;

/// A root filesystem being assembled.
pub struct Rootfs {
    dir: TempDir,
}

impl Rootfs {
    /// An empty root with /tmp.
    pub fn new() -> Self {
        let dir = TempDir::new("rootfs");
        for d in ["tmp", "bin", "etc", "var/lib"] {
            std::fs::create_dir_all(dir.path.join(d)).unwrap();
        }
        std::fs::write(dir.path.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        Self { dir }
    }

    fn copy(&self, from: &Path, to: &str) {
        let dest = self.dir.path.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // Follows symlinks: the image gets the file itself.
        std::fs::copy(from, &dest)
            .unwrap_or_else(|e| panic!("copying {} into the image: {e}", from.display()));
    }

    /// Adds a host binary at `dest` with every shared library it loads, at their host paths.
    pub fn binary(&self, host: &Path, dest: &str) -> &Self {
        self.copy(host, dest);
        let out = Command::new("ldd").arg(host).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                self.copy(Path::new(p), p);
            }
        }
        self
    }

    /// Adds busybox with the given applets in /bin.
    pub fn busybox(&self, applets: &[&str]) -> &Self {
        self.copy(Path::new("/bin/busybox"), "/bin/busybox");
        for a in applets {
            let _ = std::os::unix::fs::symlink("busybox", self.dir.path.join("bin").join(a));
        }
        self
    }

    /// Adds a file with `contents` and unix `mode`.
    pub fn file(&self, dest: &str, contents: &str, mode: u32) -> &Self {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.path.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Writes the filesystem as a tarball at `out`.
    pub fn tar(&self, out: &Path) {
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let st = Command::new("tar")
            .args(["--owner=0", "--group=0", "-C"])
            .arg(&self.dir.path)
            .arg("-cf")
            .arg(out)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar {}", out.display());
    }
}

impl Default for Rootfs {
    fn default() -> Self {
        Self::new()
    }
}

/// The project's image tag.
pub const AMBASSADOR: &str = "ambassador:dev";
/// The testbed's etcd image tag.
pub const ETCD: &str = "ambassador-testbed/etcd:dev";
/// The testbed's database image tag.
pub const REDIS: &str = "ambassador-testbed/redis:dev";
/// The testbed's busybox image tag.
pub const BUSYBOX: &str = "ambassador-testbed/busybox:dev";

/// One image: its tag, its tarball and the `docker import --change` lines it needs.
pub struct Image {
    /// Tag, e.g. `ambassador:dev`.
    pub tag: &'static str,
    /// The rootfs tarball.
    pub tar: PathBuf,
    /// Dockerfile instructions applied at import (ENTRYPOINT, CMD, LABEL...).
    pub changes: Vec<String>,
}

impl Image {
    /// Imports the image into the engine at `socket`.
    pub fn import(&self, socket: &str) {
        let mut cmd = Command::new("/usr/bin/docker");
        cmd.args(["-H", socket, "import"]);
        for c in &self.changes {
            cmd.args(["--change", c]);
        }
        let out = cmd
            .arg(&self.tar)
            .arg(self.tag)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker import {}: {}",
            self.tag,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The project's image: the `ambassador` binary, nothing else. Run it privileged with the host
/// network, bpffs and (for `register`) the Docker socket; see the README.
pub fn ambassador(bin: &Path, out_dir: &Path) -> Image {
    let tar = out_dir.join("ambassador.tar");
    Rootfs::new()
        .binary(bin, "/usr/local/bin/ambassador")
        .tar(&tar);
    Image {
        tag: AMBASSADOR,
        tar,
        changes: vec![
            r#"ENTRYPOINT ["/usr/local/bin/ambassador"]"#.into(),
            r#"CMD ["--help"]"#.into(),
            "LABEL org.opencontainers.image.title=ambassador".into(),
        ],
    }
}

/// etcd (Debian's) for the testbed, which runs it as a container on each host like the seed.
pub fn etcd(out_dir: &Path) -> Image {
    let tar = out_dir.join("etcd.tar");
    Rootfs::new()
        .binary(Path::new("/usr/bin/etcd"), "/usr/local/bin/etcd")
        .tar(&tar);
    Image {
        tag: ETCD,
        tar,
        changes: vec![r#"ENTRYPOINT ["/usr/local/bin/etcd"]"#.into()],
    }
}

/// The testbed's database: Debian's redis-server, announcing which host it runs on (key
/// `host`), and draining on SIGTERM: it waits `DRAIN_SECONDS` (default 1) before shutting down,
/// so the register's deregistration reaches every client host first (Kubernetes' preStop).
pub fn redis(out_dir: &Path) -> Image {
    let tar = out_dir.join("redis.tar");
    let start = r#"#!/bin/sh
redis-server --port 6379 --save '' --appendonly no --protected-mode no &
pid=$!
trap 'sleep "${DRAIN_SECONDS:-1}"; redis-cli -p 6379 shutdown nosave >/dev/null 2>&1; wait $pid; exit 0' TERM INT
until redis-cli -p 6379 ping >/dev/null 2>&1; do sleep 0.05; done
redis-cli -p 6379 set host "${HOST_ID:-unknown}" >/dev/null
wait $pid
"#;
    Rootfs::new()
        .binary(Path::new("/usr/bin/redis-server"), "/usr/bin/redis-server")
        .binary(Path::new("/usr/bin/redis-cli"), "/usr/bin/redis-cli")
        .busybox(&["sh", "sleep", "test", "["])
        .file("/start.sh", start, 0o755)
        .tar(&tar);
    Image {
        tag: REDIS,
        tar,
        changes: vec![
            r#"CMD ["/start.sh"]"#.into(),
            // Healthy once it answers with its host name: the register waits for that.
            r#"HEALTHCHECK --interval=200ms --timeout=1s --retries=1 CMD ["sh", "-c", "[ \"$(redis-cli -p 6379 exists host)\" = 1 ]"]"#.into(),
        ],
    }
}

/// A busybox image (the testbed's client container holds a network namespace with it).
pub fn busybox(out_dir: &Path) -> Image {
    let tar = out_dir.join("busybox.tar");
    Rootfs::new()
        .busybox(&["sh", "sleep", "cat", "echo"])
        .tar(&tar);
    Image {
        tag: BUSYBOX,
        tar,
        changes: vec![r#"CMD ["sleep", "1000000"]"#.into()],
    }
}
