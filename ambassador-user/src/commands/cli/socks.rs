//! `ambassador socks`: the SOCKS5 door's flags.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use super::EtcdArgs;
use crate::{core::model::parse_net, services::socks::CopyMode};

/// `ambassador socks`.
#[derive(Debug, Args)]
pub struct SocksArgs {
    /// Where SOCKS5 clients connect. Loopback by default: listening elsewhere takes this flag
    /// and --allow-client.
    #[arg(
        long,
        env = "AMBASSADOR_SOCKS_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:1080"
    )]
    pub listen: SocketAddr,
    /// Clients that may connect (repeatable, or comma-separated); others are closed before a
    /// byte is read.
    #[arg(long = "allow-client", env = "AMBASSADOR_SOCKS_ALLOW_CLIENT", value_name = "CIDR", value_delimiter = ',', value_parser = parse_net, default_value = "127.0.0.0/8,::1/128")]
    pub allow_client: Vec<ipnet::IpNet>,
    /// Destinations allowed besides the registry's services and endpoints (repeatable, or
    /// comma-separated): addresses inside these ranges, and names outside the domain that
    /// resolve into them. None by default: the door is never an open proxy.
    #[arg(long = "allow-destination", env = "AMBASSADOR_SOCKS_ALLOW_DESTINATION", value_name = "CIDR", value_delimiter = ',', value_parser = parse_net)]
    pub allow_destination: Vec<ipnet::IpNet>,
    /// Allow endpoints only in this range (as `run --allow-backend`). Loopback, link-local,
    /// multicast and broadcast endpoints are refused whatever this says.
    #[arg(long = "allow-backend", env = "AMBASSADOR_ALLOW_BACKEND", value_name = "CIDR", value_delimiter = ',', value_parser = parse_net)]
    pub allow_backend: Vec<ipnet::IpNet>,
    /// The registry's domain: `<service>.<domain>` and `a-b-c-d.endpoints.<domain>`.
    #[arg(long, env = "AMBASSADOR_DNS_DOMAIN", value_name = "DOMAIN", default_value = crate::services::dns::zone::DEFAULT_DOMAIN, value_parser = crate::services::dns::zone::parse_domain)]
    pub dns_domain: hickory_proto::rr::Name,
    /// Require RFC 1929 username/password: a file of `user:password` lines (`#` comments).
    #[arg(long, env = "AMBASSADOR_SOCKS_USERS_FILE", value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Connections open at once; more are closed at once (1-65536).
    #[arg(long, env = "AMBASSADOR_SOCKS_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,
    /// Seconds a client has for its greeting, authentication and request (1-300).
    #[arg(long, env = "AMBASSADOR_SOCKS_HANDSHAKE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout: u64,
    /// Milliseconds one endpoint has to accept the connection before the next is tried
    /// (50-60000).
    #[arg(long, env = "AMBASSADOR_SOCKS_CONNECT_TIMEOUT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=60000))]
    pub connect_timeout: u64,
    /// Seconds without a byte either way before a connection is closed (1-86400).
    #[arg(long, env = "AMBASSADOR_SOCKS_IDLE_TIMEOUT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub idle_timeout: u64,
    /// How bytes are copied: `read-write` through a 64 KiB buffer each way in this process;
    /// `splice` from socket to socket through a pipe in the kernel (less of this host's CPU
    /// per GB, less throughput on one stream where the receiver shares the machine).
    #[arg(long, env = "AMBASSADOR_SOCKS_COPY", value_enum, default_value_t = CopyMode::ReadWrite)]
    pub copy: CopyMode,
    /// Serve Prometheus metrics at http://ADDR/metrics (`9595`: 127.0.0.1:9595). Not served
    /// unless given.
    #[arg(long, env = "AMBASSADOR_METRICS_ADDR", value_name = "[ADDR:]PORT", value_parser = crate::commands::cli::common::parse_listen)]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}
