//! The operator commands: `service`, `vip`, `endpoint`, `auth`.

use clap::Subcommand;

use super::common::{EtcdArgs, Output, ProtoArg};

/// `ambassador service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create or change a service: with --frontend at that address, with --port alone at a
    /// free address of the VIP range (`vip range`), allocated in an etcd transaction (an
    /// existing service keeps its address).
    Set {
        /// Service name (a DNS label).
        name: String,
        /// Frontend address:port that clients dial (`10.96.0.10:80`, `[fd00::10]:80`).
        #[arg(long, required_unless_present = "port", conflicts_with = "port")]
        frontend: Option<String>,
        /// Frontend port, at an allocated address.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Allocate an IPv6 address (for IPv6 backends: a service is one family) from the IPv6
        /// range.
        #[arg(long, requires = "port")]
        ipv6: bool,
        /// Protocol.
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Show one service with its endpoints.
    Get {
        /// Service name.
        name: String,
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Remove a service (its endpoints stay unless --endpoints is given).
    Rm {
        /// Service name.
        name: String,
        /// Also remove the service's endpoints.
        #[arg(long = "endpoints")]
        with_endpoints: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// List services.
    Ls {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        output: Output,
    },
}

/// `ambassador vip ...`.
#[derive(Debug, Subcommand)]
pub enum VipCmd {
    /// Show the ranges (no CIDR) or set the range of the CIDR's family. Allocations outside a
    /// new range stay (and keep their services working); a service set by hand at an address
    /// the new range leaves out would be refused by every daemon, so the change is refused
    /// unless --force says so (it lists them either way).
    Range {
        /// An IPv4 range (10.96.0.0/12) or an IPv6 one (fd00:10:96::/112).
        #[arg(value_parser = crate::core::model::parse_net)]
        cidr: Option<ipnet::IpNet>,
        /// Set the range even though services would be refused.
        #[arg(long, requires = "cidr")]
        force: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// List allocated frontend addresses and their services.
    Ls {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        output: Output,
    },
}

/// `ambassador endpoint ...`.
#[derive(Debug, Subcommand)]
pub enum EndpointCmd {
    /// Add (or replace) an endpoint of a service.
    Add {
        /// Service name.
        service: String,
        /// Backend IPv4:port.
        addr: String,
        /// Endpoint id (default: derived from the address).
        #[arg(long)]
        id: Option<String>,
        /// Share of new flows, 1-256.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        weight: u32,
        /// Remove the endpoint automatically this many seconds later (an etcd lease; at most
        /// a year).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=31_536_000))]
        ttl: Option<i64>,
        /// Publish it as this host's (under `hosts/<host>/`, which a host's credential may
        /// write) instead of as the operator's.
        #[arg(long, value_parser = crate::commands::cli::parse_host_id)]
        host: Option<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Remove an endpoint.
    Rm {
        /// Service name.
        service: String,
        /// Endpoint id.
        id: String,
        /// The host that published it (default: an endpoint added by hand).
        #[arg(long, value_parser = crate::commands::cli::parse_host_id)]
        host: Option<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// List endpoints (of one service, or of all).
    Ls {
        /// Service name.
        service: Option<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        output: Output,
    },
}

/// `ambassador auth ...`: the trust model on etcd's own access control.
#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Set the trust model up on etcd: the users and roles `root`, `ambassador-admin`
    /// (services, VIPs, settings, host records) and `ambassador-reader` (daemons), the trust
    /// mode `hosts`, then etcd authentication. Idempotent: what exists is kept. Once
    /// authentication is on, run it (and `add-host`) as root.
    Init {
        #[command(flatten)]
        creds: CredentialArgs,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Give a host its identity: the user and role `ambassador-host-<HOST>` (read everything,
    /// write only `hosts/<HOST>/`) and its host record (the addresses it may advertise, the
    /// services it may serve). Run again to change the record.
    AddHost {
        /// The host's name: its register's --host-id.
        #[arg(value_parser = crate::commands::cli::parse_host_id)]
        host: String,
        /// A range the host may advertise endpoints at (repeatable).
        #[arg(long = "address", value_name = "CIDR", required = true, value_parser = crate::core::model::parse_net)]
        addresses: Vec<ipnet::IpNet>,
        /// A service the host may serve: a name, `prefix-*`, or `*` (repeatable).
        #[arg(long = "service", value_name = "PATTERN", required = true, value_parser = parse_pattern)]
        services: Vec<crate::core::trust::ServicePattern>,
        #[command(flatten)]
        creds: CredentialArgs,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// How the users `auth` creates prove who they are.
#[derive(Clone, Debug, clap::Args)]
pub struct CredentialArgs {
    /// Users without passwords: each proves its name with a client certificate whose CN is
    /// the user name (etcd --client-cert-auth with --trusted-ca-file).
    #[arg(long, env = "AMBASSADOR_AUTH_CERT")]
    pub cert_auth: bool,
    /// Where each new user's generated password is written (`<user>.password`, mode 0600,
    /// never overwritten). Required unless --cert-auth.
    #[arg(
        long,
        env = "AMBASSADOR_AUTH_CREDENTIALS_DIR",
        value_name = "DIR",
        required_unless_present = "cert_auth"
    )]
    pub credentials_dir: Option<std::path::PathBuf>,
}

fn parse_pattern(s: &str) -> Result<crate::core::trust::ServicePattern, String> {
    crate::core::trust::ServicePattern::parse(s)
}
