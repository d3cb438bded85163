//! IPv6 through the `tc` and `sock` datapaths against no proxy at all, the same way as the
//! IPv4 table: client -> forwarding host -> backend over IPv6, `direct`, `direct (again)` (the
//! run's resolution), `ambassador-tc6` and `ambassador-sock6` in a random order each
//! repetition, ratios per repetition. sockperf (3.7) speaks no IPv6, so latency is a 64-byte TCP ping-pong of this
//! benchmark's own (the same client for every mode); throughput is iperf3 `-6`.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use ambassador_tests::{Cgroup, Daemon, NetNs, PinDir, Proc, TempFile, Topology};
use anyhow::{bail, Result};

use crate::{
    datapath::{
        bpf_run_ns, conn_rate, run_sock, source_addresses, throughput, tune, BpfStats, RrServer,
        SERVER_CPU,
    },
    stats::{cpu_seconds, pct, shuffled_orders},
    table::{self, render, Col},
    verdict::{self, own_cost, Better, Goal, Per},
};

const BACKEND6: &str = "fd00:200:1::2";
const VIP6: &str = "fd00:96::10";
const LAT_PORT: u16 = 11111;
const CONN_PORT: u16 = 12222;
const TPUT_PORT: u16 = 5201;
const MSG: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    DirectAgain,
    Tc,
    Sock,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Direct, Mode::DirectAgain, Mode::Tc, Mode::Sock];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct6",
            Mode::DirectAgain => "direct6 (again)",
            Mode::Tc => "ambassador-tc6",
            Mode::Sock => "ambassador-sock6",
        }
    }

    fn ip(self) -> &'static str {
        match self {
            Mode::Direct | Mode::DirectAgain => BACKEND6,
            Mode::Tc | Mode::Sock => VIP6,
        }
    }
}

#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu_rt: Vec<f64>,
    bpf_rt: Vec<f64>,
    conn: Vec<f64>,
    gbps: Vec<f64>,
}

/// A 64-byte TCP ping-pong over one connection for `n` round trips: half round trip p50 and
/// p99 in microseconds (sockperf's measure), the machine's busy CPU µs per round trip (softirq
/// included, steal not) and our programs' own run time per round trip, ns (when
/// kernel.bpf_stats_enabled is on).
fn latency(client: &NetNs, ip: &str, n: usize) -> Result<[f64; 4]> {
    let addr: SocketAddr = format!("[{ip}]:{LAT_PORT}").parse()?;
    let (cpu0, bpf0) = (cpu_seconds(), bpf_run_ns());
    let mut us = client.run(move || -> std::io::Result<Vec<f64>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [7u8; MSG];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            out.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
        Ok(out)
    })?;
    let (cpu, bpf) = (cpu_seconds() - cpu0, bpf_run_ns().saturating_sub(bpf0));
    us.sort_by(f64::total_cmp);
    let n = n as f64;
    Ok([
        pct(&us, 0.5),
        pct(&us, 0.99),
        cpu.busy * 1e6 / n,
        bpf as f64 / n,
    ])
}

/// An echo server for the ping-pong: every 64 bytes read are written back, per connection.
fn echo(ns: &NetNs, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let listener = ns.run(move || std::net::TcpListener::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = c.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; MSG];
                while c.read_exact(&mut buf).is_ok() && c.write_all(&buf).is_ok() {}
            });
        }
    })
}

pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, lat_n, secs) = if quick { (1, 2_000, 1) } else { (5, 20_000, 3) };
    let topo = Topology::new(1);
    topo.add_ipv6();
    tune(&topo);
    let backend = &topo.backends[0];
    // The echo server's listener lives as long as the process (its thread never ends).
    let _echo = echo(backend, format!("[{BACKEND6}]:{LAT_PORT}").parse()?);
    let _rr = RrServer::start(backend, &format!("[{BACKEND6}]:{CONN_PORT}"));
    let _iperf = Proc::spawn(
        &backend.name,
        "iperf3",
        Path::new("/usr/bin/taskset"),
        &[
            "-c",
            SERVER_CPU,
            "/usr/bin/iperf3",
            "-s",
            "-B",
            BACKEND6,
            "-p",
            &TPUT_PORT.to_string(),
        ]
        .map(str::to_owned),
    );
    std::thread::sleep(Duration::from_millis(500));
    // The benchmark's own cgroup, where `ambassador-sock6` attaches: its clients (its own
    // threads, iperf3) are in it, nothing else is.
    let mut cgroup = Cgroup::new();
    cgroup.join();
    let mut cfg = String::new();
    for (name, port) in [("lat", LAT_PORT), ("conn", CONN_PORT), ("tput", TPUT_PORT)] {
        let _ = write!(
            cfg,
            "[[service]]\nname = \"{name}\"\nfrontend = \"[{VIP6}]:{port}\"\nendpoints = [\"[{BACKEND6}]:{port}\"]\n\n"
        );
    }
    let cfg = TempFile::new(&cfg);

    // Each mode's connections come from an address of its own.
    let sources = source_addresses(&topo.client, Mode::ALL.len(), true);
    let mut results: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
    // The programs' run time, for the whole run (see the datapath group).
    let _stats = BpfStats::enable();
    for (rep, order) in shuffled_orders(reps, Mode::ALL.len(), 0x6970_7636)
        .into_iter()
        .enumerate()
    {
        for i in order {
            let mode = Mode::ALL[i];
            println!("  rep {}/{reps}: {}", rep + 1, mode.name());
            let _active = match mode {
                Mode::Tc => {
                    let pin = PinDir::new();
                    let mut d = Daemon::run_file(&topo.fwd, "c0", cfg.as_str(), &pin.path, &[]);
                    d.wait_ready();
                    Some((d, pin))
                }
                Mode::Sock => Some(run_sock(&topo.fwd, &cgroup, &cfg)?),
                _ => None,
            };
            let [p50, p99, cpu_rt, bpf_rt] = latency(&topo.client, mode.ip(), lat_n)?;
            let c = conn_rate(
                &topo.client,
                sources[i],
                &format!("[{}]", mode.ip()),
                CONN_PORT,
                secs,
            )?;
            let t = throughput(&topo.client, mode.ip(), TPUT_PORT, secs, 1)?;
            if c.failed > 0 {
                bail!("{}: {} connections failed", mode.name(), c.failed);
            }
            let r = &mut results[i];
            r.p50.push(p50);
            r.p99.push(p99);
            r.cpu_rt.push(cpu_rt);
            r.bpf_rt.push(bpf_rt);
            r.conn.push(c.per_sec);
            r.gbps.push(t.gbps);
        }
    }

    let modes: Vec<_> = Mode::ALL
        .iter()
        .zip(&results)
        .map(|(mode, r)| {
            serde_json::json!({"mode": mode.name(), "p50_us": r.p50, "p99_us": r.p99, "cpu_us_per_round_trip": r.cpu_rt, "bpf_ns_per_round_trip": r.bpf_rt, "conn_per_sec": r.conn, "gbps": r.gbps})
        })
        .collect();
    let json = serde_json::json!({
        "reps": reps, "round_trips": lat_n, "seconds": secs,
        "order": "random per repetition", "modes": modes,
    });
    Ok((table(&json)?, json))
}

/// A goal of IPv6 against no proxy, with `direct6 (again)` as the control.
const fn goal(
    what: &'static str,
    mode: &'static str,
    metric: &'static str,
    better: Better,
    target: f64,
) -> Goal {
    Goal::new(what, (mode, "direct6"), metric, better, target).control("direct6 (again)", "direct6")
}

/// IPv6's goals: as fast as no proxy within 5%, on the wall clock and in CPU per round trip.
pub const GOALS: [Goal; 6] = [
    goal(
        "IPv6 ambassador-tc p50 latency",
        "ambassador-tc6",
        "p50_us",
        Better::Lower,
        1.05,
    ),
    goal(
        "IPv6 ambassador-tc 1-stream throughput",
        "ambassador-tc6",
        "gbps",
        Better::Higher,
        0.95,
    ),
    goal(
        "IPv6 ambassador-sock p50 latency",
        "ambassador-sock6",
        "p50_us",
        Better::Lower,
        1.05,
    ),
    goal(
        "IPv6 ambassador-sock 1-stream throughput",
        "ambassador-sock6",
        "gbps",
        Better::Higher,
        0.95,
    ),
    goal(
        "IPv6 ambassador-tc CPU per round trip",
        "ambassador-tc6",
        "cpu_us_per_round_trip",
        Better::Lower,
        1.05,
    ),
    goal(
        "IPv6 ambassador-sock CPU per round trip",
        "ambassador-sock6",
        "cpu_us_per_round_trip",
        Better::Lower,
        1.05,
    ),
];

/// What the programs cost a round trip of IPv6, as a share of direct6's whole CPU time per
/// round trip (see the datapath group's `OWN_COST`).
pub const OWN_COST: [Goal; 2] = [
    own_cost(
        "IPv6 ambassador-tc's programs per round trip",
        ("ambassador-tc6", "direct6"),
        Per::RoundTrip,
        0.05,
    ),
    own_cost(
        "IPv6 ambassador-sock's programs per round trip",
        ("ambassador-sock6", "direct6"),
        Per::RoundTrip,
        0.05,
    ),
];

/// The settings, the table and the goals, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let s = table::Samples::new(&json["modes"])?;
    let mut md = format!(
        "Client -> forwarding host -> backend over IPv6 (veth, checksum offload on), {} repetitions, the modes in a random order in each; latency: a 64-byte TCP ping-pong, {} round trips (half round trip); connections: one 64-byte request per connection for {secs} s; throughput: iperf3 -6, one stream, {secs} s. Ratios are the median of per-repetition ratios to direct6, with their min-max.\n\n",
        json["reps"],
        json["round_trips"],
        secs = json["seconds"],
    );
    md += &render(
        &s,
        "mode",
        &[
            ("p50 us", Col::Spread("p50_us", 1)),
            ("p50 / direct", Col::Ratio("p50_us", "direct6")),
            ("p99 us", Col::Median("p99_us", 1)),
            (
                "CPU µs per round trip",
                Col::Spread("cpu_us_per_round_trip", 2),
            ),
            (
                "CPU / direct",
                Col::Ratio("cpu_us_per_round_trip", "direct6"),
            ),
            (
                "eBPF ns per round trip",
                Col::Median("bpf_ns_per_round_trip", 0),
            ),
            ("conn/s", Col::Median("conn_per_sec", 0)),
            ("conn / direct", Col::Ratio("conn_per_sec", "direct6")),
            ("Gbit/s", Col::Median("gbps", 2)),
            ("Gbit/s / direct", Col::Ratio("gbps", "direct6")),
        ],
    )?;
    md += "\nGoals:\n\n";
    md += &verdict::list(&s, &GOALS)?;
    md += "\nThe same goals on what the datapath itself costs: our programs' own run time per round trip (kernel-timed, kernel.bpf_stats_enabled) as a share of direct6's whole CPU time per round trip.\n\n";
    md += &verdict::list(&s, &OWN_COST)?;
    Ok(md)
}
