//! The domain model: services, endpoints and their protocol, and the one set of validators
//! every source of them uses (the TOML file, the etcd contract, the operator commands, the
//! register). Pure: no I/O.

use std::{collections::BTreeMap, net::SocketAddrV4};

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
    /// Where flows go.
    pub addr: SocketAddrV4,
    /// Relative share of new flows, `1..=MAX_WEIGHT`.
    pub weight: u32,
}

/// What a service should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The frontend clients dial.
    pub frontend: SocketAddrV4,
    /// Its protocol.
    pub proto: Proto,
    /// Its backends; duplicates of the same address are merged (weights added).
    pub endpoints: Vec<Endpoint>,
}

/// Desired state: service name -> spec.
pub type Desired = BTreeMap<String, ServiceSpec>;

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

/// Parses `IPv4:port` with a non-zero port.
pub fn parse_addr(s: &str) -> Result<SocketAddrV4, String> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(std::net::SocketAddr::V4(a)) if a.port() != 0 => Ok(a),
        Ok(std::net::SocketAddr::V4(_)) => Err(format!("{s:?}: port 0 is not allowed")),
        Ok(std::net::SocketAddr::V6(_)) => Err(format!("{s:?}: IPv6 is not supported yet")),
        Err(_) => Err(format!(
            "{s:?} is not an IPv4 address and port like \"10.96.0.10:80\""
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

/// Parses an IPv4 range strictly (`--allow-backend`, `vip range`): `a.b.c.d/len`, or a bare address for one host;
/// host bits set are a mistake worth saying (`10.1.2.3/16`: did you mean 10.1.0.0/16?).
pub fn parse_cidr(s: &str) -> Result<ipnet::Ipv4Net, String> {
    let with_len = if s.contains('/') {
        s.to_owned()
    } else {
        format!("{s}/32")
    };
    let net: ipnet::Ipv4Net = with_len.parse().map_err(|_| {
        format!("{s:?} is not an IPv4 network (like 10.1.0.0/16) with a prefix length of 0..=32")
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "{s:?} has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}
