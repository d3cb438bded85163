//! Datapath benchmarks: the same client -> forwarding host -> backend topology, every mode
//! against the same backend in the same run, repetitions interleaved (the machine is noisy:
//! only ratios to `direct` from the same run carry over).

use std::{
    fmt::Write as _, io::Write as _, net::IpAddr, path::Path, process::Command, time::Duration,
};

use ambassador_tests::{Cgroup, Daemon, PinDir, Proc, TempFile, Topology};
use anyhow::{bail, Context as _, Result};

mod report;
mod tools;

pub use report::{table, GOALS, OWN_COST};
pub use tools::*;

use crate::stats::shuffled_orders;

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
                Path::new("/usr/bin/taskset"),
                &[
                    "-c".into(),
                    SERVER_CPU.into(),
                    "/usr/bin/iperf3".into(),
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
    /// Every repetition's latency at each of [`PERCENTILES`].
    percentiles: Vec<[f64; 8]>,
    /// What a round trip of the latency run cost: CPU µs, eBPF ns, packets on the forwarding
    /// host's client-facing link; and the share of CPU time stolen during the run.
    cpu_rt: Vec<f64>,
    /// The machine's busy CPU µs, and our programs' ns, per connection of the connection-rate
    /// run.
    cpu_conn: Vec<f64>,
    bpf_conn: Vec<f64>,
    bpf_rt: Vec<f64>,
    pkts_rt: Vec<f64>,
    steal: Vec<f64>,
    gbps1: Vec<f64>,
    gbps4: Vec<f64>,
    cpu_per_gb: Vec<f64>,
    conn_per_sec: Vec<f64>,
    conn_p50: Vec<f64>,
    conn_failed: u64,
}

impl Samples {
    /// One repetition of `mode` (already in place): latency, and in a heavy repetition
    /// throughput and connection rate too.
    fn measure(
        &mut self,
        topo: &Topology,
        m: (Mode, IpAddr),
        plan: &Plan,
        heavy: bool,
    ) -> Result<()> {
        let (mode, source) = m;
        let (ip, [lp, cp, tp]) = mode.target();
        let l = latency(&topo.client, ip, lp, plan.lat_secs, (&topo.fwd, "c0"))?;
        self.percentiles.push(l.pct);
        self.cpu_rt.push(l.cpu_us_per_round_trip);
        self.bpf_rt.push(l.bpf_ns_per_round_trip);
        self.pkts_rt.push(l.packets_per_round_trip);
        self.steal.push(l.steal);
        if heavy {
            let secs = plan.heavy_secs;
            let t1 = throughput(&topo.client, ip, tp, secs, 1)?;
            self.gbps1.push(t1.gbps);
            self.cpu_per_gb.push(t1.cpu_s_per_gb);
            self.gbps4
                .push(throughput(&topo.client, ip, tp, secs, 4)?.gbps);
            let c = conn_rate(&topo.client, source, ip, cp, secs)?;
            self.conn_per_sec.push(c.per_sec);
            self.conn_p50.push(c.p50_us);
            self.cpu_conn.push(c.cpu_us_per_conn);
            self.bpf_conn.push(c.bpf_ns_per_conn);
            self.conn_failed += c.failed;
        }
        Ok(())
    }

    /// The record of `mode`'s samples.
    fn json(&self, mode: Mode) -> serde_json::Value {
        let at = |i: usize| self.percentiles.iter().map(|p| p[i]).collect::<Vec<_>>();
        serde_json::json!({
            "mode": mode.name(), "p50_us": at(P50), "p99_us": at(P99), "p999_us": at(P999),
            "latency_percentiles_us": self.percentiles,
            "cpu_us_per_round_trip": self.cpu_rt, "bpf_ns_per_round_trip": self.bpf_rt,
            "packets_per_round_trip": self.pkts_rt, "steal_share": self.steal,
            "cpu_us_per_conn": self.cpu_conn, "bpf_ns_per_conn": self.bpf_conn,
            "gbps_1_stream": self.gbps1, "gbps_4_streams": self.gbps4, "cpu_s_per_gb": self.cpu_per_gb,
            "conn_per_sec": self.conn_per_sec, "conn_p50_us": self.conn_p50, "conn_failed": self.conn_failed,
        })
    }
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
                heavy_reps: 5,
                heavy_secs: 3,
            }
        }
    }
}

/// Runs every mode `plan.reps` times, interleaved, in a new random order each repetition (a
/// fixed seed: runs are comparable). A rotated fixed order kept each mode behind the same
/// predecessor, and that alone made `direct` 9% slower than `direct (again)` in every
/// repetition.
pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
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

    // Each mode's connections come from an address of its own.
    let sources = source_addresses(&topo.client, Mode::ALL.len(), false);
    let mut results: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
    let mut prog_ns: Vec<(String, u64, f64)> = Vec::new();
    // The programs' run time, for the whole run: it counts what each round trip costs in
    // eBPF, at the price of two clock reads per program run (charged to the ambassador modes
    // alone, so a bias against them).
    let _stats = BpfStats::enable();
    let orders = shuffled_orders(plan.reps, Mode::ALL.len(), 0x616d_6261);
    for (rep, order) in orders.into_iter().enumerate() {
        let heavy = rep < plan.heavy_reps;
        for i in order {
            let mode = Mode::ALL[i];
            println!("  rep {}/{}: {}", rep + 1, plan.reps, mode.name());
            let active = start(mode, &bed, &cfg, &haproxy_cfg)?;
            results[i].measure(topo, (mode, sources[i]), &plan, heavy)?;
            if heavy && mode == Mode::AmbassadorTc {
                for prog in ["amb_tc_dnat", "amb_tc_rnat"] {
                    if let Some((runs, ns)) = prog_ns_per_run(prog) {
                        prog_ns.push((prog.to_owned(), runs, ns));
                    }
                }
            }
            drop(active);
        }
    }

    let modes: Vec<_> = Mode::ALL
        .iter()
        .zip(&results)
        .map(|(mode, r)| r.json(*mode))
        .collect();
    let progs: Vec<_> = prog_ns
        .iter()
        .map(|(p, runs, ns)| serde_json::json!({"program": p, "runs": runs, "ns_per_run": ns}))
        .collect();
    let json = serde_json::json!({
        "latency_reps": plan.reps, "latency_seconds": plan.lat_secs,
        "heavy_reps": plan.heavy_reps, "heavy_seconds": plan.heavy_secs,
        "order": "random per repetition", "percentiles": PERCENTILES, "modes": modes,
        "programs": progs,
    });
    Ok((report::table(&json)?, json))
}
