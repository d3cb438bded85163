//! `ambassador register`'s validated settings.

use std::{net::IpAddr, time::Duration};

use crate::etcd::EtcdOptions;

/// How the register computes an endpoint's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressMode {
    /// `--advertise-ip` and the port Docker published on the host.
    Published,
    /// The container's own IP and port (routed or overlay networks).
    Container,
}

/// Validated settings of `ambassador register`.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// Docker socket path.
    pub docker: String,
    /// Address other hosts reach this host's published ports at.
    pub advertise_ip: Option<IpAddr>,
    /// Lease TTL in seconds.
    pub ttl: i64,
    /// This host's id.
    pub host_id: String,
    /// Which address to register.
    pub address_mode: AddressMode,
    /// Full reconcile period.
    pub reconcile_interval: Duration,
    /// etcd connection.
    pub etcd: EtcdOptions,
    /// Where Prometheus metrics are served (none: not served).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Create a labelled container's service (at an allocated address) when it does not exist.
    pub create_services: bool,
}
