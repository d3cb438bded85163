//! `ambassador-bench`: the measurements `cargo xtask bench` runs, written to `target/bench/`:
//! the datapath against its peers (`datapath`), scale (`scale`), the control plane
//! (`control_plane`), the DNS responder against dnsmasq (`dns`) and the control plane at fleet
//! scale (`fleet`). A package of its own so
//! that `xtask` needs nothing but a Rust toolchain: this one links `ambassador-user` and
//! `etcd-client`, which need the packages setup installs.

mod charts;
mod control_plane;
mod datapath;
mod dns;
mod fleet;
mod ipv6;
mod monitor;
mod pps;
mod record;
mod report;
mod scale;
mod socks;
mod stats;
mod table;
mod verdict;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use ambassador_tests::require_root;
use anyhow::{bail, Result};
use clap::Parser;

/// `ambassador run` arguments for the 10,000-service measurements: beyond the default capacity
/// (4,096 services, 16,384 backends), 10,000 services x 4 endpoints fit.
pub const CAPACITY_10K: [&str; 4] = ["--max-services", "16384", "--max-backends", "65536"];

#[derive(Parser)]
#[command(
    name = "ambassador-bench",
    about = "ambassador's benchmarks (run by `cargo xtask bench`)"
)]
struct Cli {
    /// The `ambassador` binary to measure (a release build).
    #[arg(long, env = "AMBASSADOR_BIN", required_unless_present = "report")]
    bin: Option<PathBuf>,
    /// Measure nothing: make BENCHMARKS.md's tables and verdicts and the README's summary
    /// from the committed records in bench/results/.
    #[arg(long, conflicts_with_all = ["quick", "only"])]
    report: bool,
    /// With --report: change nothing, fail if a document differs from what its data makes.
    #[arg(long, requires = "report")]
    check: bool,
    /// Fewer repetitions: a smoke run of every measurement.
    #[arg(long)]
    quick: bool,
    /// Run only one group.
    #[arg(long, value_enum)]
    only: Option<Only>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match cli.bin {
        _ if cli.report => report::run(&repo, cli.check),
        Some(bin) => run(&bin, cli.quick, cli.only),
        None => unreachable!("clap requires --bin unless --report"),
    }
}

/// Which benchmarks to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// direct / ambassador-tc / ambassador-sock / socat / haproxy / iptables side by side.
    Datapath,
    /// 1, 1,000 and 10,000 services: ambassador maps against iptables rules.
    Scale,
    /// etcd and Docker to the maps, and loading 10,000 services from etcd.
    ControlPlane,
    /// The DNS responder against dnsmasq: queries per second and answer latency.
    Dns,
    /// IPv6: direct and ambassador-tc side by side.
    Ipv6,
    /// Packet rate through a gateway: routing, iptables DNAT, ambassador-tc, ambassador-xdp.
    Pps,
    /// The control plane at fleet scale: simulated hosts made of the real cores, a 3-member
    /// etcd cluster, directly and through grpc-proxy.
    Fleet,
    /// The SOCKS5 door against dante and microsocks: connections per second, a small
    /// request, one stream's throughput and CPU per GB.
    Socks,
    /// What `ambassador monitor` costs the datapath per packet (kernel-timed program runs).
    Monitor,
}

/// Writes group `name`'s table, results and charts beside each other in `dir`, prints the
/// table, and adds the results to the run's record.
pub fn write(dir: &Path, name: &str, md: &str, json: &serde_json::Value) -> Result<()> {
    record::group(dir, name, json)?;
    for (file, svg) in charts::for_group(name, json)? {
        std::fs::write(dir.join(&file), svg)?;
        println!("chart: target/bench/{file}");
    }
    println!("\n{md}");
    std::fs::write(dir.join(format!("{name}.md")), md)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    println!("written to target/bench/{name}.{{md,json}}\n");
    Ok(())
}

/// One line about the machine, for the reports.
fn machine() -> String {
    let m = record::machine();
    format!(
        "{} cores ({}), kernel {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or_default(),
        m["kernel"].as_str().unwrap_or_default()
    )
}

fn run(bin: &Path, quick: bool, only: Option<Only>) -> Result<()> {
    if !require_root("cargo xtask bench") {
        bail!("benchmarks need root: they build network namespaces and load eBPF programs");
    }
    std::env::set_var("AMBASSADOR_BIN", bin);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let wanted = |o: Only| only.is_none_or(|x| x == o);
    let mode = if quick { "quick" } else { "full" };
    println!("machine: {}; {mode} run", machine());
    record::start(
        &dir,
        Path::new(env!("CARGO_MANIFEST_DIR")),
        mode,
        only.and_then(|o| clap::ValueEnum::to_possible_value(&o))
            .map(|v| v.get_name().to_owned()),
    )?;
    let started = Instant::now();
    if wanted(Only::Datapath) {
        println!("datapath: client -> forwarding host -> backend, every mode, interleaved");
        let (md, json) = crate::datapath::run(quick)?;
        write(&dir, "datapath", &md, &json)?;
    }
    if wanted(Only::Scale) {
        println!("scale: 1, 1,000 and 10,000 services, ambassador maps against iptables rules");
        let (md, json) = crate::scale::run(quick)?;
        write(&dir, "scale", &md, &json)?;
    }
    if wanted(Only::ControlPlane) {
        control_plane::control_plane(&dir, quick)?;
    }
    if wanted(Only::Ipv6) {
        println!("ipv6: direct and ambassador-tc over IPv6, interleaved");
        let (md, json) = crate::ipv6::run(quick)?;
        write(&dir, "ipv6", &md, &json)?;
    }
    if wanted(Only::Pps) {
        println!("pps: packet rate through a gateway, every mode, interleaved");
        let (md, json) = crate::pps::run(quick)?;
        write(&dir, "pps", &md, &json)?;
    }
    if wanted(Only::Dns) {
        println!("dns: the responder against dnsmasq, the same names, interleaved");
        let (md, json) = crate::dns::run(quick)?;
        write(&dir, "dns", &md, &json)?;
    }
    if wanted(Only::Socks) {
        println!("socks: the door against dante and microsocks, interleaved");
        let (md, json) = crate::socks::run(quick)?;
        write(&dir, "socks", &md, &json)?;
    }
    if wanted(Only::Monitor) {
        println!(
            "monitor: the tc program's time per packet with the monitor off and on, interleaved"
        );
        let (md, json) = crate::monitor::run(quick)?;
        write(&dir, "monitor", &md, &json)?;
    }
    if wanted(Only::Fleet) {
        println!("fleet: simulated hosts (the daemon's and the register's cores) against a 3-member etcd");
        let (md, json) = crate::fleet::run(quick)?;
        write(&dir, "fleet", &md, &json)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let kept = record::finish(&dir, seconds)?;
    println!(
        "{mode} run measured in {seconds:.0} s (the build before it not counted); the record: target/bench/run.json, kept as target/bench/runs/{}",
        kept.file_name().unwrap_or_default().to_string_lossy()
    );
    Ok(())
}
