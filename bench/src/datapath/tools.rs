//! The measuring tools of the datapath groups (sockperf, iperf3, a connection-rate client and
//! its server) and the kernel's own run-time statistics of the eBPF programs.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ambassador_tests::{Cgroup, Daemon, NetNs, PinDir, TempFile, Topology};
use anyhow::{bail, Context as _, Result};

use super::MSG;
use crate::stats::{cpu_seconds, pct};
/// The CPUs the latency client and server are pinned to (`taskset`): each always on its own
/// core, so neither migrates nor waits behind the other between repetitions.
pub const CLIENT_CPU: &str = "0";
/// See [`CLIENT_CPU`].
pub const SERVER_CPU: &str = "1";

/// The percentiles of a latency run, as sockperf reports them.
pub const PERCENTILES: [f64; 8] = [25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999];
/// Where the median, p99 and p99.9 are in [`PERCENTILES`].
pub const P50: usize = 1;
pub const P99: usize = 4;
pub const P999: usize = 5;
const _: () =
    assert!(PERCENTILES[P50] == 50.0 && PERCENTILES[P99] == 99.0 && PERCENTILES[P999] == 99.9);

/// One latency run: the half round trip at each of [`PERCENTILES`] (µs), and what each round
/// trip cost: the machine's busy CPU time (softirq included, steal not), our eBPF programs' own
/// run time (kernel.bpf_stats_enabled, when on) and the packets the forwarding host's
/// client-facing link carried; and the share of the run's CPU time the hypervisor stole.
pub struct Latency {
    pub pct: [f64; 8],
    pub cpu_us_per_round_trip: f64,
    pub bpf_ns_per_round_trip: f64,
    pub packets_per_round_trip: f64,
    pub steal: f64,
}

/// sockperf TCP ping-pong, 64 B, for `secs`; `link` is the forwarding host's client-facing
/// link, whose packets are counted.
pub fn latency(
    client: &NetNs,
    ip: &str,
    port: u16,
    secs: u32,
    link: (&NetNs, &str),
) -> Result<Latency> {
    let packets = || -> Result<u64> { Ok(packet_counts(link.0, link.1)?.iter().sum()) };
    let (cpu0, bpf0, pkts0) = (cpu_seconds(), bpf_run_ns(), packets()?);
    let out = on_client_cpu(client, "sockperf")
        .args(["ping-pong", "--tcp", "-m", &MSG.to_string()])
        .args(["-i", ip, "-p", &port.to_string(), "-t", &secs.to_string()])
        .output()?;
    let cpu = cpu_seconds() - cpu0;
    let bpf = bpf_run_ns().saturating_sub(bpf0);
    let pkts = packets()?.saturating_sub(pkts0);
    let text = String::from_utf8_lossy(&out.stdout);
    let pct = |p: f64| -> Option<f64> {
        text.lines()
            .find(|l| l.contains(&format!("percentile {p:.3} =")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|v| v.trim().parse().ok())
    };
    // "[Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=N; ReceivedMessages=M":
    // every round trip of the run, warm-up included, as the CPU time is.
    let round_trips: Option<f64> = text
        .lines()
        .find(|l| l.contains("[Total Run]"))
        .and_then(|l| l.rsplit("ReceivedMessages=").next())
        .and_then(|v| v.trim().parse().ok());
    let found: Option<Vec<f64>> = PERCENTILES.iter().map(|p| pct(*p)).collect();
    match (
        found.and_then(|v| <[f64; 8]>::try_from(v).ok()),
        round_trips,
    ) {
        (Some(pct), Some(n)) if n > 0.0 => Ok(Latency {
            pct,
            cpu_us_per_round_trip: cpu.busy * 1e6 / n,
            bpf_ns_per_round_trip: bpf as f64 / n,
            packets_per_round_trip: pkts as f64 / n,
            steal: cpu.steal / cpu.total.max(f64::MIN_POSITIVE),
        }),
        _ => bail!(
            "sockperf to {ip}:{port} gave no percentiles or round trips: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Packets `dev` in `ns` has received and sent so far.
pub fn packet_counts(ns: &NetNs, dev: &str) -> Result<[u64; 2]> {
    let out = ns.ip(&["-j", "-s", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j -s link")?;
    let stats = &v[0]["stats64"];
    match (
        stats["rx"]["packets"].as_u64(),
        stats["tx"]["packets"].as_u64(),
    ) {
        (Some(rx), Some(tx)) => Ok([rx, tx]),
        _ => bail!("no packet counters for {dev}: {out}"),
    }
}

/// `program` in `client`'s namespace, pinned to [`CLIENT_CPU`].
fn on_client_cpu(client: &NetNs, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &client.name,
        "taskset",
        "-c",
        CLIENT_CPU,
        program,
    ]);
    cmd
}

/// Every loaded eBPF program, as `bpftool prog show -j` lists them (none if it cannot).
fn loaded_programs() -> Vec<serde_json::Value> {
    Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default()
}

/// The run time so far of every loaded program of ours (`amb_*`), in ns: 0 unless
/// kernel.bpf_stats_enabled is on.
pub fn bpf_run_ns() -> u64 {
    loaded_programs()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("amb_")))
        .filter_map(|p| p["run_time_ns"].as_u64())
        .sum()
}

/// One iperf3 run: received Gbit/s, and the whole machine's CPU seconds per GB received.
pub struct Throughput {
    pub gbps: f64,
    pub cpu_s_per_gb: f64,
}

/// iperf3 with `streams` parallel streams, the client pinned to [`CLIENT_CPU`] (its server,
/// to [`SERVER_CPU`]), as the latency client and server are: left to the scheduler, where
/// the two land differs from run to run, and one stream's rate with it.
pub fn throughput(
    client: &NetNs,
    ip: &str,
    port: u16,
    secs: u32,
    streams: u32,
) -> Result<Throughput> {
    let before = cpu_seconds();
    let out = on_client_cpu(client, "iperf3")
        .args(["-J", "-c", ip, "-p", &port.to_string()])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
        .output()?;
    let used = cpu_seconds() - before;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    let sum = &v["end"]["sum_received"];
    match (sum["bits_per_second"].as_f64(), sum["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) if bytes > 0.0 => Ok(Throughput {
            gbps: bps / 1e9,
            cpu_s_per_gb: used.busy / (bytes / 1e9),
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
        // accept() waits for a connection (at most 100 ms, SO_RCVTIMEO, to see `stop`): a
        // server that polled and slept 200 µs between attempts made every connection wait
        // for its next attempt, and the connection rate measured the server's sleep.
        socket2::SockRef::from(&listener)
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("SO_RCVTIMEO");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; MSG];
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
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
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // Anything else (out of files, say): not in a tight loop.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
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
    /// The machine's busy CPU time per connection (softirq included, steal not), µs.
    pub cpu_us_per_conn: f64,
    /// Our programs' own run time per connection, ns (when kernel.bpf_stats_enabled is on).
    pub bpf_ns_per_conn: f64,
}

/// `n` addresses of the client's own, one for each mode that dials from one (`10.200.0.100`,
/// `10.200.0.101`, ...; or `fd00:200::100`, ...). A connection the client closes stays in TIME_WAIT for a minute and
/// makes every later connect() in the same address pair search further for a free port: modes
/// that dial the same address from the same address would pay for each other's connections.
pub fn source_addresses(client: &NetNs, n: usize, v6: bool) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            let (addr, prefix): (IpAddr, u8) = if v6 {
                (format!("fd00:200::{}", 100 + i).parse().expect("IPv6"), 64)
            } else {
                (format!("10.200.0.{}", 100 + i).parse().expect("IPv4"), 24)
            };
            let cidr = format!("{addr}/{prefix}");
            let mut args = vec!["addr", "add", cidr.as_str(), "dev", "eth0"];
            if v6 {
                args.push("nodad");
            }
            client.ip(&args);
            addr
        })
        .collect()
}

/// A connected socket from `source` (its port chosen at connect(), as an unbound socket's is).
fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect_timeout(&addr.into(), Duration::from_secs(1))?;
    Ok(s.into())
}

/// See [`ConnRate`]; every connection from `source` (see [`source_addresses`]).
pub fn conn_rate(
    client: &NetNs,
    source: IpAddr,
    ip: &str,
    port: u16,
    secs: u32,
) -> Result<ConnRate> {
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    client.run(move || {
        let one = || -> std::io::Result<()> {
            let mut c = connect_from(source, addr)?;
            c.set_nodelay(true)?;
            c.set_read_timeout(Some(Duration::from_secs(1)))?;
            c.write_all(&[7u8; MSG])?;
            let mut buf = [0u8; MSG];
            c.read_exact(&mut buf)
        };
        let (start, cpu0, bpf0) = (Instant::now(), cpu_seconds(), bpf_run_ns());
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
        let (cpu, bpf) = (cpu_seconds() - cpu0, bpf_run_ns().saturating_sub(bpf0));
        let per_sec = times.len() as f64 / start.elapsed().as_secs_f64();
        let cpu_us_per_conn = cpu.busy * 1e6 / times.len() as f64;
        let bpf_ns_per_conn = bpf as f64 / times.len() as f64;
        times.sort_by(f64::total_cmp);
        Ok(ConnRate {
            per_sec,
            p50_us: pct(&times, 0.5),
            failed,
            cpu_us_per_conn,
            bpf_ns_per_conn,
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
    let programs = loaded_programs();
    let p = programs
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
