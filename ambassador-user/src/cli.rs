//! Command line. Every flag can also be set through an `AMBASSADOR_*` environment variable.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    daemon::{RunConfig, Source},
    etcd::EtcdOptions,
    gc::Timeouts,
    loader::TcAttach,
};

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
    /// Register this host's labelled Docker containers as endpoints in etcd.
    Register(RegisterArgs),
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
        default_value = crate::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
}

/// How to reach etcd (shared by every command that talks to it).
#[derive(Clone, Debug, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd",
        env = "AMBASSADOR_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of the contract.
    #[arg(long, env = "AMBASSADOR_PREFIX", default_value = "/ambassador")]
    pub prefix: String,
    /// CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long, env = "AMBASSADOR_ETCD_CACERT")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM), with --etcd-key.
    #[arg(long, env = "AMBASSADOR_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM), with --etcd-cert.
    #[arg(long, env = "AMBASSADOR_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, env = "AMBASSADOR_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password (prefer the environment variable: command lines are visible to all).
    #[arg(
        long,
        env = "AMBASSADOR_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
}

impl From<EtcdArgs> for EtcdOptions {
    fn from(a: EtcdArgs) -> Self {
        EtcdOptions {
            endpoints: a.endpoints,
            prefix: a.prefix,
            cacert: a.etcd_cacert,
            cert: a.etcd_cert,
            key: a.etcd_key,
            user: a.etcd_user,
            password: a.etcd_password,
        }
    }
}

/// `ambassador run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Client-facing interface of the `tc` or `xdp` datapath: where client traffic enters this
    /// host (a container's veth, a bridge such as docker0, or an uplink). Repeatable, or
    /// comma-separated.
    #[arg(long = "iface", env = "AMBASSADOR_IFACE", value_delimiter = ',')]
    pub ifaces: Vec<String>,
    /// Datapaths to attach, comma-separated: `tc` (packets entering --iface), `xdp` (instead
    /// of tc on a gateway: packets entering --iface translated and forwarded before the
    /// stack), `sock` (every process in --cgroup-path, translated at connect()). `sock`
    /// changes what every process of the host connects to, so it is never implied: name it.
    /// [default: tc]
    #[arg(long, env = "AMBASSADOR_DATAPATH", value_enum, value_delimiter = ',')]
    pub datapath: Vec<DatapathKind>,
    /// cgroup v2 directory whose processes the `sock` datapath serves. [default: the host's
    /// cgroup v2 root: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host]
    #[arg(long, env = "AMBASSADOR_CGROUP_PATH", value_name = "DIR")]
    pub cgroup_path: Option<PathBuf>,
    /// Take the services from this TOML file instead of etcd. SIGHUP re-reads it.
    #[arg(long, env = "AMBASSADOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// etcd connection (used unless --config is given).
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Directory on a bpf filesystem where the maps are pinned; one per daemon.
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = crate::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
    /// Seconds between sweeps of expired flows and drained backends.
    #[arg(long, env = "AMBASSADOR_GC_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gc_interval: u64,
    /// Seconds a TCP flow may stay idle.
    #[arg(long, env = "AMBASSADOR_TCP_TIMEOUT", default_value_t = crate::gc::DEFAULT_TCP_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_timeout: u64,
    /// Seconds a closing TCP flow (FIN or RST seen) is kept.
    #[arg(long, env = "AMBASSADOR_TCP_CLOSING_TIMEOUT", default_value_t = crate::gc::DEFAULT_TCP_CLOSING_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_closing_timeout: u64,
    /// Allow backends only in this IPv4 or IPv6 range (repeatable, or comma-separated in the
    /// environment). Loopback, link-local, multicast, broadcast and frontend addresses are
    /// refused whatever this says.
    #[arg(long = "allow-backend", env = "AMBASSADOR_ALLOW_BACKEND", value_name = "CIDR", value_delimiter = ',', value_parser = crate::model::parse_net)]
    pub allow_backend: Vec<ipnet::IpNet>,
    /// How to attach the TC programs: TCX links (Linux 6.6+) or a clsact qdisc.
    #[arg(long, env = "AMBASSADOR_TC_ATTACH", value_enum, default_value_t = TcAttach::Auto)]
    pub tc_attach: TcAttach,
    /// How to attach the XDP program: native (in the driver) where the driver supports it and
    /// generic otherwise (`auto`), or only one of them. `status` shows which each interface got.
    #[arg(long, env = "AMBASSADOR_XDP_ATTACH", value_enum, default_value_t = crate::loader::XdpAttach::Auto)]
    pub xdp_attach: crate::loader::XdpAttach,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9595; port 0 picks
    /// one and logs it). Not served unless given.
    #[arg(long, env = "AMBASSADOR_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds a stop (SIGTERM/SIGINT) may take before the daemon exits anyway. Forwarding
    /// never depends on it: the pinned links keep forwarding after the process is gone.
    #[arg(long, env = "AMBASSADOR_GRACE_PERIOD", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub grace_period: u64,
    /// Seconds a UDP flow may stay idle.
    #[arg(long, env = "AMBASSADOR_UDP_TIMEOUT", default_value_t = crate::gc::DEFAULT_UDP_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub udp_timeout: u64,
    /// Log every new flow and every dropped packet to a frontend from inside the kernel
    /// (aya-log, target ambassador::datapath). Costs time on every such packet: for
    /// debugging only. Without it the log statements are not even loaded.
    #[arg(long, env = "AMBASSADOR_DEBUG_DATAPATH")]
    pub debug_datapath: bool,
    /// Services the maps hold [default: 4096]. Maps are preallocated: every capacity costs
    /// kernel memory whether used or not (`status` shows use against capacity). Fixed when the
    /// maps are created; a restart keeps the pinned maps' capacity.
    #[arg(long, env = "AMBASSADOR_MAX_SERVICES", value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub max_services: Option<u32>,
    /// Backends over all services, terminating ones included [default: 16384].
    #[arg(long, env = "AMBASSADOR_MAX_BACKENDS", value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub max_backends: Option<u32>,
    /// Slots over all services: a backend takes as many as its weight [default: 65536].
    #[arg(long, env = "AMBASSADOR_MAX_SLOTS", value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub max_slots: Option<u32>,
    /// Flows tracked at once; beyond it the least recently used is forgotten [default: 65536].
    #[arg(long, env = "AMBASSADOR_MAX_FLOWS", value_parser = clap::value_parser!(u32).range(16..=1 << 26))]
    pub max_flows: Option<u32>,
    /// Answer DNS for the services here (UDP and TCP; repeatable, or comma-separated), e.g.
    /// the Docker bridge's 172.17.0.1:53 for `docker run --dns 172.17.0.1`. Not served unless
    /// given.
    #[arg(
        long = "dns-listen",
        env = "AMBASSADOR_DNS_LISTEN",
        value_name = "ADDR:PORT",
        value_delimiter = ','
    )]
    pub dns_listen: Vec<std::net::SocketAddr>,
    /// The domain the responder is authoritative for: `<service>.<domain>`.
    #[arg(long, env = "AMBASSADOR_DNS_DOMAIN", value_name = "DOMAIN", default_value = crate::dns::zone::DEFAULT_DOMAIN, value_parser = crate::dns::zone::parse_domain)]
    pub dns_domain: hickory_proto::rr::Name,
    /// Resolvers that names outside the domain are forwarded to (repeatable, or
    /// comma-separated) [default: the nameservers of /etc/resolv.conf].
    #[arg(long = "dns-upstream", env = "AMBASSADOR_DNS_UPSTREAM", value_name = "ADDR[:PORT]", value_delimiter = ',', value_parser = crate::dns::parse_upstream)]
    pub dns_upstream: Vec<std::net::SocketAddr>,
    /// Refuse names outside the domain instead of forwarding them.
    #[arg(
        long,
        env = "AMBASSADOR_DNS_NO_FORWARD",
        conflicts_with = "dns_upstream"
    )]
    pub dns_no_forward: bool,
    /// Clients that may have names outside the domain forwarded (repeatable, or
    /// comma-separated) [default: the subnets of the --dns-listen addresses]. Names of the
    /// domain are answered to anyone who can reach the responder.
    #[arg(
        long = "dns-allow",
        env = "AMBASSADOR_DNS_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub dns_allow: Vec<ipnet::IpNet>,
}

/// A datapath of `ambassador run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathKind {
    /// TC programs on the --iface interfaces: clients whose packets enter there.
    Tc,
    /// cgroup socket programs on --cgroup-path: processes of this host, translated once per
    /// connection.
    Sock,
    /// An XDP program on the --iface interfaces and on those towards the backends: a gateway
    /// forwarding other machines' traffic, translated and forwarded before the stack.
    Xdp,
}

impl RunArgs {
    /// The daemon's settings, or what is wrong with the flags (for a usage error).
    pub fn into_config(self) -> Result<RunConfig, String> {
        let a = self;
        let datapaths = if a.datapath.is_empty() {
            vec![DatapathKind::Tc]
        } else {
            a.datapath.clone()
        };
        let tc = datapaths.contains(&DatapathKind::Tc);
        let sock = datapaths.contains(&DatapathKind::Sock);
        let xdp = datapaths.contains(&DatapathKind::Xdp);
        if tc && xdp {
            return Err("tc and xdp both translate the packets entering --iface: choose one (xdp for a gateway that forwards other machines' traffic, tc otherwise)".into());
        }
        if tc && a.ifaces.is_empty() {
            return Err("the tc datapath (the default) needs --iface, where client traffic enters; for the processes of this host, use --datapath sock".into());
        }
        if xdp && a.ifaces.is_empty() {
            return Err(
                "the xdp datapath needs --iface, where client traffic enters this gateway".into(),
            );
        }
        if !tc && !xdp && !a.ifaces.is_empty() {
            return Err(
                "--iface is for the tc or xdp datapath: add one to --datapath (--datapath tc,sock)"
                    .into(),
            );
        }
        if !sock && a.cgroup_path.is_some() {
            return Err("--cgroup-path is for the sock datapath: add sock to --datapath".into());
        }
        let dns_flags = !a.dns_upstream.is_empty() || a.dns_no_forward || !a.dns_allow.is_empty();
        if a.dns_listen.is_empty() && dns_flags {
            return Err("--dns-upstream, --dns-no-forward and --dns-allow are for the DNS responder: add --dns-listen".into());
        }
        let dns = (!a.dns_listen.is_empty()).then_some(crate::dns::DnsConfig {
            listen: a.dns_listen,
            domain: a.dns_domain,
            forwarding: if a.dns_no_forward {
                crate::dns::Forwarding::Off
            } else if a.dns_upstream.is_empty() {
                crate::dns::Forwarding::Host
            } else {
                crate::dns::Forwarding::To(a.dns_upstream)
            },
            allow: a.dns_allow,
        });
        Ok(RunConfig {
            targets: crate::loader::Targets {
                ifaces: if tc { a.ifaces.clone() } else { Vec::new() },
                tc_attach: a.tc_attach,
                sock: sock.then_some(a.cgroup_path),
                xdp_ifaces: if xdp { a.ifaces } else { Vec::new() },
                xdp_attach: a.xdp_attach,
            },
            source: match a.config {
                Some(path) => Source::File(path),
                None => Source::Etcd(a.etcd.into()),
            },
            pin_dir: a.pin_path,
            gc_interval: Duration::from_secs(a.gc_interval),
            policy: crate::policy::BackendPolicy {
                allow: a.allow_backend,
            },
            metrics_addr: a.metrics_addr,
            dns,
            grace: Duration::from_secs(a.grace_period),
            debug_datapath: a.debug_datapath,
            capacity: crate::capacity::Requested {
                services: a.max_services,
                backends: a.max_backends,
                slots: a.max_slots,
                flows: a.max_flows,
            },
            timeouts: Timeouts {
                tcp: Duration::from_secs(a.tcp_timeout),
                tcp_closing: Duration::from_secs(a.tcp_closing_timeout),
                udp: Duration::from_secs(a.udp_timeout),
            },
        })
    }
}

/// `ambassador status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Pin directory of the daemon to inspect.
    #[arg(
        long,
        env = "AMBASSADOR_PIN_PATH",
        default_value = crate::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
    /// Print JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Output format of the operator commands.
#[derive(Clone, Copy, Debug, Args)]
pub struct Output {
    /// Print JSON for scripts instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

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
    /// Show the ranges (no CIDR) or set the range of the CIDR's family; allocations outside a
    /// new range stay.
    Range {
        /// An IPv4 range (10.96.0.0/12) or an IPv6 one (fd00:10:96::/112).
        #[arg(value_parser = crate::model::parse_net)]
        cidr: Option<ipnet::IpNet>,
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
        /// Remove the endpoint automatically this many seconds later (an etcd lease).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        ttl: Option<i64>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Remove an endpoint.
    Rm {
        /// Service name.
        service: String,
        /// Endpoint id.
        id: String,
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
    #[arg(long, env = "AMBASSADOR_ADDRESS_MODE", value_enum, default_value_t = crate::register::AddressMode::Published)]
    pub address_mode: crate::register::AddressMode,
    /// Seconds between full reconciliations with Docker (heals missed events).
    #[arg(long, env = "AMBASSADOR_RECONCILE_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub reconcile_interval: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (registered containers, etcd and
    /// Docker connection state). Not served unless given.
    #[arg(long, env = "AMBASSADOR_METRICS_ADDR", value_name = "ADDR")]
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
fn parse_host_id(s: &str) -> Result<String, String> {
    if s.len() > 200 {
        return Err("at most 200 characters".into());
    }
    crate::model::check_endpoint_id(s)
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
            ]
            .iter()
            .any(|f| m.ends_with(f))
        });
        assert!(
            missing.is_empty(),
            "flags without AMBASSADOR_* variables: {missing:?}"
        );
    }
}
