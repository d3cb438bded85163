//! `ambassador register`'s validated settings.

use std::{net::IpAddr, time::Duration};

use crate::control::etcd::EtcdOptions;

/// How the register computes an endpoint's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressMode {
    /// `--advertise-ip` and the port Docker published on the host.
    Published,
    /// The container's own IP and port (routed or overlay networks): an IPv4 address, else a
    /// global IPv6 one.
    Container,
    /// The container's own global IPv6 address and port (IPv6-routed networks, `dockerd
    /// --ipv6`), even when it has an IPv4 address too.
    ContainerIpv6,
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
