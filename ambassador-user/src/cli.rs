//! Command line. Every flag can also be set through an `AMBASSADOR_*` environment variable.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{daemon::RunConfig, gc::Timeouts, loader::TcAttach};

/// A kernel-accelerated dynamic ambassador: clients dial a stable frontend VIP:port, eBPF
/// rewrites it to a current backend.
#[derive(Debug, Parser)]
#[command(name = "ambassador", version, propagate_version = true)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, env = "AMBASSADOR_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the datapath on this host and keep its maps equal to the configuration.
    Run(RunArgs),
    /// Show services, backends, flows and counters from the pinned maps.
    Status(StatusArgs),
}

/// `ambassador run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Client-facing interface: where client traffic enters this host (a container's veth, a
    /// bridge such as docker0, or an uplink). Repeatable, or comma-separated.
    #[arg(
        long = "iface",
        env = "AMBASSADOR_IFACE",
        value_delimiter = ',',
        required = true
    )]
    pub ifaces: Vec<String>,
    /// Static configuration (TOML). SIGHUP re-reads it.
    #[arg(long, env = "AMBASSADOR_CONFIG")]
    pub config: PathBuf,
    /// Directory on a bpf filesystem where the maps are pinned; one per daemon.
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = "/sys/fs/bpf/ambassador"
    )]
    pub pin_path: PathBuf,
    /// Seconds between sweeps of expired flows and drained backends.
    #[arg(long, env = "AMBASSADOR_GC_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gc_interval: u64,
    /// Seconds a TCP flow may stay idle.
    #[arg(long, env = "AMBASSADOR_TCP_TIMEOUT", default_value_t = 6 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_timeout: u64,
    /// Seconds a closing TCP flow (FIN or RST seen) is kept.
    #[arg(long, env = "AMBASSADOR_TCP_CLOSING_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_closing_timeout: u64,
    /// How to attach the TC programs: TCX links (Linux 6.6+) or a clsact qdisc.
    #[arg(long, env = "AMBASSADOR_TC_ATTACH", value_enum, default_value_t = TcAttach::Auto)]
    pub tc_attach: TcAttach,
    /// Seconds a UDP flow may stay idle.
    #[arg(long, env = "AMBASSADOR_UDP_TIMEOUT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub udp_timeout: u64,
}

impl From<RunArgs> for RunConfig {
    fn from(a: RunArgs) -> Self {
        RunConfig {
            ifaces: a.ifaces,
            config: a.config,
            pin_dir: a.pin_path,
            gc_interval: Duration::from_secs(a.gc_interval),
            tc_attach: a.tc_attach,
            timeouts: Timeouts {
                tcp: Duration::from_secs(a.tcp_timeout),
                tcp_closing: Duration::from_secs(a.tcp_closing_timeout),
                udp: Duration::from_secs(a.udp_timeout),
            },
        }
    }
}

/// `ambassador status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Pin directory of the daemon to inspect.
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = "/sys/fs/bpf/ambassador"
    )]
    pub pin_path: PathBuf,
    /// Print JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}
