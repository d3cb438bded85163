//! Prometheus metrics: a page is built at each scrape into a `prometheus-client` registry and
//! encoded in the text format (version 0.0.4); [`crate::services::web`] serves it.

use std::{collections::HashMap, sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram},
    registry::Registry,
};

/// The content type of [`Page::finish`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A metric family's type.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Only goes up (resets when the process or the maps are recreated).
    Counter,
    /// Goes up and down.
    Gauge,
}

type Labels = Vec<(String, String)>;

enum Samples {
    Counter(Family<Labels, Counter<f64, AtomicU64>>),
    Gauge(Family<Labels, Gauge<f64, AtomicU64>>),
}

/// One scrape's page, built family by family.
#[derive(Default)]
pub struct Page {
    registry: Registry,
    families: HashMap<String, Samples>,
}

impl Page {
    /// Starts a family. A counter's name ends in `_total` (prometheus-client adds the suffix
    /// to what it is given, so it is given the name without it).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = registry_help(help);
        let samples = match kind {
            Kind::Counter => {
                let f = Family::default();
                let stem = name.strip_suffix("_total").unwrap_or(name);
                self.registry.register(stem, help, f.clone());
                Samples::Counter(f)
            }
            Kind::Gauge => {
                let f = Family::default();
                self.registry.register(name, help, f.clone());
                Samples::Gauge(f)
            }
        };
        self.families.insert(name.to_owned(), samples);
        self
    }

    /// One sample of the family `name` (started with [`Self::family`]) with its labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self.families.get(name) {
            Some(Samples::Counter(f)) => {
                f.get_or_create(&labels).inc_by(value);
            }
            Some(Samples::Gauge(f)) => {
                f.get_or_create(&labels).set(value);
            }
            None => debug_assert!(false, "a sample of {name}, which has no family"),
        }
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The page in the text format.
    pub fn finish(self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

/// prometheus-client ends every HELP text with a period of its own.
fn registry_help(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// A histogram of durations in seconds with fixed buckets, kept across scrapes.
#[derive(Clone, Debug)]
pub struct Histogram(histogram::Histogram);

/// Buckets for control-plane lag: 1 ms to 10 s.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(histogram::Histogram::new(bounds.iter().copied()))
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// Adds the histogram to `page` as the family `name`.
    pub fn write(&self, page: &mut Page, name: &str, help: &str) {
        page.registry
            .register(name, registry_help(help), self.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_from_outside_are_escaped() {
        let mut p = Page::default();
        p.family("x_total", Kind::Counter, "a\nb").sample(
            "x_total",
            &[("service", "we\"b\\\n")],
            3.0,
        );
        let text = p.finish();
        assert_eq!(
            text,
            "# HELP x_total a\\nb.\n# TYPE x_total counter\nx_total{service=\"we\\\"b\\\\\\n\"} 3.0\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(1));
        let mut p = Page::default();
        h.write(&mut p, "lag_seconds", "lag");
        let text = p.finish();
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.01\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lag_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lag_seconds_count 3\n"), "{text}");
    }
}
