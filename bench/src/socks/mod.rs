//! The SOCKS5 door against Debian's dante-server and microsocks, and no proxy at all, on one
//! path: loopback in a namespace of its own, the servers (an echo and a sink) at 10.77.0.1,
//! every proxy pinned to CPU 0, the clients and servers to CPU 1. Each repetition measures
//! every mode in a random order, the modes taking turns within each row's rounds; ratios to
//! `direct` are per repetition.
//!
//! - connections per second: 4 clients in a loop of connect, SOCKS handshake (the door: by
//!   the service's name; the others: by address, as they know no names), 1 byte each way;
//! - a small request on an open tunnel: 64 bytes each way, one at a time, in four rounds
//!   (p50, p99 over them all);
//! - one stream's throughput: 1 GiB (16 MiB in a quick run) to the sink, the median of three
//!   rounds;
//! - CPU per GB: CPU 0's busy time (the proxy's, all its processes and their kernel work)
//!   during the stream, per GB moved; beside it, CPU 1's busy share of the stream's time.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use ambassador_tests::{ambassador_bin, wait_until, Etcd, NetNs, Proc, TempFile};
use anyhow::{bail, Context as _, Result};
use fast_socks5::client::{Config, Socks5Stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::stats::{cpu_busy_seconds, pct, shuffled_orders};

mod report;
use report::record;
pub use report::{table, GOALS};

const ECHO: &str = "10.77.0.1:9000";
const SINK: &str = "10.77.0.1:9001";
/// Answers one read and closes first, so that TIME_WAIT stays on the servers' side and a
/// run of many connections does not use up the clients' ports.
const ONCE: &str = "10.77.0.1:9002";
const PROXY_CPU: usize = 0;
const SPLICE_MODE: &str = "ambassador socks, splice";
const CLIENT_CPU: usize = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Ambassador,
    /// The door with `--copy splice`, measured against its default (read-write).
    AmbassadorSplice,
    Dante,
    Microsocks,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Direct,
        Mode::Ambassador,
        Mode::AmbassadorSplice,
        Mode::Dante,
        Mode::Microsocks,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Ambassador => "ambassador socks",
            Mode::AmbassadorSplice => SPLICE_MODE,
            Mode::Dante => "dante",
            Mode::Microsocks => "microsocks",
        }
    }

    fn proxy(self) -> Option<&'static str> {
        match self {
            Mode::Direct => None,
            Mode::Ambassador => Some("127.0.0.1:1080"),
            Mode::Dante => Some("127.0.0.1:1081"),
            Mode::Microsocks => Some("127.0.0.1:1082"),
            Mode::AmbassadorSplice => Some("127.0.0.1:1083"),
        }
    }

    /// What the client asks the proxy for: the door knows the services' names.
    fn target(self, server: &str) -> (String, u16) {
        let addr: SocketAddr = server.parse().expect("an address");
        if !matches!(self, Mode::Ambassador | Mode::AmbassadorSplice) {
            return (addr.ip().to_string(), addr.port());
        }
        let name = match addr.port() {
            9000 => "echo",
            9001 => "sink",
            _ => "once",
        };
        (format!("{name}.ambassador.internal"), addr.port())
    }
}

/// A connection to `server`, through the mode's proxy.
async fn open(mode: Mode, server: &str) -> Result<tokio::net::TcpStream> {
    let stream = match mode.proxy() {
        None => tokio::net::TcpStream::connect(server).await?,
        Some(proxy) => {
            let (host, port) = mode.target(server);
            Socks5Stream::connect(proxy, host, port, Config::default())
                .await
                .with_context(|| format!("{} to {server}", mode.name()))?
                .get_socket()
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Default)]
struct Samples {
    cps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    gbps: Vec<f64>,
    cpu_per_gb: Vec<f64>,
    client_busy: Vec<f64>,
}

/// Pins the calling thread (and the threads it starts) to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Sink,
    Once,
}

/// The echo server (what it reads, back) and the sink (a length, that many bytes, then one
/// byte back), each a thread per connection, until `stop` is set and a connection wakes
/// them.
fn servers(ns: &NetNs, stop: Arc<AtomicBool>) {
    for (addr, kind) in [(ECHO, Kind::Echo), (SINK, Kind::Sink), (ONCE, Kind::Once)] {
        let stop = stop.clone();
        ns.spawn(move || {
            pin(CLIENT_CPU);
            let listener = TcpListener::bind(addr).expect("binding a bench server");
            while let Ok((mut s, _)) = listener.accept() {
                if stop.load(Relaxed) {
                    break; // the wake-up connection of `stop_servers`
                }
                let _ = s.set_nodelay(true);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    match kind {
                        Kind::Echo => {
                            while let Ok(n @ 1..) = s.read(&mut buf) {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            return;
                        }
                        Kind::Once => {
                            if let Ok(n @ 1..) = s.read(&mut buf) {
                                let _ = s.write_all(&buf[..n]);
                            }
                            return;
                        }
                        Kind::Sink => {}
                    }
                    // The sink: a length, that many bytes, then one byte back (no half-close:
                    // microsocks closes both ways when the client closes its side).
                    let mut len = [0u8; 8];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(len);
                    while left > 0 {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n as u64),
                        }
                    }
                    let _ = s.write_all(b"k");
                });
            }
        });
    }
}

/// Connections per second from 4 clients for `secs`.
async fn cps(mode: Mode, secs: f64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut s = open(mode, ONCE).await?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 2];
                s.read_exact(&mut b[..1]).await?;
                // The server closes first; then this side.
                let _ = s.read(&mut b).await;
                done.fetch_add(1, Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Relaxed) as f64 / secs)
}

/// 64 bytes each way on one tunnel, `n` times: each round trip in µs.
async fn latency(mode: Mode, n: usize) -> Result<Vec<f64>> {
    let mut s = open(mode, ECHO).await?;
    let (msg, mut back) = ([7u8; 64], [0u8; 64]);
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(us)
}

/// The small requests of a repetition come in this many rounds ([`in_turns`]).
const LATENCY_ROUNDS: usize = 4;

/// One stream is at the mercy of one scheduling hiccup on a shared machine: each repetition's
/// figure is the median of [`STREAMS`] streams (by throughput, with that stream's CPU), one a
/// round ([`in_turns`]).
const STREAMS: usize = 3;

/// One stream's figures.
#[derive(Clone, Copy)]
struct Streamed {
    gbps: f64,
    /// The proxy's CPU: busy seconds per GB.
    cpu_per_gb: f64,
    /// The client's and servers' CPU: its busy share of the stream's time.
    client_busy: f64,
}

/// `mib` MiB to the sink on one stream.
async fn stream(mode: Mode, mib: usize) -> Result<Streamed> {
    let mut s = open(mode, SINK).await?;
    let chunk = vec![1u8; 64 * 1024];
    let cpu0 = cpu_busy_seconds(PROXY_CPU);
    let cpu1 = cpu_busy_seconds(CLIENT_CPU);
    let t = Instant::now();
    s.write_all(&((mib as u64) << 20).to_be_bytes()).await?;
    for _ in 0..mib * 16 {
        s.write_all(&chunk).await?;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await?;
    let secs = t.elapsed().as_secs_f64();
    let gb = (mib * (1 << 20)) as f64 / 1e9;
    Ok(Streamed {
        gbps: gb * 8.0 / secs,
        cpu_per_gb: (cpu_busy_seconds(PROXY_CPU) - cpu0) / gb,
        client_busy: (cpu_busy_seconds(CLIENT_CPU) - cpu1) / secs,
    })
}

/// danted's configuration: loopback clients, CONNECT anywhere, no authentication.
const DANTE_CONF: &str = "logoutput: stderr\n\
internal: 127.0.0.1 port = 1081\n\
external: 10.77.0.1\n\
clientmethod: none\n\
socksmethod: none\n\
user.privileged: root\n\
user.unprivileged: nobody\n\
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n\
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }\n";

/// A program pinned to the proxies' CPU.
fn pinned(ns: &NetNs, what: &str, program: &Path, args: &[&str]) -> Proc {
    let mut all: Vec<String> = vec![
        "-c".into(),
        PROXY_CPU.to_string(),
        program.display().to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    Proc::spawn(&ns.name, what, Path::new("/usr/bin/taskset"), &all)
}

pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    // 20,000 requests: a p99 from 200 samples above it (from 5,000, its spread between
    // repetitions was wider than the door's lead over dante).
    let (reps, secs, lat_n, mib) = if quick {
        (1, 0.5, 500, 16)
    } else {
        (7, 3.0, 20_000, 1024)
    };
    let ns = NetNs::new("sx");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", "10.77.0.1/32", "dev", "lo"]);
    let stop = Arc::new(AtomicBool::new(false));
    servers(&ns, stop.clone());
    let etcd = Etcd::single(&ns);
    let _proxies = Proxies::start(&ns, &etcd)?;
    let result = ns.run(move || measure(reps, secs, lat_n, mib));
    stop.store(true, Relaxed);
    ns.run(|| {
        for addr in [ECHO, SINK, ONCE] {
            let _ = std::net::TcpStream::connect(addr);
        }
    });
    let results = result?;
    let json = record(&results, reps, secs, lat_n, mib);
    Ok((table(&json)?, json))
}

/// The proxies, each pinned from its start (the door's runtime then starts one worker, as it
/// would on a one-CPU host): the door (its default copy) and the door with `--copy splice`, both
/// following etcd's names of the servers; dante; microsocks.
struct Proxies {
    _procs: Vec<Proc>,
    _dante_conf: TempFile,
}

impl Proxies {
    fn start(ns: &NetNs, etcd: &Etcd) -> Result<Self> {
        let urls = etcd.urls();
        let ctl = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend_from_slice(&["--etcd", &urls]);
            ambassador_tests::ambassador_ok(ns, &all)
        };
        ctl(&["service", "set", "echo", "--frontend", "10.96.0.1:9000"]);
        ctl(&["endpoint", "add", "echo", ECHO, "--id", "e"]);
        ctl(&["service", "set", "sink", "--frontend", "10.96.0.2:9001"]);
        ctl(&["endpoint", "add", "sink", SINK, "--id", "s"]);
        ctl(&["service", "set", "once", "--frontend", "10.96.0.3:9002"]);
        ctl(&["endpoint", "add", "once", ONCE, "--id", "o"]);
        let door = |listen: &str, copy: &str| {
            let args = [
                "socks",
                "--listen",
                listen,
                "--copy",
                copy,
                "--allow-client",
                "127.0.0.0/8",
                "--log",
                "info",
                "--etcd",
                &urls,
            ];
            pinned(ns, &format!("socks-{copy}"), &ambassador_bin(), &args)
        };
        let mut procs = vec![
            door("127.0.0.1:1080", "read-write"),
            door("127.0.0.1:1083", "splice"),
        ];
        for door in &procs {
            if !wait_until(Duration::from_secs(10), || {
                door.log().contains("socks: ready")
            }) {
                bail!("the door never got ready:\n{}", door.log());
            }
        }
        let conf = TempFile::new(DANTE_CONF);
        let danted = Path::new("/usr/sbin/danted");
        procs.push(pinned(ns, "danted", danted, &["-f", conf.as_str()]));
        let microsocks = Path::new("/usr/bin/microsocks");
        let args = ["-i", "127.0.0.1", "-p", "1082"];
        procs.push(pinned(ns, "microsocks", microsocks, &args));
        Ok(Self {
            _procs: procs,
            _dante_conf: conf,
        })
    }
}

/// `rounds` rounds of `one` for every mode, the modes taking turns in `order` within each
/// round, so that a drift of the machine meets every mode alike: each mode's results, by
/// round.
async fn in_turns<T>(
    order: &[usize],
    rounds: usize,
    mut one: impl AsyncFnMut(Mode) -> Result<T>,
) -> Result<Vec<Vec<T>>> {
    let mut all: Vec<Vec<T>> = Mode::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for &i in order {
            all[i].push(one(Mode::ALL[i]).await?);
        }
    }
    Ok(all)
}

/// Every mode's rows, `reps` times in a random order, from the client's CPU (in the
/// namespace): once each mode forwards at all.
fn measure(reps: usize, secs: f64, lat_n: usize, mib: usize) -> Result<Vec<Samples>> {
    pin(CLIENT_CPU);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for mode in Mode::ALL {
        let mut last = None;
        let up = wait_until(Duration::from_secs(10), || {
            let once =
                async { tokio::time::timeout(Duration::from_secs(2), latency(mode, 1)).await };
            last = Some(rt.block_on(once));
            matches!(last, Some(Ok(Ok(_))))
        });
        if !up {
            bail!("{} never forwarded: {:?}", mode.name(), last);
        }
    }
    rt.block_on(async {
        let mut results: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
        for (rep, order) in shuffled_orders(reps, Mode::ALL.len(), 0x736f_636b)
            .into_iter()
            .enumerate()
        {
            for &i in &order {
                let mode = Mode::ALL[i];
                println!("  rep {}/{reps}: {}", rep + 1, mode.name());
                results[i].cps.push(cps(mode, secs).await?);
            }
            println!("  rep {}/{reps}: small requests", rep + 1);
            let n = lat_n.div_ceil(LATENCY_ROUNDS);
            let rtts = in_turns(&order, LATENCY_ROUNDS, async |mode| latency(mode, n).await);
            for (r, rounds) in results.iter_mut().zip(rtts.await?) {
                let mut us = rounds.concat();
                us.sort_by(f64::total_cmp);
                r.p50.push(pct(&us, 0.5));
                r.p99.push(pct(&us, 0.99));
            }
            println!("  rep {}/{reps}: streams", rep + 1);
            let streamed = in_turns(&order, STREAMS, async |mode| stream(mode, mib).await);
            for (r, mut all) in results.iter_mut().zip(streamed.await?) {
                all.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
                let median = all[STREAMS / 2];
                r.gbps.push(median.gbps);
                r.cpu_per_gb.push(median.cpu_per_gb);
                r.client_busy.push(median.client_busy);
            }
        }
        Ok(results)
    })
}
