//! The DNS responder against Debian's dnsmasq serving the same names from a hosts file, in one
//! run, in one network namespace (loopback): queries per second under saturation (dnsperf,
//! 100 queries in flight) and answer latency one query at a time (p50, p99). Each repetition
//! measures both, in a random order; ratios are per repetition. Servers run on one CPU, the
//! load generator on the other.

use std::{
    fmt::Write as _,
    net::UdpSocket,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use ambassador_tests::{Daemon, NetNs, PinDir, Proc, TempFile, DNSMASQ_ARGS, DNSMASQ_BIN};
use ambassador_user::services::dns::handler::query;
use anyhow::{bail, Context as _, Result};
use hickory_proto::rr::RecordType;

use crate::{
    stats::{pct, shuffled_orders},
    table::{self, render, Col},
    verdict::{self, Better, Goal},
};

/// Services, and so names, both servers hold.
const NAMES: usize = 100;
const AMB: &str = "127.0.0.1";
const DNSMASQ: &str = "127.0.0.2";
const PORT: &str = "5300";
/// Where the servers run (`taskset`), and the load generator.
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ambassador,
    Dnsmasq,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Ambassador, Mode::Dnsmasq];

    fn name(self) -> &'static str {
        match self {
            Mode::Ambassador => "ambassador",
            Mode::Dnsmasq => "dnsmasq",
        }
    }

    fn addr(self) -> &'static str {
        match self {
            Mode::Ambassador => AMB,
            Mode::Dnsmasq => DNSMASQ,
        }
    }
}

#[derive(Default)]
struct Samples {
    qps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    lost: u64,
}

fn name(i: usize) -> String {
    format!("s{i}.ambassador.internal")
}

fn frontend(i: usize) -> String {
    format!("10.96.{}.{}", i / 250, i % 250 + 1)
}

/// dnsperf from CLIENT_CPU for `secs`: answers per second, and queries lost.
fn dnsperf(ns: &NetNs, server: &str, queries: &Path, secs: u32) -> Result<(f64, u64)> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "taskset", "-c", CLIENT_CPU, "dnsperf",
        ])
        .args(["-s", server, "-p", PORT, "-d"])
        .arg(queries)
        .args(["-l", &secs.to_string(), "-q", "100", "-t", "2"])
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let (Some(qps), Some(lost)) = (field("Queries per second:"), field("Queries lost:")) else {
        bail!(
            "dnsperf said: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok((qps, lost as u64))
}

/// One query at a time for `n` queries: p50 and p99 in microseconds.
fn latency(ns: &NetNs, server: &'static str, n: usize) -> Result<[f64; 2]> {
    let queries: Vec<Vec<u8>> = (0..NAMES)
        .map(|i| query(&format!("{}.", name(i)), RecordType::A, None))
        .collect();
    let mut us = ns.run(move || -> Result<Vec<f64>> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect((server, PORT.parse::<u16>().unwrap()))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 1500];
        let mut us = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            s.send(&queries[i % NAMES])?;
            s.recv(&mut buf).context("no answer within 1 s")?;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(us)
    })?;
    us.sort_by(f64::total_cmp);
    Ok([pct(&us, 0.5), pct(&us, 0.99)])
}

pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, secs, lat_n) = if quick { (1, 1, 2_000) } else { (5, 5, 20_000) };
    let ns = NetNs::new("dns");
    ns.ip(&["addr", "add", "127.0.0.2/8", "dev", "lo"]);
    let mut cfg = String::new();
    let mut hosts = String::new();
    let mut names = String::new();
    for i in 0..NAMES {
        let _ = write!(
            cfg,
            "[[service]]\nname = \"s{i}\"\nfrontend = \"{}:80\"\nendpoints = []\n\n",
            frontend(i)
        );
        let _ = writeln!(hosts, "{} {}", frontend(i), name(i));
        let _ = writeln!(names, "{} A", name(i));
    }
    let cfg = TempFile::new(&cfg);
    let hosts = TempFile::new(&hosts);
    let names = TempFile::new(&names);
    let pin = PinDir::new();
    let listen = format!("{AMB}:{PORT}");
    let pinned: Vec<String> = ["-c", SERVER_CPU].map(str::to_owned).to_vec();
    let mut amb_args = pinned.clone();
    amb_args.push(ambassador_tests::ambassador_bin().display().to_string());
    amb_args.extend(
        Daemon::run_file_args("lo", cfg.as_str(), &pin.path)
            .into_iter()
            .chain(
                // The load repeats a few questions from one address: the capacity measured,
                // not the rate limit that stops a reflection attack.
                [
                    "--dns-listen",
                    &listen,
                    "--dns-no-forward",
                    "--dns-rate-limit",
                    "0",
                    "--log",
                    "warn",
                ]
                .map(str::to_owned),
            ),
    );
    let _amb = Proc::spawn(
        &ns.name,
        "ambassador",
        Path::new("/usr/bin/taskset"),
        &amb_args,
    );
    let _dnsmasq = dnsmasq_pinned(
        &ns,
        &[
            format!("--listen-address={DNSMASQ}"),
            format!("--port={PORT}"),
            format!("--addn-hosts={}", hosts.as_str()),
            "--local=/ambassador.internal/".to_owned(),
        ],
    );
    // Both answer before anything is measured.
    for mode in Mode::ALL {
        let ok = ambassador_tests::wait_until(Duration::from_secs(10), || {
            latency(&ns, mode.addr(), 1).is_ok()
        });
        if !ok {
            bail!("{} never answered on {}:{PORT}", mode.name(), mode.addr());
        }
    }

    let mut results: Vec<Samples> = Mode::ALL.iter().map(|_| Samples::default()).collect();
    for (rep, order) in shuffled_orders(reps, Mode::ALL.len(), 0x646e_7321)
        .into_iter()
        .enumerate()
    {
        for i in order {
            let mode = Mode::ALL[i];
            println!("  rep {}/{reps}: {}", rep + 1, mode.name());
            let (qps, lost) = dnsperf(&ns, mode.addr(), Path::new(names.as_str()), secs)?;
            let [p50, p99] = latency(&ns, mode.addr(), lat_n)?;
            let r = &mut results[i];
            r.qps.push(qps);
            r.lost += lost;
            r.p50.push(p50);
            r.p99.push(p99);
        }
    }

    let modes: Vec<_> = Mode::ALL
        .iter()
        .zip(&results)
        .map(|(mode, r)| {
            serde_json::json!({"mode": mode.name(), "qps": r.qps, "p50_us": r.p50, "p99_us": r.p99, "lost": r.lost})
        })
        .collect();
    let json = serde_json::json!({
        "reps": reps, "seconds": secs, "latency_queries": lat_n, "names": NAMES,
        "order": "random per repetition", "modes": modes,
    });
    Ok((table(&json)?, json))
}

/// The goal: at least dnsmasq's rate on the same names.
pub const GOALS: [Goal; 1] = [Goal::new(
    "the DNS responder's queries per second",
    ("ambassador", "dnsmasq"),
    "qps",
    Better::Higher,
    1.0,
)];

/// The settings, the table and the goal, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let s = table::Samples::new(&json["modes"])?;
    let names = json["names"].as_u64().context("names")?;
    let mut md = format!(
        "{names} names (`s0..s{}.ambassador.internal`, A), the same in both: ambassador's from its \
         services, dnsmasq's from a hosts file (`--addn-hosts`, `--local=/ambassador.internal/`). \
         Loopback in one namespace; servers on CPU {SERVER_CPU}, clients on CPU {CLIENT_CPU}. {} repetitions, both \
         servers in each, in a random order; rate: dnsperf for {} s with 100 queries in flight; latency: {} \
         queries one at a time. Medians, with min-max over repetitions.\n\n",
        names - 1,
        json["reps"],
        json["seconds"],
        json["latency_queries"],
    );
    md += &render(
        &s,
        "server",
        &[
            ("queries/s", Col::Spread("qps", 0)),
            ("vs dnsmasq", Col::Ratio("qps", "dnsmasq")),
            ("p50 (us)", Col::Spread("p50_us", 1)),
            ("p99 (us)", Col::Spread("p99_us", 1)),
            ("p99 vs dnsmasq", Col::Ratio("p99_us", "dnsmasq")),
            ("lost", Col::Count("lost")),
        ],
    )?;
    md += "\nGoal:\n\n";
    md += &verdict::list(&s, &GOALS)?;
    Ok(md)
}

/// dnsmasq (as the tests run it) pinned to SERVER_CPU.
fn dnsmasq_pinned(ns: &NetNs, args: &[String]) -> Proc {
    let mut all: Vec<String> = vec!["-c".into(), SERVER_CPU.into(), DNSMASQ_BIN.into()];
    all.extend(DNSMASQ_ARGS.iter().map(|a| a.to_string()));
    all.extend_from_slice(args);
    Proc::spawn(&ns.name, "dnsmasq", Path::new("/usr/bin/taskset"), &all)
}
