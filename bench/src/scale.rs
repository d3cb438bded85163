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
    stats::{median, spread},
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

/// Per (mode, size): p50 us and connections per second, one entry per repetition.
struct Cell {
    mode: &'static str,
    n: usize,
    p50: Vec<f64>,
    conn: Vec<f64>,
}

pub fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let (reps, secs) = if quick { (1, 1) } else { (5, 2) };
    let sizes = [1usize, 1_000, 10_000];
    let bed = Bed::new()?;
    let topo = &bed.topo;
    let fwd = &topo.fwd.name;
    let mut cells: Vec<Cell> = Vec::new();
    for mode in ["ambassador-tc", "iptables"] {
        for n in sizes {
            cells.push(Cell {
                mode,
                n,
                p50: Vec::new(),
                conn: Vec::new(),
            });
        }
    }
    let configs: Vec<TempFile> = sizes
        .iter()
        .map(|n| TempFile::new(&ambassador_config(*n)))
        .collect();
    for rep in 0..reps {
        for k in 0..sizes.len() {
            // Rotated so that no size always runs first or right after another.
            let si = (rep + k) % sizes.len();
            let n = sizes[si];
            println!("  rep {}/{reps}: {n} services", rep + 1);
            {
                let pin = PinDir::new();
                let mut d = Daemon::run_file(
                    &topo.fwd,
                    "c0",
                    configs[si].as_str(),
                    &pin.path,
                    &crate::CAPACITY_10K,
                );
                d.wait_ready();
                let c = &mut cells[si];
                c.p50
                    .push(latency(&topo.client, VIP_AMB, LAT_PORT, secs)?[0]);
                c.conn
                    .push(conn_rate(&topo.client, VIP_AMB, CONN_PORT, secs)?.per_sec);
            }
            iptables_restore(fwd, &iptables_config(n))?;
            let measured = (|| -> Result<(f64, f64)> {
                Ok((
                    latency(&topo.client, VIP_IPT, LAT_PORT, secs)?[0],
                    conn_rate(&topo.client, VIP_IPT, CONN_PORT, secs)?.per_sec,
                ))
            })();
            iptables_restore(fwd, "-F PREROUTING\n")?;
            let (p50, conn) = measured?;
            let c = &mut cells[sizes.len() + si];
            c.p50.push(p50);
            c.conn.push(conn);
        }
    }
    let mut md = String::from(
        "| mode | services | p50 us (spread) | vs 1 service | conn/s (spread) | vs 1 service |\n|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for chunk in cells.chunks(sizes.len()) {
        let base_p50 = median(&mut chunk[0].p50.clone());
        let base_conn = median(&mut chunk[0].conn.clone());
        for c in chunk {
            let (p50, conn) = (median(&mut c.p50.clone()), median(&mut c.conn.clone()));
            let _ = writeln!(
                md,
                "| {} | {} | {p50:.1} ({}) | {:.2}x | {conn:.0} ({}) | {:.0}% |",
                c.mode,
                c.n,
                spread(&c.p50, 1),
                p50 / base_p50,
                spread(&c.conn, 0),
                100.0 * conn / base_conn
            );
            json.push(serde_json::json!({
                "mode": c.mode, "services": c.n, "p50_us": c.p50, "conn_per_sec": c.conn,
            }));
        }
    }
    Ok((
        md,
        serde_json::json!({ "reps": reps, "seconds": secs, "cells": json }),
    ))
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
}
