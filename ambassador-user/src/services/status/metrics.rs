//! The status as Prometheus metrics (the daemon serves them at `--metrics-addr`): plain gauges
//! and counters from a table, then the families labelled by map, reason, service and backend.

use super::{xdp, BackendStatus, ServiceStatus, Status};
use crate::services::metrics::{Kind, Page};

/// One single-valued metric: name, kind, help, value (`None`: not written).
type Single = (&'static str, Kind, &'static str, fn(&Status) -> Option<f64>);

fn flag(v: bool) -> Option<f64> {
    Some(if v { 1.0 } else { 0.0 })
}

/// The single-valued metrics, in the page's order.
const SINGLES: [Single; 15] = [
    (
        "ambassador_daemon_running",
        Kind::Gauge,
        "Whether the daemon's heartbeat in the pinned maps is recent.",
        |s| flag(s.control_plane.daemon_running),
    ),
    (
        "ambassador_ready",
        Kind::Gauge,
        "1 while the daemon runs and has applied a desired state to the maps (the alert rules' AmbassadorNotReady).",
        |s| flag(s.control_plane.daemon_running && s.control_plane.applied_age_ms.is_some()),
    ),
    (
        "ambassador_etcd_connected",
        Kind::Gauge,
        "Whether the etcd watch is established (0 while etcd is unreachable: forwarding goes on with the last state). Only with etcd as the source.",
        |s| flag(s.control_plane.etcd_connected).filter(|_| s.control_plane.source == "etcd"),
    ),
    (
        "ambassador_etcd_state_seconds",
        Kind::Gauge,
        "Seconds since the etcd connection last changed state.",
        |s| Some(s.control_plane.state_age_ms as f64 / 1000.0),
    ),
    (
        "ambassador_etcd_revision",
        Kind::Gauge,
        "The etcd revision the maps reflect.",
        |s| Some(s.control_plane.etcd_revision as f64),
    ),
    (
        "ambassador_etcd_malformed_values_total",
        Kind::Counter,
        "Malformed etcd values skipped (each key and revision once).",
        |s| Some(s.control_plane.malformed as f64),
    ),
    (
        "ambassador_etcd_frontend_conflicts",
        Kind::Gauge,
        "Services left out because another service holds their frontend.",
        |s| Some(s.control_plane.conflicts as f64),
    ),
    (
        "ambassador_refused_endpoints",
        Kind::Gauge,
        "Endpoints the backend policy leaves out.",
        |s| Some(f64::from(s.control_plane.refused_endpoints)),
    ),
    (
        "ambassador_refused_frontends",
        Kind::Gauge,
        "Services whose frontend this host refuses to rewrite (outside the VIP ranges and --allow-frontend, or one of its own addresses).",
        |s| Some(f64::from(s.control_plane.refused_frontends)),
    ),
    (
        "ambassador_refused_host_endpoints",
        Kind::Gauge,
        "Endpoints published by a host that its host record does not allow.",
        |s| Some(f64::from(s.control_plane.refused_host_endpoints)),
    ),
    (
        "ambassador_trust_hosts",
        Kind::Gauge,
        "1 when the cluster checks host records (trust mode hosts), 0 when open or from a file.",
        |s| flag(s.control_plane.trust == "hosts"),
    ),
    (
        "ambassador_links_pinned",
        Kind::Gauge,
        "Program links pinned (TCX and cgroup links): they forward even while no daemon runs.",
        |s| Some(s.control_plane.links_pinned as f64),
    ),
    (
        "ambassador_applied_age_seconds",
        Kind::Gauge,
        "Seconds since a desired state was last applied to the maps.",
        |s| s.control_plane.applied_age_ms.map(|ms| ms as f64 / 1000.0),
    ),
    (
        "ambassador_services",
        Kind::Gauge,
        "Services installed in the maps.",
        |s| Some(s.services.len() as f64),
    ),
    (
        "ambassador_over_capacity",
        Kind::Gauge,
        "Services and endpoints left out of the applied state because a map is full.",
        |s| Some(f64::from(s.control_plane.over_capacity)),
    ),
];

/// One metric per service: name, kind, help, value.
type Family = (&'static str, Kind, &'static str, fn(&ServiceStatus) -> f64);

/// The per-service families.
const SERVICE_FAMILIES: [Family; 8] = [
    (
        "ambassador_service_packets_total",
        Kind::Counter,
        "Packets rewritten from the frontend to a backend.",
        |s| s.counters.packets as f64,
    ),
    (
        "ambassador_service_bytes_total",
        Kind::Counter,
        "IPv4 bytes of the packets rewritten to a backend.",
        |s| s.counters.bytes as f64,
    ),
    (
        "ambassador_service_reply_packets_total",
        Kind::Counter,
        "Replies rewritten back to the frontend.",
        |s| s.counters.reply_packets as f64,
    ),
    (
        "ambassador_service_reply_bytes_total",
        Kind::Counter,
        "IPv4 bytes of the replies.",
        |s| s.counters.reply_bytes as f64,
    ),
    (
        "ambassador_service_new_flows_total",
        Kind::Counter,
        "Flows started.",
        |s| s.counters.new_flows as f64,
    ),
    (
        "ambassador_service_drops_total",
        Kind::Counter,
        "Packets to the service dropped (ambassador_verdicts_total says why).",
        |s| s.counters.drops as f64,
    ),
    (
        "ambassador_service_flows",
        Kind::Gauge,
        "Established flows.",
        |s| s.flows as f64,
    ),
    (
        "ambassador_service_sockets",
        Kind::Gauge,
        "Sockets the socket datapath translated to the service's backends.",
        |s| s.sockets as f64,
    ),
];

/// One metric per backend: name, help, value (gauges).
type BackendFamily = (&'static str, &'static str, fn(&BackendStatus) -> f64);

/// The per-backend families.
const BACKEND_FAMILIES: [BackendFamily; 2] = [
    (
        "ambassador_backend_flows",
        "Established flows per backend.",
        |b| b.flows as f64,
    ),
    (
        "ambassador_backend_sockets",
        "Sockets the socket datapath translated to each backend.",
        |b| b.sockets as f64,
    ),
];

/// Writes the report as Prometheus metrics (the daemon serves them at `--metrics-addr`).
pub fn write_metrics(status: &Status, page: &mut Page) {
    for (name, kind, help, value) in SINGLES {
        if let Some(v) = value(status) {
            page.single(name, kind, help, v);
        }
    }
    maps(status, page);
    if let Some(x) = &status.xdp {
        xdp::write_metrics(x, page);
    }
    services(status, page);
}

/// The maps' capacity and use, flows by state, and packets by verdict.
fn maps(status: &Status, page: &mut Page) {
    let cap = &status.capacity;
    let maps = [
        ("services", &cap.services),
        ("backends", &cap.backends),
        ("slots", &cap.slots),
        ("flows", &cap.flows),
    ];
    page.family(
        "ambassador_map_capacity",
        Kind::Gauge,
        "Entries each kind of map holds (fixed when the maps were created).",
    );
    for (m, u) in maps {
        page.sample(
            "ambassador_map_capacity",
            &[("map", m)],
            f64::from(u.capacity),
        );
    }
    page.family(
        "ambassador_map_entries",
        Kind::Gauge,
        "Entries in use in each kind of map.",
    );
    for (m, u) in maps {
        page.sample("ambassador_map_entries", &[("map", m)], u.used as f64);
    }
    page.family(
        "ambassador_flows",
        Kind::Gauge,
        "Flows tracked, by state (closing: saw FIN or RST).",
    )
    .sample(
        "ambassador_flows",
        &[("state", "established")],
        status.flows as f64,
    )
    .sample(
        "ambassador_flows",
        &[("state", "closing")],
        status.closing_flows as f64,
    );
    page.family(
        "ambassador_verdicts_total",
        Kind::Counter,
        "Packets by datapath verdict over all services; every reason other than forwarded and reverse_nat is a drop.",
    );
    for (reason, n) in &status.reasons {
        page.sample(
            "ambassador_verdicts_total",
            &[("reason", reason)],
            *n as f64,
        );
    }
}

/// The per-service and per-backend families.
fn services(status: &Status, page: &mut Page) {
    for (name, kind, help, value) in SERVICE_FAMILIES {
        page.family(name, kind, help);
        for s in &status.services {
            let proto = s.proto.to_string();
            page.sample(
                name,
                &[
                    ("service", &s.name),
                    ("frontend", &s.frontend),
                    ("proto", &proto),
                ],
                value(s),
            );
        }
    }
    for (name, help, value) in BACKEND_FAMILIES {
        page.family(name, Kind::Gauge, help);
        for s in &status.services {
            for bk in &s.backends {
                page.sample(
                    name,
                    &[
                        ("service", &s.name),
                        ("backend", &bk.addr),
                        ("state", bk.state),
                    ],
                    value(bk),
                );
            }
        }
    }
    page.family(
        "ambassador_backend_suspect",
        Kind::Gauge,
        "1 while this host's datapath holds the backend suspect (it refused or ignored a new flow): new flows avoid it.",
    );
    for s in &status.services {
        for bk in &s.backends {
            page.sample(
                "ambassador_backend_suspect",
                &[("service", &s.name), ("backend", &bk.addr)],
                f64::from(u8::from(bk.suspect.is_some())),
            );
        }
    }
}
