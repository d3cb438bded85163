//! Cgroups of the tests (v2), for the socket datapath: created, attached to, removed.

use super::*;

/// Where the host's cgroup v2 hierarchy is mounted (from /proc/self/mounts), if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// A cgroup v2 directory of the test's own, under the host's cgroup v2 root: socket programs
/// attach here (never to the root itself) and the test's clients run inside it, so parallel
/// tests and the machine's own processes are untouched. On drop, the processes still in it
/// (only ever ones the test started there) are killed and the directory is removed.
pub struct Cgroup {
    /// The directory.
    pub path: PathBuf,
    /// Where this process was before [`Cgroup::join`] moved it here.
    left: Option<PathBuf>,
}

impl Cgroup {
    /// Creates a cgroup under the host's cgroup v2 root.
    pub fn new() -> Self {
        let root = cgroup2_root().expect("cgroup v2 is mounted (see /proc/self/mounts)");
        let path = root.join(unique("amb-test-"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path, left: None }
    }

    /// Moves this whole process (every thread, and the children it starts from now on) into
    /// the cgroup, until the cgroup is dropped: for clients that run on the process's own
    /// threads (a benchmark's).
    pub fn join(&mut self) {
        let root = cgroup2_root().expect("cgroup v2 is mounted");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let here = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("this process's cgroup v2 (a 0:: line in /proc/self/cgroup)");
        self.left = Some(root.join(here.trim().trim_start_matches('/')));
        Self::enter(&self.path);
    }

    fn enter(path: &Path) {
        std::fs::write(path.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("joining {}: {e}", path.display()));
    }

    /// The directory, as the daemon's `--cgroup-path` argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 cgroup path")
    }

    /// `program ARGS` as a process of this cgroup, in the network namespace `ns` (the process
    /// joins the cgroup first: `ip netns exec` would hide /sys/fs/cgroup).
    pub fn command(&self, ns: &NetNs, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="$ns" "$@""#)
            .arg("sh")
            .arg(&self.path)
            .arg(format!("/run/netns/{}", ns.name))
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `program ARGS` inside this cgroup and `ns` to its end.
    pub fn run(&self, ns: &NetNs, program: &str, args: &[&str]) -> std::process::Output {
        self.command(ns, program, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// Starts `program ARGS` inside this cgroup and `ns` (see [`Proc`]).
    pub fn spawn(&self, ns: &NetNs, what: &str, program: &str, args: &[&str]) -> Proc {
        Proc::start(what, self.command(ns, program, args))
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(left) = self.left.take() {
            Self::enter(&left);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            for pid in &pids {
                // SAFETY: a process in the test's own cgroup: one this test started.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if (pids.is_empty() && std::fs::remove_dir(&self.path).is_ok())
                || Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
