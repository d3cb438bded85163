//! The control plane's table, made from its record alone.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use crate::stats::pct;

/// The table and the maps' memory, from the record.
pub fn table(json: &serde_json::Value) -> Result<String> {
    let mut md = String::from(
        "| measurement | n | min ms | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for series in json["series"].as_array().context("series")? {
        let mut s: Vec<f64> = series["samples_ms"]
            .as_array()
            .context("samples_ms")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        s.sort_by(f64::total_cmp);
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            series["name"].as_str().context("name")?,
            s.len(),
            pct(&s, 0.0),
            pct(&s, 0.5),
            pct(&s, 0.99),
            pct(&s, 1.0)
        );
    }
    let memory = json["map_memory"].as_array().context("map_memory")?;
    let mib = |b: &serde_json::Value| b.as_f64().unwrap_or(f64::NAN) / f64::from(1 << 20);
    let total: f64 = memory.iter().map(|m| mib(&m["bytes"])).sum();
    let _ = writeln!(
        md,
        "\nMap memory with 10,000 services x 4 endpoints (bpftool bytes_memlock; the maps are preallocated, so this is also their size when empty): {total:.1} MiB in all"
    );
    for m in memory {
        let _ = writeln!(
            md,
            "- {}: {:.1} MiB",
            m["map"].as_str().unwrap_or("?"),
            mib(&m["bytes"])
        );
    }
    Ok(md)
}
