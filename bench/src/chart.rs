//! A dependency-free SVG chart of the datapath results: p50 latency and one-stream
//! throughput by mode, horizontal bars at the median with the min-max spread as a whisker.

use std::fmt::Write as _;

/// One panel: a title and, per mode, (median, min, max).
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    rows: Vec<(&'a str, [f64; 3])>,
}

const W: f64 = 640.0;
const LABEL: f64 = 120.0;
const BAR_H: f64 = 18.0;
const GAP: f64 = 8.0;

fn panel(svg: &mut String, p: &Panel, top: f64) -> f64 {
    let max = p
        .rows
        .iter()
        .map(|(_, v)| v[2].max(v[0]))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let scale = (W - LABEL - 80.0) / max;
    let _ = writeln!(
        svg,
        r#"<text x="8" y="{:.0}" font-weight="bold">{} ({})</text>"#,
        top + 14.0,
        p.title,
        p.unit
    );
    let mut y = top + 24.0;
    for (name, [med, lo, hi]) in &p.rows {
        let color = if name.starts_with("ambassador") {
            "steelblue"
        } else if *name == "direct" {
            "dimgray"
        } else {
            "silver"
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{name}</text>"#,
            LABEL - 6.0,
            y + 13.0
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{LABEL:.0}" y="{y:.0}" width="{:.1}" height="{BAR_H:.0}" fill="{color}"/>"#,
            med * scale
        );
        let mid = y + BAR_H / 2.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="black"/>"#,
            LABEL + lo * scale,
            LABEL + hi * scale
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.0}">{med:.1}</text>"#,
            LABEL + hi.max(*med) * scale + 6.0,
            y + 13.0
        );
        y += BAR_H + GAP;
    }
    y + 8.0
}

/// The SVG for `rows`: (mode, [p50, p50 min, p50 max, Gbit/s, min, max]).
pub fn datapath(rows: &[(String, [f64; 6])], caption: &str) -> String {
    let lat = Panel {
        title: "Latency p50, 64 B ping-pong",
        unit: "us, lower is better",
        rows: rows
            .iter()
            .map(|(m, v)| (m.as_str(), [v[0], v[1], v[2]]))
            .collect(),
    };
    let tput = Panel {
        title: "Throughput, 1 TCP stream",
        unit: "Gbit/s, higher is better",
        rows: rows
            .iter()
            .map(|(m, v)| (m.as_str(), [v[3], v[4], v[5]]))
            .collect(),
    };
    let mut body = String::new();
    let y = panel(&mut body, &lat, 8.0);
    let y = panel(&mut body, &tput, y);
    let _ = writeln!(
        body,
        r#"<text x="8" y="{:.0}" font-size="11" fill="dimgray">{}</text>"#,
        y + 6.0,
        caption
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    );
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W:.0}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n",
        y + 16.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_and_whisker_per_mode_and_panel() {
        let rows = vec![
            ("direct".to_owned(), [10.0, 9.0, 12.0, 20.0, 19.0, 21.0]),
            (
                "ambassador-tc".to_owned(),
                [11.0, 10.0, 13.0, 19.0, 18.0, 20.0],
            ),
        ];
        let svg = datapath(&rows, "a <caption> & more");
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert_eq!(svg.matches("<line ").count(), 4);
        assert!(svg.contains("&lt;caption&gt; &amp; more"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
