//! Flags shared by the commands that talk to etcd, and the operator commands' output.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::control::etcd::EtcdOptions;

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
    /// A file holding the etcd password (a Docker or systemd secret; one line).
    #[arg(
        long,
        env = "AMBASSADOR_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        requires = "etcd_user",
        conflicts_with = "etcd_password"
    )]
    pub etcd_password_file: Option<PathBuf>,
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
            password_file: a.etcd_password_file,
        }
    }
}

/// A listening address for `--metrics-addr`: `ADDR:PORT`, or a bare `PORT`, which listens on
/// 127.0.0.1 only (the status page and metrics are for this host's operators unless an
/// address says otherwise).
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    s.parse().map_err(|_| {
        format!(
            "{s:?} is neither a PORT (0-65535: on 127.0.0.1) nor ADDR:PORT (e.g. 127.0.0.1:9595, [::1]:9595)"
        )
    })
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
