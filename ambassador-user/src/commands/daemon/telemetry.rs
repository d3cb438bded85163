//! What the daemon measures about itself, and the metrics page: the status read from the
//! pinned maps, then the daemon's own figures, then the DNS responder's.

use std::{path::Path, sync::Mutex};

use tracing::warn;

use crate::services::{
    dns::DnsStats,
    metrics::{self, Histogram, Kind, Page},
    monitor::Hub,
    status::{
        self,
        page::{DaemonFigures, View},
    },
};

/// The daemon's own figures.
pub(super) struct Telemetry {
    /// etcd response received -> maps updated.
    pub(super) lag: Histogram,
    /// The last of those.
    pub(super) last_lag: Option<std::time::Duration>,
    /// Desired states applied, and those that failed to apply.
    pub(super) applies: u64,
    pub(super) apply_failures: u64,
    /// Flows, socket translations and drained backends removed by the garbage collector.
    pub(super) gc_flows: u64,
    pub(super) gc_sockets: u64,
    pub(super) gc_backends: u64,
    /// Sockets destroyed because their backend went.
    pub(super) sockets_destroyed: u64,
    /// Backends the datapath found refusing, or silent, and how many answered again.
    pub(super) suspected_refused: u64,
    pub(super) suspected_silent: u64,
    pub(super) recovered: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            lag: Histogram::new(metrics::LAG_BUCKETS),
            last_lag: None,
            applies: 0,
            apply_failures: 0,
            gc_flows: 0,
            gc_sockets: 0,
            gc_backends: 0,
            sockets_destroyed: 0,
            suspected_refused: 0,
            suspected_silent: 0,
            recovered: 0,
        }
    }
}

/// A counter of the page: name, help, value.
type Counter = (&'static str, &'static str, fn(&Telemetry) -> u64);

/// The daemon's plain counters, in the page's order.
const COUNTERS: [Counter; 7] = [
    ("ambassador_applies_total", "Desired states applied to the maps.", |t| t.applies),
    (
        "ambassador_apply_failures_total",
        "Desired states that failed to apply (the maps keep the previous one).",
        |t| t.apply_failures,
    ),
    (
        "ambassador_gc_flows_removed_total",
        "Expired flows removed by the garbage collector.",
        |t| t.gc_flows,
    ),
    (
        "ambassador_gc_backends_removed_total",
        "Drained terminating backends removed.",
        |t| t.gc_backends,
    ),
    (
        "ambassador_gc_sockets_removed_total",
        "Socket-datapath translations removed (an unconnected socket idle past --udp-timeout, or a backend gone).",
        |t| t.gc_sockets,
    ),
    (
        "ambassador_backend_recoveries_total",
        "Suspect backends that answered a new flow again.",
        |t| t.recovered,
    ),
    (
        "ambassador_sockets_destroyed_total",
        "Sockets the socket datapath connected to a backend that went (UDP: also one that left its service), destroyed so the application reconnects.",
        |t| t.sockets_destroyed,
    ),
];

/// The metrics page.
pub(super) fn render_metrics(
    pin_dir: &Path,
    telemetry: &Mutex<Telemetry>,
    dns: Option<&DnsStats>,
    monitor: &Hub,
) -> String {
    let mut page = Page::default();
    let mut ring_lost = 0;
    let readable = match status::read(pin_dir) {
        Ok(s) => {
            status::write_metrics(&s, &mut page);
            ring_lost = s.events_lost;
            true
        }
        Err(e) => {
            warn!("metrics: reading the pinned maps failed: {e}");
            false
        }
    };
    page.single(
        "ambassador_maps_readable",
        Kind::Gauge,
        "Whether the pinned maps could be read for this page.",
        if readable { 1.0 } else { 0.0 },
    );
    let t = telemetry.lock().unwrap_or_else(|p| p.into_inner());
    t.lag.write(
        &mut page,
        "ambassador_control_plane_lag_seconds",
        "From an etcd response arriving to the maps holding it.",
    );
    for (name, help, value) in COUNTERS {
        page.single(name, Kind::Counter, help, value(&t) as f64);
    }
    page.family(
        "ambassador_backend_suspicions_total",
        Kind::Counter,
        "Backends this host's datapath found failing new flows, by how (refused: RST to a SYN; silent: a SYN retransmitted unanswered).",
    )
    .sample(
        "ambassador_backend_suspicions_total",
        &[("reason", "refused")],
        t.suspected_refused as f64,
    )
    .sample(
        "ambassador_backend_suspicions_total",
        &[("reason", "silent")],
        t.suspected_silent as f64,
    );
    page.single(
        "ambassador_monitors",
        Kind::Gauge,
        "`ambassador monitor` processes connected (the datapath writes flow events only while one is).",
        monitor.monitors() as f64,
    )
    .family(
        "ambassador_monitor_events_lost_total",
        Kind::Counter,
        "Flow events lost: to a full ring buffer (at=ring), or by a monitor that read too slowly (at=monitor).",
    )
    .sample(
        "ambassador_monitor_events_lost_total",
        &[("at", "ring")],
        ring_lost as f64,
    )
    .sample(
        "ambassador_monitor_events_lost_total",
        &[("at", "monitor")],
        monitor.lost() as f64,
    );
    if let Some(dns) = dns {
        dns.write(&mut page);
    }
    page.finish()
}

/// What the status page shows: the status read from the maps, then the daemon's own figures.
pub(super) fn status_view(
    pin_dir: &Path,
    telemetry: &Mutex<Telemetry>,
    dns: Option<&DnsStats>,
) -> std::result::Result<View, String> {
    let status = status::read(pin_dir).map_err(|e| format!("reading the pinned maps: {e}"))?;
    let t = telemetry.lock().unwrap_or_else(|p| p.into_inner());
    let daemon = DaemonFigures {
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        applies: t.applies,
        apply_failures: t.apply_failures,
        last_lag_ms: t.last_lag.map(|d| d.as_secs_f64() * 1000.0),
        suspicions: t.suspected_refused + t.suspected_silent,
        recoveries: t.recovered,
    };
    Ok(View {
        status,
        daemon,
        dns: dns.map(DnsStats::counts),
    })
}
