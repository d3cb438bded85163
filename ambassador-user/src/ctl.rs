//! Operator commands: `ambassador service ...` and `ambassador endpoint ...`, writing and
//! reading the v1 etcd contract. Tables for people, `--json` for scripts.

use std::{collections::BTreeMap, fmt::Write as _};

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions};
use serde::Serialize;

use crate::{
    cli::{EndpointCmd, ProtoArg, ServiceCmd},
    contract::{self, EndpointValue, Entry, ServiceValue},
    error::{Error, Result},
    etcd::{timed, EtcdOptions},
    model::{check_service_name, parse_addr},
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
            proto,
            etcd,
        } => {
            check_service_name(&name).map_err(Error::Usage)?;
            let addr =
                parse_addr(&frontend).map_err(|m| Error::Usage(format!("--frontend: {m}")))?;
            let opts: EtcdOptions = etcd.into();
            let value = ServiceValue {
                frontend: addr.to_string(),
                proto: match proto {
                    ProtoArg::Tcp => "tcp".into(),
                    ProtoArg::Udp => "udp".into(),
                },
            };
            let mut client = opts.connect().await?;
            let key = contract::service_key(&opts.prefix, &name);
            let json = serde_json::to_string(&value).expect("serializable");
            timed(
                &format!("writing {key}"),
                client.put(key.clone(), json, None),
            )
            .await?;
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
            println!("service {name} removed ({removed_eps} endpoints removed)");
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
