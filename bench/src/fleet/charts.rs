//! The fleet's charts (SVG, drawn with plotters): a change's time to every host, and what the
//! hosts cost etcd's memory, against the number of hosts, one line per way of reaching etcd.

use std::{collections::BTreeMap, path::Path};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{collect::every_host, Trial};
use crate::stats::pct;

/// etcd's published watch cost: about 50 MB for 1,000 clients with one watch each (its watch
/// memory benchmark), in MiB per client.
pub(super) const ETCD_MIB_PER_CLIENT: f64 = 50.0 / 1000.0 * 1e6 / (1 << 20) as f64;

/// Writes `fleet-latency.svg` and `fleet-etcd-memory.svg` into `dir`.
pub(super) fn write(dir: &Path, trials: &[Trial]) -> Result<()> {
    let latency = lines(trials, |t| {
        let (mut v, _) = every_host(&t.changes);
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| pct(&v, 0.99))
    });
    let memory = lines(trials, |t| Some(t.etcd_growth_mib.max(1.0)));
    let hosts: Vec<f64> = trials.iter().map(|t| t.hosts as f64).collect();
    let goal =
        |per_host: f64| -> Vec<(f64, f64)> { hosts.iter().map(|&h| (h, h * per_host)).collect() };
    let svg = chart(
        "A change until every host has it (p99 over the changes)",
        "ms",
        &latency,
        &[(
            "goal: 1 s".into(),
            hosts.iter().map(|&h| (h, 1000.0)).collect(),
        )],
    )?;
    std::fs::write(dir.join("fleet-latency.svg"), svg)?;
    let svg = chart(
        "etcd memory the hosts added (3 members' RSS)",
        "MiB",
        &memory,
        &[
            (
                "etcd's published watch cost".into(),
                goal(ETCD_MIB_PER_CLIENT),
            ),
            ("goal: 2x that".into(), goal(2.0 * ETCD_MIB_PER_CLIENT)),
        ],
    )?;
    std::fs::write(dir.join("fleet-etcd-memory.svg"), svg)?;
    println!("charts: target/bench/fleet-latency.svg, target/bench/fleet-etcd-memory.svg");
    Ok(())
}

type Line = (String, Vec<(f64, f64)>);

/// One line per way of reaching etcd: (hosts, `y`) for each trial that has a `y`.
fn lines(trials: &[Trial], y: impl Fn(&Trial) -> Option<f64>) -> Vec<Line> {
    let mut by_via: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for t in trials {
        if let Some(v) = y(t) {
            by_via
                .entry(t.via.name())
                .or_default()
                .push((t.hosts as f64, v));
        }
    }
    by_via.into_iter().collect()
}

/// A chart with log-scaled axes: `measured` as lines with points, `reference` dashed.
fn chart(title: &str, unit: &str, measured: &[Line], reference: &[Line]) -> Result<String> {
    let all = measured.iter().chain(reference).flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(anyhow!("no trial to chart"));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut sizes: Vec<f64> = measured
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.0))
            .collect();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x0 * 0.8..x1 * 1.25).log_scale().with_key_points(sizes),
                (y0 * 0.7..y1 * 1.4).log_scale(),
            )?;
        let whole = |v: &f64| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        c.configure_mesh()
            .x_desc("client hosts")
            .y_desc(unit)
            .x_label_formatter(&whole)
            .y_label_formatter(&whole)
            .light_line_style(WHITE)
            .draw()?;
        for (i, (name, points)) in measured.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            c.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        for (name, points) in reference {
            let style = BLACK.mix(0.5);
            c.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style.into()))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}
