//! The status page for people (`/`) and programs (`/status.json`), served by the daemon on its
//! metrics listener: the same report as `ambassador status`, with what only the running
//! daemon knows (its lag, its DNS answers). Read-only, server-rendered with `maud` (which
//! escapes every name and address from etcd), one small same-origin script that refreshes the
//! page in place, and one style sheet: no build step, nothing loaded from elsewhere.

use maud::{html, Markup, DOCTYPE};
use serde::Serialize;

use super::{render_control_plane, BackendStatus, CapacityUse, ServiceStatus, Status, Use};
use crate::services::dns::DnsCounts;

/// The script the page loads: it refreshes `<main>` in place.
pub const SCRIPT: &str = include_str!("page.js");
/// The page's style sheet.
pub const STYLE: &str = include_str!("page.css");
/// How often the script refreshes the page (ms); said on the page.
const REFRESH_MS: u32 = 2000;

/// What the status page shows.
#[derive(Debug, Serialize)]
pub struct View {
    /// The report `ambassador status` prints, read from the pinned maps.
    #[serde(flatten)]
    pub status: Status,
    /// What the daemon serving the page counts itself.
    pub daemon: DaemonFigures,
    /// The DNS responder's answers (absent without a responder).
    pub dns: Option<DnsCounts>,
}

/// The serving daemon's own figures.
#[derive(Debug, Default, Serialize)]
pub struct DaemonFigures {
    /// The host's name (its UTS namespace's).
    pub host: String,
    /// Desired states applied, and those that failed to apply.
    pub applies: u64,
    pub apply_failures: u64,
    /// From the last etcd response to the maps holding it (ms).
    pub last_lag_ms: Option<f64>,
    /// Backends this host's datapath found failing new flows, and those that answered again.
    pub suspicions: u64,
    pub recoveries: u64,
}

/// The page.
pub fn html(view: &View) -> String {
    let s = &view.status;
    let title = format!("ambassador on {}", view.daemon.host);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/page.css";
                script src="/page.js" defer {}
            }
            body data-refresh-ms=(REFRESH_MS) {
                header {
                    h1 { "ambassador " span.host { (view.daemon.host) } }
                    p #stale role="status" {}
                }
                main data-refreshes="0" {
                    (control_plane(view))
                    (services(&s.services))
                    (verdicts(s))
                    @if let Some(dns) = &view.dns { (dns_answers(dns)) }
                    (capacity(&s.capacity))
                }
                footer {
                    "Read-only, refreshed every " (REFRESH_MS / 1000) " s. For programs: "
                    a href="/status.json" { "/status.json" } "; for Prometheus: "
                    a href="/metrics" { "/metrics" } "."
                }
            }
        }
    }
    .into_string()
}

fn control_plane(view: &View) -> Markup {
    let (c, d) = (&view.status.control_plane, &view.daemon);
    let lines = render_control_plane(c);
    html! {
        section #control-plane {
            h2 { "Control plane" }
            ul { @for line in lines.lines() { li { (line) } } }
            dl {
                dt { "etcd" } dd #etcd data-connected=[(c.source == "etcd").then_some(c.etcd_connected)] {
                    @if c.source != "etcd" { "not used (" (c.source) ")" }
                    @else if c.etcd_connected { "connected, revision " (c.etcd_revision) }
                    @else { "UNREACHABLE, last revision " (c.etcd_revision) }
                }
                dt { "last change applied" } dd {
                    @match c.applied_age_ms {
                        Some(ms) => { (seconds(ms)) " ago" }
                        None => "never",
                    }
                    @if let Some(lag) = d.last_lag_ms { ", " (format!("{lag:.1}")) " ms after etcd sent it" }
                }
                dt { "applies" } dd { (d.applies) " (" (d.apply_failures) " failed)" }
                dt { "suspicions" } dd { (d.suspicions) " (" (d.recoveries) " answered again)" }
            }
        }
    }
}

fn services(services: &[ServiceStatus]) -> Markup {
    html! {
        section #services {
            h2 { "Services" }
            @if services.is_empty() { p { "No services." } } @else {
                table {
                    thead { tr {
                        th { "service / backend" } th { "frontend / state" } th { "proto / weight" }
                        th.n { "flows" } th.n { "sockets" } th.n { "packets" } th.n { "bytes" }
                        th.n { "replies" } th.n { "new flows" } th.n { "drops" }
                    } }
                    @for s in services { tbody { (service(s)) } }
                }
            }
        }
    }
}

fn service(s: &ServiceStatus) -> Markup {
    let c = &s.counters;
    html! {
        tr.service data-service=(s.name) {
            th scope="row" { (s.name) } td { (s.frontend) } td { (s.proto) }
            td.n { (s.flows) } td.n { (s.sockets) } td.n { (c.packets) } td.n { (c.bytes) }
            td.n { (c.reply_packets) } td.n { (c.new_flows) } td.n { (c.drops) }
        }
        @for b in &s.backends { (backend(&s.name, b)) }
    }
}

fn backend(service: &str, b: &BackendStatus) -> Markup {
    let state = if b.suspect.is_some() {
        "suspect"
    } else {
        b.state
    };
    html! {
        tr.backend data-service=(service) data-addr=(b.addr) data-state=(state) {
            td { "→ " (b.addr) }
            td.state {
                @match &b.suspect {
                    Some(x) => {
                        strong { "suspect" } " (" (x.reason) ", " (x.strikes) " in a row, for "
                        (seconds(x.for_ms)) "; next try in " (seconds(x.retry_in_ms)) ")"
                    }
                    None => (b.state),
                }
            }
            td { (b.weight) } td.n { (b.flows) } td.n { (b.sockets) } td colspan="5" {}
        }
    }
}

fn verdicts(s: &Status) -> Markup {
    html! {
        section #verdicts {
            h2 { "Datapath" }
            p { (s.flows) " flows established, " (s.closing_flows) " closing; "
                (s.sockets) " sockets translated at connect()/sendmsg()." }
            table {
                thead { tr { th { "verdict" } th.n { "packets" } } }
                tbody { @for (reason, n) in &s.reasons { tr { td { (reason) } td.n { (n) } } } }
            }
            @if let Some(x) = &s.xdp { pre { (xdp_text(x)) } }
        }
    }
}

fn dns_answers(d: &DnsCounts) -> Markup {
    html! {
        section #dns {
            h2 { "DNS" }
            table {
                thead { tr { th { "answer" } th.n { "count" } } }
                tbody {
                    @for (rcode, n) in &d.answers { tr data-rcode=(rcode) { td { (rcode) } td.n { (n) } } }
                    tr { td { "forwarded" } td.n { (d.forwarded) } }
                    tr { td { "forward failures" } td.n { (d.forward_failures) } }
                    tr { td { "dropped" } td.n { (d.dropped) } }
                }
            }
        }
    }
}

fn capacity(c: &CapacityUse) -> Markup {
    let row = |name: &str, u: &Use| {
        html! {
            tr data-map=(name) {
                td { (name) } td.n { (u.used) " / " (u.capacity) }
                td { meter min="0" max=(u.capacity) high=(u.capacity / 10 * 9) value=(u.used) {} }
            }
        }
    };
    html! {
        section #capacity {
            h2 { "Capacity" }
            table { tbody {
                (row("services", &c.services)) (row("backends", &c.backends))
                (row("slots", &c.slots)) (row("flows", &c.flows))
            } }
        }
    }
}

/// The `xdp` lines of `ambassador status`.
fn xdp_text(x: &super::XdpStatus) -> String {
    let mut text = String::new();
    super::xdp::render(x, &mut text);
    text
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        core::model::Proto,
        services::status::{ControlPlane, SuspectStatus},
    };

    fn view(name: &str, suspect: Option<SuspectStatus>) -> View {
        let b = |id, addr: &str, suspect| BackendStatus {
            id,
            addr: addr.to_owned(),
            state: "active",
            weight: 4,
            flows: 2,
            sockets: 0,
            suspect,
        };
        let service = ServiceStatus {
            name: name.to_owned(),
            id: 1,
            frontend: "10.96.0.10:80".to_owned(),
            proto: Proto::Tcp,
            backends: vec![b(1, "10.0.0.1:80", suspect), b(2, "10.0.0.2:80", None)],
            flows: 4,
            sockets: 0,
            counters: Default::default(),
        };
        let used = |used| Use {
            used,
            capacity: 100,
        };
        View {
            status: Status {
                control_plane: ControlPlane {
                    source: "etcd",
                    daemon_running: true,
                    pid: 7,
                    etcd_connected: false,
                    state_age_ms: 3000,
                    etcd_revision: 42,
                    malformed: 0,
                    conflicts: 0,
                    refused_endpoints: 0,
                    refused_frontends: 0,
                    refused_host_endpoints: 0,
                    trust: "hosts",
                    links_pinned: 2,
                    datapaths: vec!["tc veth0".to_owned()],
                    applied_age_ms: Some(1500),
                    over_capacity: 0,
                },
                services: vec![service],
                reasons: BTreeMap::from([("translated", 9)]),
                flows: 4,
                closing_flows: 0,
                sockets: 0,
                capacity: CapacityUse {
                    services: used(1),
                    backends: used(2),
                    slots: used(8),
                    flows: used(95),
                },
                xdp: None,
                events_lost: 0,
            },
            daemon: DaemonFigures {
                host: "h1".to_owned(),
                ..Default::default()
            },
            dns: None,
        }
    }

    /// Service names come from etcd's writers: on the page they are text, never markup.
    #[test]
    fn names_from_etcd_are_text_not_markup() {
        let page = html(&view("<script>alert(1)</script>\"x", None));
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;x"),
            "{page}"
        );
        // The only scripts are the page's own, loaded from its own origin.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(page.contains(r#"<script src="/page.js" defer>"#), "{page}");
    }

    #[test]
    fn a_suspect_backend_says_so_with_its_next_try() {
        let suspect = SuspectStatus {
            reason: "refused",
            strikes: 3,
            for_ms: 2500,
            retry_in_ms: 1200,
        };
        let page = html(&view("web", Some(suspect)));
        assert!(
            page.contains(r#"data-addr="10.0.0.1:80" data-state="suspect""#),
            "{page}"
        );
        assert!(
            page.contains("(refused, 3 in a row, for 2.5 s; next try in 1.2 s)"),
            "{page}"
        );
        assert!(
            page.contains(r#"data-addr="10.0.0.2:80" data-state="active""#),
            "{page}"
        );
        assert!(page.contains("UNREACHABLE, last revision 42"), "{page}");
        assert!(page.contains(r#"<tr data-map="flows">"#), "{page}");
    }

    #[test]
    fn the_json_holds_the_status_and_the_daemon_figures() {
        let v: serde_json::Value = serde_json::to_value(view("web", None)).unwrap();
        assert_eq!(v["services"][0]["name"], "web");
        assert_eq!(v["control_plane"]["etcd_revision"], 42);
        assert_eq!(v["daemon"]["host"], "h1");
        assert!(v["dns"].is_null());
    }
}
