//! Frontend addresses allocated for services (`service set NAME --port P` without
//! `--frontend`, and the register's zero-configuration services).
//!
//! Each allocation is its own key, `<prefix>/v1/vips/<address>` = service name, created in the
//! same etcd transaction as the service, and only if neither exists yet: two operators or hosts
//! allocating at once never get the same address (the loser's transaction fails, it reads
//! again and takes the next free one). The range is `<prefix>/v1/settings/vip-range`
//! ([`DEFAULT_RANGE`] when unset).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

use crate::{
    contract::{self, Entry, ServiceValue},
    error::{Error, Result},
    etcd::timed,
    model::Proto,
};

/// The range addresses are allocated from until `vip range` sets another: Kubernetes' default
/// service range, so people recognise it as virtual.
pub const DEFAULT_RANGE: &str = "10.96.0.0/12";

/// How many times an allocation re-reads and retries after losing a race.
const ATTEMPTS: usize = 16;

/// The first address of `range` that is not `used`, leaving out the network and broadcast
/// addresses of ranges that have them.
pub fn pick(range: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    range.hosts().find(|ip| !used.contains(ip))
}

/// What etcd holds about services and allocations, read at one revision.
struct View {
    services: BTreeMap<String, (SocketAddr, Proto, i64)>,
    vips: BTreeMap<Ipv4Addr, String>,
    range: Ipv4Net,
}

async fn read(client: &mut Client, prefix: &str) -> Result<View> {
    let txn = Txn::new().and_then([
        TxnOp::get(
            contract::services_prefix(prefix),
            Some(GetOptions::new().with_prefix()),
        ),
        TxnOp::get(
            contract::vips_prefix(prefix),
            Some(GetOptions::new().with_prefix()),
        ),
        TxnOp::get(contract::vip_range_key(prefix), None),
    ]);
    let resp = timed("reading services and allocations", client.txn(txn)).await?;
    let mut view = View {
        services: BTreeMap::new(),
        vips: BTreeMap::new(),
        range: DEFAULT_RANGE.parse().expect("a valid default"),
    };
    for (i, op) in resp.op_responses().into_iter().enumerate() {
        let etcd_client::TxnOpResponse::Get(get) = op else {
            continue;
        };
        for kv in get.kvs() {
            match i {
                0 => {
                    if let Ok(Some(Entry::Service {
                        name,
                        frontend,
                        proto,
                    })) = contract::parse(prefix, kv.key(), kv.value())
                    {
                        view.services
                            .insert(name, (frontend, proto, kv.mod_revision()));
                    }
                }
                1 => {
                    let key = String::from_utf8_lossy(kv.key());
                    if let Some(ip) = key
                        .rsplit('/')
                        .next()
                        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                    {
                        view.vips
                            .insert(ip, String::from_utf8_lossy(kv.value()).into_owned());
                    }
                }
                _ => {
                    let text = String::from_utf8_lossy(kv.value());
                    view.range = text.trim().parse().map_err(|_| {
                        Error::Usage(format!(
                            "{} holds {text:?}, which is not an IPv4 range like {DEFAULT_RANGE}: set it with `ambassador vip range CIDR`",
                            contract::vip_range_key(prefix)
                        ))
                    })?;
                }
            }
        }
    }
    Ok(view)
}

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The service was created with a newly allocated frontend.
    Created(SocketAddr),
    /// The service existed; its frontend was kept (its port changed when `update` said so).
    Existing(SocketAddr),
}

/// Makes service `name` exist with frontend port `port`: a new service gets a free address of
/// the range. An existing one keeps its address; with `update` its port and protocol are set
/// to `port` and `proto`, without it nothing is written (the register never changes a service
/// an operator or another host defined).
pub async fn ensure(
    client: &mut Client,
    prefix: &str,
    name: &str,
    port: u16,
    proto: Proto,
    update: bool,
) -> Result<Outcome> {
    let service_key = contract::service_key(prefix, name);
    for _ in 0..ATTEMPTS {
        let view = read(client, prefix).await?;
        if let Some((frontend, old_proto, revision)) = view.services.get(name) {
            if !update || (frontend.port() == port && *old_proto == proto) {
                return Ok(Outcome::Existing(*frontend));
            }
            let addr = SocketAddr::new(frontend.ip(), port);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    service_key.clone(),
                    CompareOp::Equal,
                    *revision,
                )])
                .and_then([TxnOp::put(service_key.clone(), value(addr, proto), None)]);
            if timed(format!("updating {service_key}"), client.txn(txn))
                .await?
                .succeeded()
            {
                return Ok(Outcome::Existing(addr));
            }
            continue;
        }
        let used: BTreeSet<Ipv4Addr> = view
            .vips
            .keys()
            .copied()
            .chain(view.services.values().filter_map(|(f, _, _)| match f.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            }))
            .collect();
        let ip = pick(view.range, &used).ok_or_else(|| {
            Error::Usage(format!(
                "no free frontend address left in {} ({} allocated): widen it with `ambassador vip range CIDR`",
                view.range,
                view.vips.len()
            ))
        })?;
        let vip_key = contract::vip_key(prefix, IpAddr::V4(ip));
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        let txn = Txn::new()
            .when([
                Compare::create_revision(vip_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(service_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(vip_key, name, None),
                TxnOp::put(service_key.clone(), value(addr, proto), None),
            ]);
        if timed(format!("allocating {ip} for {name}"), client.txn(txn))
            .await?
            .succeeded()
        {
            return Ok(Outcome::Created(addr));
        }
    }
    Err(Error::Usage(format!(
        "allocating a frontend for {name}: lost {ATTEMPTS} races with other allocators in a row; try again"
    )))
}

fn value(addr: SocketAddr, proto: Proto) -> String {
    serde_json::to_string(&ServiceValue {
        frontend: addr.to_string(),
        proto: proto.to_string(),
    })
    .expect("serializable")
}

/// The allocation `ip` belongs to another service than `name` (a manual frontend must not take
/// an allocated address).
pub async fn owner(client: &mut Client, prefix: &str, ip: IpAddr) -> Result<Option<String>> {
    let key = contract::vip_key(prefix, ip);
    let resp = timed(format!("reading {key}"), client.get(key, None)).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// Frees the addresses allocated to `name` other than `keep`. Returns them.
pub async fn release(
    client: &mut Client,
    prefix: &str,
    name: &str,
    keep: Option<IpAddr>,
) -> Result<Vec<Ipv4Addr>> {
    let view = read(client, prefix).await?;
    let mut freed = Vec::new();
    for (ip, owner) in &view.vips {
        if owner == name && Some(IpAddr::V4(*ip)) != keep {
            let key = contract::vip_key(prefix, IpAddr::V4(*ip));
            // Only if it still belongs to `name`.
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, name)])
                .and_then([TxnOp::delete(key.clone(), None)]);
            if timed(format!("freeing {key}"), client.txn(txn))
                .await?
                .succeeded()
            {
                freed.push(*ip);
            }
        }
    }
    Ok(freed)
}

/// The allocations, address -> service.
pub async fn list(
    client: &mut Client,
    prefix: &str,
) -> Result<(Ipv4Net, BTreeMap<Ipv4Addr, String>)> {
    let view = read(client, prefix).await?;
    Ok((view.range, view.vips))
}

/// Sets the range new allocations come from.
pub async fn set_range(client: &mut Client, prefix: &str, range: Ipv4Net) -> Result<()> {
    let key = contract::vip_range_key(prefix);
    timed(
        format!("writing {key}"),
        client.put(key, range.trunc().to_string(), None),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_free_host_address_is_picked() {
        let range: Ipv4Net = "10.96.0.0/29".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(pick(range, &used), Some(Ipv4Addr::new(10, 96, 0, 1)));
        used.insert(Ipv4Addr::new(10, 96, 0, 1));
        used.insert(Ipv4Addr::new(10, 96, 0, 3));
        assert_eq!(pick(range, &used), Some(Ipv4Addr::new(10, 96, 0, 2)));
        used.extend((1..=6).map(|i| Ipv4Addr::new(10, 96, 0, i)));
        assert_eq!(
            pick(range, &used),
            None,
            "network and broadcast are never picked"
        );
        let single: Ipv4Net = "10.97.0.5/32".parse().unwrap();
        assert_eq!(
            pick(single, &BTreeSet::new()),
            Some(Ipv4Addr::new(10, 97, 0, 5))
        );
    }
}
