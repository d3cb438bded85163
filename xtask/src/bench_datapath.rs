//! Datapath benchmarks: the same client -> forwarding host -> backend topology, every mode
//! against the same backend in the same run, repetitions interleaved (the machine is noisy:
//! only ratios to `direct` from the same run carry over).

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use ambassador_tests::{Daemon, NetNs, PinDir, Proc, TempFile, Topology};
use anyhow::{bail, Context as _, Result};

const BACKEND: &str = "10.200.1.2";
const LAT_PORT: u16 = 11111;
const TPUT_PORT: u16 = 5201;

/// A way from the client to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    AmbassadorTc,
    Socat,
    Haproxy,
    Iptables,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Direct,
        Mode::AmbassadorTc,
        Mode::Socat,
        Mode::Haproxy,
        Mode::Iptables,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::AmbassadorTc => "ambassador-tc",
            Mode::Socat => "socat",
            Mode::Haproxy => "haproxy",
            Mode::Iptables => "iptables",
        }
    }

    /// Where the client dials for the latency and throughput servers.
    fn target(self) -> (&'static str, u16, u16) {
        match self {
            Mode::Direct => (BACKEND, LAT_PORT, TPUT_PORT),
            Mode::AmbassadorTc => ("10.96.0.10", LAT_PORT, TPUT_PORT),
            Mode::Socat => ("10.200.0.1", 21111, 25201),
            Mode::Haproxy => ("10.200.0.1", 31111, 35201),
            Mode::Iptables => ("10.96.0.20", LAT_PORT, TPUT_PORT),
        }
    }
}

/// What keeps a mode in place while it is measured (dropping it removes the mode).
#[allow(dead_code, reason = "the values are held for their Drop")]
enum Active {
    None,
    Daemon(Daemon),
    Procs(Vec<Proc>),
    Iptables(String),
}

fn iptables_rules(ns: &str, op: &str) -> Result<()> {
    for (port, to) in [(LAT_PORT, LAT_PORT), (TPUT_PORT, TPUT_PORT)] {
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "iptables",
                "-t",
                "nat",
                op,
                "PREROUTING",
                "-d",
                "10.96.0.20",
                "-p",
                "tcp",
            ])
            .args([
                "--dport",
                &port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{BACKEND}:{to}"),
            ])
            .status()?;
        if !st.success() {
            bail!("iptables {op} failed");
        }
    }
    Ok(())
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Active::Iptables(ns) = self {
            let _ = iptables_rules(ns, "-D");
        }
    }
}

fn start(
    mode: Mode,
    topo: &Topology,
    pin: &PinDir,
    cfg: &TempFile,
    haproxy_cfg: &TempFile,
) -> Result<Active> {
    let fwd = &topo.fwd.name;
    let spawn =
        |what: &str, prog: &str, args: &[String]| Proc::spawn(fwd, what, Path::new(prog), args);
    let active = match mode {
        Mode::Direct => Active::None,
        Mode::AmbassadorTc => {
            let mut d = Daemon::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, &[]);
            d.wait_ready();
            Active::Daemon(d)
        }
        Mode::Socat => Active::Procs(
            [(21111, LAT_PORT), (25201, TPUT_PORT)]
                .iter()
                .map(|(from, to)| {
                    spawn(
                        "socat",
                        "/usr/bin/socat",
                        &[
                            format!("TCP-LISTEN:{from},bind=10.200.0.1,fork,reuseaddr,nodelay"),
                            format!("TCP:{BACKEND}:{to},nodelay"),
                        ],
                    )
                })
                .collect(),
        ),
        Mode::Haproxy => Active::Procs(vec![spawn(
            "haproxy",
            "/usr/sbin/haproxy",
            &["-db".into(), "-f".into(), haproxy_cfg.as_str().into()],
        )]),
        Mode::Iptables => {
            iptables_rules(fwd, "-A")?;
            Active::Iptables(fwd.clone())
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    Ok(active)
}

/// sockperf TCP ping-pong, 64 B: half round trip p50, p99, p99.9 in microseconds.
fn latency(client: &NetNs, ip: &str, port: u16, secs: u32) -> Result<[f64; 3]> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "sockperf",
            "ping-pong",
            "--tcp",
            "-m",
            "64",
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

/// iperf3 with `streams` parallel streams: received Gbit/s.
fn throughput(client: &NetNs, ip: &str, port: u16, secs: u32, streams: u32) -> Result<f64> {
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
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("iperf3 to {ip}:{port}: {}", v["error"]))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{min:.1}-{max:.1}")
}

/// Runs every mode `reps` times, interleaved; returns the markdown table and the JSON.
pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, secs) = if quick { (1, 1) } else { (3, 4) };
    let topo = Topology::new(1);
    // Checksum offload back on: the benchmark measures forwarding, not software checksums.
    for (ns, dev) in [
        (&topo.client, "eth0"),
        (&topo.fwd, "c0"),
        (&topo.fwd, "b1"),
        (&topo.backends[0], "eth0"),
    ] {
        ns.exec(&["ethtool", "-K", dev, "tx", "on"]);
    }
    let backend = &topo.backends[0].name;
    let _servers = [
        Proc::spawn(
            backend,
            "sockperf",
            Path::new("/usr/bin/sockperf"),
            &[
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
    std::thread::sleep(Duration::from_millis(500));
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"lat\"\nfrontend = \"10.96.0.10:{LAT_PORT}\"\nendpoints = [\"{BACKEND}:{LAT_PORT}\"]\n\n\
         [[service]]\nname = \"tput\"\nfrontend = \"10.96.0.10:{TPUT_PORT}\"\nendpoints = [\"{BACKEND}:{TPUT_PORT}\"]\n"
    ));
    let haproxy_cfg = TempFile::new(&format!(
        "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend lat\n  bind 10.200.0.1:31111\n  default_backend lat\nbackend lat\n  server s {BACKEND}:{LAT_PORT}\n\
         frontend tput\n  bind 10.200.0.1:35201\n  default_backend tput\nbackend tput\n  server s {BACKEND}:{TPUT_PORT}\n"
    ));

    // mode -> [p50s], [p99s], [p999s], [1-stream], [4-stream]
    let mut results: Vec<[Vec<f64>; 5]> = Mode::ALL.iter().map(|_| Default::default()).collect();
    for rep in 0..reps {
        for (i, mode) in Mode::ALL.iter().enumerate() {
            println!("  rep {}/{reps}: {}", rep + 1, mode.name());
            let _active = start(*mode, &topo, &pin, &cfg, &haproxy_cfg)?;
            let (ip, lp, tp) = mode.target();
            let [p50, p99, p999] = latency(&topo.client, ip, lp, secs)?;
            let r = &mut results[i];
            r[0].push(p50);
            r[1].push(p99);
            r[2].push(p999);
            r[3].push(throughput(&topo.client, ip, tp, secs, 1)?);
            r[4].push(throughput(&topo.client, ip, tp, secs, 4)?);
        }
    }

    let mut med: Vec<[f64; 5]> = Vec::new();
    for r in &mut results {
        med.push([
            median(&mut r[0]),
            median(&mut r[1]),
            median(&mut r[2]),
            median(&mut r[3]),
            median(&mut r[4]),
        ]);
    }
    let d = med[0];
    let mut md = String::from(
        "| mode | p50 us (spread) | p99 us | p99.9 us | p50 vs direct | 1 stream Gbit/s (spread) | vs direct | 4 streams Gbit/s | vs direct |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for (i, mode) in Mode::ALL.iter().enumerate() {
        let m = med[i];
        let _ = writeln!(
            md,
            "| {} | {:.1} ({}) | {:.1} | {:.1} | {:.2}x | {:.2} ({}) | {:.0}% | {:.2} | {:.0}% |",
            mode.name(),
            m[0],
            spread(&results[i][0]),
            m[1],
            m[2],
            m[0] / d[0],
            m[3],
            spread(&results[i][3]),
            100.0 * m[3] / d[3],
            m[4],
            100.0 * m[4] / d[4]
        );
        json.push(serde_json::json!({
            "mode": mode.name(), "p50_us": results[i][0], "p99_us": results[i][1], "p999_us": results[i][2],
            "gbps_1_stream": results[i][3], "gbps_4_streams": results[i][4],
        }));
    }
    Ok((
        md,
        serde_json::json!({ "reps": reps, "seconds": secs, "modes": json }),
    ))
}
