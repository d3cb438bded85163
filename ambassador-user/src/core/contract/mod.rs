//! The etcd contract, v1 (DESIGN.md), as pure functions: keys and values in, entries out.
//! Other tools and people write these keys too, so everything is validated here and anything
//! that does not parse is skipped (with a reason), never applied. [`Store`] keeps what was
//! parsed and judges it (the trust model, `crate::core::trust`).
//!
//! ```text
//! <prefix>/v1/services/<service>                 {"frontend":"10.96.0.10:3306","proto":"tcp"}   admin
//! <prefix>/v1/endpoints/<service>/<endpoint-id>  {"addr":"10.48.134.223:32769","weight":1}      admin (by hand)
//!                                                or a bare 10.48.134.223:32769 (quoted or not)
//! <prefix>/v1/hosts/<host>/endpoints/<service>/<endpoint-id>
//!                                                the same, published by <host>'s register        the host
//! <prefix>/v1/host-policy/<host>                 {"addresses":["10.0.0.2/32"],"services":["db"]} admin
//! <prefix>/v1/vips/<address>                     <service>: an allocated frontend address         admin
//! <prefix>/v1/settings/vip-range                 10.96.0.0/12: where addresses are allocated      admin
//! <prefix>/v1/settings/vip-range6                fd00:10:96::/112: the same for IPv6              admin
//! <prefix>/v1/settings/trust                     open | hosts: whether host records are checked   admin
//! ```

mod store;

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
pub use store::{Judged, PutOutcome, Store};

use crate::core::{
    model::{
        check_endpoint_id, check_service_name, parse_addr, parse_proto, parse_weight, Endpoint,
        Proto,
    },
    trust::{check_host_name, HostRecord, Mode},
};

/// Longest value accepted (a sane bound against hostile writers).
pub const MAX_VALUE_LEN: usize = 4096;

/// A service definition as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceValue {
    /// `IPv4:port` clients dial.
    pub frontend: String,
    /// `tcp` or `udp` (default tcp).
    #[serde(default = "default_proto", skip_serializing_if = "is_tcp")]
    pub proto: String,
}

fn default_proto() -> String {
    "tcp".into()
}

fn is_tcp(p: &str) -> bool {
    p == "tcp"
}

/// An endpoint as stored (the object form).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointValue {
    /// `IPv4:port` of the backend.
    pub addr: String,
    /// Share of new flows (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// The host that registered it (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The container it belongs to (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// What one key under the prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A service definition.
    Service {
        name: String,
        frontend: SocketAddr,
        proto: Proto,
    },
    /// An endpoint of a service.
    Endpoint {
        service: String,
        id: String,
        /// The host that published it (`hosts/<host>/...`); None: added by hand (admin).
        host: Option<String>,
        endpoint: Endpoint,
    },
    /// What a host may publish.
    HostPolicy { host: String, record: HostRecord },
    /// An allocated frontend address.
    Vip { ip: IpAddr, service: String },
    /// A cluster setting.
    Setting(Setting),
}

/// A cluster setting under `<prefix>/v1/settings/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `vip-range` or `vip-range6` (the family says which).
    VipRange(IpNet),
    /// `trust`.
    Trust(Mode),
}

/// The key of a service.
pub fn service_key(prefix: &str, name: &str) -> String {
    format!("{}/v1/services/{name}", prefix.trim_end_matches('/'))
}

/// The key of an endpoint.
pub fn endpoint_key(prefix: &str, service: &str, id: &str) -> String {
    format!(
        "{}/v1/endpoints/{service}/{id}",
        prefix.trim_end_matches('/')
    )
}

/// The key of an endpoint published by `host`.
pub fn host_endpoint_key(prefix: &str, host: &str, service: &str, id: &str) -> String {
    format!(
        "{}/v1/hosts/{host}/endpoints/{service}/{id}",
        prefix.trim_end_matches('/')
    )
}

/// The key prefix a host's credential may write (`auth add-host`).
pub fn host_prefix(prefix: &str, host: &str) -> String {
    format!("{}/v1/hosts/{host}/", prefix.trim_end_matches('/'))
}

/// The key of a host's record.
pub fn host_policy_key(prefix: &str, host: &str) -> String {
    format!("{}/v1/host-policy/{host}", prefix.trim_end_matches('/'))
}

/// The key of the trust mode.
pub fn trust_key(prefix: &str) -> String {
    format!("{}/v1/settings/trust", prefix.trim_end_matches('/'))
}

/// The key prefix of the endpoints added by hand to a service (or to all services when
/// `service` is None).
pub fn endpoints_prefix(prefix: &str, service: Option<&str>) -> String {
    match service {
        Some(s) => format!("{}/v1/endpoints/{s}/", prefix.trim_end_matches('/')),
        None => format!("{}/v1/endpoints/", prefix.trim_end_matches('/')),
    }
}

/// The key prefix of all services.
pub fn services_prefix(prefix: &str) -> String {
    format!("{}/v1/services/", prefix.trim_end_matches('/'))
}

/// The key of an allocated frontend address.
pub fn vip_key(prefix: &str, ip: std::net::IpAddr) -> String {
    format!("{}/v1/vips/{ip}", prefix.trim_end_matches('/'))
}

/// The key prefix of all allocated frontend addresses.
pub fn vips_prefix(prefix: &str) -> String {
    format!("{}/v1/vips/", prefix.trim_end_matches('/'))
}

/// The key of the range frontend addresses are allocated from.
pub fn vip_range_key(prefix: &str, ipv6: bool) -> String {
    let name = if ipv6 { "vip-range6" } else { "vip-range" };
    format!("{}/v1/settings/{name}", prefix.trim_end_matches('/'))
}

/// The key prefix the daemon watches.
pub fn watch_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// A key under `<prefix>/v1/`, split once for everyone who reads keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    /// `<prefix>/v1/services/<name>`.
    Service {
        /// The service name (not validated).
        name: &'a str,
    },
    /// `<prefix>/v1/endpoints/<service>/<id>`.
    Endpoint {
        /// The service name (not validated).
        service: &'a str,
        /// The endpoint id (not validated).
        id: &'a str,
    },
    /// `<prefix>/v1/hosts/<host>/endpoints/<service>/<id>`.
    HostEndpoint {
        /// The publishing host (not validated).
        host: &'a str,
        /// The service name (not validated).
        service: &'a str,
        /// The endpoint id (not validated).
        id: &'a str,
    },
    /// `<prefix>/v1/host-policy/<host>`.
    HostPolicy {
        /// The host (not validated).
        host: &'a str,
    },
    /// `<prefix>/v1/vips/<address>`: an allocation.
    Vip {
        /// The address (not validated).
        addr: &'a str,
    },
    /// `<prefix>/v1/settings/<name>`: a cluster setting.
    Setting {
        /// Its name.
        name: &'a str,
    },
    /// Under `<prefix>/v1/` but none of these.
    Unknown,
}

impl<'a> Key<'a> {
    /// Splits `key`; `None` outside `<prefix>/v1/` (other versions or tools may share the
    /// prefix).
    pub fn split(prefix: &str, key: &'a str) -> Option<Self> {
        let rest = key
            .strip_prefix(&watch_prefix(prefix))?
            .strip_prefix("v1/")?;
        Some(match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["services", name] => Key::Service { name },
            ["endpoints", service, id] => Key::Endpoint { service, id },
            ["hosts", host, "endpoints", service, id] => Key::HostEndpoint { host, service, id },
            ["host-policy", host] => Key::HostPolicy { host },
            ["vips", addr] => Key::Vip { addr },
            ["settings", name] => Key::Setting { name },
            _ => Key::Unknown,
        })
    }
}

/// Parses one key and value. `Ok(None)` for keys outside the v1 contract (other versions or
/// tools may share the prefix); `Err` for a v1 key whose key or value is malformed.
pub fn parse(prefix: &str, key: &[u8], value: &[u8]) -> Result<Option<Entry>, String> {
    let Ok(key) = std::str::from_utf8(key) else {
        return Err("key is not UTF-8".into());
    };
    let Some(key) = Key::split(prefix, key) else {
        return Ok(None);
    };
    if value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "value of {} bytes exceeds {MAX_VALUE_LEN}",
            value.len()
        ));
    }
    let value = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_owned())?;
    match key {
        Key::Service { name } => {
            check_service_name(name)?;
            let v: ServiceValue = serde_json::from_str(value).map_err(|e| {
                format!(
                    "service value is not {{\"frontend\":\"IP:PORT\",\"proto\":\"tcp|udp\"}}: {e}"
                )
            })?;
            Ok(Some(Entry::Service {
                name: name.to_owned(),
                frontend: parse_addr(&v.frontend).map_err(|m| format!("frontend: {m}"))?,
                proto: parse_proto(&v.proto)?,
            }))
        }
        Key::Endpoint { service, id } => endpoint_entry(service, id, None, value).map(Some),
        Key::HostEndpoint { host, service, id } => {
            check_host_name(host)?;
            endpoint_entry(service, id, Some(host), value).map(Some)
        }
        Key::HostPolicy { host } => {
            check_host_name(host)?;
            Ok(Some(Entry::HostPolicy {
                host: host.to_owned(),
                record: HostRecord::parse(value)?,
            }))
        }
        Key::Vip { addr } => {
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("allocation key {addr:?} is not an address"))?;
            let service = value.trim();
            check_service_name(service)?;
            Ok(Some(Entry::Vip {
                ip,
                service: service.to_owned(),
            }))
        }
        Key::Setting { name } => setting(name, value).map(|s| s.map(Entry::Setting)),
        Key::Unknown => Err(
            "not a v1 services/<name>, endpoints/<service>/<id>, hosts/<host>/endpoints/<service>/<id>, host-policy/<host>, vips/<address> or settings/<name> key"
                .into(),
        ),
    }
}

fn endpoint_entry(
    service: &str,
    id: &str,
    host: Option<&str>,
    value: &str,
) -> Result<Entry, String> {
    check_service_name(service)?;
    check_endpoint_id(id)?;
    Ok(Entry::Endpoint {
        service: service.to_owned(),
        id: id.to_owned(),
        host: host.map(str::to_owned),
        endpoint: parse_endpoint(value)?,
    })
}

/// A setting; `Ok(None)` for names this version does not know (a newer one may).
fn setting(name: &str, value: &str) -> Result<Option<Setting>, String> {
    let range = |ipv6: bool| {
        let net: IpNet = value.trim().parse().map_err(|_| {
            format!(
                "{name} {:?} is not a network like 10.96.0.0/12",
                value.trim()
            )
        })?;
        if net.addr().is_ipv6() != ipv6 {
            return Err(format!(
                "{name} must be an {} range",
                if ipv6 { "IPv6" } else { "IPv4" }
            ));
        }
        Ok(Some(Setting::VipRange(net.trunc())))
    };
    match name {
        "vip-range" => range(false),
        "vip-range6" => range(true),
        "trust" => Mode::parse(value).map(|m| Some(Setting::Trust(m))),
        _ => Ok(None),
    }
}

fn parse_endpoint(value: &str) -> Result<Endpoint, String> {
    let trimmed = value.trim();
    let v: EndpointValue = if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| format!("endpoint value: {e}"))?
    } else if trimmed.starts_with('"') {
        let addr: String =
            serde_json::from_str(trimmed).map_err(|e| format!("endpoint value: {e}"))?;
        EndpointValue {
            addr,
            ..Default::default()
        }
    } else {
        EndpointValue {
            addr: trimmed.to_owned(),
            ..Default::default()
        }
    };
    let weight = parse_weight(v.weight)?;
    Ok(Endpoint {
        addr: parse_addr(&v.addr).map_err(|m| format!("endpoint: {m}"))?,
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/ambassador";

    #[test]
    fn parses_the_documented_forms() {
        let e = parse(
            P,
            b"/ambassador/v1/services/db",
            br#"{"frontend":"10.96.0.10:3306","proto":"tcp"}"#,
        );
        assert_eq!(
            e,
            Ok(Some(Entry::Service {
                name: "db".into(),
                frontend: "10.96.0.10:3306".parse().unwrap(),
                proto: Proto::Tcp
            }))
        );
        let full = br#"{"addr":"10.48.134.223:32769","weight":2,"host":"host2","container":"abc"}"#;
        for (value, weight) in [
            (&full[..], 2),
            (&b"10.48.134.223:32769"[..], 1),
            (&b"\"10.48.134.223:32769\""[..], 1),
            (&b" 10.48.134.223:32769\n"[..], 1),
        ] {
            let e = parse(P, b"/ambassador/v1/endpoints/db/h2-abc", value)
                .unwrap()
                .unwrap();
            assert_eq!(
                e,
                Entry::Endpoint {
                    service: "db".into(),
                    id: "h2-abc".into(),
                    host: None,
                    endpoint: Endpoint {
                        addr: "10.48.134.223:32769".parse().unwrap(),
                        weight
                    }
                },
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        // Proto defaults to tcp; a trailing slash on the prefix changes nothing.
        assert!(matches!(
            parse(
                "/ambassador/",
                b"/ambassador/v1/services/dns",
                br#"{"frontend":"10.96.0.53:53"}"#
            ),
            Ok(Some(Entry::Service {
                proto: Proto::Tcp,
                ..
            }))
        ));
    }

    #[test]
    fn other_versions_and_prefixes_are_ignored() {
        assert_eq!(
            parse(P, b"/ambassador/v2/services/db", b"anything"),
            Ok(None)
        );
        assert_eq!(parse(P, b"/other/v1/services/db", b"anything"), Ok(None));
        assert_eq!(parse(P, b"/ambassadorx/v1/services/db", b"x"), Ok(None));
    }

    #[test]
    fn hostile_values_are_refused_with_a_reason() {
        let bad: &[(&[u8], &[u8])] = &[
            (
                b"/ambassador/v1/services/DB",
                br#"{"frontend":"10.96.0.10:1"}"#,
            ),
            (
                b"/ambassador/v1/services/db",
                br#"{"frontend":"10.96.0.10"}"#,
            ),
            (
                b"/ambassador/v1/services/db",
                br#"{"frontend":"10.96.0.10:1","proto":"sctp"}"#,
            ),
            (
                b"/ambassador/v1/services/db",
                br#"{"frontend":"10.96.0.10:1","extra":1}"#,
            ),
            (b"/ambassador/v1/services/db", b"not json"),
            (b"/ambassador/v1/services/db", b"\xff\xfe"),
            (b"/ambassador/v1/endpoints/db/x", b"10.0.0.1"),
            (b"/ambassador/v1/endpoints/db/x", b"10.0.0.1:0"),
            (b"/ambassador/v1/endpoints/db/x", b"[fe80::1%2]:80"),
            (
                b"/ambassador/v1/endpoints/db/x",
                br#"{"addr":"10.0.0.1:1","weight":0}"#,
            ),
            (
                b"/ambassador/v1/endpoints/db/x",
                br#"{"addr":"10.0.0.1:1","weight":100000}"#,
            ),
            (b"/ambassador/v1/endpoints/db/x", br#"{"weight":1}"#),
            (b"/ambassador/v1/endpoints/db/", b"10.0.0.1:1"),
            (b"/ambassador/v1/endpoints/db/a/b", b"10.0.0.1:1"),
            (b"/ambassador/v1/endpoints/db", b"10.0.0.1:1"),
            (b"/ambassador/v1/nonsense", b"x"),
            (b"/ambassador/v1/services/\xff", b"x"),
        ];
        for (k, v) in bad {
            assert!(
                parse(P, k, v).is_err(),
                "{} = {}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            );
        }
        let huge = vec![b' '; MAX_VALUE_LEN + 1];
        assert!(parse(P, b"/ambassador/v1/endpoints/db/x", &huge).is_err());
    }
}
