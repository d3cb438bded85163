//! `ambassador run`'s flags, validated into a [`RunConfig`].

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::common::EtcdArgs;
use crate::{
    commands::daemon::{RunConfig, Source},
    datapath::{gc::Timeouts, loader::TcAttach},
};

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
        default_value = crate::datapath::loader::DEFAULT_PIN_DIR
    )]
    pub pin_path: PathBuf,
    /// Seconds between sweeps of expired flows and drained backends.
    #[arg(long, env = "AMBASSADOR_GC_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gc_interval: u64,
    /// Seconds a TCP flow may stay idle (1-864000).
    #[arg(long, env = "AMBASSADOR_TCP_TIMEOUT", default_value_t = crate::datapath::gc::DEFAULT_TCP_S, value_parser = clap::value_parser!(u64).range(1..=crate::datapath::gc::MAX_TIMEOUT_S))]
    pub tcp_timeout: u64,
    /// Seconds a closing TCP flow (FIN or RST seen) is kept (1-864000).
    #[arg(long, env = "AMBASSADOR_TCP_CLOSING_TIMEOUT", default_value_t = crate::datapath::gc::DEFAULT_TCP_CLOSING_S, value_parser = clap::value_parser!(u64).range(1..=crate::datapath::gc::MAX_TIMEOUT_S))]
    pub tcp_closing_timeout: u64,
    /// Allow backends only in this IPv4 or IPv6 range (repeatable, or comma-separated in the
    /// environment). Loopback, link-local, multicast, broadcast and frontend addresses are
    /// refused whatever this says.
    #[arg(long = "allow-backend", env = "AMBASSADOR_ALLOW_BACKEND", value_name = "CIDR", value_delimiter = ',', value_parser = crate::core::model::parse_net)]
    pub allow_backend: Vec<ipnet::IpNet>,
    /// Also rewrite frontends in this IPv4 or IPv6 range (repeatable, or comma-separated in the
    /// environment). Frontends from etcd are otherwise rewritten only inside the cluster's
    /// VIP ranges (`vip range`) or at an address allocated to their service; this host's own
    /// addresses are refused whatever this says.
    #[arg(long = "allow-frontend", env = "AMBASSADOR_ALLOW_FRONTEND", value_name = "CIDR", value_delimiter = ',', value_parser = crate::core::model::parse_net)]
    pub allow_frontend: Vec<ipnet::IpNet>,
    /// How to attach the TC programs: TCX links (Linux 6.6+) or a clsact qdisc.
    #[arg(long, env = "AMBASSADOR_TC_ATTACH", value_enum, default_value_t = TcAttach::Auto)]
    pub tc_attach: TcAttach,
    /// How to attach the XDP program: native (in the driver) where the driver supports it and
    /// generic otherwise (`auto`), or only one of them. `status` shows which each interface got.
    #[arg(long, env = "AMBASSADOR_XDP_ATTACH", value_enum, default_value_t = crate::datapath::loader::XdpAttach::Auto)]
    pub xdp_attach: crate::datapath::loader::XdpAttach,
    /// Serve Prometheus metrics at http://ADDR/metrics and the status page at http://ADDR/
    /// (`9595`: 127.0.0.1:9595, this host only; or ADDR:PORT; port 0 picks one and logs it).
    /// Not served unless given.
    #[arg(long, env = "AMBASSADOR_METRICS_ADDR", value_name = "[ADDR:]PORT", value_parser = crate::commands::cli::common::parse_listen)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Seconds a stop (SIGTERM/SIGINT) may take before the daemon exits anyway. Forwarding
    /// never depends on it: the pinned links keep forwarding after the process is gone.
    #[arg(long, env = "AMBASSADOR_GRACE_PERIOD", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub grace_period: u64,
    /// Seconds a UDP flow may stay idle (1-864000).
    #[arg(long, env = "AMBASSADOR_UDP_TIMEOUT", default_value_t = crate::datapath::gc::DEFAULT_UDP_S, value_parser = clap::value_parser!(u64).range(1..=crate::datapath::gc::MAX_TIMEOUT_S))]
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
    #[arg(long, env = "AMBASSADOR_DNS_DOMAIN", value_name = "DOMAIN", default_value = crate::services::dns::zone::DEFAULT_DOMAIN, value_parser = crate::services::dns::zone::parse_domain)]
    pub dns_domain: hickory_proto::rr::Name,
    /// Resolvers that names outside the domain are forwarded to (repeatable, or
    /// comma-separated) [default: the nameservers of /etc/resolv.conf].
    #[arg(long = "dns-upstream", env = "AMBASSADOR_DNS_UPSTREAM", value_name = "ADDR[:PORT]", value_delimiter = ',', value_parser = crate::services::dns::parse_upstream)]
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
    /// Identical UDP answers per second to one client prefix (/24, /56) before the
    /// responder limits them (every second one sent truncated, so a real client retries over
    /// TCP; the rest dropped): what stops it being a reflection amplifier. A resolver behind
    /// many clients caches and never meets it. 0 turns it off. (0-100000)
    #[arg(long, env = "AMBASSADOR_DNS_RATE_LIMIT", value_name = "N", default_value_t = crate::services::dns::DEFAULT_RATE, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub dns_rate_limit: u32,
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
        let mut a = self;
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
        let dns = a.dns_config()?;
        Ok(RunConfig {
            targets: crate::datapath::loader::Targets {
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
            policy: crate::core::policy::BackendPolicy {
                allow: a.allow_backend,
            },
            frontends: crate::core::trust::FrontendPolicy {
                allow: a.allow_frontend,
            },
            metrics_addr: a.metrics_addr,
            dns,
            grace: Duration::from_secs(a.grace_period),
            debug_datapath: a.debug_datapath,
            capacity: crate::core::capacity::Requested {
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

    /// The DNS responder's settings (None without `--dns-listen`).
    fn dns_config(&mut self) -> Result<Option<crate::services::dns::DnsConfig>, String> {
        let a = self;
        let dns_flags = !a.dns_upstream.is_empty() || a.dns_no_forward || !a.dns_allow.is_empty();
        if a.dns_listen.is_empty() {
            if dns_flags {
                return Err("--dns-upstream, --dns-no-forward and --dns-allow are for the DNS responder: add --dns-listen".into());
            }
            return Ok(None);
        }
        Ok(Some(crate::services::dns::DnsConfig {
            listen: std::mem::take(&mut a.dns_listen),
            domain: a.dns_domain.clone(),
            forwarding: if a.dns_no_forward {
                crate::services::dns::Forwarding::Off
            } else if a.dns_upstream.is_empty() {
                crate::services::dns::Forwarding::Host
            } else {
                crate::services::dns::Forwarding::To(std::mem::take(&mut a.dns_upstream))
            },
            allow: std::mem::take(&mut a.dns_allow),
            rate_limit: a.dns_rate_limit,
        }))
    }
}
