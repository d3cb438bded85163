//! What the SOCKS door reports at `--metrics-addr`.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

use crate::services::metrics::{Kind, Page};

/// The door's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted from allowed clients.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections closed at once because every slot was taken.
    pub over_limit: AtomicU64,
    /// Connections from clients outside the allowed ranges, closed at once.
    pub client_refused: AtomicU64,
    /// Handshakes not done within the deadline.
    pub handshake_timeouts: AtomicU64,
    /// Handshakes that failed (bad bytes, unsupported command or method, wrong password).
    pub handshake_failures: AtomicU64,
    /// Connections closed after the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Connections made to a destination.
    pub connected: AtomicU64,
    /// Endpoints that refused or did not answer, each left for the next one.
    pub endpoint_failures: AtomicU64,
    /// Bytes from clients to destinations, and back.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Connections copied through buffers because no pipe could be made for splice(2).
    pub splice_fallbacks: AtomicU64,
    /// Whether the etcd watch is established.
    pub etcd_connected: AtomicBool,
    /// Destinations refused, by reason.
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    /// Counts a destination refused for `reason`.
    pub fn refused(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// The metrics page.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut page = Page::default();
        for (name, kind, help, value) in [
            ("ambassador_socks_connections_total", Kind::Counter, "Connections accepted from allowed clients.", &self.accepted),
            ("ambassador_socks_connections_active", Kind::Gauge, "Connections open now.", &self.active),
            ("ambassador_socks_over_limit_total", Kind::Counter, "Connections closed at once because every slot was taken (--max-connections).", &self.over_limit),
            ("ambassador_socks_clients_refused_total", Kind::Counter, "Connections from clients outside --allow-client, closed at once.", &self.client_refused),
            ("ambassador_socks_handshake_timeouts_total", Kind::Counter, "Handshakes not done within --handshake-timeout.", &self.handshake_timeouts),
            ("ambassador_socks_handshake_failures_total", Kind::Counter, "Handshakes that failed: bad bytes, an unsupported command or method, a wrong password.", &self.handshake_failures),
            ("ambassador_socks_idle_timeouts_total", Kind::Counter, "Connections closed after --idle-timeout without a byte either way.", &self.idle_timeouts),
            ("ambassador_socks_connected_total", Kind::Counter, "Connections made to a destination.", &self.connected),
            ("ambassador_socks_endpoint_failures_total", Kind::Counter, "Endpoints that refused or did not answer in time; the next one was tried.", &self.endpoint_failures),
            ("ambassador_socks_client_bytes_total", Kind::Counter, "Bytes from clients to destinations.", &self.bytes_up),
            ("ambassador_socks_destination_bytes_total", Kind::Counter, "Bytes from destinations to clients.", &self.bytes_down),
            ("ambassador_socks_splice_fallbacks_total", Kind::Counter, "Connections copied through buffers because no pipe could be made for splice(2) (out of open files).", &self.splice_fallbacks),
        ] {
            page.single(name, kind, help, get(value));
        }
        page.single(
            "ambassador_socks_etcd_connected",
            Kind::Gauge,
            "Whether the etcd watch is established (names resolve from the last known state while it is not).",
            if self.etcd_connected.load(Ordering::Relaxed) { 1.0 } else { 0.0 },
        );
        page.family(
            "ambassador_socks_destinations_refused_total",
            Kind::Counter,
            "Destinations refused, by reason (each answered with the SOCKS reply that says so).",
        );
        for (reason, n) in self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            page.sample(
                "ambassador_socks_destinations_refused_total",
                &[("reason", reason)],
                *n as f64,
            );
        }
        page.finish()
    }
}
