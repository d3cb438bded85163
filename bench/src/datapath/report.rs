//! The datapath group's table, resolution and goals, made from its record alone (a run prints
//! them; `cargo xtask bench --report` makes BENCHMARKS.md's from the committed record).

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    stats::{median, pct, ratio, spread},
    table::{render, Col, Samples},
    verdict::{self, own_cost, Better, Goal, Per},
};

/// A goal against `against` with `direct (again)` as the control.
const fn goal(
    what: &'static str,
    modes: (&'static str, &'static str),
    metric: &'static str,
    better: Better,
    target: f64,
) -> Goal {
    Goal::new(what, modes, metric, better, target).control("direct (again)", "direct")
}

/// The datapath's goals (issues #1 and #13), each against its own baseline: on the wall
/// clock, then the same goals on what a transaction costs in CPU.
pub const GOALS: [Goal; 10] = [
    goal(
        "ambassador-sock p50 latency",
        ("ambassador-sock", "direct"),
        "p50_us",
        Better::Lower,
        1.02,
    ),
    goal(
        "ambassador-sock connections per second",
        ("ambassador-sock", "direct"),
        "conn_per_sec",
        Better::Higher,
        0.97,
    ),
    goal(
        "ambassador-tc p50 latency",
        ("ambassador-tc", "direct"),
        "p50_us",
        Better::Lower,
        1.10,
    ),
    goal(
        "ambassador-tc 1-stream throughput",
        ("ambassador-tc", "direct"),
        "gbps_1_stream",
        Better::Higher,
        0.90,
    ),
    goal(
        "ambassador-tc 4-stream throughput",
        ("ambassador-tc", "direct"),
        "gbps_4_streams",
        Better::Higher,
        0.90,
    ),
    goal(
        "socat p50 latency",
        ("socat", "ambassador-tc"),
        "p50_us",
        Better::Higher,
        1.5,
    ),
    goal(
        "ambassador-sock CPU per round trip",
        ("ambassador-sock", "direct"),
        "cpu_us_per_round_trip",
        Better::Lower,
        1.02,
    ),
    goal(
        "ambassador-sock CPU per connection",
        ("ambassador-sock", "direct"),
        "cpu_us_per_conn",
        Better::Lower,
        1.03,
    ),
    goal(
        "ambassador-tc CPU per round trip",
        ("ambassador-tc", "direct"),
        "cpu_us_per_round_trip",
        Better::Lower,
        1.10,
    ),
    goal(
        "HAProxy p50 latency",
        ("haproxy", "ambassador-tc"),
        "p50_us",
        Better::Higher,
        1.5,
    ),
];

const COLUMNS: [(&str, Col); 14] = [
    ("p50 us (spread)", Col::Spread("p50_us", 1)),
    ("p99 us", Col::Median("p99_us", 1)),
    ("p99.9 us", Col::Median("p999_us", 1)),
    ("p50 vs direct", Col::Ratio("p50_us", "direct")),
    ("1 stream Gbit/s", Col::Spread("gbps_1_stream", 2)),
    ("vs direct", Col::Ratio("gbps_1_stream", "direct")),
    ("4 streams Gbit/s", Col::Median("gbps_4_streams", 2)),
    ("vs direct", Col::Ratio("gbps_4_streams", "direct")),
    ("CPU s/GB", Col::Median("cpu_s_per_gb", 2)),
    ("vs direct", Col::Ratio("cpu_s_per_gb", "direct")),
    ("conn/s (spread)", Col::Spread("conn_per_sec", 0)),
    ("vs direct", Col::Ratio("conn_per_sec", "direct")),
    ("conn p50 us", Col::Median("conn_p50_us", 0)),
    ("failed", Col::Count("conn_failed")),
];

const COST: [(&str, Col); 8] = [
    (
        "CPU µs per round trip",
        Col::Spread("cpu_us_per_round_trip", 2),
    ),
    ("vs direct", Col::Ratio("cpu_us_per_round_trip", "direct")),
    (
        "eBPF ns per round trip",
        Col::Median("bpf_ns_per_round_trip", 0),
    ),
    (
        "packets per round trip",
        Col::Median("packets_per_round_trip", 2),
    ),
    ("CPU µs per connection", Col::Spread("cpu_us_per_conn", 1)),
    ("vs direct", Col::Ratio("cpu_us_per_conn", "direct")),
    ("eBPF ns per connection", Col::Median("bpf_ns_per_conn", 0)),
    ("stolen", Col::Percent("steal_share")),
];

/// What the datapath's own programs cost a round trip (kernel-timed, helpers included), as a
/// share of direct's whole CPU time per round trip (the socket datapath's per connection too):
/// the measure that resolves the 2%, 3% and 10% goals on this machine, where the wall clock
/// and the CPU ratio cannot.
pub const OWN_COST: [Goal; 3] = [
    own_cost(
        "ambassador-sock's programs per round trip",
        ("ambassador-sock", "direct"),
        Per::RoundTrip,
        0.02,
    ),
    // The socket datapath's programs run at connect(), not per packet.
    own_cost(
        "ambassador-sock's programs per connection",
        ("ambassador-sock", "direct"),
        Per::Connection,
        0.03,
    ),
    own_cost(
        "ambassador-tc's programs per round trip",
        ("ambassador-tc", "direct"),
        Per::RoundTrip,
        0.10,
    ),
];

/// The table, what the control says about resolution, the programs' run time and the goals.
pub fn table(json: &Value) -> Result<String> {
    let s = Samples::new(&json["modes"])?;
    let reps = json["latency_reps"].as_u64().context("latency_reps")?;
    let heavy = json["heavy_reps"].as_u64().context("heavy_reps")?;
    let mut md = String::from(
        "Ratios to direct are the median of per-repetition ratios (each mode measured back to back with direct in every repetition), with their min-max.\n\n",
    );
    md += &render(&s, "mode", &COLUMNS)?;
    let ratios = |m| s.ratios("direct (again)", "direct", m);
    let mut p50 = ratios("p50_us")?;
    p50.sort_by(f64::total_cmp);
    let control_spread = |m| -> Result<String> {
        let (v, b) = (s.values("direct (again)", m)?, s.values("direct", m)?);
        Ok(ratio(&v, &b, 2).1)
    };
    let _ = writeln!(
        md,
        "\nResolution of this run: `direct (again)` is direct measured a second time in each of the {reps} repetitions; its per-repetition p50 ratio to direct spans {} (middle half {:.2}-{:.2}), its 1-stream throughput ratio {}, and its connection-rate ratio {} ({heavy} repetitions). Differences inside those ranges cannot be told from noise.",
        control_spread("p50_us")?,
        pct(&p50, 0.25),
        pct(&p50, 0.75),
        control_spread("gbps_1_stream")?,
        control_spread("conn_per_sec")?,
    );
    if let Some(progs) = json["programs"].as_array().filter(|p| !p.is_empty()) {
        md += "\nambassador-tc's programs under real traffic (kernel.bpf_stats_enabled, every packet of its heavy repetitions): the median over those repetitions of each one's time per packet, with min-max.\n\n";
        let mut by_name: std::collections::BTreeMap<&str, (Vec<f64>, u64)> = Default::default();
        for p in progs {
            let e = by_name
                .entry(p["program"].as_str().unwrap_or("?"))
                .or_default();
            e.0.push(p["ns_per_run"].as_f64().unwrap_or(f64::NAN));
            e.1 += p["runs"].as_u64().unwrap_or(0);
        }
        for (name, (ns, runs)) in by_name {
            let _ = writeln!(
                md,
                "- {name}: {:.0} ns per packet ({} ns) over {runs} packets",
                median(&mut ns.clone()),
                spread(&ns, 0)
            );
        }
    }
    md += "\nWhat a transaction costs: the machine's busy CPU time (softirq included, steal not) per round trip of the latency runs (warm-up included) and per connection of the connection-rate runs, our programs' own run time per round trip and per connection (kernel.bpf_stats_enabled, on for the whole run), the packets the forwarding host's client-facing link carried per round trip, and the share of CPU time the hypervisor stole during the latency runs.\n\n";
    md += &render(&s, "mode", &COST)?;
    md += "\nGoals, each against its own baseline:\n\n";
    md += &verdict::list(&s, &GOALS)?;
    md += "\nThe same goals on what the datapath itself costs: our programs' own run time per round trip (kernel-timed, the helpers they call included: the un-cloning of a packet before it is rewritten, say) as a share of direct's whole CPU time per round trip; for the socket datapath, whose programs run at connect(), per connection too. What the programs may cost beyond their own run time (caches, the stack's work on a rewritten packet) shows only in the CPU ratios above.\n\n";
    md += &verdict::list(&s, &OWN_COST)?;
    Ok(md)
}
