//! Operator commands: `ambassador service ...` and `ambassador endpoint ...`, writing and
//! reading the v1 etcd contract. Tables for people, `--json` for scripts.

mod endpoint;
mod service;

use std::{collections::BTreeMap, fmt::Write as _};

use etcd_client::{Client, KeyValue};
use serde::Serialize;

pub use endpoint::endpoint;
pub use service::service;

use crate::{
    commands::cli::VipCmd,
    control::{
        etcd::{self, EtcdOptions},
        vips,
    },
    core::{
        contract::{self, Entry},
        model::{check_service_name, parse_addr, Proto},
    },
    error::{Error, Result},
};

/// A service as listed.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    /// Name.
    pub name: String,
    /// Frontend, or the raw value when malformed.
    pub frontend: String,
    /// Protocol.
    pub proto: String,
    /// Endpoints registered for it.
    pub endpoints: Vec<EndpointRow>,
    /// Why the stored value is unusable, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An endpoint as listed.
#[derive(Debug, Serialize)]
pub struct EndpointRow {
    /// Its service.
    pub service: String,
    /// Its id.
    pub id: String,
    /// The host that published it (None: added by hand, by an admin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its address, or the raw value when malformed.
    pub addr: String,
    /// Its weight.
    pub weight: u32,
    /// The lease it lives under (0: none).
    pub lease: i64,
    /// Why the stored value is unusable, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads every service and endpoint under the prefix (malformed ones included, with why).
pub async fn list(client: &mut Client, prefix: &str) -> Result<Vec<ServiceRow>> {
    let root = contract::watch_prefix(prefix);
    let listing = etcd::list(client, &root).await?;
    let mut services: BTreeMap<String, ServiceRow> = BTreeMap::new();
    let mut endpoints: Vec<EndpointRow> = Vec::new();
    for kv in &listing.kvs {
        match row(prefix, kv) {
            Some(Row::Service(s)) => {
                services.insert(s.name.clone(), s);
            }
            Some(Row::Endpoint(e)) => endpoints.push(e),
            None => {}
        }
    }
    for ep in endpoints {
        let row = services.entry(ep.service.clone()).or_insert_with(|| {
            ServiceRow::new(
                ep.service.clone(),
                String::new(),
                String::new(),
                Some("no service definition: its endpoints are not used".into()),
            )
        });
        row.endpoints.push(ep);
    }
    Ok(services.into_values().collect())
}

enum Row {
    Service(ServiceRow),
    Endpoint(EndpointRow),
}

impl ServiceRow {
    fn new(name: String, frontend: String, proto: String, error: Option<String>) -> Self {
        Self {
            name,
            frontend,
            proto,
            endpoints: vec![],
            error,
        }
    }
}

/// One key's row: what it says, or for a malformed value, the raw value and why.
fn row(prefix: &str, kv: &KeyValue) -> Option<Row> {
    let reason = match contract::parse(prefix, kv.key(), kv.value()) {
        Ok(Some(Entry::Service {
            name,
            frontend,
            proto,
        })) => {
            let (frontend, proto) = (frontend.to_string(), proto.to_string());
            return Some(Row::Service(ServiceRow::new(name, frontend, proto, None)));
        }
        Ok(Some(Entry::Endpoint {
            service,
            id,
            host,
            endpoint,
        })) => {
            return Some(Row::Endpoint(EndpointRow {
                service,
                id,
                host,
                addr: endpoint.addr.to_string(),
                weight: endpoint.weight,
                lease: kv.lease(),
                error: None,
            }))
        }
        Ok(_) => return None,
        Err(reason) => reason,
    };
    let key = String::from_utf8_lossy(kv.key());
    let raw = String::from_utf8_lossy(kv.value()).into_owned();
    let (service, id, host) = match contract::Key::split(prefix, &key)? {
        contract::Key::Service { name } => {
            let row = ServiceRow::new(name.to_owned(), raw, String::new(), Some(reason));
            return Some(Row::Service(row));
        }
        contract::Key::Endpoint { service, id } => (service, id, None),
        contract::Key::HostEndpoint { host, service, id } => (service, id, Some(host.to_owned())),
        _ => return None,
    };
    Some(Row::Endpoint(EndpointRow {
        service: service.to_owned(),
        id: id.to_owned(),
        host,
        addr: raw,
        weight: 0,
        lease: kv.lease(),
        error: Some(reason),
    }))
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn services_table(rows: &[ServiceRow]) -> String {
    let mut out = format!(
        "{:<24} {:<21} {:<5} {:>9}  NOTE\n",
        "SERVICE", "FRONTEND", "PROTO", "ENDPOINTS"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<24} {:<21} {:<5} {:>9}  {}",
            r.name,
            if r.error.is_some() && !r.frontend.is_empty() {
                "(malformed)"
            } else {
                &r.frontend
            },
            r.proto,
            r.endpoints.len(),
            r.error.as_deref().unwrap_or("")
        );
    }
    out
}

fn endpoints_table<'a>(rows: impl Iterator<Item = &'a EndpointRow>) -> String {
    let mut out = format!(
        "{:<24} {:<32} {:<16} {:<21} {:>6} {:>18}  NOTE\n",
        "SERVICE", "ID", "HOST", "ADDRESS", "WEIGHT", "LEASE"
    );
    for e in rows {
        let lease = if e.lease == 0 {
            "-".to_owned()
        } else {
            format!("{:x}", e.lease)
        };
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<16} {:<21} {:>6} {:>18}  {}",
            e.service,
            e.id,
            e.host.as_deref().unwrap_or("-"),
            if e.error.is_some() {
                "(malformed)"
            } else {
                &e.addr
            },
            e.weight,
            lease,
            e.error.as_deref().unwrap_or("")
        );
    }
    out
}

/// `ambassador vip ...`.
pub async fn vip(cmd: VipCmd) -> Result<()> {
    match cmd {
        VipCmd::Range { cidr, force, etcd } => {
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            match cidr {
                Some(range) => {
                    let change = vips::set_range(&mut client, &opts.prefix, range, force).await?;
                    println!("frontend addresses are allocated from {}", range.trunc());
                    for (name, addr) in &change.refused {
                        println!("service {name} ({addr}) is now outside the range: every daemon refuses it unless its --allow-frontend allows it");
                    }
                    for (name, addr) in &change.admitted {
                        println!("service {name} ({addr}) is now inside the range: daemons that refused it rewrite it again");
                    }
                }
                None => {
                    let (ranges, allocated) = vips::list(&mut client, &opts.prefix).await?;
                    for range in [ranges.of(false), ranges.of(true)] {
                        let n = allocated.keys().filter(|ip| range.contains(*ip)).count();
                        println!("{range} ({n} allocated)");
                    }
                }
            }
            Ok(())
        }
        VipCmd::Ls { etcd, output } => {
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let (_, allocated) = vips::list(&mut client, &opts.prefix).await?;
            if output.json {
                print_json(&allocated);
            } else {
                let mut out = format!("{:<24} SERVICE\n", "ADDRESS");
                for (ip, name) in &allocated {
                    let _ = writeln!(out, "{:<24} {name}", ip.to_string());
                }
                print!("{out}");
            }
            Ok(())
        }
    }
}

/// The variables a Docker link to `service` (frontend `addr`, `proto`) defined.
pub fn link_env(service: &str, addr: std::net::SocketAddr, proto: Proto) -> Vec<(String, String)> {
    let name = service.to_ascii_uppercase().replace('-', "_");
    let (ip, port) = (addr.ip(), addr.port());
    let url = format!("{proto}://{addr}");
    let p = format!(
        "{name}_PORT_{port}_{}",
        proto.to_string().to_ascii_uppercase()
    );
    vec![
        (format!("{name}_PORT"), url.clone()),
        (p.clone(), url),
        (format!("{p}_ADDR"), ip.to_string()),
        (format!("{p}_PORT"), port.to_string()),
        (format!("{p}_PROTO"), proto.to_string()),
    ]
}

/// `ambassador env SERVICE...`.
pub async fn env(services: Vec<String>, etcd: crate::commands::cli::EtcdArgs) -> Result<()> {
    for s in &services {
        check_service_name(s).map_err(Error::Usage)?;
    }
    let opts: EtcdOptions = etcd.into();
    let mut client = opts.connect().await?;
    let rows = list(&mut client, &opts.prefix).await?;
    let mut out = String::new();
    for s in &services {
        let row = rows.iter().find(|r| &r.name == s && r.error.is_none());
        let Some(row) = row else {
            return Err(Error::NotFound(format!(
                "service {s:?} not found under {}",
                opts.prefix
            )));
        };
        let addr = parse_addr(&row.frontend).map_err(Error::Usage)?;
        let proto = crate::core::model::parse_proto(&row.proto).map_err(Error::Usage)?;
        for (k, v) in link_env(s, addr, proto) {
            let _ = writeln!(out, "{k}={v}");
        }
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_variables_are_dockers() {
        let env = link_env("my-db", "10.96.0.10:6379".parse().unwrap(), Proto::Tcp);
        let text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                "MY_DB_PORT=tcp://10.96.0.10:6379",
                "MY_DB_PORT_6379_TCP=tcp://10.96.0.10:6379",
                "MY_DB_PORT_6379_TCP_ADDR=10.96.0.10",
                "MY_DB_PORT_6379_TCP_PORT=6379",
                "MY_DB_PORT_6379_TCP_PROTO=tcp",
            ]
        );
    }
}
