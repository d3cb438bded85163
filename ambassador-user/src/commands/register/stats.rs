//! What the register reports at `--metrics-addr`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::services::metrics::{Kind, Page};

/// What the register reports at `--metrics-addr`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Containers whose endpoint is written under the current lease.
    pub(super) containers: AtomicU64,
    /// Labelled containers that cannot be registered (bad label, no published port...).
    pub(super) unusable: AtomicU64,
    /// Whether a lease is held and kept alive.
    pub(super) etcd_connected: AtomicBool,
    /// Whether the Docker event stream is followed.
    pub(super) docker_connected: AtomicBool,
    /// Leases granted (more than one: etcd was lost and the entries rewritten).
    pub(super) lease_grants: AtomicU64,
    /// Endpoint writes and deletions.
    pub(super) puts: AtomicU64,
    pub(super) deletes: AtomicU64,
}

impl Stats {
    pub(super) fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let flag = |a: &AtomicBool| if a.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        let mut page = Page::default();
        page.single(
            "ambassador_register_containers",
            Kind::Gauge,
            "Containers whose endpoint this register holds in etcd under its lease.",
            get(&self.containers),
        )
        .single(
            "ambassador_register_unusable_containers",
            Kind::Gauge,
            "Labelled containers that cannot be registered (the log says why).",
            get(&self.unusable),
        )
        .single(
            "ambassador_register_etcd_connected",
            Kind::Gauge,
            "Whether a lease is held and kept alive.",
            flag(&self.etcd_connected),
        )
        .single(
            "ambassador_register_docker_connected",
            Kind::Gauge,
            "Whether Docker's events are followed.",
            flag(&self.docker_connected),
        )
        .single(
            "ambassador_register_lease_grants_total",
            Kind::Counter,
            "Leases granted; each after the first means etcd was lost and every entry rewritten.",
            get(&self.lease_grants),
        )
        .single(
            "ambassador_register_puts_total",
            Kind::Counter,
            "Endpoint entries written.",
            get(&self.puts),
        )
        .single(
            "ambassador_register_deletes_total",
            Kind::Counter,
            "Endpoint entries deleted.",
            get(&self.deletes),
        );
        page.finish()
    }
}
