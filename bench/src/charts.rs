//! The charts (SVG, drawn with plotters), made from a group's record alone, so a run and
//! `cargo xtask bench --report` draw the same ones: the datapath's latency distribution per
//! mode and its ratios to direct with their spread, the scale curves, and the fleet's
//! latency and etcd memory against the number of hosts.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context as _, Result};
use plotters::prelude::*;
use serde_json::Value;

use crate::{
    fleet::{change_p99, ETCD_MIB_PER_CLIENT},
    stats::{median, median_min_max, min_max},
    table::Samples,
};

/// A group's charts: (file name, SVG) for each.
pub fn for_group(group: &str, json: &Value) -> Result<Vec<(String, String)>> {
    Ok(match group {
        "datapath" => vec![
            ("datapath-latency.svg".into(), latency_cdf(json)?),
            ("datapath-ratios.svg".into(), datapath_ratios(json)?),
        ],
        "scale" => vec![("scale.svg".into(), scale(json)?)],
        "fleet" => fleet(json)?,
        _ => Vec::new(),
    })
}

/// How far into the tail percentile `p` is: -log10(1 - p/100), so 90, 99 and 99.9 are evenly
/// spaced.
fn tail(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

/// Each mode's latency distribution: at each percentile sockperf reports, the median over
/// the repetitions.
fn latency_cdf(json: &Value) -> Result<String> {
    let pcts: Vec<f64> = json["percentiles"]
        .as_array()
        .context("percentiles")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let mut lines = Vec::new();
    for mode in json["modes"].as_array().context("modes")? {
        let reps = mode["latency_percentiles_us"]
            .as_array()
            .context("latency_percentiles_us")?;
        let points: Vec<(f64, f64)> = pcts
            .iter()
            .enumerate()
            .map(|(k, &p)| {
                let mut at: Vec<f64> = reps.iter().filter_map(|r| r[k].as_f64()).collect();
                (median(&mut at), tail(p))
            })
            .collect();
        lines.push((mode["mode"].as_str().unwrap_or("?").to_owned(), points));
    }
    let (x0, x1) = extent(lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)))?;
    let top = tail(*pcts.last().context("no percentiles")?) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 460)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(
                "Latency distribution (sockperf half round trip, median of repetitions)",
                ("sans-serif", 17),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0.0..top)?;
        c.configure_mesh()
            .x_desc("µs")
            .y_desc("percentile")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_labels(top.floor() as usize + 1)
            .y_label_formatter(&|y| {
                let p = format!("{:.3}", 100.0 * (1.0 - 10f64.powf(-y)));
                p.trim_end_matches('0').trim_end_matches('.').to_owned()
            })
            .light_line_style(WHITE)
            .draw()?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut c, SeriesLabelPosition::UpperLeft)?;
        root.present()?;
    }
    Ok(svg)
}

/// Each mode's per-repetition ratios to direct (median, min, max) for three figures, as
/// horizontal bars with whiskers, one panel each.
fn datapath_ratios(json: &Value) -> Result<String> {
    let s = Samples::new(&json["modes"])?;
    let panels = [
        ("p50 latency / direct's (lower is better)", "p50_us"),
        ("1-stream throughput / direct's", "gbps_1_stream"),
        ("connections per second / direct's", "conn_per_sec"),
    ];
    let modes: Vec<&str> = s.modes().collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, (title, metric)) in root.split_evenly((3, 1)).iter().zip(panels) {
            let rows: Vec<[f64; 3]> = modes
                .iter()
                .map(|m| Ok(median_min_max(&s.ratios(m, "direct", metric)?)))
                .collect::<Result<_>>()?;
            bars(area, title, &modes, &rows)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Horizontal bars at each row's median, a whisker from its min to its max, a line at 1.
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    names: &[&str],
    rows: &[[f64; 3]],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let hi = rows.iter().map(|r| r[2]).fold(1.0, f64::max) * 1.1;
    let n = names.len() as f64;
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(120)
        .build_cartesian_2d(0.0..hi, -0.5..n - 0.5)?;
    let label = |y: &f64| {
        let i = y.round();
        if (y - i).abs() < 0.01 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].to_owned()
        } else {
            String::new()
        }
    };
    c.configure_mesh()
        .y_labels(names.len() * 4)
        .y_label_formatter(&label)
        .x_label_formatter(&|v| format!("{v:.1}x"))
        .disable_y_mesh()
        .light_line_style(WHITE)
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64;
        let color = Palette99::pick(i).to_rgba();
        c.draw_series([Rectangle::new(
            [(0.0, y - 0.3), (r[0], y + 0.3)],
            color.mix(0.6).filled(),
        )])?;
        c.draw_series([
            PathElement::new(vec![(r[1], y), (r[2], y)], BLACK),
            PathElement::new(vec![(r[1], y - 0.15), (r[1], y + 0.15)], BLACK),
            PathElement::new(vec![(r[2], y - 0.15), (r[2], y + 0.15)], BLACK),
        ])?;
    }
    c.draw_series([PathElement::new(
        vec![(1.0, -0.5), (1.0, n - 0.5)],
        BLACK.mix(0.5),
    )])?;
    Ok(())
}

/// Connections per second against the number of services, each mode against itself with
/// one service (median of per-repetition ratios; the whisker is their min-max).
fn scale(json: &Value) -> Result<String> {
    let s = Samples::new(&json["modes"])?;
    let by_mode = crate::scale::rows()
        .into_iter()
        .map(|(mode, sizes)| {
            let base = &sizes[0].1;
            let points = sizes
                .iter()
                .map(|(n, name)| {
                    let r = s.ratios(name, base, "conn_per_sec")?;
                    Ok((*n as f64, median_min_max(&r)))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((mode, points))
        })
        .collect::<Result<Vec<_>>>()?;
    let points = || by_mode.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = extent(points().map(|p| p.0))?;
    let (y0, y1) = extent(points().flat_map(|p| [p.1[1], p.1[2]]))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(
                "New connections per second against services installed (vs 1 service)",
                ("sans-serif", 17),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x0 * 0.5..x1 * 2.0)
                    .log_scale()
                    .with_key_points(vec![1.0, 10.0, 100.0, 1000.0, 10000.0]),
                (y0.min(0.9) * 0.95)..(y1.max(1.1) * 1.05),
            )?;
        c.configure_mesh()
            .x_desc("services (iptables: DNAT rules)")
            .y_desc("× its rate with 1 service")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .light_line_style(WHITE)
            .draw()?;
        for (i, (mode, points)) in by_mode.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line: Vec<(f64, f64)> = points.iter().map(|(n, r)| (*n, r[0])).collect();
            c.draw_series(LineSeries::new(line, color.stroke_width(2)))?
                .label(*mode)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            c.draw_series(
                points
                    .iter()
                    .map(|(n, r)| ErrorBar::new_vertical(*n, r[1], r[0], r[2], color.filled(), 8)),
            )?;
        }
        legend(&mut c, SeriesLabelPosition::LowerLeft)?;
        root.present()?;
    }
    Ok(svg)
}

type Line = (String, Vec<(f64, f64)>);

/// The fleet's two charts: a change's p99 until every host has it, and etcd's memory.
fn fleet(json: &Value) -> Result<Vec<(String, String)>> {
    let trials = json["trials"].as_array().context("trials")?;
    let lines = |y: &dyn Fn(&Value) -> Option<f64>| -> Vec<Line> {
        let mut by_via: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for t in trials {
            if let (Some(v), Some(h)) = (y(t), t["hosts"].as_f64()) {
                let via = t["via"].as_str().unwrap_or("?").to_owned();
                by_via.entry(via).or_default().push((h, v));
            }
        }
        by_via.into_iter().collect()
    };
    let latency = lines(&change_p99);
    let memory = lines(&|t| Some(t["etcd_growth_mib"].as_f64()?.max(1.0)));
    let mut hosts: Vec<f64> = trials.iter().filter_map(|t| t["hosts"].as_f64()).collect();
    hosts.sort_by(f64::total_cmp);
    hosts.dedup();
    let per =
        |per_host: f64| -> Vec<(f64, f64)> { hosts.iter().map(|&h| (h, h * per_host)).collect() };
    Ok(vec![
        (
            "fleet-latency.svg".into(),
            log_lines(
                "A change until every host has it (p99 over the changes)",
                "ms",
                &latency,
                &[(
                    "goal: 1 s".into(),
                    hosts.iter().map(|&h| (h, 1000.0)).collect(),
                )],
            )?,
        ),
        (
            "fleet-etcd-memory.svg".into(),
            log_lines(
                "etcd memory the hosts added (3 members' RSS)",
                "MiB",
                &memory,
                &[
                    (
                        "etcd's published watch cost".into(),
                        per(ETCD_MIB_PER_CLIENT),
                    ),
                    ("goal: 2x that".into(), per(2.0 * ETCD_MIB_PER_CLIENT)),
                ],
            )?,
        ),
    ])
}

/// A chart with log-scaled axes against the number of client hosts: `measured` as lines
/// with points, `reference` dashed.
fn log_lines(title: &str, unit: &str, measured: &[Line], reference: &[Line]) -> Result<String> {
    let all = || measured.iter().chain(reference).flat_map(|(_, p)| p.iter());
    let (x0, x1) = extent(all().map(|p| p.0))?;
    let (y0, y1) = extent(all().map(|p| p.1))?;
    let mut sizes: Vec<f64> = measured
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE)?;
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
        legend(&mut c, SeriesLabelPosition::UpperLeft)?;
        root.present()?;
    }
    Ok(svg)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    c: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    c.configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The smallest and largest of `v`; an error when it is empty.
fn extent(v: impl Iterator<Item = f64>) -> Result<(f64, f64)> {
    let (lo, hi) = min_max(v);
    if lo > hi {
        return Err(anyhow!("nothing to chart"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_charts_are_drawn_from_a_record_alone() {
        let modes = json!([
            {"mode": "direct", "p50_us": [10.0, 11.0], "gbps_1_stream": [9.0, 10.0],
             "conn_per_sec": [3000.0, 3100.0],
             "latency_percentiles_us": [[8.0, 10.0, 12.0], [8.5, 11.0, 13.0]]},
            {"mode": "ambassador-tc", "p50_us": [10.5, 11.0], "gbps_1_stream": [8.0, 10.0],
             "conn_per_sec": [2900.0, 3200.0],
             "latency_percentiles_us": [[8.0, 10.5, 14.0], [8.5, 11.0, 15.0]]},
        ]);
        let json = json!({"percentiles": [25.0, 50.0, 99.0], "modes": modes});
        let charts = for_group("datapath", &json).unwrap();
        assert_eq!(charts.len(), 2);
        for (name, svg) in &charts {
            assert!(
                svg.starts_with("<svg") && svg.contains("ambassador-tc"),
                "{name}"
            );
        }
        // The same record draws the same picture (the documents' drift test relies on it).
        assert_eq!(for_group("datapath", &json).unwrap(), charts);
        assert!((tail(99.0) - 2.0).abs() < 1e-12);
        assert!(for_group("dns", &json).unwrap().is_empty());
    }
}
