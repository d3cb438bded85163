//! Container images built offline (no registry is reachable): a root filesystem assembled from
//! host binaries and the shared libraries `ldd` names. The project's own image is built by
//! `docker build` from the repository's Dockerfile (FROM scratch, the root filesystem copied
//! in); the testbed's helper images are imported with `docker import`.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{temp_dir, TempDir};

/// A root filesystem being assembled.
pub struct Rootfs {
    path: PathBuf,
    /// Removes it on drop when it is a temporary one.
    _temp: Option<TempDir>,
}

impl Rootfs {
    /// An empty root with /tmp, in a temporary directory.
    pub fn new() -> Self {
        let temp = temp_dir("rootfs");
        let mut fs = Self::at(temp.path());
        fs._temp = Some(temp);
        fs
    }

    /// An empty root with /tmp at `path` (emptied first), left in place.
    pub fn at(path: &Path) -> Self {
        let _ = std::fs::remove_dir_all(path);
        for d in ["tmp", "bin", "etc", "var/lib"] {
            std::fs::create_dir_all(path.join(d)).unwrap();
        }
        std::fs::write(path.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        Self {
            path: path.to_owned(),
            _temp: None,
        }
    }

    fn copy(&self, from: &Path, to: &str) {
        let dest = self.path.join(to.trim_start_matches('/'));
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
            let _ = std::os::unix::fs::symlink("busybox", self.path.join("bin").join(a));
        }
        self
    }

    /// Adds a file with `contents` and unix `mode`.
    pub fn file(&self, dest: &str, contents: &str, mode: u32) -> &Self {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.path.join(dest.trim_start_matches('/'));
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
            .arg(&self.path)
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

/// One image: its tag and how it is made.
pub struct Image {
    /// Tag, e.g. `ambassador:dev`.
    pub tag: &'static str,
    /// Where it comes from.
    pub source: Source,
}

/// How an image is made.
pub enum Source {
    /// `docker import` of a rootfs tarball, with Dockerfile instructions applied at import
    /// (ENTRYPOINT, CMD, HEALTHCHECK...).
    Tarball { tar: PathBuf, changes: Vec<String> },
    /// `docker build` of a directory holding the repository's Dockerfile and what it copies.
    Dockerfile { context: PathBuf },
}

impl Image {
    /// Loads the image into the engine at `socket` (`docker import` or `docker build`).
    pub fn import(&self, socket: &str) {
        let out = Command::new("/usr/bin/docker")
            .args(["-H", socket])
            .args(self.docker_args(|p| p.as_os_str().to_owned()))
            // The classic builder: what Docker 20.10 does by default, and no registry.
            .env("DOCKER_BUILDKIT", "0")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "loading {} into {socket}: {}",
            self.tag,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The shell command that loads the image into the local engine on another machine,
    /// which sees this machine's folder `here` at `there` (a VM's shared folder).
    pub fn load_command(&self, here: &Path, there: &Path) -> String {
        let args =
            self.docker_args(|p| {
                there
                    .join(p.strip_prefix(here).unwrap_or_else(|_| {
                        panic!("{} is not under {}", p.display(), here.display())
                    }))
                    .into_os_string()
            });
        let words: Vec<String> = std::iter::once("docker".to_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        let line = shlex::try_join(words.iter().map(String::as_str)).expect("no NUL in arguments");
        format!("DOCKER_BUILDKIT=0 {line} >/dev/null")
    }

    /// `docker`'s arguments that load it, its files' paths given by `path`.
    fn docker_args(&self, path: impl Fn(&Path) -> OsString) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match &self.source {
            Source::Tarball { tar, changes } => {
                args.push("import".into());
                for c in changes {
                    args.extend(["--change".into(), c.into()]);
                }
                args.extend([path(tar), self.tag.into()]);
            }
            Source::Dockerfile { context } => {
                args.extend(["build", "-q", "-t", self.tag].map(OsString::from));
                args.push(path(context));
            }
        }
        args
    }

    /// What it is made from, for messages.
    pub fn path(&self) -> &Path {
        match &self.source {
            Source::Tarball { tar, .. } => tar,
            Source::Dockerfile { context } => context,
        }
    }
}

/// The repository's root (the Dockerfile's build context).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Where the Dockerfile expects the root filesystem, relative to its context.
pub const ROOTFS_IN_CONTEXT: &str = "target/image/rootfs";

/// The project's image, built by `docker build` from the repository's Dockerfile: `bin` and
/// the shared libraries it loads, nothing else. Its context is `context` (the repository's
/// root for `cargo xtask image`, so `docker build -t ambassador .` works there afterwards; a
/// directory of its own elsewhere, so parallel tests do not share one), which receives the
/// Dockerfile, the .dockerignore and the root filesystem. Run it with the host network, bpffs
/// and (for `register`) the Docker socket: see the README and docker-compose.yml.
pub fn ambassador(bin: &Path, context: &Path) -> Image {
    Rootfs::at(&context.join(ROOTFS_IN_CONTEXT)).binary(bin, "/usr/local/bin/ambassador");
    let root = repo_root();
    if context != root {
        for f in ["Dockerfile", ".dockerignore"] {
            std::fs::copy(root.join(f), context.join(f))
                .unwrap_or_else(|e| panic!("copying {f} to {}: {e}", context.display()));
        }
    }
    Image {
        tag: AMBASSADOR,
        source: Source::Dockerfile {
            context: context.to_owned(),
        },
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
        source: Source::Tarball {
            tar,
            changes: vec![r#"ENTRYPOINT ["/usr/local/bin/etcd"]"#.into()],
        },
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
        source: Source::Tarball {
            tar,
            changes: vec![
                r#"CMD ["/start.sh"]"#.into(),
                // Healthy once it answers with its host name: the register waits for that.
                // Unhealthy after three failed checks, not one: under emulation (the Vagrant
                // testbed's VMs) a check alone can take a second.
                r#"HEALTHCHECK --interval=200ms --timeout=5s --retries=3 CMD ["sh", "-c", "[ \"$(redis-cli -p 6379 exists host)\" = 1 ]"]"#.into(),
            ],
        },
    }
}

/// A busybox image (the testbed's client container holds a network namespace with it).
pub fn busybox(out_dir: &Path) -> Image {
    let tar = out_dir.join("busybox.tar");
    Rootfs::new()
        .busybox(&["sh", "sleep", "cat", "echo", "nslookup"])
        .tar(&tar);
    Image {
        tag: BUSYBOX,
        source: Source::Tarball {
            tar,
            changes: vec![r#"CMD ["sleep", "1000000"]"#.into()],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_command_names_the_files_where_the_other_machine_sees_them_and_quotes_each_word() {
        let tarball = Image {
            tag: REDIS,
            source: Source::Tarball {
                tar: PathBuf::from("/repo/target/images/redis.tar"),
                changes: vec![r#"CMD ["sh", "-c", "[ \"$(x)\" = 1 ]"]"#.into()],
            },
        };
        let line = tarball.load_command(Path::new("/repo"), Path::new("/vagrant"));
        let words = shlex::split(line.trim_end_matches(" >/dev/null")).unwrap();
        assert_eq!(
            words,
            [
                "DOCKER_BUILDKIT=0",
                "docker",
                "import",
                "--change",
                r#"CMD ["sh", "-c", "[ \"$(x)\" = 1 ]"]"#,
                "/vagrant/target/images/redis.tar",
                REDIS
            ]
        );
        let built = Image {
            tag: AMBASSADOR,
            source: Source::Dockerfile {
                context: PathBuf::from("/repo/target/images/ambassador"),
            },
        };
        let line = built.load_command(Path::new("/repo"), Path::new("/vagrant"));
        assert!(
            line.ends_with(
                "docker build -q -t ambassador:dev /vagrant/target/images/ambassador >/dev/null"
            ),
            "{line}"
        );
    }
}
