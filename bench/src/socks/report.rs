//! The SOCKS benchmark's record, goals and table.

use anyhow::Result;

use super::{Mode, Samples, CLIENT_CPU, LATENCY_ROUNDS, PROXY_CPU, SPLICE_MODE, STREAMS};
use crate::{
    table::{self, render, Col},
    verdict::{self, Better, Goal},
};

pub(super) fn record(
    results: &[Samples],
    reps: usize,
    secs: f64,
    lat_n: usize,
    mib: usize,
) -> serde_json::Value {
    let modes: Vec<_> = Mode::ALL
        .iter()
        .zip(results)
        .map(|(mode, r)| {
            serde_json::json!({"mode": mode.name(), "cps": r.cps, "p50_us": r.p50, "p99_us": r.p99, "gbps": r.gbps, "cpu_s_per_gb": r.cpu_per_gb, "client_cpu_busy": r.client_busy})
        })
        .collect();
    serde_json::json!({
        "reps": reps, "seconds": secs, "requests": lat_n, "stream_mib": mib,
        "order": "random per repetition; small requests and streams take turns", "modes": modes,
    })
}

/// The door against one peer on every row: ahead means a ratio of at least 1 (at most 1 where
/// lower is better).
const fn ahead(of: &'static str) -> [Goal; 5] {
    let m = ("ambassador socks", of);
    [
        Goal::new(
            "the SOCKS door's connections per second",
            m,
            "cps",
            Better::Higher,
            1.0,
        ),
        Goal::new(
            "the SOCKS door's request p50",
            m,
            "p50_us",
            Better::Lower,
            1.0,
        ),
        Goal::new(
            "the SOCKS door's request p99",
            m,
            "p99_us",
            Better::Lower,
            1.0,
        ),
        Goal::new(
            "the SOCKS door's stream throughput",
            m,
            "gbps",
            Better::Higher,
            1.0,
        ),
        Goal::new(
            "the SOCKS door's CPU per GB",
            m,
            "cpu_s_per_gb",
            Better::Lower,
            1.0,
        ),
    ]
}

/// `--copy splice` against the door's default read-write copy, on what each is for: the
/// stream's throughput, the door's CPU per GB, and a small request's latency.
const SPLICE_GOALS: [Goal; 3] = [
    Goal::new(
        "splice's stream throughput",
        (SPLICE_MODE, "ambassador socks"),
        "gbps",
        Better::Higher,
        1.0,
    ),
    Goal::new(
        "splice's CPU per GB",
        (SPLICE_MODE, "ambassador socks"),
        "cpu_s_per_gb",
        Better::Lower,
        1.0,
    ),
    Goal::new(
        "splice's request p50",
        (SPLICE_MODE, "ambassador socks"),
        "p50_us",
        Better::Lower,
        1.0,
    ),
];

/// The goal: ahead of dante on every row (and, as a reference, of microsocks).
pub const GOALS: [Goal; 5] = ahead("dante");

/// The settings, the table and the goals, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let s = table::Samples::new(&json["modes"])?;
    let mut md = format!(
        "One namespace, loopback; the servers (echo, sink) at 10.77.0.1; every proxy pinned to CPU {PROXY_CPU} (Debian's dante-server 1.4 and microsocks, and `ambassador socks` following a local etcd), the clients and servers to CPU {CLIENT_CPU}. {} repetitions, every mode in each, in a random order; each ratio is the median of per-repetition ratios to `direct`, with min-max. Connections: 4 clients for {} s, each a connect, the SOCKS handshake (the door by the service's name; dante and microsocks by address) and 1 byte each way. Request: 64 bytes each way on an open tunnel, {} times, in {LATENCY_ROUNDS} rounds, the modes taking turns. Stream: {} MiB to the sink, the median of {STREAMS} streams, the modes taking turns stream by stream. CPU: CPU {PROXY_CPU}'s busy time during the stream, per GB; and CPU {CLIENT_CPU}'s (the client's and the sink's) busy share of the stream's time.\n\n",
        json["reps"], json["seconds"], json["requests"], json["stream_mib"],
    );
    md += &render(
        &s,
        "mode",
        &[
            ("connections/s", Col::Median("cps", 0)),
            ("vs direct", Col::Ratio("cps", "direct")),
            ("p50 (µs)", Col::Median("p50_us", 1)),
            ("p99 (µs)", Col::Median("p99_us", 1)),
            ("p50 vs direct", Col::Ratio("p50_us", "direct")),
            ("stream (Gbit/s)", Col::Median("gbps", 2)),
            ("vs direct", Col::Ratio("gbps", "direct")),
            ("CPU per GB (s)", Col::Spread("cpu_s_per_gb", 2)),
            ("client CPU busy", Col::Percent("client_cpu_busy")),
        ],
    )?;
    md += "\nGoal: ahead of dante on every row (ratios of ambassador socks to dante, per repetition):\n\n";
    md += &verdict::list(&s, &GOALS)?;
    md += "\nThe same against microsocks, for reference:\n\n";
    md += &verdict::list(&s, &ahead("microsocks"))?;
    md += "\n`--copy splice` against the door's default, copying through 64 KiB buffers (`--copy read-write`):\n\n";
    md += &verdict::list(&s, &SPLICE_GOALS)?;
    Ok(md)
}
