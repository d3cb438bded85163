//! Goals, and the rule that says whether a run shows one met. Every verdict in the documents
//! comes from here, computed from a record's samples against the goal's own baseline.

use std::fmt;

use anyhow::Result;

use crate::{
    stats::{median_min_max, pct},
    table::Samples,
};

/// The rule, as the documents state it.
pub const RULE: &str = "A goal is **met** when the median of its per-repetition ratios meets \
the target by at least the run's resolution, **not met** when it misses the target by more \
than the resolution, and **not resolved** otherwise, and always in a run of fewer than 3 \
repetitions. The resolution is how far the control (the same path measured twice in each \
repetition) strays from 1.00x in the middle half of its per-repetition ratios; in a group \
without a control, half the width of the middle half of the goal's own ratios.";

/// Which way a ratio is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// A goal: `mode`'s `metric` over `against`'s, per repetition, is at most (`Lower`) or at
/// least (`Higher`) `target`.
#[derive(Clone, Copy, Debug)]
pub struct Goal {
    /// What it is, for people ("ambassador-sock p50 latency").
    pub what: &'static str,
    pub mode: &'static str,
    pub against: &'static str,
    pub metric: &'static str,
    pub better: Better,
    pub target: f64,
    /// The control mode and the mode it measures again (`direct (again)`, `direct`).
    pub control: Option<(&'static str, &'static str)>,
    /// What the baseline is called in the documents, where its mode's name is not it.
    pub baseline: Option<&'static str>,
    /// A share rather than a ratio: `metric` over the baseline's `.0`, that times `.1` (to
    /// the same unit), shown as a percentage of what `.2` names.
    pub share_of: Option<(&'static str, f64, &'static str)>,
}

/// What an own-cost goal counts per: the programs' run time (ns) and the baseline's CPU time
/// (µs) over the same unit.
#[derive(Clone, Copy)]
pub enum Per {
    /// A request and its reply on one connection.
    RoundTrip,
    /// A whole connection: handshake, one request, close.
    Connection,
}

/// A goal on what `mode`'s eBPF programs cost (kernel-timed run time) as a share of
/// `against`'s whole CPU time, both counted per `per`: met at most `target` (0.02 is 2%).
pub const fn own_cost(
    what: &'static str,
    modes: (&'static str, &'static str),
    per: Per,
    target: f64,
) -> Goal {
    let (metric, cpu, name) = match per {
        Per::RoundTrip => (
            "bpf_ns_per_round_trip",
            "cpu_us_per_round_trip",
            "CPU per round trip",
        ),
        Per::Connection => ("bpf_ns_per_conn", "cpu_us_per_conn", "CPU per connection"),
    };
    Goal::new(what, modes, metric, Better::Lower, target).share_of(cpu, 1000.0, name)
}

impl Goal {
    /// A goal with no control (its resolution comes from its own ratios).
    pub const fn new(
        what: &'static str,
        (mode, against): (&'static str, &'static str),
        metric: &'static str,
        better: Better,
        target: f64,
    ) -> Self {
        Self {
            what,
            mode,
            against,
            metric,
            better,
            target,
            control: None,
            baseline: None,
            share_of: None,
        }
    }

    /// The same goal as a share of the baseline's `metric` (times `unit`, to the goal's
    /// metric's unit), which the documents call `name`.
    pub const fn share_of(self, metric: &'static str, unit: f64, name: &'static str) -> Self {
        Self {
            share_of: Some((metric, unit, name)),
            ..self
        }
    }

    /// The same goal, its baseline called `name` in the documents.
    pub const fn baseline(self, name: &'static str) -> Self {
        Self {
            baseline: Some(name),
            ..self
        }
    }

    /// The same goal with `again` (measuring `base` a second time) as its control.
    pub const fn control(self, again: &'static str, base: &'static str) -> Self {
        Self {
            control: Some((again, base)),
            ..self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    NotResolved,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Met => "met",
            Self::NotMet => "not met",
            Self::NotResolved => "not resolved",
        })
    }
}

/// A goal judged on one run.
#[derive(Clone, Copy, Debug)]
pub struct Judged {
    pub goal: Goal,
    /// The median of the per-repetition ratios, and their min and max.
    pub ratio: f64,
    pub min: f64,
    pub max: f64,
    pub resolution: f64,
    pub reps: usize,
    pub verdict: Verdict,
}

/// The farthest the middle half of `ratios` strays from 1.
fn control_resolution(ratios: &[f64]) -> f64 {
    let mut s = ratios.to_vec();
    s.sort_by(f64::total_cmp);
    (pct(&s, 0.25) - 1.0).abs().max((pct(&s, 0.75) - 1.0).abs())
}

/// Half the width of the middle half of `ratios`.
fn own_resolution(ratios: &[f64]) -> f64 {
    let mut s = ratios.to_vec();
    s.sort_by(f64::total_cmp);
    (pct(&s, 0.75) - pct(&s, 0.25)) / 2.0
}

/// The rule applied to a median ratio `m` with resolution `r` (see [`RULE`]).
pub fn rule(m: f64, r: f64, reps: usize, target: f64, better: Better) -> Verdict {
    let margin = match better {
        Better::Lower => target - m,
        Better::Higher => m - target,
    };
    if reps < 3 || !m.is_finite() {
        Verdict::NotResolved
    } else if margin >= r {
        Verdict::Met
    } else if margin < -r {
        Verdict::NotMet
    } else {
        Verdict::NotResolved
    }
}

/// Judges `goal` on a group's samples.
pub fn judge(samples: &Samples, goal: Goal) -> Result<Judged> {
    let ratios = match goal.share_of {
        None => samples.ratios(goal.mode, goal.against, goal.metric)?,
        Some((of, unit, _)) => {
            let (v, b) = (
                samples.values(goal.mode, goal.metric)?,
                samples.values(goal.against, of)?,
            );
            v.iter().zip(&b).map(|(v, b)| v / (b * unit)).collect()
        }
    };
    let resolution = match goal.control {
        Some((again, base)) => control_resolution(&samples.ratios(again, base, goal.metric)?),
        None => own_resolution(&ratios),
    };
    let [ratio, min, max] = median_min_max(&ratios);
    Ok(Judged {
        goal,
        ratio,
        min,
        max,
        resolution,
        reps: ratios.len(),
        verdict: rule(ratio, resolution, ratios.len(), goal.target, goal.better),
    })
}

impl fmt::Display for Judged {
    /// "ambassador-sock p50 latency / direct <= 1.02x: **not resolved** (1.03x, 0.90-1.17;
    /// resolution 8.0%, 10 repetitions)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.goal;
        let op = match g.better {
            Better::Lower => "<=",
            Better::Higher => ">=",
        };
        if let Some((_, _, of)) = g.share_of {
            let pc = |v: f64| v * 100.0;
            return write!(
                f,
                "{} / {}'s {of} {op} {:.1}%: **{}** ({:.2}%, {:.2}-{:.2}%; resolution {:.2}%, {} repetitions)",
                g.what,
                g.baseline.unwrap_or(g.against),
                pc(g.target),
                self.verdict,
                pc(self.ratio),
                pc(self.min),
                pc(self.max),
                pc(self.resolution),
                self.reps
            );
        }
        write!(
            f,
            "{} / {} {op} {:.2}x: **{}** ({:.2}x, {:.2}-{:.2}; resolution {:.1}%, {} repetitions)",
            g.what,
            g.baseline.unwrap_or(g.against),
            g.target,
            self.verdict,
            self.ratio,
            self.min,
            self.max,
            self.resolution * 100.0,
            self.reps
        )
    }
}

/// Every goal of a group judged, one Markdown list item each.
pub fn list(samples: &Samples, goals: &[Goal]) -> Result<String> {
    let mut md = String::new();
    for g in goals {
        md += &format!("- {}\n", judge(samples, *g)?);
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rule_needs_the_margin_to_exceed_the_resolution() {
        use Better::*;
        use Verdict::*;
        assert_eq!(rule(1.00, 0.01, 10, 1.02, Lower), Met);
        assert_eq!(rule(1.03, 0.08, 10, 1.02, Lower), NotResolved);
        assert_eq!(rule(1.20, 0.08, 10, 1.02, Lower), NotMet);
        assert_eq!(rule(1.49, 0.04, 10, 1.5, Higher), NotResolved);
        assert_eq!(rule(1.40, 0.04, 10, 1.5, Higher), NotMet);
        assert_eq!(rule(1.60, 0.04, 10, 1.5, Higher), Met);
        assert_eq!(rule(1.00, 0.00, 1, 1.02, Lower), NotResolved);
        assert_eq!(rule(f64::NAN, 0.00, 5, 1.02, Lower), NotResolved);
    }

    #[test]
    fn a_goal_is_judged_against_its_own_baseline_with_the_controls_resolution() {
        let modes = json!([
            {"mode": "direct", "p50": [10.0, 10.0, 10.0, 10.0, 10.0]},
            {"mode": "again", "p50": [10.0, 10.5, 9.5, 10.0, 10.5]},
            {"mode": "tc", "p50": [10.0, 10.0, 10.0, 10.0, 10.0]},
            {"mode": "socat", "p50": [14.0, 15.0, 16.0, 15.0, 15.5]},
        ]);
        let s = Samples::new(&modes).unwrap();
        let goal = Goal {
            what: "tc p50 over socat's",
            mode: "socat",
            against: "tc",
            metric: "p50",
            better: Better::Higher,
            target: 1.5,
            control: Some(("again", "direct")),
            baseline: None,
            share_of: None,
        };
        let j = judge(&s, goal).unwrap();
        assert_eq!((j.ratio, j.min, j.max, j.reps), (1.5, 1.4, 1.6, 5));
        assert!((j.resolution - 0.05).abs() < 1e-9, "{j:?}");
        assert_eq!(j.verdict, Verdict::NotResolved);
        let text = j.to_string();
        assert!(
            text.contains(
                "socat's / tc >= 1.50x: **not resolved** (1.50x, 1.40-1.60; resolution 5.0%,"
            ),
            "{text}"
        );
        let own = judge(
            &s,
            Goal {
                control: None,
                target: 1.2,
                ..goal
            },
        )
        .unwrap();
        // The middle half of its own ratios: 1.50-1.55.
        assert!((own.resolution - 0.025).abs() < 1e-9, "{own:?}");
        assert_eq!(own.verdict, Verdict::Met);
        // tc's own time per transaction (ns) as a share of direct's CPU per transaction (µs).
        let modes = json!([
            {"mode": "direct", "cpu_us": [40.0, 40.0, 40.0], "bpf_ns": [0.0, 0.0, 0.0]},
            {"mode": "tc", "cpu_us": [41.0, 50.0, 39.0], "bpf_ns": [1000.0, 1000.0, 1200.0]},
        ]);
        let s = Samples::new(&modes).unwrap();
        let share = Goal::new(
            "tc's programs",
            ("tc", "direct"),
            "bpf_ns",
            Better::Lower,
            0.05,
        )
        .share_of("cpu_us", 1000.0, "CPU");
        let j = judge(&s, share).unwrap();
        assert!((j.ratio - 0.025).abs() < 1e-12, "{j:?}");
        assert_eq!(j.verdict, Verdict::Met);
        assert!(
            j.to_string()
                .contains("tc's programs / direct's CPU <= 5.0%: **met** (2.50%"),
            "{j}"
        );
    }
}
