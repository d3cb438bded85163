//! Scale: latency and connection rate with 1, 1,000 and 10,000 services installed, as
//! ambassador services against as many iptables DNAT rules (kube-proxy's linear
//! KUBE-SERVICES chain, the measured service last: the worst case).

use std::fmt::Write as _;

use ambassador_tests::{Daemon, PinDir, TempFile};
use anyhow::Result;

use crate::{
    datapath::{
        conn_rate, dnat_rules, iptables_restore, latency, Bed, BACKEND, CONN_PORT, LAT_PORT,
    },
    stats::{median, ratio, shuffled_orders, spread},
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
                latency(&topo.client, VIP_AMB, LAT_PORT, secs)?[0],
                conn_rate(&topo.client, VIP_AMB, CONN_PORT, secs)?.per_sec,
            ))
        }
        Mode::Iptables => {
            let fwd = &topo.fwd.name;
            iptables_restore(fwd, &iptables_config(cell.n))?;
            let measured = (|| -> Result<(f64, f64)> {
                Ok((
                    latency(&topo.client, VIP_IPT, LAT_PORT, secs)?[0],
                    conn_rate(&topo.client, VIP_IPT, CONN_PORT, secs)?.per_sec,
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
    let mut cells: Vec<Cell> = Mode::ALL
        .iter()
        .flat_map(|&mode| {
            SIZES.map(|n| Cell {
                mode,
                n,
                p50: Vec::new(),
                conn: Vec::new(),
            })
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
    Ok(report(&cells, reps, secs))
}

/// The table, and the samples.
fn report(cells: &[Cell], reps: usize, secs: u32) -> (String, serde_json::Value) {
    let mut md = String::from(
        "| mode | services | p50 us (spread) | vs 1 service (spread) | conn/s (spread) | vs 1 service (spread) |\n|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for chunk in cells.chunks(SIZES.len()) {
        let base = &chunk[0];
        for c in chunk {
            let (p50, conn) = (median(&mut c.p50.clone()), median(&mut c.conn.clone()));
            let (p50_ratio, p50_spread) = ratio(&c.p50, &base.p50, 2);
            let (conn_ratio, conn_spread) = ratio(&c.conn, &base.conn, 2);
            let _ = writeln!(
                md,
                "| {} | {} | {p50:.1} ({}) | {p50_ratio:.2}x ({p50_spread}) | {conn:.0} ({}) | {conn_ratio:.2}x ({conn_spread}) |",
                c.mode.name(),
                c.n,
                spread(&c.p50, 1),
                spread(&c.conn, 0),
            );
            json.push(serde_json::json!({
                "mode": c.mode.name(), "services": c.n, "p50_us": c.p50, "conn_per_sec": c.conn,
            }));
        }
    }
    (
        md,
        serde_json::json!({ "reps": reps, "seconds": secs, "order": "random per repetition", "cells": json }),
    )
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
        let (md, json) = report(&cells, 3, 2);
        // Per repetition 1.1x, 1.5x and 1.0x: the median is 1.10x (a ratio of the medians
        // would say 30/20 = 1.50x).
        assert!(
            md.contains("| ambassador-tc | 1000 | 30.0 (11.0-40.0) | 1.10x (1.00-1.50) |"),
            "{md}"
        );
        assert!(md.contains("| 1.00x (0.90-1.00) |"), "{md}");
        assert_eq!(json["cells"].as_array().unwrap().len(), 6);
    }
}
