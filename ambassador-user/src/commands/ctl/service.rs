//! `ambassador service set|rm|ls`.

use etcd_client::DeleteOptions;

use super::{endpoints_table, list, print_json, services_table};
use crate::{
    commands::cli::{EtcdArgs, Output, ProtoArg, ServiceCmd},
    control::{
        etcd::{fresh, EtcdOptions},
        vips,
    },
    core::{
        contract::{self, ServiceValue},
        model::{check_service_name, parse_addr, Proto},
    },
    error::{Error, Result},
};

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
            match frontend {
                Some(frontend) => set(&name, &frontend, proto, etcd.into()).await,
                None => {
                    let port = port.expect("clap requires --frontend or --port");
                    allocate(&name, port, proto, ipv6, etcd.into()).await
                }
            }
        }
        ServiceCmd::Get { name, etcd, output } => get(&name, etcd, output).await,
        ServiceCmd::Rm {
            name,
            with_endpoints,
            etcd,
        } => {
            check_service_name(&name).map_err(Error::Usage)?;
            rm(&name, with_endpoints, etcd.into()).await
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

/// `service set NAME --port P`: a frontend allocated from the VIP range (or the one it has).
async fn allocate(
    name: &str,
    port: u16,
    proto: Proto,
    ipv6: bool,
    opts: EtcdOptions,
) -> Result<()> {
    let mut client = opts.connect().await?;
    match vips::ensure(&mut client, &opts.prefix, name, port, proto, ipv6, true).await? {
        vips::Outcome::Created(a) => println!("service {name} -> {a}/{proto} (address allocated)"),
        vips::Outcome::Existing(a) => println!("service {name} -> {a}/{proto}"),
    }
    Ok(())
}

/// `service set NAME --frontend ADDR`: a frontend chosen by the operator.
async fn set(name: &str, frontend: &str, proto: Proto, opts: EtcdOptions) -> Result<()> {
    let addr = parse_addr(frontend).map_err(|m| Error::Usage(format!("--frontend: {m}")))?;
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
    let key = contract::service_key(&opts.prefix, name);
    let json = serde_json::to_string(&value).expect("serializable");
    fresh(&client, &format!("writing {key}"), |mut c| {
        let (key, json) = (key.clone(), json.clone());
        async move { c.put(key, json, None).await }
    })
    .await?;
    // An address allocated to this service before is free again.
    vips::release(&mut client, &opts.prefix, name, Some(addr.ip())).await?;
    println!("service {name} -> {addr}/{}", value.proto);
    let (ranges, allocated) = vips::list(&mut client, &opts.prefix).await?;
    let range = ranges.of(addr.is_ipv6());
    let ip = addr.ip().to_canonical();
    if !range.contains(&ip) && allocated.get(&ip).map(String::as_str) != Some(name) {
        println!("note: {ip} is outside the VIP range {range}: every daemon refuses to rewrite it unless its --allow-frontend allows it");
    }
    Ok(())
}

async fn get(name: &str, etcd: EtcdArgs, output: Output) -> Result<()> {
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

async fn rm(name: &str, with_endpoints: bool, opts: EtcdOptions) -> Result<()> {
    let mut client = opts.connect().await?;
    let key = contract::service_key(&opts.prefix, name);
    let resp = fresh(&client, &format!("deleting {key}"), |mut c| {
        let key = key.clone();
        async move { c.delete(key, None).await }
    })
    .await?;
    let freed = vips::release(&mut client, &opts.prefix, name, None).await?;
    let mut removed_eps = 0;
    if with_endpoints {
        let p = contract::endpoints_prefix(&opts.prefix, Some(name));
        removed_eps = fresh(&client, "deleting endpoints", |mut c| {
            let p = p.clone();
            async move { c.delete(p, Some(DeleteOptions::new().with_prefix())).await }
        })
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
