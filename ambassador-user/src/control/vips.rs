//! Frontend addresses allocated for services (`service set NAME --port P` without
//! `--frontend`, and the register's zero-configuration services).
//!
//! Each allocation is its own key, `<prefix>/v1/vips/<address>` = service name, created in the
//! same etcd transaction as the service, and only if neither exists yet: two operators or hosts
//! allocating at once never get the same address (the loser's transaction fails, it reads
//! again and takes the next free one). Each family has its range: IPv4 addresses come from
//! `<prefix>/v1/settings/vip-range` ([`DEFAULT_RANGE`] when unset), IPv6 ones (for services
//! whose backends are IPv6) from `<prefix>/v1/settings/vip-range6` ([`DEFAULT_RANGE6`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnet::IpNet;

pub use crate::core::model::{Ranges, DEFAULT_RANGE, DEFAULT_RANGE6};
use crate::{
    control::etcd::{fresh, timed},
    core::{
        contract::{self, Entry, ServiceValue, Setting},
        model::Proto,
    },
    error::{Error, Result},
};

/// How many times an allocation re-reads and retries after losing a race.
const ATTEMPTS: usize = 16;

/// The first address of `range` that is not `used`, leaving out IPv4's network and broadcast
/// addresses and IPv6's Subnet-Router anycast address (the first, RFC 4291), where the range
/// has them.
pub fn pick(range: IpNet, used: &BTreeSet<IpAddr>) -> Option<IpAddr> {
    let anycast = match range {
        IpNet::V6(net) if net.prefix_len() < 127 => Some(IpAddr::V6(net.network())),
        _ => None,
    };
    range
        .hosts()
        .find(|ip| Some(*ip) != anycast && !used.contains(ip))
}

/// What etcd holds about services and allocations, read at one revision.
struct View {
    services: BTreeMap<String, (SocketAddr, Proto, i64)>,
    vips: BTreeMap<IpAddr, String>,
    ranges: Ranges,
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
        TxnOp::get(contract::vip_range_key(prefix, false), None),
        TxnOp::get(contract::vip_range_key(prefix, true), None),
    ]);
    let resp = timed("reading services and allocations", client.txn(txn)).await?;
    let mut view = View {
        services: BTreeMap::new(),
        vips: BTreeMap::new(),
        ranges: Ranges::default(),
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
                        .and_then(|ip| ip.parse::<IpAddr>().ok())
                    {
                        view.vips
                            .insert(ip, String::from_utf8_lossy(kv.value()).into_owned());
                    }
                }
                _ => {
                    let ipv6 = i == 3;
                    let text = String::from_utf8_lossy(kv.value());
                    let bad = || {
                        Error::Usage(format!(
                            "{} holds {text:?}, which is not an {} range like {}: set it with `ambassador vip range CIDR`",
                            contract::vip_range_key(prefix, ipv6),
                            if ipv6 { "IPv6" } else { "IPv4" },
                            if ipv6 { DEFAULT_RANGE6 } else { DEFAULT_RANGE },
                        ))
                    };
                    // The contract's parser, so that allocation and every daemon's frontend
                    // check read the range the same way (host bits cleared).
                    match contract::parse(prefix, kv.key(), kv.value()) {
                        Ok(Some(Entry::Setting(Setting::VipRange(IpNet::V4(net))))) if !ipv6 => {
                            view.ranges.v4 = net
                        }
                        Ok(Some(Entry::Setting(Setting::VipRange(IpNet::V6(net))))) if ipv6 => {
                            view.ranges.v6 = net
                        }
                        _ => return Err(bad()),
                    }
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
/// the range of its family (`ipv6`: its backends are IPv6). An existing one keeps its address; with `update` its port and protocol are set
/// to `port` and `proto`, without it nothing is written (the register never changes a service
/// an operator or another host defined).
pub async fn ensure(
    client: &mut Client,
    prefix: &str,
    name: &str,
    port: u16,
    proto: Proto,
    ipv6: bool,
    update: bool,
) -> Result<Outcome> {
    let service_key = contract::service_key(prefix, name);
    for _ in 0..ATTEMPTS {
        let view = read(client, prefix).await?;
        if let Some((frontend, old_proto, revision)) = view.services.get(name) {
            if update && frontend.is_ipv6() != ipv6 {
                return Err(Error::Usage(format!(
                    "service {name} has the frontend {frontend}, of the other family: a service is one family, so remove it first (`service rm {name}`) or give --frontend"
                )));
            }
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
            if fresh(client, &format!("updating {service_key}"), |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?
            .succeeded()
            {
                return Ok(Outcome::Existing(addr));
            }
            continue;
        }
        let used: BTreeSet<IpAddr> = view
            .vips
            .keys()
            .copied()
            .chain(view.services.values().map(|(f, _, _)| f.ip()))
            .collect();
        let range = view.ranges.of(ipv6);
        let ip = pick(range, &used).ok_or_else(|| {
            Error::Usage(format!(
                "no free frontend address left in {range} ({} allocated): widen it with `ambassador vip range CIDR`",
                used.iter().filter(|ip| range.contains(*ip)).count()
            ))
        })?;
        let vip_key = contract::vip_key(prefix, ip);
        let addr = SocketAddr::new(ip, port);
        let txn = Txn::new()
            .when([
                Compare::create_revision(vip_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(service_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(vip_key, name, None),
                TxnOp::put(service_key.clone(), value(addr, proto), None),
            ]);
        let what = format!(
            "allocating {ip} for {name} (writing {service_key} and {})",
            contract::vip_key(prefix, ip)
        );
        if fresh(client, &what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
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

/// The frontend of service `name`, if it exists (and parses).
pub async fn frontend(client: &mut Client, prefix: &str, name: &str) -> Result<Option<SocketAddr>> {
    let key = contract::service_key(prefix, name);
    let resp = timed(format!("reading {key}"), client.get(key, None)).await?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| match contract::parse(prefix, kv.key(), kv.value()) {
            Ok(Some(Entry::Service { frontend, .. })) => Some(frontend),
            _ => None,
        }))
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
) -> Result<Vec<IpAddr>> {
    let view = read(client, prefix).await?;
    let mut freed = Vec::new();
    for (ip, owner) in &view.vips {
        if owner == name && Some(*ip) != keep {
            let key = contract::vip_key(prefix, *ip);
            // Only if it still belongs to `name`.
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, name)])
                .and_then([TxnOp::delete(key.clone(), None)]);
            if fresh(client, &format!("freeing {key}"), |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?
            .succeeded()
            {
                freed.push(*ip);
            }
        }
    }
    Ok(freed)
}

/// The ranges and the allocations, address -> service.
pub async fn list(client: &mut Client, prefix: &str) -> Result<(Ranges, BTreeMap<IpAddr, String>)> {
    let view = read(client, prefix).await?;
    Ok((view.ranges, view.vips))
}

/// What changing a range does to the services of its family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeChange {
    /// Services whose frontend the new range leaves out (and no allocation keeps): every
    /// daemon refuses them once the range is set (unless its --allow-frontend allows them).
    pub refused: Vec<(String, SocketAddr)>,
    /// Services refused until now that the new range lets through.
    pub admitted: Vec<(String, SocketAddr)>,
}

/// What setting `new` in place of the current range would do to `services`.
fn range_change(
    old: IpNet,
    new: IpNet,
    services: &BTreeMap<String, (SocketAddr, Proto, i64)>,
    vips: &BTreeMap<IpAddr, String>,
) -> RangeChange {
    let mut change = RangeChange::default();
    for (name, (frontend, _, _)) in services {
        let ip = frontend.ip().to_canonical();
        if ip.is_ipv6() != matches!(new, IpNet::V6(_)) || vips.get(&ip) == Some(name) {
            continue;
        }
        match (old.contains(&ip), new.contains(&ip)) {
            (true, false) => change.refused.push((name.clone(), *frontend)),
            (false, true) => change.admitted.push((name.clone(), *frontend)),
            _ => {}
        }
    }
    change
}

/// Sets the range new allocations of its family come from, and frontends must be in; with
/// services the new range would refuse, only when `force` says so. Returns what changes.
pub async fn set_range(
    client: &mut Client,
    prefix: &str,
    range: IpNet,
    force: bool,
) -> Result<RangeChange> {
    let range = range.trunc();
    let view = read(client, prefix).await?;
    let old = view.ranges.of(matches!(range, IpNet::V6(_)));
    let change = range_change(old, range, &view.services, &view.vips);
    if !change.refused.is_empty() && !force {
        let list: Vec<String> = change
            .refused
            .iter()
            .map(|(n, a)| format!("{n} ({a})"))
            .collect();
        return Err(Error::Usage(format!(
            "{range} leaves out the frontends of {}, set by hand at addresses no allocation keeps: every daemon would refuse them. Move them first (`service set NAME --port P`), or give --force",
            list.join(", ")
        )));
    }
    let key = contract::vip_range_key(prefix, matches!(range, IpNet::V6(_)));
    fresh(client, &format!("writing {key}"), |mut c| {
        let (key, range) = (key.clone(), range.to_string());
        async move { c.put(key, range, None).await }
    })
    .await?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_free_host_address_is_picked() {
        let range: IpNet = "10.96.0.0/29".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(pick(range, &used), Some(v4("10.96.0.1")));
        used.insert(v4("10.96.0.1"));
        used.insert(v4("10.96.0.3"));
        assert_eq!(pick(range, &used), Some(v4("10.96.0.2")));
        used.extend((1..=6).map(|i| v4(&format!("10.96.0.{i}"))));
        assert_eq!(
            pick(range, &used),
            None,
            "network and broadcast are never picked"
        );
        let single: IpNet = "10.97.0.5/32".parse().unwrap();
        assert_eq!(pick(single, &BTreeSet::new()), Some(v4("10.97.0.5")));
    }

    #[test]
    fn ipv6_allocations_skip_the_subnet_router_anycast_address() {
        let range: IpNet = DEFAULT_RANGE6.parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(pick(range, &used), Some(v4("fd00:10:96::1")));
        used.insert(v4("fd00:10:96::1"));
        used.insert(v4("10.96.0.2"));
        assert_eq!(pick(range, &used), Some(v4("fd00:10:96::2")));
        let pair: IpNet = "fd00::/127".parse().unwrap();
        assert_eq!(pick(pair, &BTreeSet::new()), Some(v4("fd00::")));
        assert_eq!(Ranges::default().of(true), range);
    }

    #[test]
    fn a_range_change_says_which_services_it_refuses_and_admits() {
        let svc = |a: &str| (a.parse().unwrap(), Proto::Tcp, 1);
        let services = BTreeMap::from([
            ("kept".to_owned(), svc("10.96.0.1:80")),
            ("manual".to_owned(), svc("10.96.5.5:80")),
            ("outside".to_owned(), svc("10.200.0.9:80")),
            ("six".to_owned(), svc("[fd00:10:96::1]:80")),
        ]);
        let vips = BTreeMap::from([(v4("10.96.0.1"), "kept".to_owned())]);
        let change = range_change(
            "10.96.0.0/12".parse().unwrap(),
            "10.200.0.0/16".parse().unwrap(),
            &services,
            &vips,
        );
        assert_eq!(
            change.refused,
            [("manual".to_owned(), "10.96.5.5:80".parse().unwrap())]
        );
        assert_eq!(
            change.admitted,
            [("outside".to_owned(), "10.200.0.9:80".parse().unwrap())]
        );
    }
}
