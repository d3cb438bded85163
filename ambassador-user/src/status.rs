//! `ambassador status`: what the datapath is doing, read from the pinned maps alone (it works
//! whether or not a daemon is running, and from any network namespace).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    error::Result,
    gc::{self, Timeouts},
    maps::Maps,
    reconcile::Proto,
};

/// The whole status report.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Services, by name.
    pub services: Vec<ServiceStatus>,
    /// Packets per verdict reason, over all services.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Established flows over all services.
    pub flows: usize,
    /// Flows that saw FIN or RST and are kept a little longer for their last packets.
    pub closing_flows: usize,
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
    /// Counters.
    pub counters: Counters,
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
}

/// Per-service counters.
#[derive(Debug, Serialize)]
pub struct Counters {
    /// Packets rewritten to a backend.
    pub packets: u64,
    /// Their IPv4 bytes.
    pub bytes: u64,
    /// Replies rewritten back to the frontend.
    pub reply_packets: u64,
    /// Their IPv4 bytes.
    pub reply_bytes: u64,
    /// Flows started.
    pub new_flows: u64,
    /// Packets dropped (no backend, malformed, fragment...).
    pub drops: u64,
}

/// Reads the status from the maps pinned under `pin_dir`.
pub fn read(pin_dir: &Path) -> Result<Status> {
    let maps = Maps::open_pinned(pin_dir)?;
    let installed = maps.read_installed()?;
    let now = gc::monotonic_ns();
    let timeouts = Timeouts::default();
    let live: Vec<_> = maps
        .flows()?
        .into_iter()
        .filter(|f| !gc::expired(f, now, &timeouts))
        .collect();
    let mut flows_by_backend: BTreeMap<u32, usize> = BTreeMap::new();
    for f in live.iter().filter(|f| !f.closing) {
        *flows_by_backend.entry(f.backend_id).or_default() += 1;
    }
    let closing_flows = live.iter().filter(|f| f.closing).count();

    let mut services = Vec::new();
    for (&(frontend, proto), &(id, count)) in &installed.frontends {
        let name = installed
            .names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("<id {id}>"));
        let mut weights: BTreeMap<u32, u32> = BTreeMap::new();
        for slot in 0..count {
            if let Some(bid) = installed.slots.get(&(id, slot)) {
                *weights.entry(*bid).or_default() += 1;
            }
        }
        let mut backends: Vec<BackendStatus> = installed
            .backends
            .iter()
            .filter(|(_, b)| b.service_id == id)
            .map(|(bid, b)| BackendStatus {
                id: *bid,
                addr: b.addr.to_string(),
                state: if b.terminating {
                    "terminating"
                } else {
                    "active"
                },
                weight: weights.get(bid).copied().unwrap_or(0),
                flows: flows_by_backend.get(bid).copied().unwrap_or(0),
            })
            .collect();
        backends.sort_by_key(|b| (b.state != "active", b.id));
        let s = maps.service_stats(id)?;
        services.push(ServiceStatus {
            name,
            id,
            frontend: frontend.to_string(),
            proto,
            flows: backends.iter().map(|b| b.flows).sum(),
            backends,
            counters: Counters {
                packets: s.packets,
                bytes: s.bytes,
                reply_packets: s.reply_packets,
                reply_bytes: s.reply_bytes,
                new_flows: s.new_flows,
                drops: s.drops,
            },
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Status {
        services,
        reasons: maps.reasons()?,
        flows: live.len() - closing_flows,
        closing_flows,
    })
}

/// Renders the report as tables for people.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
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
                let _ = writeln!(
                    out,
                    "  -> {:<21} {:<11} weight {:<3} flows {}",
                    b.addr, b.state, b.weight, b.flows
                );
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
        "flows: {} established, {} closing",
        status.flows, status.closing_flows
    );
    let _ = writeln!(out, "verdicts: {}", reasons.join(" "));
    out
}
