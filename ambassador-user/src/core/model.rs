//! The domain model: services, endpoints and their protocol, and the one set of validators
//! every source of them uses (the TOML file, the etcd contract, the operator commands, the
//! register). Pure: no I/O.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use serde::Serialize;

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => ambassador_common::proto::TCP,
            Proto::Udp => ambassador_common::proto::UDP,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            ambassador_common::proto::TCP => Some(Proto::Tcp),
            ambassador_common::proto::UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Most slots one endpoint may take (its weight).
pub const MAX_WEIGHT: u32 = 256;

/// One backend address of a service, with its share of new flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where flows go (the same family as its service's frontend).
    pub addr: SocketAddr,
    /// Relative share of new flows, `1..=MAX_WEIGHT`.
    pub weight: u32,
}

/// What a service should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The frontend clients dial (IPv4 or IPv6).
    pub frontend: SocketAddr,
    /// Its protocol.
    pub proto: Proto,
    /// Its backends; duplicates of the same address are merged (weights added).
    pub endpoints: Vec<Endpoint>,
}

/// Desired state: service name -> spec. Each spec is shared, not copied: a step that changes
/// one copies it first (`Arc::make_mut`), so a service nothing changed is the same allocation
/// from etcd's store to the tables, and the pipeline plans only the services whose spec is a
/// different one than at its last apply.
pub type Desired = BTreeMap<String, Arc<ServiceSpec>>;

/// Keeps the endpoints of `spec` that `keep` keeps, asking it once per endpoint, in order (so
/// `keep` may count). The spec is copied only when one goes: a spec left whole stays shared.
pub fn retain_endpoints(spec: &mut Arc<ServiceSpec>, mut keep: impl FnMut(&Endpoint) -> bool) {
    let Some(first) = spec.endpoints.iter().position(|e| !keep(e)) else {
        return;
    };
    let mut index = 0;
    Arc::make_mut(spec).endpoints.retain(|e| {
        index += 1;
        match (index - 1).cmp(&first) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Greater => keep(e),
        }
    });
}

/// Longest endpoint id.
pub const MAX_ID_LEN: usize = 253;

/// Service names are DNS labels (RFC 1123): 1 to 63 of `a-z`, `0-9` and `-`, not starting or
/// ending with `-`.
pub fn check_service_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > ambassador_common::limits::MAX_NAME_LEN
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "service name {name:?} is not a DNS label (1-63 characters of a-z, 0-9 and '-', \
             not starting or ending with '-')"
        ));
    }
    Ok(())
}

/// Parses `IPv4:port` or `[IPv6]:port` with a non-zero port. IPv6 scope ids (`%eth0`) are
/// refused: a frontend or backend is reachable from every host, never one link's.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("{s:?}: port 0 is not allowed")),
        Ok(SocketAddr::V6(a)) if a.scope_id() != 0 => {
            Err(format!("{s:?}: a scope id ties an address to one link"))
        }
        Ok(SocketAddr::V6(a)) => Ok(SocketAddr::new(std::net::IpAddr::V6(*a.ip()), a.port())),
        Ok(a) => Ok(a),
        Err(_) => Err(format!(
            "{s:?} is not an address and port like \"10.96.0.10:80\" or \"[fd00::10]:80\""
        )),
    }
}

/// An endpoint weight: absent means 1; otherwise `1..=MAX_WEIGHT`.
pub fn parse_weight(w: Option<i64>) -> Result<u32, String> {
    match w {
        None => Ok(1),
        Some(w) if (1..=MAX_WEIGHT as i64).contains(&w) => Ok(w as u32),
        Some(w) => Err(format!("weight {w} is out of range 1..={MAX_WEIGHT}")),
    }
}

/// Parses `tcp` or `udp`.
pub fn parse_proto(s: &str) -> Result<Proto, String> {
    match s {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!("proto {other:?} is not \"tcp\" or \"udp\"")),
    }
}

/// Endpoint ids: 1 to 253 printable ASCII characters without `/` or spaces.
pub fn check_endpoint_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(format!(
            "endpoint id {id:?} must be 1-{MAX_ID_LEN} printable ASCII characters without '/'"
        ));
    }
    Ok(())
}

/// Parses an IPv4 or IPv6 range strictly (`--allow-backend`): `addr/len`, or a bare address
/// for one host; host bits set are a mistake worth saying (`10.1.2.3/16`: did you mean
/// 10.1.0.0/16?).
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let with_len = match (s.contains('/'), s.contains(':')) {
        (true, _) => s.to_owned(),
        (false, false) => format!("{s}/32"),
        (false, true) => format!("{s}/128"),
    };
    let net: ipnet::IpNet = with_len
        .parse()
        .map_err(|_| format!("{s:?} is not a network like 10.1.0.0/16 or fd00:1::/64"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "{s:?} has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The range addresses are allocated from until `vip range` sets another: Kubernetes' default
/// service range, so people recognise it as virtual.
pub const DEFAULT_RANGE: &str = "10.96.0.0/12";

/// The IPv6 range addresses are allocated from until `vip range` sets another: a unique local
/// /112 (65,536 addresses) shaped like the IPv4 one.
pub const DEFAULT_RANGE6: &str = "fd00:10:96::/112";

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec left whole stays shared; one that loses an endpoint is copied; the predicate
    /// sees every endpoint once, in order, so it may count.
    #[test]
    fn endpoints_are_retained_in_order_and_a_shared_spec_copied_only_when_one_goes() {
        let endpoints = (1..=4)
            .map(|port| Endpoint {
                addr: SocketAddr::from(([10, 0, 0, 1], port)),
                weight: 1,
            })
            .collect();
        let shared = Arc::new(ServiceSpec {
            frontend: "10.96.0.1:80".parse().unwrap(),
            proto: Proto::Tcp,
            endpoints,
        });
        let mut spec = shared.clone();
        retain_endpoints(&mut spec, |_| true);
        assert!(Arc::ptr_eq(&spec, &shared));

        let mut seen = Vec::new();
        retain_endpoints(&mut spec, |e| {
            seen.push(e.addr.port());
            seen.len() % 2 == 1
        });
        assert_eq!(seen, [1, 2, 3, 4]);
        let ports: Vec<u16> = spec.endpoints.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [1, 3]);
        assert_eq!(shared.endpoints.len(), 4, "the shared spec is untouched");
    }

    #[test]
    fn addresses_of_both_families_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_addr("10.96.0.10:80").unwrap().to_string(),
            "10.96.0.10:80"
        );
        assert_eq!(
            parse_addr("[FD00::10]:80").unwrap().to_string(),
            "[fd00::10]:80"
        );
        assert!(parse_addr("[fd00::10]:0").unwrap_err().contains("port 0"));
        assert!(parse_addr("[fe80::1%2]:80")
            .unwrap_err()
            .contains("scope id"));
        assert!(parse_addr("fd00::10:80").is_err(), "IPv6 needs brackets");
        assert!(parse_addr("db:80").is_err());
    }

    #[test]
    fn networks_parse_strictly_in_both_families() {
        assert_eq!(parse_net("fd00:1::/64").unwrap().to_string(), "fd00:1::/64");
        assert_eq!(parse_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert!(parse_net("fd00::1/64").unwrap_err().contains("fd00::/64"));
    }
}
