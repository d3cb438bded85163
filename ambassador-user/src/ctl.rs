//! Operator commands: `ambassador service ...` and `ambassador endpoint ...`, writing and
//! reading the v1 etcd contract. Tables for people, `--json` for scripts.

use std::{collections::BTreeMap, fmt::Write as _};

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions};
use serde::Serialize;

use crate::{
    cli::{EndpointCmd, ProtoArg, ServiceCmd, VipCmd},
    contract::{self, EndpointValue, Entry, ServiceValue},
    error::{Error, Result},
    etcd::{timed, EtcdOptions},
    model::{check_service_name, parse_addr, Proto},
    vips,
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
    let resp = timed(
        "listing",
        client.get(root, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut services: BTreeMap<String, ServiceRow> = BTreeMap::new();
    let mut endpoints: Vec<EndpointRow> = Vec::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let raw = String::from_utf8_lossy(kv.value()).into_owned();
        match contract::parse(prefix, kv.key(), kv.value()) {
            Ok(Some(Entry::Service {
                name,
                frontend,
                proto,
            })) => {
                services.insert(
                    name.clone(),
                    ServiceRow {
                        name,
                        frontend: frontend.to_string(),
                        proto: proto.to_string(),
                        endpoints: vec![],
                        error: None,
                    },
                );
            }
            Ok(Some(Entry::Endpoint {
                service,
                id,
                endpoint,
            })) => endpoints.push(EndpointRow {
                service,
                id,
                addr: endpoint.addr.to_string(),
                weight: endpoint.weight,
                lease: kv.lease(),
                error: None,
            }),
            Ok(None) => {}
            Err(reason) => match contract::Key::split(prefix, &key) {
                Some(contract::Key::Service { name }) => {
                    services.insert(
                        name.to_owned(),
                        ServiceRow {
                            name: name.to_owned(),
                            frontend: raw,
                            proto: String::new(),
                            endpoints: vec![],
                            error: Some(reason),
                        },
                    );
                }
                Some(contract::Key::Endpoint { service, id }) => endpoints.push(EndpointRow {
                    service: service.to_owned(),
                    id: id.to_owned(),
                    addr: raw,
                    weight: 0,
                    lease: kv.lease(),
                    error: Some(reason),
                }),
                _ => {}
            },
        }
    }
    for ep in endpoints {
        let row = services
            .entry(ep.service.clone())
            .or_insert_with(|| ServiceRow {
                name: ep.service.clone(),
                frontend: String::new(),
                proto: String::new(),
                endpoints: vec![],
                error: Some("no service definition: its endpoints are not used".into()),
            });
        row.endpoints.push(ep);
    }
    Ok(services.into_values().collect())
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
        "{:<24} {:<32} {:<21} {:>6} {:>18}  NOTE\n",
        "SERVICE", "ID", "ADDRESS", "WEIGHT", "LEASE"
    );
    for e in rows {
        let lease = if e.lease == 0 {
            "-".to_owned()
        } else {
            format!("{:x}", e.lease)
        };
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<21} {:>6} {:>18}  {}",
            e.service,
            e.id,
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

/// `ambassador service ...`.
pub async fn service(cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Set {
            name,
            frontend,
            port,
            ipv6,
            proto,
            etcd,
        } => {
            check_service_name(&name).map_err(Error::Usage)?;
            let proto = match proto {
                ProtoArg::Tcp => Proto::Tcp,
                ProtoArg::Udp => Proto::Udp,
            };
            let opts: EtcdOptions = etcd.into();
            let Some(frontend) = frontend else {
                let port = port.expect("clap requires --frontend or --port");
                let mut client = opts.connect().await?;
                let outcome =
                    vips::ensure(&mut client, &opts.prefix, &name, port, proto, ipv6, true).await?;
                match outcome {
                    vips::Outcome::Created(a) => {
                        println!("service {name} -> {a}/{proto} (address allocated)")
                    }
                    vips::Outcome::Existing(a) => println!("service {name} -> {a}/{proto}"),
                }
                return Ok(());
            };
            let addr =
                parse_addr(&frontend).map_err(|m| Error::Usage(format!("--frontend: {m}")))?;
            let value = ServiceValue {
                frontend: addr.to_string(),
                proto: proto.to_string(),
            };
            let mut client = opts.connect().await?;
            match vips::owner(&mut client, &opts.prefix, addr.ip()).await? {
                Some(owner) if owner != name => {
                    return Err(Error::Usage(format!(
                        "{} is allocated to service {owner}: choose another address, or leave out --frontend to have one allocated",
                        addr.ip()
                    )))
                }
                _ => {}
            }
            let key = contract::service_key(&opts.prefix, &name);
            let json = serde_json::to_string(&value).expect("serializable");
            timed(
                &format!("writing {key}"),
                client.put(key.clone(), json, None),
            )
            .await?;
            // An address allocated to this service before is free again.
            vips::release(&mut client, &opts.prefix, &name, Some(addr.ip())).await?;
            println!("service {name} -> {addr}/{}", value.proto);
            Ok(())
        }
        ServiceCmd::Get { name, etcd, output } => {
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let rows = list(&mut client, &opts.prefix).await?;
            let Some(row) = rows.into_iter().find(|r| r.name == name) else {
                return Err(Error::NotFound(format!(
                    "service {name:?} not found under {}",
                    opts.prefix
                )));
            };
            if output.json {
                print_json(&row);
            } else {
                print!("{}", services_table(std::slice::from_ref(&row)));
                print!("\n{}", endpoints_table(row.endpoints.iter()));
            }
            Ok(())
        }
        ServiceCmd::Rm {
            name,
            with_endpoints,
            etcd,
        } => {
            check_service_name(&name).map_err(Error::Usage)?;
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let key = contract::service_key(&opts.prefix, &name);
            let resp = timed(&format!("deleting {key}"), client.delete(key, None)).await?;
            let freed = vips::release(&mut client, &opts.prefix, &name, None).await?;
            let mut removed_eps = 0;
            if with_endpoints {
                let p = contract::endpoints_prefix(&opts.prefix, Some(&name));
                removed_eps = timed(
                    "deleting endpoints",
                    client.delete(p, Some(DeleteOptions::new().with_prefix())),
                )
                .await?
                .deleted();
            }
            if resp.deleted() == 0 && removed_eps == 0 {
                return Err(Error::NotFound(format!(
                    "service {name:?} not found under {}",
                    opts.prefix
                )));
            }
            let freed: Vec<String> = freed.iter().map(ToString::to_string).collect();
            if freed.is_empty() {
                println!("service {name} removed ({removed_eps} endpoints removed)");
            } else {
                println!(
                    "service {name} removed ({removed_eps} endpoints removed; {} free again)",
                    freed.join(", ")
                );
            }
            Ok(())
        }
        ServiceCmd::Ls { etcd, output } => {
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let rows = list(&mut client, &opts.prefix).await?;
            if output.json {
                print_json(&rows);
            } else {
                print!("{}", services_table(&rows));
            }
            Ok(())
        }
    }
}

/// `ambassador endpoint ...`.
pub async fn endpoint(cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Add {
            service,
            addr,
            id,
            weight,
            ttl,
            etcd,
        } => {
            check_service_name(&service).map_err(Error::Usage)?;
            let addr = parse_addr(&addr).map_err(|m| Error::Usage(format!("address: {m}")))?;
            let id = id.unwrap_or_else(|| format!("{}-{}", addr.ip(), addr.port()));
            crate::model::check_endpoint_id(&id).map_err(Error::Usage)?;
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let value = EndpointValue {
                addr: addr.to_string(),
                weight: Some(weight as i64),
                ..Default::default()
            };
            let json = serde_json::to_string(&value).expect("serializable");
            let key = contract::endpoint_key(&opts.prefix, &service, &id);
            let put_opts = match ttl {
                Some(ttl) => {
                    let lease = timed("granting a lease", client.lease_grant(ttl, None)).await?;
                    Some(PutOptions::new().with_lease(lease.id()))
                }
                None => None,
            };
            timed(&format!("writing {key}"), client.put(key, json, put_opts)).await?;
            match ttl {
                Some(t) => println!("endpoint {service}/{id} -> {addr} (expires in {t} s)"),
                None => println!("endpoint {service}/{id} -> {addr}"),
            }
            Ok(())
        }
        EndpointCmd::Rm { service, id, etcd } => {
            check_service_name(&service).map_err(Error::Usage)?;
            crate::model::check_endpoint_id(&id).map_err(Error::Usage)?;
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let key = contract::endpoint_key(&opts.prefix, &service, &id);
            let resp = timed(&format!("deleting {key}"), client.delete(key, None)).await?;
            if resp.deleted() == 0 {
                return Err(Error::NotFound(format!(
                    "endpoint {service}/{id} not found"
                )));
            }
            println!("endpoint {service}/{id} removed");
            Ok(())
        }
        EndpointCmd::Ls {
            service,
            etcd,
            output,
        } => {
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            let rows = list(&mut client, &opts.prefix).await?;
            let eps: Vec<&EndpointRow> = rows
                .iter()
                .filter(|r| service.as_ref().is_none_or(|s| &r.name == s))
                .flat_map(|r| r.endpoints.iter())
                .collect();
            if output.json {
                print_json(&eps);
            } else {
                print!("{}", endpoints_table(eps.into_iter()));
            }
            Ok(())
        }
    }
}

/// `ambassador vip ...`.
pub async fn vip(cmd: VipCmd) -> Result<()> {
    match cmd {
        VipCmd::Range { cidr, etcd } => {
            let opts: EtcdOptions = etcd.into();
            let mut client = opts.connect().await?;
            match cidr {
                Some(range) => {
                    vips::set_range(&mut client, &opts.prefix, range).await?;
                    println!("frontend addresses are allocated from {}", range.trunc());
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
pub async fn env(services: Vec<String>, etcd: crate::cli::EtcdArgs) -> Result<()> {
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
        let proto = crate::model::parse_proto(&row.proto).map_err(Error::Usage)?;
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
