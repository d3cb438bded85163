//! Harness for ambassador's privileged tests: network namespaces, veth links, bpffs pin
//! directories and daemon processes, each behind a Drop guard so a failing test cleans up too.
//! Names are unique per process and call, so tests run in parallel.

pub mod image;
pub mod metrics;
pub mod prometheus;
pub mod scenario;
pub mod testbed;
pub mod traffic;

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

/// A running `ambassador` (run or register), stopped (SIGTERM, then SIGKILL) on drop. Its log
/// is printed when the test fails.
pub struct Daemon {
    proc: Proc,
}

impl Daemon {
    /// Starts `ambassador ARGS` inside `ns` (by nsenter: `ip netns exec` would hide bpffs).
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        Self::start_env(ns, args, &[])
    }

    /// `ambassador run --iface IFACE --config CONFIG --pin-path PIN EXTRA...` inside `ns`
    /// (not waited for: call [`Daemon::wait_ready`] or [`Daemon::wait_exit`]).
    pub fn run_file(ns: &NetNs, iface: &str, config: &str, pin: &Path, extra: &[&str]) -> Self {
        Self::run_from(ns, iface, ["--config", config], pin, extra)
    }

    /// `ambassador run --iface IFACE --etcd URLS --pin-path PIN EXTRA...` inside `ns` (not
    /// waited for, like [`Daemon::run_file`]).
    pub fn run_etcd(ns: &NetNs, iface: &str, urls: &str, pin: &Path, extra: &[&str]) -> Self {
        Self::run_from(ns, iface, ["--etcd", urls], pin, extra)
    }

    fn run_from(ns: &NetNs, iface: &str, source: [&str; 2], pin: &Path, extra: &[&str]) -> Self {
        let mut args = Self::run_args(iface, source, pin);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(ns, &args)
    }

    /// The arguments of [`Daemon::run_file`] without the extras, for running the binary some
    /// other way (another path, under setpriv).
    pub fn run_file_args(iface: &str, config: &str, pin: &Path) -> Vec<String> {
        Self::run_args(iface, ["--config", config], pin)
    }

    /// `run --iface IFACE SOURCE --pin-path PIN`, SOURCE being `--config FILE` or `--etcd URLS`.
    fn run_args(iface: &str, source: [&str; 2], pin: &Path) -> Vec<String> {
        let pin = pin.to_str().expect("UTF-8 pin path");
        [
            "run",
            "--iface",
            iface,
            source[0],
            source[1],
            "--pin-path",
            pin,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_env(ns: &NetNs, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_bin(ns, &ambassador_bin(), args, envs)
    }

    /// Like [`Daemon::start_env`], running the binary at `bin` (an upgrade, say).
    pub fn start_bin(ns: &NetNs, bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self {
            proc: Proc::spawn_env(&ns.name, "ambassador", bin, &args, envs),
        }
    }

    /// The gateway's daemon (`c0`, plus `extra` flags) with one service, `web` at `vip` over
    /// `b1` and `b2`, ready; with its pin directory and configuration file, which outlive it.
    pub fn run_web(
        topo: &Topology,
        vip: &str,
        b1: &str,
        b2: &str,
        extra: &[&str],
    ) -> (PinDir, TempFile, Daemon) {
        let pin = PinDir::new();
        let cfg = TempFile::new(&format!(
            "[[service]]\nname = \"web\"\nfrontend = \"{vip}\"\nendpoints = [\"{b1}\", \"{b2}\"]\n",
        ));
        let mut d = Self::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, extra);
        d.wait_ready();
        (pin, cfg, d)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Waits until the process logs `ready`; panics with its log if it exits or times out.
    pub fn wait_ready(&mut self) {
        self.wait_log(" ready ", Duration::from_secs(10));
    }

    /// Waits until the log contains `needle`; panics with the log if it exits or times out.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let ok = wait_until(timeout, || {
            assert!(self.proc.running(), "ambassador exited:\n{}", self.log());
            self.log().contains(needle)
        });
        assert!(
            ok,
            "no {needle:?} in the log after {timeout:?}:\n{}",
            self.log()
        );
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        self.proc.signal(sig);
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.wait_exit(timeout)
    }

    /// Its pid (nsenter and setpriv exec, so this is ambassador's own).
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// A TCP server that greets each connection with its identity line, then echoes.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: &str, ident: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = ns.run(move || TcpListener::bind(addr).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ident = ident.to_owned();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let ident = ident.clone();
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            let _ = writeln!(conn, "{ident}");
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `addr` and reads the server's identity line.
pub fn tcp_connect(ns: &NetNs, addr: &str) -> std::io::Result<(BufReader<TcpStream>, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    read_ident(stream, Duration::from_secs(2))
}

/// Connects from the calling thread's namespace (inside [`NetNs::run`] or [`NetNs::spawn`])
/// and reads the server's identity line; `timeout` bounds the connect and each read.
pub fn tcp_connect_here(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<(BufReader<TcpStream>, String)> {
    read_ident(TcpStream::connect_timeout(&addr, timeout)?, timeout)
}

fn read_ident(
    stream: TcpStream,
    timeout: Duration,
) -> std::io::Result<(BufReader<TcpStream>, String)> {
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream);
    let mut ident = String::new();
    reader.read_line(&mut ident)?;
    Ok((reader, ident.trim().to_owned()))
}

/// Sends a line on an open connection and reads its echo.
pub fn tcp_echo(conn: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<String> {
    writeln!(conn.get_mut(), "{line}")?;
    let mut back = String::new();
    conn.read_line(&mut back)?;
    Ok(back.trim().to_owned())
}

/// A UDP server that answers each datagram with `ident:` and the datagram.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    received: Arc<AtomicU32>,
}

impl UdpServer {
    /// Binds `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: &str, ident: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let sock = ns.run(move || UdpSocket::bind(addr).unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU32::new(0));
        let (stop2, received2, ident) = (stop.clone(), received.clone(), ident.to_owned());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    received2.fetch_add(1, Ordering::Relaxed);
                    let mut reply = format!("{ident}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
            received,
        }
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u32 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP client socket in `ns`, connected to `addr`.
pub fn udp_client(ns: &NetNs, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    let sock = ns.run(move || {
        let any = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(any).unwrap();
        s.connect(addr).unwrap();
        s
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock
}

/// The client -> forwarding host -> backends topology of the integration tests:
///
/// ```text
/// client 10.200.0.2 --eth0/c0-- fwd 10.200.0.1 | 10.200.N.1 --bN/eth0-- backend N 10.200.N.2
/// ```
///
/// The client's default route is the forwarding host, which forwards and runs ambassador with
/// `--iface c0`. Every link has transmit checksum offload off.
pub struct Topology {
    /// The client.
    pub client: NetNs,
    /// The forwarding host.
    pub fwd: NetNs,
    /// The backends, `backends[i]` at `10.200.{i+1}.2`.
    pub backends: Vec<NetNs>,
}

impl Topology {
    /// Builds the topology with `n` backends.
    pub fn new(n: usize) -> Self {
        let client = NetNs::new("c");
        let fwd = NetNs::new("f");
        veth(
            &client,
            "eth0",
            "10.200.0.2/24",
            &fwd,
            "c0",
            "10.200.0.1/24",
        );
        client.ip(&["route", "add", "default", "via", "10.200.0.1"]);
        fwd.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut backends = Vec::new();
        for i in 1..=n {
            let b = NetNs::new(&format!("b{i}"));
            veth(
                &fwd,
                &format!("b{i}"),
                &format!("10.200.{i}.1/24"),
                &b,
                "eth0",
                &format!("10.200.{i}.2/24"),
            );
            b.ip(&["route", "add", "default", "via", &format!("10.200.{i}.1")]);
            backends.push(b);
        }
        Self {
            client,
            fwd,
            backends,
        }
    }

    /// A TCP server on every backend at `port`, each greeting with its name ("b1", "b2"...).
    pub fn greeters(&self, port: u16) -> Vec<TcpServer> {
        (1..=self.backends.len())
            .map(|i| {
                TcpServer::start(
                    &self.backends[i - 1],
                    &Self::backend_addr(i, port),
                    &format!("b{i}"),
                )
            })
            .collect()
    }

    /// Address of backend `i` (1-based) on `port`.
    pub fn backend_addr(i: usize, port: u16) -> String {
        format!("10.200.{i}.2:{port}")
    }

    /// Adds IPv6 beside IPv4: the client `fd00:200::2/64` (default route via the forwarding
    /// host's `fd00:200::1`), backend N `fd00:200:N::2/64` (via `fd00:200:N::1`), forwarding on.
    /// Addresses skip duplicate address detection, so they are usable at once.
    pub fn add_ipv6(&self) {
        let add = |ns: &NetNs, addr: &str, dev: &str| {
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        };
        add(&self.client, "fd00:200::2/64", "eth0");
        add(&self.fwd, "fd00:200::1/64", "c0");
        self.client
            .ip(&["-6", "route", "add", "default", "via", "fd00:200::1"]);
        self.fwd
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (i, b) in self.backends.iter().enumerate() {
            let n = i + 1;
            add(&self.fwd, &format!("fd00:200:{n}::1/64"), &format!("b{n}"));
            add(b, &format!("fd00:200:{n}::2/64"), "eth0");
            b.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:200:{n}::1"),
            ]);
        }
        // The links' own link-local addresses go through duplicate address detection (about
        // a second), and neighbour discovery is unreliable until it ends.
        let all: Vec<&NetNs> = [&self.client, &self.fwd]
            .into_iter()
            .chain(&self.backends)
            .collect();
        let settled = wait_until(Duration::from_secs(10), || {
            all.iter().all(|ns| {
                ns.ip(&["-6", "addr", "show", "tentative"])
                    .trim()
                    .is_empty()
            })
        });
        assert!(settled, "IPv6 addresses still tentative after 10 s");
    }

    /// IPv6 address of backend `i` (1-based) on `port`.
    pub fn backend_addr6(i: usize, port: u16) -> String {
        format!("[fd00:200:{i}::2]:{port}")
    }
}

/// A temporary file, removed on drop.
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
}

impl TempFile {
    /// Creates it with `contents`.
    pub fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(unique("ambassador-test-"));
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    /// Replaces its contents (atomically, as an editor or config manager would).
    pub fn write(&self, contents: &str) {
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Its path as a string.
    pub fn as_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process started inside a namespace (by nsenter), killed on drop. Its output goes to a
/// log file, printed when the test fails.
pub struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Proc {
    /// Starts `program ARGS` in the namespace named `ns`.
    pub fn spawn(ns: &str, what: &str, program: &Path, args: &[String]) -> Self {
        Self::spawn_env(ns, what, program, args, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_env(
        ns: &str,
        what: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg(program)
            .args(args)
            .env("AMBASSADOR_LOG", "debug")
            .envs(envs.iter().copied());
        Self::start(what, cmd)
    }

    /// Starts `cmd` with its output going to a log file (read with [`Proc::log`]).
    pub fn start(what: &str, mut cmd: Command) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique(&format!("{what}-"))));
        let file = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Self {
            child,
            log,
            what: what.to_owned(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit code if it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(grace);
        if code.is_none() {
            self.kill();
        }
        code
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}\n---- end ----", self.what, self.log());
        }
        if self.running() {
            self.stop(Duration::from_secs(3));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

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

pub use tempfile::TempDir;

/// A temporary directory named after `what`, removed on drop.
pub fn temp_dir(what: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{what}-"))
        .tempdir()
        .expect("creating a temporary directory")
}

/// One etcd member (Debian's etcd-server) inside a test namespace.
pub struct EtcdMember {
    /// Member name.
    pub name: String,
    /// Its client URL (inside the namespace).
    pub url: String,
    args: Vec<String>,
    ns: String,
    /// The running process (None while stopped).
    pub proc: Option<Proc>,
    _data: TempDir,
}

impl EtcdMember {
    /// Starts (or restarts, keeping its data) the member.
    pub fn start(&mut self) {
        self.proc = Some(Proc::spawn(
            &self.ns,
            &self.name,
            Path::new("/usr/bin/etcd"),
            &self.args,
        ));
    }

    /// Kills the member (SIGKILL: no goodbye to its peers).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// openssl's flags for a new P-256 key (fast to make), unencrypted.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Certificates for TLS tests, made with openssl: a CA, a server certificate for 127.0.0.1 and
/// a client certificate (CN `root`).
pub struct Certs {
    /// Where the PEM files are.
    pub dir: TempDir,
}

impl Certs {
    /// Generates the CA, server and client certificates (P-256 keys: fast to make).
    pub fn new() -> Self {
        let dir = temp_dir("certs");
        let d = dir.path().to_str().unwrap().to_owned();
        let mut ca = vec![
            "openssl",
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=ambassador-test-ca",
        ];
        ca.extend_from_slice(&EC_KEY);
        let (ca_key, ca_crt) = (format!("{d}/ca.key"), format!("{d}/ca.crt"));
        ca.extend_from_slice(&["-keyout", &ca_key, "-out", &ca_crt]);
        sh(&ca);
        let certs = Self { dir };
        certs.issue("server", "etcd", "subjectAltName=IP:127.0.0.1");
        certs.client("client", "root");
        certs
    }

    /// Issues a client certificate `<name>.crt` (and `<name>.key`) with CN `cn`: to etcd with
    /// `--client-cert-auth`, the user `cn`.
    pub fn client(&self, name: &str, cn: &str) {
        self.issue(name, cn, "extendedKeyUsage=clientAuth");
    }

    fn issue(&self, name: &str, cn: &str, ext: &str) {
        let d = self.dir.path().to_str().unwrap().to_owned();
        let (ca_key, ca_crt) = (format!("{d}/ca.key"), format!("{d}/ca.crt"));
        let (key, csr, crt, extfile) = (
            format!("{d}/{name}.key"),
            format!("{d}/{name}.csr"),
            format!("{d}/{name}.crt"),
            format!("{d}/{name}.ext"),
        );
        std::fs::write(&extfile, format!("{ext}\n")).unwrap();
        let subj = format!("/CN={cn}");
        let mut req = vec![
            "openssl", "req", "-subj", &subj, "-keyout", &key, "-out", &csr,
        ];
        req.extend_from_slice(&EC_KEY);
        sh(&req);
        sh(&[
            "openssl",
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &crt,
            "-extfile",
            &extfile,
        ]);
    }

    /// Path of one PEM file (`ca.crt`, `server.key`, `client.crt`...).
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_owned()
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

/// `etcd grpc-proxy` (Debian's etcd-server) in front of a cluster, inside its namespace: it
/// coalesces identical watches, as a zone of hosts would run it. Stopped on drop.
pub struct EtcdProxy {
    /// Its client URL (inside the namespace).
    pub url: String,
    proc: Proc,
    _data: TempDir,
}

impl EtcdProxy {
    /// Starts a proxy in `ns` (etcd's namespace) for `etcd`'s members, listening at `listen`
    /// (`127.0.0.1:23790`, or `0.0.0.0:23790` for clients in other namespaces), once it
    /// accepts connections.
    pub fn start(ns: &NetNs, etcd: &Etcd, listen: &str) -> Self {
        let members: Vec<String> = etcd
            .members
            .iter()
            .map(|m| m.url.trim_start_matches("http://").to_owned())
            .collect();
        let data = temp_dir("grpc-proxy");
        let args = vec![
            "grpc-proxy".to_owned(),
            "start".to_owned(),
            format!("--endpoints={}", members.join(",")),
            format!("--listen-addr={listen}"),
            format!("--data-dir={}", data.path().display()),
        ];
        let proc = Proc::spawn(&ns.name, "grpc-proxy", Path::new("/usr/bin/etcd"), &args);
        let port = listen.rsplit(':').next().expect("ADDR:PORT");
        let local: SocketAddr = format!("127.0.0.1:{port}").parse().expect("a port");
        let up = ns.run(move || {
            wait_until(Duration::from_secs(15), || {
                TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok()
            })
        });
        assert!(
            up,
            "etcd grpc-proxy did not listen on {listen}:\n{}",
            proc.log()
        );
        Self {
            url: format!("http://127.0.0.1:{port}"),
            proc,
            _data: data,
        }
    }

    /// The proxy's process id.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// etcd for a test: one member, or a cluster of members on 127.0.0.1 inside `ns` (clients in
/// other namespaces reach a single member on the namespace's addresses, port 2379).
pub struct Etcd {
    /// The members.
    pub members: Vec<EtcdMember>,
    ns: String,
    /// etcdctl's TLS flags, when the members serve TLS.
    tls_flags: Vec<String>,
}

impl Etcd {
    /// A single member listening on every address of `ns`, port 2379.
    pub fn single(ns: &NetNs) -> Self {
        Self::build(ns, 1, None, None)
    }

    /// A single member serving TLS and requiring client certificates signed by `certs`' CA.
    pub fn single_tls(ns: &NetNs, certs: &Certs) -> Self {
        Self::build(ns, 1, Some(certs), None)
    }

    /// A cluster of `n` members on 127.0.0.1 inside `ns`.
    pub fn cluster(ns: &NetNs, n: usize) -> Self {
        Self::build(ns, n, None, None)
    }

    /// A cluster of `n` members whose data directories are under `data_root` (`/dev/shm`: on
    /// tmpfs), not the system's temporary directory.
    pub fn cluster_in(ns: &NetNs, n: usize, data_root: &Path) -> Self {
        Self::build(ns, n, None, Some(data_root))
    }

    fn build(ns: &NetNs, n: usize, tls: Option<&Certs>, data_root: Option<&Path>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let cluster_token = unique("etcd-");
        let peers: Vec<(String, u16, u16)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    2379 + 10000 * i as u16,
                    2380 + 10000 * i as u16,
                )
            })
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let members = peers
            .iter()
            .map(|(name, client, peer)| {
                let data = match data_root {
                    Some(root) => tempfile::Builder::new()
                        .prefix("etcd-data-")
                        .tempdir_in(root)
                        .expect("creating etcd's data directory"),
                    None => temp_dir("etcd-data"),
                };
                let listen = if n == 1 {
                    format!("{scheme}://0.0.0.0:{client}")
                } else {
                    format!("{scheme}://127.0.0.1:{client}")
                };
                let mut args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", data.path().display()),
                    format!("--listen-client-urls={listen}"),
                    format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    format!("--initial-cluster-token={cluster_token}"),
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                ];
                if let Some(c) = tls {
                    args.extend([
                        format!("--cert-file={}", c.path("server.crt")),
                        format!("--key-file={}", c.path("server.key")),
                        format!("--trusted-ca-file={}", c.path("ca.crt")),
                        "--client-cert-auth".to_owned(),
                    ]);
                }
                EtcdMember {
                    name: name.clone(),
                    url: format!("{scheme}://127.0.0.1:{client}"),
                    args,
                    ns: ns.name.clone(),
                    proc: None,
                    _data: data,
                }
            })
            .collect();
        let tls_flags = tls
            .map(|c| {
                vec![
                    format!("--cacert={}", c.path("ca.crt")),
                    format!("--cert={}", c.path("client.crt")),
                    format!("--key={}", c.path("client.key")),
                ]
            })
            .unwrap_or_default();
        let mut etcd = Self {
            members,
            ns: ns.name.clone(),
            tls_flags,
        };
        for m in &mut etcd.members {
            m.start();
        }
        etcd.wait_healthy(Duration::from_secs(15));
        etcd
    }

    /// The client URLs of the members, comma-separated.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(|m| m.url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `etcdctl ARGS` against the running members, inside the namespace.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| m.url.clone())
            .collect();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args([
                "etcdctl",
                "--command-timeout=3s",
                "--endpoints",
                &urls.join(","),
            ])
            .args(&self.tls_flags)
            .args(args)
            .output()
            .unwrap()
    }

    /// Waits until a quorum answers.
    pub fn wait_healthy(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            self.ctl(&["put", "/health-probe", "ok"]).status.success()
        });
        if !ok {
            let logs: Vec<String> = self
                .members
                .iter()
                .filter_map(|m| m.proc.as_ref().map(|p| format!("{}:\n{}", m.name, p.log())))
                .collect();
            panic!("etcd not healthy after {timeout:?}:\n{}", logs.join("\n"));
        }
    }

    /// Index of the current leader.
    pub fn leader(&self) -> usize {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("endpoint status json");
        let entries = v.as_array().expect("array");
        let leader_id = entries[0]["Status"]["leader"].as_u64().expect("leader id");
        let endpoint = entries
            .iter()
            .find(|e| e["Status"]["header"]["member_id"].as_u64() == Some(leader_id))
            .and_then(|e| e["Endpoint"].as_str())
            .expect("leader endpoint")
            .to_owned();
        self.members
            .iter()
            .position(|m| m.url == endpoint)
            .expect("leader is a member")
    }
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

/// Sends an HTTP/1.0 GET from `ns` to `addr` and names who answered: the body of an HTTP
/// answer, or the greeting line of a [`TcpServer`].
pub fn identify(ns: &NetNs, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if n == 0 || (!text.starts_with("HTTP/") && text.contains('\n')) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    Ok(match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/") => body.trim().to_owned(),
        _ => text.lines().next().unwrap_or("").trim().to_owned(),
    })
}

/// An HTTP/1.0 GET from `ns` to `addr`; returns the body.
pub fn http_get(ns: &NetNs, addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut stream = ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(body.trim().to_owned())
}

/// A redis-server in `ns` bound to `ip`:6379.
pub fn redis_server(ns: &NetNs, ip: &str) -> Proc {
    let args: Vec<String> = [
        "--bind",
        ip,
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();
    Proc::spawn(&ns.name, "redis", Path::new("redis-server"), &args)
}

/// Waits until something accepts TCP connections at `addr` inside `ns`; panics after 5 s.
pub fn wait_for_port(ns: &NetNs, addr: &str) {
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let up = wait_until(Duration::from_secs(5), || {
        ns.run(move || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
        })
    });
    assert!(up, "nothing listens on {addr} in {}", ns.name);
}

/// `dig ARGS` inside `ns` (one try, 2 s): its whole output.
pub fn dig(ns: &NetNs, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=2", "+tries=1"];
    full.extend_from_slice(args);
    ns.exec(&full)
}

/// The `status:` of a dig output (NOERROR, NXDOMAIN, REFUSED...).
pub fn dig_status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output:\n{out}"))
}

/// The header flags of a dig output (`qr aa rd`...).
pub fn dig_flags(out: &str) -> Vec<&str> {
    out.split("flags: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("no flags in dig's output:\n{out}"))
        .split_whitespace()
        .collect()
}

/// `/etc/netns/NS/resolv.conf` (what `ip netns exec` shows a namespace as /etc/resolv.conf),
/// removed on drop.
pub struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    /// Makes `nameserver` the resolver of processes started with `ip netns exec NS`.
    pub fn new(ns: &NetNs, nameserver: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        Self { dir }
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's dnsmasq.
pub const DNSMASQ_BIN: &str = "/usr/sbin/dnsmasq";
/// How tests run dnsmasq: in the foreground, reading neither /etc/hosts nor resolv.conf nor
/// a configuration file, bound to the addresses it is given.
pub const DNSMASQ_ARGS: [&str; 7] = [
    "--keep-in-foreground",
    "--no-hosts",
    "--no-resolv",
    "--bind-interfaces",
    "--pid-file=",
    "--conf-file=/dev/null",
    "--user=root",
];

/// dnsmasq in `ns` ([`DNSMASQ_ARGS`]): `args` say what it does.
pub fn dnsmasq(ns: &NetNs, args: &[&str]) -> Proc {
    let mut all: Vec<String> = DNSMASQ_ARGS.map(str::to_owned).to_vec();
    all.extend(args.iter().map(|a| a.to_string()));
    Proc::spawn(&ns.name, "dnsmasq", Path::new(DNSMASQ_BIN), &all)
}

/// `ambassador socks` in a namespace: the SOCKS5 door for clients outside the fleet.
pub struct SocksDoor {
    /// The running door.
    pub proc: Proc,
    ns: String,
}

impl SocksDoor {
    /// Starts the door in `ns` listening at `listen` for `allow_client`, following etcd at
    /// `etcd`, with `extra` flags; returns once it has its names.
    pub fn start(ns: &NetNs, etcd: &str, listen: &str, allow_client: &str, extra: &[&str]) -> Self {
        Self::start_limited(ns, etcd, listen, allow_client, extra, None)
    }

    /// Like [`SocksDoor::start`], under `prlimit --nofile=NOFILE` (`SOFT:HARD`) when given.
    pub fn start_limited(
        ns: &NetNs,
        etcd: &str,
        listen: &str,
        allow_client: &str,
        extra: &[&str],
        nofile: Option<&str>,
    ) -> Self {
        let (program, mut args) = match nofile {
            Some(n) => {
                let door = ambassador_bin().display().to_string();
                let limit = vec![format!("--nofile={n}"), "--".into(), door];
                (PathBuf::from("/usr/bin/prlimit"), limit)
            }
            None => (ambassador_bin(), Vec::new()),
        };
        args.extend(
            [
                "socks",
                "--listen",
                listen,
                "--allow-client",
                allow_client,
                "--metrics-addr",
                "127.0.0.1:0",
                "--etcd",
                etcd,
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(&ns.name, "socks", &program, &args);
        let ready = wait_until(Duration::from_secs(10), || {
            proc.log().contains("socks: ready")
        });
        assert!(ready, "the door never got ready:\n{}", proc.log());
        Self {
            proc,
            ns: ns.name.clone(),
        }
    }

    /// The value of the door's metric `name` with `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let page = metrics::scrape(&self.ns, &self.proc.log());
        metrics::value(&page, name, labels).unwrap_or_else(|| panic!("no {name} in\n{page}"))
    }
}

/// `curl --socks5-hostname DOOR URL` from `ns` (names resolved by the door): (exit code,
/// body).
pub fn curl_socks(ns: &NetNs, door: &str, url: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["netns", "exec", &ns.name, "curl", "-sS", "--max-time", "5"];
    args.extend_from_slice(&["--socks5-hostname", door]);
    args.extend_from_slice(extra);
    args.push(url);
    let out = Command::new("ip").args(&args).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.code().unwrap_or(-1), body)
}

/// `ambassador monitor --pin-path PIN --json EXTRA...` in `ns`, started once `daemon` (the one
/// whose maps are pinned there) has turned its datapath's flow events on for it.
pub fn monitor(ns: &NetNs, daemon: &mut Daemon, pin: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["monitor", "--pin-path", pin.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let m = Daemon::start(ns, &args);
    daemon.wait_log("flow events are on", Duration::from_secs(5));
    m
}

/// The events a `monitor --json` printed (its own log lines left out).
pub fn monitor_events(monitor: &Daemon) -> Vec<serde_json::Value> {
    monitor
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
        .collect()
}

/// Debian's Chromium, headless, in `ns` with `--proxy-server=socks5://DOOR` (Chromium sends
/// every name to a SOCKS5 proxy): loads `url`, saves a screenshot at `screenshot`, and
/// returns the page's DOM as Chromium built it.
pub fn chromium_through_socks(ns: &NetNs, door: &str, url: &str, screenshot: &Path) -> String {
    chromium(
        ns,
        &[&format!("--proxy-server=socks5://{door}")],
        url,
        screenshot,
    )
}

/// Debian's Chromium, headless, in `ns`, with `args` added: loads `url`, saves a screenshot at
/// `screenshot`, then loads it again and returns the page's DOM as Chromium built it.
pub fn chromium(ns: &NetNs, args: &[&str], url: &str, screenshot: &Path) -> String {
    let profile = temp_dir("chromium");
    let shot = format!("--screenshot={}", screenshot.display());
    let dir = format!("--user-data-dir={}", profile.path().display());
    let run = |what: &[&str]| {
        let mut all = vec!["netns", "exec", &ns.name, "timeout", "60", "chromium"];
        all.extend_from_slice(&[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ]);
        all.extend_from_slice(&[&dir, "--window-size=800,300"]);
        all.extend_from_slice(args);
        all.extend_from_slice(what);
        all.push(url);
        let out = Command::new("ip").args(&all).output().unwrap();
        assert!(
            out.status.success(),
            "chromium {what:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[&shot]);
    run(&["--dump-dom"])
}

/// Where tests save screenshots (`target/screenshots/NAME`, the folder made, the old file
/// gone).
pub fn screenshot_path(name: &str) -> PathBuf {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(name);
    let _ = std::fs::remove_file(&shot);
    shot
}
