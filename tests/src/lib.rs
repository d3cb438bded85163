//! Harness for ambassador's privileged tests: network namespaces, veth links, bpffs pin
//! directories and daemon processes, each behind a Drop guard so a failing test cleans up too.
//! Names are unique per process and call, so tests run in parallel.

pub mod image;
pub mod metrics;
pub mod prometheus;
pub mod scenario;
pub mod testbed;
pub mod traffic;

mod daemon;
pub use daemon::*;
mod servers;
pub use servers::*;
mod topology;
pub use topology::*;
mod process;
pub use process::*;
mod cgroup;
pub use cgroup::*;
mod etcd;
pub use etcd::*;
mod docker;
pub use docker::*;
mod clients;
pub use clients::*;

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// True when the test may run; otherwise records it as skipped (see [`skip`]).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(
            test,
            "needs root (network namespaces, bpffs, TC attach); run as root",
        );
        return false;
    }
    ensure_bpffs();
    true
}

/// Environment variable naming the file where skipped tests are recorded, one
/// `name<TAB>reason` line each; `cargo xtask test` sets it and counts them as skipped, not
/// passed (libtest has no verdict for a test that decides at run time that it cannot run).
pub const SKIP_LOG_ENV: &str = "AMBASSADOR_SKIP_LOG";
/// Environment variable that turns every skip into a failure: CI runs as root with everything
/// installed, so there a test that cannot run is a broken test or a broken machine.
pub const NO_SKIP_ENV: &str = "AMBASSADOR_NO_SKIP";

/// Records that `test` cannot run here and why; the caller then returns without asserting.
/// Panics instead when skipping is not allowed ([`NO_SKIP_ENV`]).
pub fn skip(test: &str, reason: &str) {
    if std::env::var_os(NO_SKIP_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} cannot run here, and {NO_SKIP_ENV} forbids skipping: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!("{test}\t{}\n", reason.replace(['\t', '\n'], " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording the skip of {test} in {path:?}: {e}");
        }
    }
}

/// Mounts a bpf filesystem at /sys/fs/bpf when none is there (a fresh machine has none).
pub fn ensure_bpffs() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return;
    }
    let st = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "mounting bpffs on /sys/fs/bpf failed"
    );
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface-name sized).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with its links) on drop.
pub struct NetNs {
    /// Its name under /run/netns.
    pub name: String,
}

impl NetNs {
    /// Creates a namespace with loopback up.
    pub fn new(role: &str) -> Self {
        let name = unique(&format!("amb{role}"));
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside the namespace (`ip netns exec`; fine for tools that need no /sys).
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that lives in this namespace. Sockets made there stay in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in namespace panicked")
    }

    /// Starts `f` on a thread that lives in this namespace, without waiting for it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid namespace descriptor; only this thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// An IPv6 counter of the namespace (/proc/net/snmp6), e.g. "Udp6InCsumErrors".
    pub fn snmp6(&self, field: &str) -> u64 {
        let text = self.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap());
        text.lines()
            .find_map(|l| {
                let (name, value) = l.split_once(char::is_whitespace)?;
                (name == field).then(|| value.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{field} not in /proc/net/snmp6"))
    }

    /// The namespace's SNMP counters (what `nstat` reads), e.g. ("Tcp", "InCsumErrors").
    pub fn snmp(&self, group: &str, field: &str) -> u64 {
        let text = self.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap());
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{group}:")))
            .collect();
        assert_eq!(lines.len(), 2, "{group} not in /proc/net/snmp");
        let names = lines[0].split_whitespace();
        let values = lines[1].split_whitespace();
        names
            .zip(values)
            .find(|(n, _)| *n == field)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("{group}:{field} not in /proc/net/snmp"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Links `a` (as `a_if` with `a_addr`) to `b` (as `b_if` with `b_addr`) by a veth pair, both
/// up, with transmit checksum offload off so every checksum on the wire is real.
pub fn veth(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", ifname]);
        }
        ns.ip(&["link", "set", ifname, "up"]);
        ns.exec(&["ethtool", "-K", ifname, "tx", "off"]);
    }
}

/// A pin directory on bpffs, removed on drop.
pub struct PinDir {
    /// The directory.
    pub path: PathBuf,
}

impl PinDir {
    /// A fresh, not yet created, directory name under /sys/fs/bpf.
    pub fn new() -> Self {
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/{}", unique("amb-test-"))),
        }
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The `ambassador` binary under test.
pub fn ambassador_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AMBASSADOR_BIN") {
        return p.into();
    }
    // target/debug/deps/<test> -> target/debug/ambassador
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("ambassador");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build` (or `cargo xtask test`) first",
        bin.display()
    );
    bin
}

/// Runs `ambassador ARGS` to completion.
pub fn ambassador(args: &[&str]) -> std::process::Output {
    Command::new(ambassador_bin()).args(args).output().unwrap()
}

/// `ambassador status --json` for a pin directory.
pub fn status(pin: &Path) -> serde_json::Value {
    let out = ambassador(&["status", "--json", "--pin-path", pin.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The status entry of one service.
pub fn service_status(pin: &Path, name: &str) -> Option<serde_json::Value> {
    status(pin)["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// The services the programs are run on by `BPF_PROG_TEST_RUN` (the fixture tables, the
/// monitor's cost): `web` (TCP) and `dns` (UDP) at 10.96.0.10 over 10.0.1.2, `empty` at
/// 10.96.0.11 with no backend.
pub const FIXTURE_CONFIG: &str = r#"
[[service]]
name = "web"
frontend = "10.96.0.10:80"
endpoints = ["10.0.1.2:8080"]

[[service]]
name = "dns"
frontend = "10.96.0.10:53"
proto = "udp"
endpoints = ["10.0.1.2:5353"]

[[service]]
name = "empty"
frontend = "10.96.0.11:80"
"#;

/// Environment variable: how many times slower than a host this machine runs the tests (a
/// whole number, 1 when unset). The kernel matrix sets it in VMs under QEMU's emulation, where
/// loading the XDP program alone takes seconds of verification; every wait's deadline is
/// stretched by it, never what a test asserts about the product's own timing.
pub const SLOWDOWN_ENV: &str = "AMBASSADOR_TEST_SLOWDOWN";

/// See [`SLOWDOWN_ENV`].
fn slowdown() -> u32 {
    std::env::var(SLOWDOWN_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A wait's deadline on this machine: `d` times [`SLOWDOWN_ENV`].
pub fn stretched(d: Duration) -> Duration {
    d * slowdown()
}

/// Polls `f` until it is true or `timeout` passes (times [`SLOWDOWN_ENV`]); returns whether it
/// became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + stretched(timeout);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub use tempfile::TempDir;

/// A temporary directory named after `what`, removed on drop.
pub fn temp_dir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{what}-"))
        .tempdir()
        .expect("creating a temporary directory")
}

/// Runs `ambassador ARGS` inside `ns` to completion.
pub fn ambassador_in(ns: &NetNs, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg(ambassador_bin())
        .args(args)
        .output()
        .unwrap()
}

/// Like [`ambassador_in`], panicking with the output unless it succeeds.
pub fn ambassador_ok(ns: &NetNs, args: &[&str]) -> String {
    let out = ambassador_in(ns, args);
    assert!(
        out.status.success(),
        "ambassador {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The active backend addresses of a service in `status`.
pub fn active_backends(pin: &Path, service: &str) -> Vec<String> {
    service_status(pin, service)
        .map(|s| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["state"] == "active")
                .map(|b| b["addr"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
