//! A group's samples as its record holds them (each mode's value of each metric in every
//! repetition), and the Markdown tables made from them. A run prints its tables with these
//! functions and `cargo xtask bench --report` makes the documents' tables with the same ones
//! from the committed records, so the two cannot differ.

use std::fmt::Write as _;

use anyhow::{bail, Context as _, Result};
use serde_json::{Map, Value};

use crate::stats::{median, ratio, spread};

/// Each mode's samples: an array of objects, each with a `mode` name and, per metric, the
/// values of every repetition in the order the repetitions ran.
pub struct Samples<'a> {
    rows: Vec<(&'a str, &'a Map<String, Value>)>,
}

impl<'a> Samples<'a> {
    /// Reads `modes` (the group's `modes` array).
    pub fn new(modes: &'a Value) -> Result<Self> {
        let rows = modes
            .as_array()
            .context("a group's modes are an array")?
            .iter()
            .map(|m| {
                let o = m.as_object().context("a mode is an object")?;
                let name = o
                    .get("mode")
                    .and_then(Value::as_str)
                    .context("a mode has a name")?;
                Ok((name, o))
            })
            .collect::<Result<_>>()?;
        Ok(Self { rows })
    }

    /// The modes whose names start with `prefix`, named without it (one packet's modes, say).
    pub fn subset(&self, prefix: &str) -> Self {
        let rows = self
            .rows
            .iter()
            .filter_map(|(n, r)| n.strip_prefix(prefix).map(|n| (n, *r)))
            .collect();
        Self { rows }
    }

    /// The modes' names, in the record's order.
    pub fn modes(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.rows.iter().map(|(n, _)| *n)
    }

    fn row(&self, mode: &str) -> Result<&'a Map<String, Value>> {
        self.rows
            .iter()
            .find(|(n, _)| *n == mode)
            .map(|(_, r)| *r)
            .with_context(|| format!("no mode {mode:?} in the record"))
    }

    /// Mode `mode`'s values of `metric`, one per repetition.
    pub fn values(&self, mode: &str, metric: &str) -> Result<Vec<f64>> {
        let v = self
            .row(mode)?
            .get(metric)
            .and_then(Value::as_array)
            .with_context(|| format!("{mode:?} has no samples of {metric:?}"))?;
        v.iter()
            .map(|x| x.as_f64().context("a sample is a number"))
            .collect()
    }

    /// A whole number recorded once for mode `mode` (a count such as failed connections).
    pub fn count(&self, mode: &str, key: &str) -> Result<u64> {
        self.row(mode)?
            .get(key)
            .and_then(Value::as_u64)
            .with_context(|| format!("{mode:?} has no count {key:?}"))
    }

    /// `mode`'s per-repetition ratios of `metric` to `base`'s (measured in the same
    /// repetitions).
    pub fn ratios(&self, mode: &str, base: &str, metric: &str) -> Result<Vec<f64>> {
        let (v, b) = (self.values(mode, metric)?, self.values(base, metric)?);
        if v.len() != b.len() {
            bail!("{mode:?} and {base:?} have different numbers of {metric:?} samples");
        }
        Ok(v.iter().zip(&b).map(|(a, b)| a / b).collect())
    }
}

/// What one column shows for a mode.
#[derive(Clone, Copy)]
pub enum Col {
    /// The median of the metric, with `digits` decimals.
    Median(&'static str, usize),
    /// The median and its min-max over repetitions.
    Spread(&'static str, usize),
    /// The median of per-repetition ratios to the named mode, with their min-max.
    Ratio(&'static str, &'static str),
    /// A count recorded once per mode.
    Count(&'static str),
    /// 1 over the median, with `digits` decimals (a rate from a cost per unit).
    Inverse(&'static str, usize),
    /// The median as a percentage (of a share between 0 and 1).
    Percent(&'static str),
}

/// The table: one row per mode, one column per `(header, Col)`.
pub fn render(samples: &Samples, first: &str, cols: &[(&str, Col)]) -> Result<String> {
    let mut md = format!("| {first} |");
    for (h, _) in cols {
        let _ = write!(md, " {h} |");
    }
    md += "\n|---|";
    md += &"---:|".repeat(cols.len());
    md.push('\n');
    for mode in samples.modes() {
        let _ = write!(md, "| {mode} |");
        for (_, col) in cols {
            let _ = write!(md, " {} |", cell(samples, mode, *col)?);
        }
        md.push('\n');
    }
    Ok(md)
}

/// "median (min-max)" of `v`, with `digits` decimals.
pub fn spread_cell(v: &[f64], digits: usize) -> String {
    format!(
        "{:.digits$} ({})",
        median(&mut v.to_vec()),
        spread(v, digits)
    )
}

/// "median x (min-max)" of the per-repetition ratios of `v` to `base`.
pub fn ratio_cell(v: &[f64], base: &[f64]) -> String {
    let (r, sp) = ratio(v, base, 2);
    format!("{r:.2}x ({sp})")
}

/// `-` where a mode has no samples of a column's metric (a program's run time in a mode
/// without the program).
fn cell(samples: &Samples, mode: &str, col: Col) -> Result<String> {
    let metric = match col {
        Col::Median(m, _) | Col::Spread(m, _) | Col::Inverse(m, _) | Col::Percent(m) => Some(m),
        Col::Ratio(..) | Col::Count(_) => None,
    };
    if let Some(m) = metric {
        if samples.values(mode, m)?.is_empty() {
            return Ok("-".into());
        }
    }
    Ok(match col {
        Col::Median(m, d) => format!("{:.d$}", median(&mut samples.values(mode, m)?)),
        Col::Spread(m, d) => spread_cell(&samples.values(mode, m)?, d),
        Col::Ratio(m, base) => ratio_cell(&samples.values(mode, m)?, &samples.values(base, m)?),
        Col::Count(k) => samples.count(mode, k)?.to_string(),
        Col::Inverse(m, d) => format!("{:.d$}", 1.0 / median(&mut samples.values(mode, m)?)),
        Col::Percent(m) => format!("{:.1}%", median(&mut samples.values(mode, m)?) * 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_is_made_from_the_samples_of_every_repetition() {
        let modes = json!([
            {"mode": "direct", "p50_us": [10.0, 20.0, 12.0], "failed": 0},
            {"mode": "proxy", "p50_us": [15.0, 22.0, 12.0], "failed": 2},
        ]);
        let s = Samples::new(&modes).unwrap();
        let md = render(
            &s,
            "mode",
            &[
                ("p50 us", Col::Spread("p50_us", 1)),
                ("vs direct", Col::Ratio("p50_us", "direct")),
                ("failed", Col::Count("failed")),
            ],
        )
        .unwrap();
        assert_eq!(
            md,
            "| mode | p50 us | vs direct | failed |\n|---|---:|---:|---:|\n\
             | direct | 12.0 (10.0-20.0) | 1.00x (1.00-1.00) | 0 |\n\
             | proxy | 15.0 (12.0-22.0) | 1.10x (1.00-1.50) | 2 |\n"
        );
        assert_eq!(s.ratios("proxy", "direct", "p50_us").unwrap()[0], 1.5);
        assert!(s.values("proxy", "gbps").is_err());
        assert!(s.values("nobody", "p50_us").is_err());
    }
}
