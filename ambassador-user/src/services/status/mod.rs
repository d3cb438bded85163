//! `ambassador status`: what the datapath is doing, read from the pinned maps alone (it works
//! whether or not a daemon is running, and from any network namespace).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use ambassador_common::{source, suspicion, DaemonInfo, ServiceStats, Suspect};

mod metrics;
pub mod page;
mod xdp;
pub use metrics::write_metrics;
pub use xdp::{XdpInterface, XdpStatus};

use crate::{
    core::{
        model::Proto,
        reconcile::{Installed, InstalledBackend},
    },
    datapath::{
        gc::{self, Timeouts},
        maps::Maps,
    },
    error::Result,
    services::heartbeat::{self, unix_ms},
};

/// The daemon and where its state comes from.
#[derive(Debug, Serialize)]
pub struct ControlPlane {
    /// "etcd", "file", or "none" (no daemon ever recorded itself here).
    pub source: &'static str,
    /// Whether the daemon's heartbeat is recent.
    pub daemon_running: bool,
    /// The daemon's pid (in its pid namespace).
    pub pid: u32,
    /// Whether the etcd watch is established (etcd source only).
    pub etcd_connected: bool,
    /// For how long (ms) the connection has been in its current state.
    pub state_age_ms: u64,
    /// The etcd revision last applied.
    pub etcd_revision: u64,
    /// Malformed etcd values skipped since the daemon started.
    pub malformed: u64,
    /// Services left out because another holds their frontend.
    pub conflicts: u64,
    /// Endpoints the backend policy leaves out (refused ranges, `--allow-backend`).
    pub refused_endpoints: u32,
    /// Services whose frontend this host refuses (outside the VIP ranges and
    /// `--allow-frontend`, or one of its own addresses): never rewritten.
    pub refused_frontends: u32,
    /// Endpoints a host published that its host record does not allow.
    pub refused_host_endpoints: u32,
    /// The cluster's trust mode: "open", "hosts", or "local" (a configuration file).
    pub trust: &'static str,
    /// Program links pinned (TCX and cgroup): the datapath stays attached while no daemon runs.
    pub links_pinned: usize,
    /// What the pinned links attach: `tc <iface>` per interface, `sock` for the socket
    /// datapath.
    pub datapaths: Vec<String>,
    /// How long ago (ms) a desired state was last applied (absent if never).
    pub applied_age_ms: Option<u64>,
    /// Services and endpoints left out of the last applied state because a map was full.
    pub over_capacity: u32,
}

/// How full one kind of map is.
#[derive(Debug, Serialize)]
pub struct Use {
    /// Entries in use.
    pub used: usize,
    /// Entries it holds (fixed when the maps were created).
    pub capacity: u32,
}

/// How full the maps are.
#[derive(Debug, Serialize)]
pub struct CapacityUse {
    /// Services (`--max-services`).
    pub services: Use,
    /// Backends, terminating ones included (`--max-backends`).
    pub backends: Use,
    /// Slots (`--max-slots`).
    pub slots: Use,
    /// Flow entries, expired ones not yet collected included (`--max-flows`).
    pub flows: Use,
}

/// The whole status report.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The daemon and its source of truth.
    pub control_plane: ControlPlane,
    /// Services, by name.
    pub services: Vec<ServiceStatus>,
    /// Packets per verdict reason, over all services.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Established flows over all services.
    pub flows: usize,
    /// Flows that saw FIN or RST and are kept a little longer for their last packets.
    pub closing_flows: usize,
    /// Sockets translated by the socket datapath, over all services.
    pub sockets: usize,
    /// Use of each map against its capacity.
    pub capacity: CapacityUse,
    /// The `xdp` datapath's forwarding (absent without it).
    pub xdp: Option<XdpStatus>,
    /// Flow events for `ambassador monitor` lost to a full ring buffer.
    pub events_lost: u64,
}

/// One service.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// Service id.
    pub id: u32,
    /// Frontend.
    pub frontend: String,
    /// Protocol.
    pub proto: Proto,
    /// Backends, active first.
    pub backends: Vec<BackendStatus>,
    /// Established flows.
    pub flows: usize,
    /// Sockets the socket datapath translated to one of its backends (open connected ones, and
    /// unconnected ones active within the UDP timeout).
    pub sockets: usize,
    /// Counters.
    pub counters: ServiceStats,
}

/// One backend of a service.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// Backend id.
    pub id: u32,
    /// Address.
    pub addr: String,
    /// "active" or "terminating".
    pub state: &'static str,
    /// Slots (share of new flows); 0 when terminating.
    pub weight: u32,
    /// Established flows.
    pub flows: usize,
    /// Sockets translated to it by the socket datapath.
    pub sockets: usize,
    /// Set while this host's datapath holds it suspect: new flows avoid it.
    pub suspect: Option<SuspectStatus>,
}

/// Why and until when new flows avoid a backend on this host.
#[derive(Debug, Serialize)]
pub struct SuspectStatus {
    /// "refused" (a RST answered a SYN) or "silent" (a SYN went unanswered).
    pub reason: &'static str,
    /// Failures in a row.
    pub strikes: u32,
    /// For how long it has been suspect (ms).
    pub for_ms: u64,
    /// When a new flow may try it again (ms from now; 0: the next one may).
    pub retry_in_ms: u64,
}

/// Reads the status from the maps pinned under `pin_dir`.
pub fn read(pin_dir: &Path) -> Result<Status> {
    let maps = Maps::open_pinned(pin_dir)?;
    let installed = maps.read_installed()?;
    let now = gc::monotonic_ns();
    let info = maps.info()?;
    // As the daemon's garbage collection counts them.
    let timeouts = Timeouts::recorded(&info);
    let all_flows = maps.flows()?;
    let flow_entries = all_flows.len();
    let live: Vec<_> = all_flows
        .into_iter()
        .filter(|f| !gc::expired(f, now, &timeouts))
        .collect();
    let closing_flows = live.iter().filter(|f| f.closing).count();
    let per_backend = PerBackend {
        flows: count_by(live.iter().filter(|f| !f.closing).map(|f| f.backend_id)),
        sockets: count_by(
            maps.sock_entries()?
                .iter()
                .filter(|e| e.reverse && !gc::sock_expired(e, now, &timeouts))
                .map(|e| e.backend_id),
        ),
        suspects: maps.suspects()?,
        now,
    };
    let mut services = Vec::new();
    let backends_of = installed.backends_by_service();
    for (&(frontend, proto), &(id, count)) in &installed.frontends {
        let of_service = backends_of.get(&id).map_or(&[][..], |v| v.as_slice());
        let backends = per_backend.backends(&installed, id, count, of_service);
        services.push(ServiceStatus {
            name: installed
                .names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("<id {id}>")),
            id,
            frontend: frontend.to_string(),
            proto,
            flows: backends.iter().map(|b| b.flows).sum(),
            sockets: backends.iter().map(|b| b.sockets).sum(),
            backends,
            counters: maps.service_stats(id)?,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let cap = maps.capacity()?;
    Ok(Status {
        capacity: CapacityUse {
            services: Use::of(installed.frontends.len(), cap.services),
            backends: Use::of(installed.backends.len(), cap.backends),
            slots: Use::of(installed.slots.len(), cap.slots),
            flows: Use::of(flow_entries, cap.flows),
        },
        xdp: xdp::read(&maps, pin_dir)?,
        events_lost: maps.events_lost()?,
        control_plane: control_plane(&info, pin_dir),
        reasons: maps.reasons()?,
        flows: live.len() - closing_flows,
        closing_flows,
        sockets: services.iter().map(|s| s.sockets).sum(),
        services,
    })
}

fn count_by(ids: impl Iterator<Item = u32>) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

impl Use {
    fn of(used: usize, capacity: u32) -> Self {
        Self { used, capacity }
    }
}

/// What the maps say about each backend: its flows, its sockets, whether it is suspect.
struct PerBackend {
    flows: BTreeMap<u32, usize>,
    sockets: BTreeMap<u32, usize>,
    suspects: BTreeMap<u32, Suspect>,
    now: u64,
}

impl PerBackend {
    /// One service's backends, active first.
    fn backends(
        &self,
        installed: &Installed,
        id: u32,
        count: u32,
        backends: &[(u32, InstalledBackend)],
    ) -> Vec<BackendStatus> {
        let mut weights: BTreeMap<u32, u32> = BTreeMap::new();
        for slot in 0..count {
            if let Some(bid) = installed.slots.get(&(id, slot)) {
                *weights.entry(*bid).or_default() += 1;
            }
        }
        let mut backends: Vec<BackendStatus> = backends
            .iter()
            .map(|&(bid, b)| BackendStatus {
                id: bid,
                addr: b.addr.to_string(),
                state: if b.terminating {
                    "terminating"
                } else {
                    "active"
                },
                weight: weights.get(&bid).copied().unwrap_or(0),
                flows: self.flows.get(&bid).copied().unwrap_or(0),
                sockets: self.sockets.get(&bid).copied().unwrap_or(0),
                suspect: self.suspects.get(&bid).map(|s| self.suspect(s)),
            })
            .collect();
        backends.sort_by_key(|b| (b.state != "active", b.id));
        backends
    }

    fn suspect(&self, s: &Suspect) -> SuspectStatus {
        let ms = |ns: u64| ns / 1_000_000;
        SuspectStatus {
            reason: suspicion::name(s.reason),
            strikes: s.strikes,
            for_ms: ms(self.now.saturating_sub(s.since_ns)),
            retry_in_ms: ms(s.retry_ns.saturating_sub(self.now)),
        }
    }
}

fn control_plane(info: &DaemonInfo, pin_dir: &Path) -> ControlPlane {
    let now_ms = unix_ms(std::time::SystemTime::now());
    ControlPlane {
        source: match info.source {
            source::ETCD => "etcd",
            source::FILE => "file",
            _ => "none",
        },
        daemon_running: heartbeat::alive(info.heartbeat_unix_ms, now_ms),
        pid: info.pid,
        etcd_connected: info.etcd_connected != 0,
        state_age_ms: now_ms.saturating_sub(info.state_since_unix_ms),
        etcd_revision: info.etcd_revision,
        malformed: info.malformed,
        conflicts: info.conflicts,
        refused_endpoints: info.refused,
        refused_frontends: info.refused_frontends,
        refused_host_endpoints: info.refused_host_endpoints,
        trust: match info.trust {
            ambassador_common::trust::OPEN => "open",
            ambassador_common::trust::HOSTS => "hosts",
            _ => "local",
        },
        links_pinned: std::fs::read_dir(pin_dir.join("links")).map_or(0, |d| d.count()),
        datapaths: crate::datapath::loader::attached_datapaths(pin_dir),
        applied_age_ms: (info.applied_unix_ms != 0)
            .then(|| now_ms.saturating_sub(info.applied_unix_ms)),
        over_capacity: info.over_capacity,
    }
}

fn secs(ms: u64) -> String {
    format!("{:.0} s", ms as f64 / 1000.0)
}

fn render_control_plane(c: &ControlPlane) -> String {
    let daemon = if c.daemon_running {
        format!("daemon running (pid {})", c.pid)
    } else if c.links_pinned > 0 {
        format!(
            "daemon NOT running: the datapath stays attached ({} pinned links) and forwards with the last state; nothing follows changes until `ambassador run` starts again",
            c.links_pinned
        )
    } else {
        "daemon NOT running: the maps are kept, but nothing is attached".to_owned()
    };
    let mut line = match (c.source, c.etcd_connected) {
        ("etcd", true) => format!(
            "control plane: etcd, connected for {}, revision {}; {daemon}",
            secs(c.state_age_ms),
            c.etcd_revision
        ),
        ("etcd", false) if c.daemon_running => format!(
            "control plane: etcd UNREACHABLE for {}: forwarding continues with the last known state (revision {}); {daemon}",
            secs(c.state_age_ms),
            c.etcd_revision
        ),
        ("etcd", false) => format!("control plane: etcd (revision {}); {daemon}", c.etcd_revision),
        ("file", _) => format!("control plane: configuration file; {daemon}"),
        _ => "control plane: no daemon has used these maps yet".to_owned(),
    };
    line.push('\n');
    if !c.datapaths.is_empty() {
        line.push_str(&format!("datapath: {}\n", c.datapaths.join(", ")));
    }
    if c.malformed > 0 || c.conflicts > 0 {
        line.push_str(&format!(
            "skipped: {} malformed etcd values, {} services whose frontend another service holds\n",
            c.malformed, c.conflicts
        ));
    }
    match c.trust {
        "open" => line.push_str("trust: open: any etcd writer's endpoints apply, no host records are checked (`ambassador auth init` confines each host to its own)\n"),
        "hosts" => line.push_str("trust: hosts: a host's endpoints apply only as its host record allows\n"),
        _ => {}
    }
    if c.refused_endpoints > 0 {
        line.push_str(&format!(
            "refused: {} endpoints the backend policy leaves out (the daemon's log says which and why)\n",
            c.refused_endpoints
        ));
    }
    if c.refused_frontends > 0 {
        line.push_str(&format!(
            "refused: {} services whose frontend is outside the VIP ranges and --allow-frontend, or this host's own address: never rewritten (the daemon's log says which)\n",
            c.refused_frontends
        ));
    }
    if c.refused_host_endpoints > 0 {
        line.push_str(&format!(
            "refused: {} endpoints published by hosts their host record does not allow (the daemon's log says which)\n",
            c.refused_host_endpoints
        ));
    }
    if c.over_capacity > 0 {
        line.push_str(&format!(
            "OVER CAPACITY: {} services or endpoints left out because a map is full (the daemon's log says which; raise --max-services, --max-backends or --max-slots)\n",
            c.over_capacity
        ));
    }
    line
}

fn render_capacity(c: &CapacityUse) -> String {
    let one = |name: &str, u: &Use| {
        let pct = u.used as f64 * 100.0 / f64::from(u.capacity.max(1));
        format!("{name} {}/{} ({pct:.0}%)", u.used, u.capacity)
    };
    format!(
        "capacity: {}, {}, {}, {}\n",
        one("services", &c.services),
        one("backends", &c.backends),
        one("slots", &c.slots),
        one("flows", &c.flows)
    )
}

/// Renders the report as tables for people.
pub fn render(status: &Status) -> String {
    let mut out = render_control_plane(&status.control_plane);
    if status.services.is_empty() {
        out.push_str("no services\n");
    } else {
        let _ = writeln!(
            out,
            "{:<20} {:<21} {:<5} {:>8} {:>6} {:>10} {:>12} {:>10} {:>9} {:>7}",
            "SERVICE",
            "FRONTEND",
            "PROTO",
            "BACKENDS",
            "FLOWS",
            "PACKETS",
            "BYTES",
            "REPLIES",
            "NEWFLOWS",
            "DROPS"
        );
        for s in &status.services {
            let active = s.backends.iter().filter(|b| b.state == "active").count();
            let _ = writeln!(
                out,
                "{:<20} {:<21} {:<5} {:>8} {:>6} {:>10} {:>12} {:>10} {:>9} {:>7}",
                s.name,
                s.frontend,
                s.proto,
                active,
                s.flows,
                s.counters.packets,
                s.counters.bytes,
                s.counters.reply_packets,
                s.counters.new_flows,
                s.counters.drops
            );
            for b in &s.backends {
                let _ = write!(
                    out,
                    "  -> {:<21} {:<11} weight {:<3} flows {} sockets {}",
                    b.addr, b.state, b.weight, b.flows, b.sockets
                );
                if let Some(s) = &b.suspect {
                    let _ = write!(
                        out,
                        "  SUSPECT ({}, {} in a row, for {}; next try in {})",
                        s.reason,
                        s.strikes,
                        secs(s.for_ms),
                        secs(s.retry_in_ms)
                    );
                }
                out.push('\n');
            }
        }
    }
    let reasons: Vec<String> = status
        .reasons
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "flows: {} established, {} closing; sockets: {} translated at connect()/sendmsg()",
        status.flows, status.closing_flows, status.sockets
    );
    let _ = writeln!(out, "verdicts: {}", reasons.join(" "));
    if let Some(x) = &status.xdp {
        xdp::render(x, &mut out);
    }
    out.push_str(&render_capacity(&status.capacity));
    if status.events_lost > 0 {
        let _ = writeln!(
            out,
            "monitor: {} flow events lost to a full ring buffer (a monitor reading too slowly)",
            status.events_lost
        );
    }
    out
}
