//! `ambassador endpoint add|rm|ls`.

use etcd_client::PutOptions;

use super::{endpoints_table, list, print_json, EndpointRow};
use crate::{
    commands::cli::EndpointCmd,
    control::etcd::{fresh, EtcdOptions},
    core::{
        contract::{self, EndpointValue},
        model::{check_service_name, parse_addr},
    },
    error::{Error, Result},
};

/// `ambassador endpoint ...`.
pub async fn endpoint(cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Add {
            service,
            addr,
            id,
            weight,
            ttl,
            host,
            etcd,
        } => {
            check_service_name(&service).map_err(Error::Usage)?;
            let addr = parse_addr(&addr).map_err(|m| Error::Usage(format!("address: {m}")))?;
            let id = id.unwrap_or_else(|| format!("{}-{}", addr.ip(), addr.port()));
            crate::core::model::check_endpoint_id(&id).map_err(Error::Usage)?;
            let value = EndpointValue {
                addr: addr.to_string(),
                weight: Some(weight as i64),
                ..Default::default()
            };
            let opts: EtcdOptions = etcd.into();
            let key = endpoint_key(&opts.prefix, host.as_deref(), &service, &id);
            add(&opts, &key, &value, ttl).await?;
            match ttl {
                Some(t) => println!("endpoint {service}/{id} -> {addr} (expires in {t} s)"),
                None => println!("endpoint {service}/{id} -> {addr}"),
            }
            Ok(())
        }
        EndpointCmd::Rm {
            service,
            id,
            host,
            etcd,
        } => {
            check_service_name(&service).map_err(Error::Usage)?;
            crate::core::model::check_endpoint_id(&id).map_err(Error::Usage)?;
            let opts: EtcdOptions = etcd.into();
            let client = opts.connect().await?;
            let key = endpoint_key(&opts.prefix, host.as_deref(), &service, &id);
            let resp = fresh(&client, &format!("deleting {key}"), |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
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

/// Writes an endpoint, under a lease of its own that expires after `ttl` seconds if given.
async fn add(opts: &EtcdOptions, key: &str, value: &EndpointValue, ttl: Option<i64>) -> Result<()> {
    let client = opts.connect().await?;
    let json = serde_json::to_string(value).expect("serializable");
    let put_opts = match ttl {
        Some(ttl) => {
            let lease = fresh(&client, "granting a lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
            Some(PutOptions::new().with_lease(lease.id()))
        }
        None => None,
    };
    fresh(&client, &format!("writing {key}"), |mut c| {
        let (json, put_opts) = (json.clone(), put_opts.clone());
        async move { c.put(key, json, put_opts).await }
    })
    .await?;
    Ok(())
}

/// The key of an endpoint added by hand: the operator's, or a host's with `--host`.
fn endpoint_key(prefix: &str, host: Option<&str>, service: &str, id: &str) -> String {
    match host {
        Some(h) => contract::host_endpoint_key(prefix, h, service, id),
        None => contract::endpoint_key(prefix, service, id),
    }
}
