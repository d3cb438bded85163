//! Command line. Every flag can also be set through an `AMBASSADOR_*` environment variable.

mod common;
mod ops;
mod run;
mod socks;

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
pub use common::{EtcdArgs, Output, ProtoArg};
pub use ops::{AuthCmd, CredentialArgs, EndpointCmd, ServiceCmd, VipCmd};
pub use run::{DatapathKind, RunArgs};
pub use socks::SocksArgs;

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
    /// Run the datapath on this host and keep its maps equal to etcd (or to a file).
    Run(Box<RunArgs>),
    /// Show services, backends, flows, counters and the control plane, from the pinned maps.
    Status(StatusArgs),
    /// Stream what a running daemon sees: flows translated, failovers, drops, backends
    /// turning suspect and answering again, changes applied.
    Monitor(MonitorArgs),
    /// Define, show and remove services (frontends) in etcd.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Add, list and remove endpoints (backends) in etcd by hand.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Show or set the range frontend addresses are allocated from, and list allocations.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Print the variables Docker links defined for these services (DB_PORT=tcp://VIP:PORT,
    /// DB_PORT_6379_TCP_ADDR, ...), for `docker run --env-file`.
    Env {
        /// Service names.
        #[arg(required = true)]
        services: Vec<String>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Set up who may publish what on etcd (users, roles, host records).
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Register this host's labelled Docker containers as endpoints in etcd.
    Register(RegisterArgs),
    /// Serve a SOCKS5 door for clients outside the fleet: `<service>.<domain>` and endpoint
    /// names resolved from etcd (curl --socks5-hostname, a browser's SOCKS setting, ssh).
    Socks(Box<SocksArgs>),
    /// Remove the datapath a stopped `run` left in place: program links (detaching it from
    /// every interface) and maps. Forwarding through this host stops.
    Uninstall(UninstallArgs),
}

/// `ambassador uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Pin directory of the datapath to remove.
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = crate::datapath::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
}

/// `ambassador status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Pin directory of the daemon to inspect.
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = crate::datapath::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
    /// Print JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `ambassador monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Pin directory of the daemon to follow (its events are served beside it, at
    /// /run/ambassador/<name>.monitor).
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = crate::datapath::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
    /// Only these kinds of event (repeat or comma-separate; all when not given).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kind: Vec<crate::services::monitor::Kind>,
    /// Only events of these services (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub service: Vec<String>,
    /// Only events of this backend: IP or IP:PORT.
    #[arg(long)]
    pub backend: Option<String>,
    /// Only flows of this client: IP or IP:PORT.
    #[arg(long)]
    pub client: Option<String>,
    /// Exit after printing this many events (default: follow until the daemon stops).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: Option<u64>,
    /// Print one JSON object a line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `ambassador register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Docker engine socket.
    #[arg(
        long,
        env = "AMBASSADOR_DOCKER",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker: String,
    /// The address at which other hosts reach this host's published ports (required in
    /// published mode: guessing it was the most common registrator bug). IPv4 or IPv6.
    #[arg(long, env = "AMBASSADOR_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Seconds the endpoints outlive this register if it dies (the etcd lease's TTL).
    #[arg(long, env = "AMBASSADOR_TTL", default_value_t = 10, value_parser = clap::value_parser!(i64).range(2..=3600))]
    pub ttl: i64,
    /// This host's id, used in endpoint ids and values (default: the hostname).
    #[arg(long, env = "AMBASSADOR_HOST_ID", value_parser = parse_host_id)]
    pub host_id: Option<String>,
    /// Which address to register.
    #[arg(long, env = "AMBASSADOR_ADDRESS_MODE", value_enum, default_value_t = crate::commands::register::AddressMode::Published)]
    pub address_mode: crate::commands::register::AddressMode,
    /// Seconds between full reconciliations with Docker (heals missed events).
    #[arg(long, env = "AMBASSADOR_RECONCILE_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub reconcile_interval: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (registered containers, etcd and
    /// Docker connection state; `9595`: 127.0.0.1:9595). Not served unless given.
    #[arg(long, env = "AMBASSADOR_METRICS_ADDR", value_name = "[ADDR:]PORT", value_parser = crate::commands::cli::common::parse_listen)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Never create services: a labelled container whose service does not exist is
    /// registered, and waits for an operator's `service set`. Without it, such a service is
    /// created at a free address of the VIP range, on the container's port.
    #[arg(long, env = "AMBASSADOR_NO_CREATE_SERVICES")]
    pub no_create_services: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// A host id becomes part of endpoint ids (`<host-id>-<container>`): printable ASCII without
/// `/`, short enough to leave room for the container's 12 characters.
pub fn parse_host_id(s: &str) -> Result<String, String> {
    if s.len() > 200 {
        return Err("at most 200 characters".into());
    }
    crate::core::model::check_endpoint_id(s)
        .map(|()| s.to_owned())
        .map_err(|_| "1-200 printable ASCII characters without '/' or spaces".into())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn host_ids_that_would_make_bad_endpoint_ids_are_usage_errors() {
        let parse = |id: &str| {
            Cli::try_parse_from([
                "ambassador",
                "register",
                "--etcd",
                "http://e:2379",
                "--host-id",
                id,
            ])
        };
        assert!(parse("h1.example").is_ok());
        for bad in ["a b", "a/b", "", &"x".repeat(201)] {
            let e = parse(bad).expect_err(bad);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
        }
    }

    /// A bare port listens on this host only; an address says where; anything else is a usage
    /// error that names both forms.
    #[test]
    fn a_metrics_port_alone_listens_on_localhost() {
        let parse = |addr: &str| {
            Cli::try_parse_from(["ambassador", "socks", "--metrics-addr", addr]).map(|c| {
                match c.command {
                    Command::Socks(a) => a.metrics_addr,
                    _ => unreachable!(),
                }
            })
        };
        assert_eq!(
            parse("9595").unwrap(),
            Some("127.0.0.1:9595".parse().unwrap())
        );
        assert_eq!(
            parse("[::1]:9595").unwrap(),
            Some("[::1]:9595".parse().unwrap())
        );
        assert_eq!(
            parse("0.0.0.0:9595").unwrap(),
            Some("0.0.0.0:9595".parse().unwrap())
        );
        let e = parse("localhost:9595").unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            e.to_string()
                .contains("neither a PORT (0-65535: on 127.0.0.1) nor ADDR:PORT"),
            "{e}"
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        fn walk(cmd: &clap::Command, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let is_flag_with_value = arg.get_long().is_some()
                    && !matches!(
                        arg.get_action(),
                        clap::ArgAction::SetTrue | clap::ArgAction::Help | clap::ArgAction::Version
                    );
                if is_flag_with_value && arg.get_env().is_none() {
                    missing.push(format!("{} --{}", cmd.get_name(), arg.get_long().unwrap()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), &mut missing);
        // Per-invocation operator inputs are arguments of one command, not settings.
        missing.retain(|m| {
            ![
                "--frontend",
                "--port",
                "--proto",
                "--id",
                "--weight",
                "--ttl",
                "--host",
                "--address",
                "--service",
                // `monitor`'s filters.
                "--count",
                "--kind",
                "--backend",
                "--client",
            ]
            .iter()
            .any(|f| m.ends_with(f))
        });
        assert!(
            missing.is_empty(),
            "flags without AMBASSADOR_* variables: {missing:?}"
        );
    }

    /// No number a flag (or its environment variable) accepts can overflow what it feeds:
    /// every numeric flag has an upper bound, its maximum is accepted, one past it and 0 (where
    /// out of range) are usage errors naming the range.
    #[test]
    fn every_numeric_flag_is_bounded() {
        fn walk(cmd: &clap::Command, found: &mut Vec<(String, u64)>) {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                // The flag's own parser, alone in a command (its relations left out).
                let alone = clap::Command::new("t").no_binary_name(true).arg(
                    clap::Arg::new("v")
                        .long("v")
                        .value_parser(arg.get_value_parser().clone()),
                );
                let parse = |v: &str| alone.clone().try_get_matches_from(["--v", v]);
                let ok = |v: u64| parse(&v.to_string()).is_ok();
                if !ok(16) || parse("x").is_ok() {
                    continue; // not a number
                }
                let name = format!("{} --{long}", cmd.get_name());
                assert!(!ok(u64::MAX), "{name} has no upper bound");
                let (mut lo, mut hi) = (16, u64::MAX);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if ok(mid) {
                        lo = mid
                    } else {
                        hi = mid
                    }
                }
                let past = parse(&(lo + 1).to_string()).unwrap_err().to_string();
                assert!(past.contains(&lo.to_string()), "{name}: {past}");
                if let Err(e) = parse("0") {
                    assert!(e.to_string().contains("0 is not in"), "{name}: {e}");
                }
                found.push((name, lo));
            }
            for sub in cmd.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut found = Vec::new();
        walk(&cmd, &mut found);
        for (name, max) in [
            ("run --tcp-timeout", crate::datapath::gc::MAX_TIMEOUT_S),
            (
                "run --tcp-closing-timeout",
                crate::datapath::gc::MAX_TIMEOUT_S,
            ),
            ("run --udp-timeout", crate::datapath::gc::MAX_TIMEOUT_S),
            ("run --gc-interval", 3600),
            ("run --grace-period", 600),
            ("run --max-flows", 1 << 26),
            ("register --ttl", 3600),
            ("add --ttl", 31_536_000),
        ] {
            assert!(
                found.iter().any(|(n, m)| n == name && *m == max),
                "{name} should be bounded by {max}: {found:?}"
            );
        }
        assert!(found.len() >= 14, "{found:?}");
        assert!(
            found.iter().all(|(_, m)| *m <= u64::from(u32::MAX)),
            "{found:?}"
        );
    }
}
