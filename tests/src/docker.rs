//! Debian's Docker engine, one per test, in a namespace.

use super::*;

/// Debian's Docker client (the engine is Debian's 20.10).
const DOCKER: &str = "/usr/bin/docker";

/// `docker ARGS` against the engine at `socket`; panics unless it succeeds; returns stdout.
pub fn docker_at(socket: &str, args: &[&str]) -> String {
    let out = Command::new(DOCKER)
        .args(["-H", socket])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker -H {socket} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A Docker engine (Debian's dockerd) running inside a test namespace, with its own data,
/// exec root and socket; stopped and cleaned on drop.
pub struct Dockerd {
    /// `unix:///...` socket URL.
    pub socket: String,
    ns: String,
    bip: String,
    extra: Vec<String>,
    dir: TempDir,
    proc: Option<Proc>,
}

impl Dockerd {
    /// Starts an engine in `ns`; its default bridge gets `bip` (a 10.x/24 inside the namespace).
    pub fn start(ns: &NetNs, bip: &str) -> Self {
        Self::start_with(ns, bip, &[])
    }

    /// [`Dockerd::start`] with `extra` arguments for dockerd.
    pub fn start_with(ns: &NetNs, bip: &str, extra: &[&str]) -> Self {
        let dir = temp_dir("dockerd");
        let socket = format!("unix://{}/docker.sock", dir.path().display());
        let mut d = Self {
            socket,
            ns: ns.name.clone(),
            bip: bip.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
            proc: None,
        };
        d.restart();
        d
    }

    /// Starts the engine again (after `stop`), with the same data.
    pub fn restart(&mut self) {
        let p = self.dir.path();
        let mut args = vec![
            format!("--data-root={}/data", p.display()),
            format!("--exec-root={}/exec", p.display()),
            format!("--pidfile={}/docker.pid", p.display()),
            format!("--host={}", self.socket),
            "--storage-driver=overlay2".into(),
            format!("--bip={}", self.bip),
        ];
        args.extend(self.extra.iter().cloned());
        self.proc = Some(Proc::spawn(
            &self.ns,
            "dockerd",
            Path::new("/usr/sbin/dockerd"),
            &args,
        ));
        let ok = wait_until(Duration::from_secs(20), || {
            Command::new(DOCKER)
                .args(["-H", &self.socket, "info"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            ok,
            "dockerd did not come up:\n{}",
            self.proc.as_ref().unwrap().log()
        );
    }

    /// Stops the engine (SIGTERM; it stops its containers first).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    /// `docker ARGS` against this engine; panics unless it succeeds; returns stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        docker_at(&self.socket, args)
    }

    /// Imports a ~2 MB busybox image (from busybox-static; no registry is reachable) as `tag`.
    pub fn import_busybox(&self, tag: &str) {
        let root = temp_dir("rootfs");
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).unwrap();
        for applet in ["sh", "httpd", "mkdir", "echo", "cat", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.path().join("bin").join(applet)).unwrap();
        }
        let mut tar = Command::new("tar")
            .args(["-C", root.path().to_str().unwrap(), "-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new(DOCKER)
            .args(["-H", &self.socket, "import", "-", tag])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar of the busybox rootfs failed"
        );
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a detached HTTP server container answering `name` on container port 8080.
    pub fn run_web(&self, image: &str, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "-e"];
        let env = format!("NAME={name}");
        args.push(&env);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            image,
            "sh",
            "-c",
            "mkdir -p /www && echo $NAME > /www/index.html && exec httpd -f -p 8080 -h /www",
        ]);
        self.docker(&args)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(p) = &self.proc {
            if std::thread::panicking() {
                eprintln!("---- dockerd log ----\n{}\n---- end ----", p.log());
            }
            // Containers go first, so nothing holds the data root when it is removed.
            let ids = Command::new(DOCKER)
                .args(["-H", &self.socket, "ps", "-aq"])
                .output();
            if let Ok(ids) = ids {
                let ids = String::from_utf8_lossy(&ids.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>();
                if !ids.is_empty() {
                    let _ = Command::new(DOCKER)
                        .args(["-H", &self.socket, "rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
        }
        self.stop();
    }
}
