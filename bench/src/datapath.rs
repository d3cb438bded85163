//! Datapath benchmarks: the same client -> forwarding host -> backend topology, every mode
//! against the same backend in the same run, repetitions interleaved (the machine is noisy:
//! only ratios to `direct` from the same run carry over).

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ambassador_tests::{Cgroup, Daemon, NetNs, PinDir, Proc, TempFile, Topology};
use anyhow::{bail, Context as _, Result};

use crate::stats::{cpu_seconds, median, pct, ratio, shuffled_orders, spread};

pub const BACKEND: &str = "10.200.1.2";
pub const LAT_PORT: u16 = 11111;
pub const CONN_PORT: u16 = 12222;
pub const TPUT_PORT: u16 = 5201;
/// Size of every request and response (latency and connection rate).
const MSG: usize = 64;

/// A way from the client to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The client dials the backend: the physical limit.
    Direct,
    /// `direct` once more in each repetition: its ratio to `direct` is what "no difference"
    /// looks like, so its spread is the run's resolution.
    DirectAgain,
    AmbassadorTc,
    /// The socket datapath: the client's own sockets are translated at connect().
    AmbassadorSock,
    Socat,
    Haproxy,
    Iptables,
}

impl Mode {
    const ALL: [Mode; 7] = [
        Mode::Direct,
        Mode::DirectAgain,
        Mode::AmbassadorTc,
        Mode::AmbassadorSock,
        Mode::Socat,
        Mode::Haproxy,
        Mode::Iptables,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::DirectAgain => "direct (again)",
            Mode::AmbassadorTc => "ambassador-tc",
            Mode::AmbassadorSock => "ambassador-sock",
            Mode::Socat => "socat",
            Mode::Haproxy => "haproxy",
            Mode::Iptables => "iptables",
        }
    }

    /// Where the client dials: the address, then the ports for latency, connection rate and
    /// throughput.
    fn target(self) -> (&'static str, [u16; 3]) {
        match self {
            Mode::Direct | Mode::DirectAgain => (BACKEND, [LAT_PORT, CONN_PORT, TPUT_PORT]),
            Mode::AmbassadorTc | Mode::AmbassadorSock => {
                ("10.96.0.10", [LAT_PORT, CONN_PORT, TPUT_PORT])
            }
            Mode::Socat => ("10.200.0.1", [21111, 22222, 25201]),
            Mode::Haproxy => ("10.200.0.1", [31111, 32222, 35201]),
            Mode::Iptables => ("10.96.0.20", [LAT_PORT, CONN_PORT, TPUT_PORT]),
        }
    }
}

/// What keeps a mode in place while it is measured (dropping it removes the mode).
#[allow(dead_code, reason = "the values are held for their Drop")]
enum Active {
    None,
    /// The daemon, and its pin directory: removing that detaches the programs, whose links
    /// are pinned and outlive the daemon.
    Daemon(Daemon, PinDir),
    Procs(Vec<Proc>),
    Iptables(String),
}

/// `iptables-restore --noflush` input: `op` (`-A`/`-D`) DNAT rules in PREROUTING for
/// `frontend`'s ports, to the same ports on `backend`.
pub fn dnat_rules(op: &str, frontend: &str, backend: &str, ports: &[u16]) -> String {
    let mut s = String::new();
    for port in ports {
        let _ = writeln!(
            s,
            "{op} PREROUTING -d {frontend}/32 -p tcp -m tcp --dport {port} -j DNAT --to-destination {backend}:{port}"
        );
    }
    s
}

/// Applies nat-table rules in `ns` with one `iptables-restore --noflush` (fast for 10,000).
pub fn iptables_restore(ns: &str, rules: &str) -> Result<()> {
    use std::process::Stdio;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("*nat\n{rules}COMMIT\n").as_bytes())?;
    if !child.wait()?.success() {
        bail!("iptables-restore in {ns} failed");
    }
    Ok(())
}

const PORTS: [u16; 3] = [LAT_PORT, CONN_PORT, TPUT_PORT];

impl Drop for Active {
    fn drop(&mut self) {
        if let Active::Iptables(ns) = self {
            let _ = iptables_restore(ns, &dnat_rules("-D", "10.96.0.20", BACKEND, &PORTS));
        }
    }
}

fn start(mode: Mode, bed: &Bed, cfg: &TempFile, haproxy_cfg: &TempFile) -> Result<Active> {
    let topo = &bed.topo;
    let fwd = &topo.fwd.name;
    let spawn =
        |what: &str, prog: &str, args: &[String]| Proc::spawn(fwd, what, Path::new(prog), args);
    let mut active = match mode {
        Mode::Direct | Mode::DirectAgain => Active::None,
        Mode::AmbassadorTc => {
            let pin = PinDir::new();
            let mut d = Daemon::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, &[]);
            d.wait_ready();
            Active::Daemon(d, pin)
        }
        Mode::AmbassadorSock => {
            // The benchmark's own cgroup: its clients (sockperf, iperf3, its own threads) are
            // in it; nothing else is.
            let (d, pin) = run_sock(&topo.fwd, &bed.cgroup, cfg)?;
            Active::Daemon(d, pin)
        }
        Mode::Socat => {
            let (_, ports) = mode.target();
            Active::Procs(
                ports
                    .iter()
                    .zip(PORTS)
                    .map(|(from, to)| {
                        spawn(
                            "socat",
                            "/usr/bin/socat",
                            &[
                                format!("TCP-LISTEN:{from},bind=10.200.0.1,fork,reuseaddr,nodelay,backlog=1024"),
                                format!("TCP:{BACKEND}:{to},nodelay"),
                            ],
                        )
                    })
                    .collect(),
            )
        }
        Mode::Haproxy => Active::Procs(vec![spawn(
            "haproxy",
            "/usr/sbin/haproxy",
            &["-db".into(), "-f".into(), haproxy_cfg.as_str().into()],
        )]),
        Mode::Iptables => {
            iptables_restore(fwd, &dnat_rules("-A", "10.96.0.20", BACKEND, &PORTS))?;
            Active::Iptables(fwd.clone())
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    if let Active::Procs(procs) = &mut active {
        for p in procs {
            if !p.running() {
                bail!("{} exited at start: {}", mode.name(), p.log());
            }
        }
    }
    Ok(active)
}

fn haproxy_config() -> String {
    let mut s = String::from(
        "global\n  maxconn 2000\ndefaults\n  mode tcp\n  option tcp-smart-connect\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    let (_, ports) = Mode::Haproxy.target();
    for (from, to) in ports.iter().zip(PORTS) {
        let _ = write!(
            s,
            "listen p{from}\n  bind 10.200.0.1:{from}\n  server s {BACKEND}:{to}\n"
        );
    }
    s
}

/// The CPUs the latency client and server are pinned to (`taskset`): each always on its own
/// core, so neither migrates nor waits behind the other between repetitions.
const CLIENT_CPU: &str = "0";
/// See [`CLIENT_CPU`].
const SERVER_CPU: &str = "1";

/// sockperf TCP ping-pong, 64 B: half round trip p50, p99, p99.9 in microseconds.
pub fn latency(client: &NetNs, ip: &str, port: u16, secs: u32) -> Result<[f64; 3]> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "taskset",
            "-c",
            CLIENT_CPU,
            "sockperf",
            "ping-pong",
            "--tcp",
            "-m",
            &MSG.to_string(),
        ])
        .args(["-i", ip, "-p", &port.to_string(), "-t", &secs.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pct = |p: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p} =")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
    };
    match (pct("50.000"), pct("99.000"), pct("99.900")) {
        (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
        _ => bail!(
            "sockperf to {ip}:{port} gave no percentiles: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// One iperf3 run: received Gbit/s, and the whole machine's CPU seconds per GB received.
pub struct Throughput {
    pub gbps: f64,
    pub cpu_s_per_gb: f64,
}

/// iperf3 with `streams` parallel streams.
pub fn throughput(
    client: &NetNs,
    ip: &str,
    port: u16,
    secs: u32,
    streams: u32,
) -> Result<Throughput> {
    let (busy0, _) = cpu_seconds();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "iperf3",
            "-J",
            "-c",
            ip,
            "-p",
            &port.to_string(),
        ])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
        .output()?;
    let (busy1, _) = cpu_seconds();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) if bytes > 0.0 => Ok(Throughput {
            gbps: bps / 1e9,
            cpu_s_per_gb: (busy1 - busy0) / (bytes / 1e9),
        }),
        _ => bail!("iperf3 to {ip}:{port}: {}", v["error"]),
    }
}

/// A server that answers one request per connection: read 64 B, write 64 B, wait for the
/// client to close.
pub struct RrServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RrServer {
    pub fn start(ns: &NetNs, addr: &str) -> Self {
        let addr: SocketAddr = addr.parse().expect("address");
        let listener = ns.run(move || TcpListener::bind(addr).expect("bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; MSG];
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_nodelay(true);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                        if conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {
                            // The client closes first, so TIME_WAIT stays on its side (where
                            // tcp_tw_reuse recycles it) and no SYN meets a backend in
                            // TIME_WAIT: otherwise port reuse stalls connections for a
                            // retransmission timeout, unevenly between modes.
                            let _ = conn.read(&mut buf);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// New connections, one at a time, for `secs`: connect, send 64 B, read 64 B, close.
pub struct ConnRate {
    pub per_sec: f64,
    /// Median time of one whole connection, microseconds.
    pub p50_us: f64,
    pub failed: u64,
}

pub fn conn_rate(client: &NetNs, ip: &str, port: u16, secs: u32) -> Result<ConnRate> {
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    client.run(move || {
        let one = || -> std::io::Result<()> {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(1)))?;
            c.write_all(&[7u8; MSG])?;
            let mut buf = [0u8; MSG];
            c.read_exact(&mut buf)
        };
        let start = Instant::now();
        let end = start + Duration::from_secs(secs.into());
        let (mut times, mut failed) = (Vec::new(), 0u64);
        while Instant::now() < end {
            let t0 = Instant::now();
            match one() {
                Ok(()) => times.push(t0.elapsed().as_secs_f64() * 1e6),
                Err(_) => failed += 1,
            }
        }
        if times.is_empty() {
            bail!("no connection to {addr} succeeded ({failed} failed)");
        }
        let per_sec = times.len() as f64 / start.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        Ok(ConnRate {
            per_sec,
            p50_us: pct(&times, 0.5),
            failed,
        })
    })
}

/// `ambassador run --datapath sock` in `ns` for the processes of `cgroup`, with the services
/// of `cfg`, waited for; and its pin directory.
pub fn run_sock(ns: &NetNs, cgroup: &Cgroup, cfg: &TempFile) -> Result<(Daemon, PinDir)> {
    let pin = PinDir::new();
    let args = [
        "run",
        "--datapath",
        "sock",
        "--cgroup-path",
        cgroup.arg(),
        "--config",
        cfg.as_str(),
        "--pin-path",
        pin.path.to_str().context("UTF-8 pin path")?,
    ];
    let mut d = Daemon::start(ns, &args);
    d.wait_ready();
    Ok((d, pin))
}

/// Average run time per packet of the newest loaded program called `name` (needs
/// `kernel.bpf_stats_enabled`): (runs, ns per run).
pub fn prog_ns_per_run(name: &str) -> Option<(u64, f64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let p = v
        .as_array()?
        .iter()
        .filter(|p| p["name"] == name)
        .max_by_key(|p| p["id"].as_u64())?;
    let (ns, cnt) = (p["run_time_ns"].as_u64()?, p["run_cnt"].as_u64()?);
    (cnt > 0).then(|| (cnt, ns as f64 / cnt as f64))
}

/// Sets `kernel.bpf_stats_enabled` for as long as it lives, then restores the old value.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> Self {
        const P: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(P).unwrap_or_else(|_| "0".into());
        let _ = std::fs::write(P, "1");
        Self(old)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
    }
}

/// Readies a one-backend topology for measuring: checksum offload back on (the benchmark
/// measures forwarding, not software checksums), and for many short connections a wide port
/// range and TIME_WAIT reuse everywhere (these IPv4-named settings govern IPv6 TCP too).
pub fn tune(topo: &Topology) {
    for (ns, dev) in [
        (&topo.client, "eth0"),
        (&topo.fwd, "c0"),
        (&topo.fwd, "b1"),
        (&topo.backends[0], "eth0"),
    ] {
        ns.exec(&["ethtool", "-K", dev, "tx", "on"]);
    }
    for ns in [&topo.client, &topo.fwd, &topo.backends[0]] {
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"]);
        ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    }
}

/// The topology with its servers on the backend: sockperf, iperf3 and the one-request server;
/// and the cgroup this process joins, where `ambassador-sock` attaches (dropped last: it
/// moves the process back out).
pub struct Bed {
    pub topo: Topology,
    _servers: Vec<Proc>,
    _rr: RrServer,
    cgroup: Cgroup,
}

impl Bed {
    pub fn new() -> Result<Self> {
        let topo = Topology::new(1);
        tune(&topo);
        // Netfilter conntrack active on the forwarding host in every mode, as on any Docker
        // host (otherwise only the modes that run after the first iptables one would pay it).
        iptables_restore(&topo.fwd.name, "-A POSTROUTING -d 192.0.2.1/32 -j RETURN\n")?;
        let backend = &topo.backends[0].name;
        let servers = vec![
            Proc::spawn(
                backend,
                "sockperf",
                Path::new("/usr/bin/taskset"),
                &[
                    "-c".into(),
                    SERVER_CPU.into(),
                    "/usr/bin/sockperf".into(),
                    "server".into(),
                    "--tcp".into(),
                    "-i".into(),
                    BACKEND.into(),
                    "-p".into(),
                    LAT_PORT.to_string(),
                ],
            ),
            Proc::spawn(
                backend,
                "iperf3",
                Path::new("/usr/bin/iperf3"),
                &[
                    "-s".into(),
                    "-B".into(),
                    BACKEND.into(),
                    "-p".into(),
                    TPUT_PORT.to_string(),
                ],
            ),
        ];
        let rr = RrServer::start(&topo.backends[0], &format!("{BACKEND}:{CONN_PORT}"));
        std::thread::sleep(Duration::from_millis(500));
        let mut cgroup = Cgroup::new();
        cgroup.join();
        Ok(Self {
            topo,
            _servers: servers,
            _rr: rr,
            cgroup,
        })
    }
}

/// Every figure of one mode, one entry per repetition.
#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    gbps1: Vec<f64>,
    gbps4: Vec<f64>,
    cpu_per_gb: Vec<f64>,
    conn_per_sec: Vec<f64>,
    conn_p50: Vec<f64>,
    conn_failed: u64,
}

/// What the datapath run produced: the markdown table, the JSON, and the medians per mode for
/// the chart: (mode, p50 us, p50 min, p50 max, Gbit/s 1 stream, min, max).
pub struct Report {
    pub md: String,
    pub json: serde_json::Value,
    pub chart: Vec<(String, [f64; 6])>,
}

/// How long and how often: latency is the noisiest figure on a small machine, so it gets
/// many short repetitions; throughput and connection rate get fewer, longer ones.
struct Plan {
    reps: usize,
    lat_secs: u32,
    /// The first `heavy_reps` repetitions also measure throughput and connection rate.
    heavy_reps: usize,
    heavy_secs: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                reps: 1,
                lat_secs: 1,
                heavy_reps: 1,
                heavy_secs: 1,
            }
        } else {
            Self {
                reps: 10,
                lat_secs: 2,
                heavy_reps: 3,
                heavy_secs: 3,
            }
        }
    }
}

/// Runs every mode `plan.reps` times, interleaved, in a new random order each repetition (a
/// fixed seed: runs are comparable). A rotated fixed order kept each mode behind the same
/// predecessor, and that alone made `direct` 9% slower than `direct (again)` in every
/// repetition.
pub fn run(quick: bool) -> Result<Report> {
    let plan = Plan::new(quick);
    let bed = Bed::new()?;
    let topo = &bed.topo;
    let mut cfg = String::new();
    for (name, port) in [("lat", LAT_PORT), ("conn", CONN_PORT), ("tput", TPUT_PORT)] {
        let _ = write!(
            cfg,
            "[[service]]\nname = \"{name}\"\nfrontend = \"10.96.0.10:{port}\"\nendpoints = [\"{BACKEND}:{port}\"]\n\n"
        );
    }
    let cfg = TempFile::new(&cfg);
    let haproxy_cfg = TempFile::new(&haproxy_config());

    let mut results: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
    let mut prog_ns: Vec<(String, u64, f64)> = Vec::new();
    let orders = shuffled_orders(plan.reps, Mode::ALL.len(), 0x616d_6261);
    for (rep, order) in orders.into_iter().enumerate() {
        let heavy = rep < plan.heavy_reps;
        for i in order {
            let mode = Mode::ALL[i];
            println!("  rep {}/{}: {}", rep + 1, plan.reps, mode.name());
            let stats = (heavy && mode == Mode::AmbassadorTc).then(BpfStats::enable);
            let active = start(mode, &bed, &cfg, &haproxy_cfg)?;
            let (ip, [lp, cp, tp]) = mode.target();
            let r = &mut results[i];
            let [p50, p99, p999] = latency(&topo.client, ip, lp, plan.lat_secs)?;
            r.p50.push(p50);
            r.p99.push(p99);
            r.p999.push(p999);
            if heavy {
                let secs = plan.heavy_secs;
                let t1 = throughput(&topo.client, ip, tp, secs, 1)?;
                r.gbps1.push(t1.gbps);
                r.cpu_per_gb.push(t1.cpu_s_per_gb);
                r.gbps4
                    .push(throughput(&topo.client, ip, tp, secs, 4)?.gbps);
                let c = conn_rate(&topo.client, ip, cp, secs)?;
                r.conn_per_sec.push(c.per_sec);
                r.conn_p50.push(c.p50_us);
                r.conn_failed += c.failed;
            }
            if stats.is_some() {
                for prog in ["amb_tc_dnat", "amb_tc_rnat"] {
                    if let Some((runs, ns)) = prog_ns_per_run(prog) {
                        prog_ns.push((prog.to_owned(), runs, ns));
                    }
                }
            }
            drop(active);
        }
    }

    let meds: Vec<[f64; 8]> = results
        .iter()
        .map(|r| {
            [
                median(&mut r.p50.clone()),
                median(&mut r.p99.clone()),
                median(&mut r.p999.clone()),
                median(&mut r.gbps1.clone()),
                median(&mut r.gbps4.clone()),
                median(&mut r.cpu_per_gb.clone()),
                median(&mut r.conn_per_sec.clone()),
                median(&mut r.conn_p50.clone()),
            ]
        })
        .collect();
    let direct = &results[0];
    let mut md = String::from(
        "Ratios to direct are the median of per-repetition ratios (each mode measured back to back with direct in every repetition), with their min-max.\n\n| mode | p50 us (spread) | p99 us | p99.9 us | p50 vs direct (spread) | 1 stream Gbit/s (spread) | vs direct (spread) | 4 streams Gbit/s | vs direct | CPU s/GB | vs direct | conn/s (spread) | vs direct (spread) | conn p50 us |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    let mut chart = Vec::new();
    for (i, mode) in Mode::ALL.iter().enumerate() {
        let (m, r) = (meds[i], &results[i]);
        let p50 = ratio(&r.p50, &direct.p50, 2);
        let gbps1 = ratio(&r.gbps1, &direct.gbps1, 2);
        let gbps4 = ratio(&r.gbps4, &direct.gbps4, 2);
        let cpu = ratio(&r.cpu_per_gb, &direct.cpu_per_gb, 2);
        let conn = ratio(&r.conn_per_sec, &direct.conn_per_sec, 2);
        let _ = writeln!(
            md,
            "| {} | {:.1} ({}) | {:.1} | {:.1} | {:.2}x ({}) | {:.2} ({}) | {:.2}x ({}) | {:.2} | {:.2}x | {:.2} | {:.2}x | {:.0} ({}) | {:.2}x ({}) | {:.0} |",
            mode.name(),
            m[0],
            spread(&r.p50, 1),
            m[1],
            m[2],
            p50.0,
            p50.1,
            m[3],
            spread(&r.gbps1, 1),
            gbps1.0,
            gbps1.1,
            m[4],
            gbps4.0,
            m[5],
            cpu.0,
            m[6],
            spread(&r.conn_per_sec, 0),
            conn.0,
            conn.1,
            m[7],
        );
        json.push(serde_json::json!({
            "mode": mode.name(), "p50_us": r.p50, "p99_us": r.p99, "p999_us": r.p999,
            "gbps_1_stream": r.gbps1, "gbps_4_streams": r.gbps4, "cpu_s_per_gb": r.cpu_per_gb,
            "conn_per_sec": r.conn_per_sec, "conn_p50_us": r.conn_p50, "conn_failed": r.conn_failed,
        }));
        let lo = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        chart.push((
            mode.name().to_owned(),
            [
                m[0],
                lo(&r.p50),
                hi(&r.p50),
                m[3],
                lo(&r.gbps1),
                hi(&r.gbps1),
            ],
        ));
    }
    let again = &results[1];
    let (lat, conn) = (
        ratio(&again.p50, &direct.p50, 2),
        ratio(&again.conn_per_sec, &direct.conn_per_sec, 2),
    );
    let mut again_p50: Vec<f64> = again
        .p50
        .iter()
        .zip(&direct.p50)
        .map(|(a, b)| a / b)
        .collect();
    again_p50.sort_by(f64::total_cmp);
    let _ = writeln!(
        md,
        "\nResolution of this run: `direct (again)` is direct measured a second time in each of the {} repetitions (median {:.2}x); its per-repetition p50 ratio to direct spans {} (middle half {:.2}-{:.2}) and its connection-rate ratio {} ({} repetitions). Differences inside those ranges cannot be told from noise.",
        plan.reps,
        lat.0,
        lat.1,
        pct(&again_p50, 0.25),
        pct(&again_p50, 0.75),
        conn.1,
        plan.heavy_reps
    );
    let failed: u64 = results.iter().map(|r| r.conn_failed).sum();
    if failed > 0 {
        let _ = writeln!(
            md,
            "\nFailed connections during the connection-rate runs: {failed}."
        );
    }
    if !prog_ns.is_empty() {
        let _ = writeln!(
            md,
            "\nambassador-tc's programs (kernel.bpf_stats_enabled, every packet of a repetition):"
        );
        for (prog, runs, ns) in &prog_ns {
            let _ = writeln!(md, "- {prog}: {ns:.0} ns per packet over {runs} packets");
        }
    }
    let progs: Vec<_> = prog_ns
        .iter()
        .map(|(p, runs, ns)| serde_json::json!({"program": p, "runs": runs, "ns_per_run": ns}))
        .collect();
    Ok(Report {
        md,
        json: serde_json::json!({
            "latency_reps": plan.reps, "latency_seconds": plan.lat_secs,
            "heavy_reps": plan.heavy_reps, "heavy_seconds": plan.heavy_secs,
            "modes": json, "programs": progs,
        }),
        chart,
    })
}
