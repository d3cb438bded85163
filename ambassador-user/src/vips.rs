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
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    contract::{self, Entry, ServiceValue},
    error::{Error, Result},
    etcd::timed,
    model::Proto,
};

/// The range addresses are allocated from until `vip range` sets another: Kubernetes' default
/// service range, so people recognise it as virtual.
pub const DEFAULT_RANGE: &str = "10.96.0.0/12";

/// The IPv6 range addresses are allocated from until `vip range` sets another: a unique local
/// /112 (65,536 addresses) shaped like the IPv4 one.
pub const DEFAULT_RANGE6: &str = "fd00:10:96::/112";

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

/// The ranges allocations come from, one per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// IPv4 frontends.
    pub v4: Ipv4Net,
    /// IPv6 frontends.
    pub v6: Ipv6Net,
}

impl Default for Ranges {
    fn default() -> Self {
        Self {
            v4: DEFAULT_RANGE.parse().expect("a valid default"),
            v6: DEFAULT_RANGE6.parse().expect("a valid default"),
        }
    }
}

impl Ranges {
    /// The range of `ipv6`'s family.
    pub fn of(&self, ipv6: bool) -> IpNet {
        if ipv6 {
            IpNet::V6(self.v6)
        } else {
            IpNet::V4(self.v4)
        }
    }
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
                    match text.trim().parse::<IpNet>().map_err(|_| bad())? {
                        IpNet::V4(net) if !ipv6 => view.ranges.v4 = net,
                        IpNet::V6(net) if ipv6 => view.ranges.v6 = net,
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
            if timed(format!("updating {service_key}"), client.txn(txn))
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

/// The ranges and the allocations, address -> service.
pub async fn list(client: &mut Client, prefix: &str) -> Result<(Ranges, BTreeMap<IpAddr, String>)> {
    let view = read(client, prefix).await?;
    Ok((view.ranges, view.vips))
}

/// Sets the range new allocations of its family come from.
pub async fn set_range(client: &mut Client, prefix: &str, range: IpNet) -> Result<()> {
    let key = contract::vip_range_key(prefix, matches!(range, IpNet::V6(_)));
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
}
