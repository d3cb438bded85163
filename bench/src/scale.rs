//! Scale: latency and connection rate with 1, 1,000 and 10,000 services installed, as
//! ambassador services against as many iptables DNAT rules (kube-proxy's linear
//! KUBE-SERVICES chain, the measured service last: the worst case).

use std::{fmt::Write as _, net::IpAddr};

use ambassador_tests::{Daemon, PinDir, TempFile};
use anyhow::Result;

use crate::{
    datapath::{
        conn_rate, dnat_rules, iptables_restore, latency, source_addresses, Bed, BACKEND,
        CONN_PORT, LAT_PORT, P50,
    },
    stats::shuffled_orders,
    table::{ratio_cell, spread_cell, Samples},
    verdict::{self, Better, Goal},
};

/// Frontend of filler service `i` (never dialled): 10.98.0.0/16, port 80.
fn filler(i: usize) -> String {
    format!("10.98.{}.{}", i / 250, i % 250 + 1)
}

const VIP_AMB: &str = "10.96.0.10";
const VIP_IPT: &str = "10.96.0.20";

/// ambassador's config with `n` services: the two measured ones and `n - 2` fillers.
fn ambassador_config(n: usize) -> String {
    let mut s = String::new();
    for (name, port) in [("lat", LAT_PORT), ("conn", CONN_PORT)] {
        let _ = write!(
            s,
            "[[service]]\nname = \"{name}\"\nfrontend = \"{VIP_AMB}:{port}\"\nendpoints = [\"{BACKEND}:{port}\"]\n\n"
        );
    }
    for i in 0..n.saturating_sub(2) {
        let _ = write!(
            s,
            "[[service]]\nname = \"f{i}\"\nfrontend = \"{}:80\"\nendpoints = [\"{BACKEND}:80\"]\n\n",
            filler(i)
        );
    }
    s
}

/// `n` DNAT rules in PREROUTING: `n - 2` fillers first, the measured ports last.
fn iptables_config(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n.saturating_sub(2) {
        s += &dnat_rules("-A", &filler(i), BACKEND, &[80]);
    }
    s + &dnat_rules("-A", VIP_IPT, BACKEND, &[LAT_PORT, CONN_PORT])
}

/// The two ways of installing services.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// ambassador's `tc` datapath, from a configuration file.
    Ambassador,
    /// iptables DNAT rules.
    Iptables,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Ambassador, Mode::Iptables];

    fn name(self) -> &'static str {
        match self {
            Mode::Ambassador => "ambassador-tc",
            Mode::Iptables => "iptables",
        }
    }
}

/// The sizes measured.
const SIZES: [usize; 3] = [1, 1_000, 10_000];

/// Per (mode, size): p50 us and connections per second, one entry per repetition.
struct Cell {
    mode: Mode,
    /// The client's address for this cell's connections (see `source_addresses`).
    source: IpAddr,
    n: usize,
    p50: Vec<f64>,
    conn: Vec<f64>,
}

/// One measurement of `cell`'s mode with its number of services installed (`config`: its
/// ambassador configuration), removed again afterwards.
fn measure(bed: &Bed, cell: &Cell, config: &TempFile, secs: u32) -> Result<(f64, f64)> {
    let topo = &bed.topo;
    match cell.mode {
        Mode::Ambassador => {
            let pin = PinDir::new();
            let mut d = Daemon::run_file(
                &topo.fwd,
                "c0",
                config.as_str(),
                &pin.path,
                &crate::CAPACITY_10K,
            );
            d.wait_ready();
            Ok((
                latency(&topo.client, VIP_AMB, LAT_PORT, secs, (&topo.fwd, "c0"))?.pct[P50],
                conn_rate(&topo.client, cell.source, VIP_AMB, CONN_PORT, secs)?.per_sec,
            ))
        }
        Mode::Iptables => {
            let fwd = &topo.fwd.name;
            iptables_restore(fwd, &iptables_config(cell.n))?;
            let measured = (|| -> Result<(f64, f64)> {
                Ok((
                    latency(&topo.client, VIP_IPT, LAT_PORT, secs, (&topo.fwd, "c0"))?.pct[P50],
                    conn_rate(&topo.client, cell.source, VIP_IPT, CONN_PORT, secs)?.per_sec,
                ))
            })();
            iptables_restore(fwd, "-F PREROUTING\n")?;
            measured
        }
    }
}

/// Every (mode, size) once a repetition, in a new random order each (a fixed seed: runs are
/// comparable); each size's ratios to 1 service are medians of per-repetition ratios.
pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, secs) = if quick { (1, 1) } else { (5, 2) };
    let bed = Bed::new()?;
    let sources = source_addresses(&bed.topo.client, Mode::ALL.len() * SIZES.len(), false);
    let mut cells: Vec<Cell> = Mode::ALL
        .iter()
        .flat_map(|&mode| SIZES.map(|n| (mode, n)))
        .zip(sources)
        .map(|((mode, n), source)| Cell {
            mode,
            source,
            n,
            p50: Vec::new(),
            conn: Vec::new(),
        })
        .collect();
    let configs: Vec<TempFile> = SIZES
        .iter()
        .map(|n| TempFile::new(&ambassador_config(*n)))
        .collect();
    for (rep, order) in shuffled_orders(reps, cells.len(), 0x7363_616c)
        .into_iter()
        .enumerate()
    {
        for i in order {
            let c = &cells[i];
            println!(
                "  rep {}/{reps}: {} with {} services",
                rep + 1,
                c.mode.name(),
                c.n
            );
            let (p50, conn) = measure(&bed, c, &configs[i % SIZES.len()], secs)?;
            let c = &mut cells[i];
            c.p50.push(p50);
            c.conn.push(conn);
        }
    }
    let json = record(&cells, reps, secs);
    Ok((table(&json)?, json))
}

/// A row's name in the record: the mode and its number of services.
fn row(mode: &str, n: usize) -> String {
    format!("{mode}, {n} service{}", if n == 1 { "" } else { "s" })
}

/// Each mode's rows in the record, by size: (services, row name), the first with 1 service
/// (what the others are compared with).
pub fn rows() -> Vec<(&'static str, Vec<(usize, String)>)> {
    Mode::ALL
        .iter()
        .map(|m| (m.name(), SIZES.map(|n| (n, row(m.name(), n))).to_vec()))
        .collect()
}

/// The goal: the connection rate does not fall with 10,000 services.
pub const GOALS: [Goal; 1] = [Goal::new(
    "ambassador-tc connections per second with 10,000 services",
    ("ambassador-tc, 10000 services", "ambassador-tc, 1 service"),
    "conn_per_sec",
    Better::Higher,
    0.95,
)
.baseline("with 1 service")];

/// The samples as the record holds them.
fn record(cells: &[Cell], reps: usize, secs: u32) -> serde_json::Value {
    let modes: Vec<_> = cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "mode": row(c.mode.name(), c.n), "p50_us": c.p50, "conn_per_sec": c.conn,
            })
        })
        .collect();
    serde_json::json!({ "reps": reps, "seconds": secs, "order": "random per repetition", "modes": modes })
}

/// The table (each size against the same mode with 1 service) and the goal, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let s = Samples::new(&json["modes"])?;
    let mut md = String::from(
        "| mode, services | p50 us (spread) | vs 1 service (spread) | conn/s (spread) | vs 1 service (spread) |\n|---|---:|---:|---:|---:|\n",
    );
    for (_, sizes) in rows() {
        let base = &sizes[0].1;
        for (_, name) in &sizes {
            let _ = write!(md, "| {name} |");
            for (metric, digits) in [("p50_us", 1), ("conn_per_sec", 0)] {
                let v = s.values(name, metric)?;
                let _ = write!(
                    md,
                    " {} | {} |",
                    spread_cell(&v, digits),
                    ratio_cell(&v, &s.values(base, metric)?)
                );
            }
            md.push('\n');
        }
    }
    md += "\nGoal:\n\n";
    md += &verdict::list(&s, &GOALS)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_hold_n_services() {
        assert_eq!(
            ambassador_config(1_000).matches("[[service]]").count(),
            1_000
        );
        assert_eq!(ambassador_config(1).matches("[[service]]").count(), 2);
        let rules = iptables_config(10_000);
        assert_eq!(rules.lines().count(), 10_000);
        assert!(rules.lines().last().unwrap().contains(VIP_IPT));
        // Every filler frontend is distinct.
        let mut f: Vec<String> = (0..10_000).map(filler).collect();
        f.sort();
        f.dedup();
        assert_eq!(f.len(), 10_000);
    }

    #[test]
    fn a_size_is_compared_with_one_service_repetition_by_repetition() {
        let cell = |mode, n, p50: [f64; 3], conn: [f64; 3]| Cell {
            mode,
            source: [10, 200, 0, 100].into(),
            n,
            p50: p50.to_vec(),
            conn: conn.to_vec(),
        };
        let cells: Vec<Cell> = Mode::ALL
            .iter()
            .flat_map(|&m| {
                [
                    cell(m, 1, [10.0, 20.0, 40.0], [100.0, 200.0, 400.0]),
                    cell(m, 1_000, [11.0, 30.0, 40.0], [90.0, 200.0, 400.0]),
                    cell(m, 10_000, [10.0, 20.0, 40.0], [100.0, 200.0, 400.0]),
                ]
            })
            .collect();
        let json = record(&cells, 3, 2);
        let md = table(&json).unwrap();
        // Per repetition 1.1x, 1.5x and 1.0x: the median is 1.10x (a ratio of the medians
        // would say 30/20 = 1.50x).
        assert!(
            md.contains("| ambassador-tc, 1000 services | 30.0 (11.0-40.0) | 1.10x (1.00-1.50) |"),
            "{md}"
        );
        assert!(md.contains("| 1.00x (0.90-1.00) |"), "{md}");
        assert!(
            md.contains("10,000 services / with 1 service >= 0.95x: **met** (1.00x"),
            "{md}"
        );
        assert_eq!(json["modes"].as_array().unwrap().len(), 6);
    }
}
