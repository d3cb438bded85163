//! Where backends may point. Only configured frontends are ever rewritten (the datapath looks
//! nothing else up); this decides which rewrites are allowed at all. Some destinations are
//! never valid backends: loopback, "this network", link-local, multicast and broadcast
//! addresses, and the frontends themselves (a loop). With `--allow-backend`, a backend must
//! also lie in one of the given ranges. A refused endpoint is left out of the maps, logged
//! once, and counted in `status`; the rest of its service is applied.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::core::model::{retain_endpoints, Desired};

/// IPv6 ranges that are never backends, with why (IPv4-mapped addresses are judged as the
/// IPv4 address they carry).
const NEVER6: [(Ipv6Net, &str); 4] = [
    (
        Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128),
        "the unspecified address (::)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
        "loopback (::1)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        "link-local (fe80::/10)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
        "multicast (ff00::/8)",
    ),
];

/// IPv4 ranges that are never backends, with why.
const NEVER: [(Ipv4Net, &str); 5] = [
    (
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
        "\"this network\" (0.0.0.0/8)",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
        "loopback (127.0.0.0/8)",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "link-local (169.254.0.0/16)",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
        "multicast (224.0.0.0/4)",
    ),
    (Ipv4Net::new_assert(Ipv4Addr::BROADCAST, 32), "broadcast"),
];

/// The backend policy: `--allow-backend` ranges (empty: anywhere not refused).
#[derive(Clone, Debug, Default)]
pub struct BackendPolicy {
    pub allow: Vec<IpNet>,
}

/// One endpoint left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub service: String,
    pub endpoint: String,
    pub why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {:?}: endpoint {} refused: {}",
            self.service, self.endpoint, self.why
        )
    }
}

impl BackendPolicy {
    /// Why `ip` may not be a backend of a service at `frontend`, given every frontend
    /// address.
    fn refuse(&self, ip: IpAddr, frontend: IpAddr, frontends: &BTreeSet<IpAddr>) -> Option<String> {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != frontend.is_ipv4() {
            let (fam, other) = if frontend.is_ipv4() {
                ("IPv4", "an IPv6")
            } else {
                ("IPv6", "an IPv4")
            };
            return Some(format!(
                "{other} endpoint of an {fam} frontend: a service's frontend and backends are one family"
            ));
        }
        let never = match ip {
            IpAddr::V4(v4) => NEVER.iter().find(|(c, _)| c.contains(&v4)).map(|(_, w)| *w),
            IpAddr::V6(v6) => NEVER6
                .iter()
                .find(|(c, _)| c.contains(&v6))
                .map(|(_, w)| *w),
        };
        if let Some(why) = never {
            return Some(format!("{why} is never a backend"));
        }
        if frontends.contains(&ip) {
            return Some("it is a frontend address (a loop)".into());
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(&ip)) {
            let list: Vec<String> = self.allow.iter().map(IpNet::to_string).collect();
            return Some(format!("outside --allow-backend {}", list.join(",")));
        }
        None
    }

    /// `desired` without the refused endpoints, and the refusals (sorted).
    pub fn filter(&self, mut desired: Desired) -> (Desired, Vec<Refusal>) {
        let frontends: BTreeSet<IpAddr> = desired.values().map(|s| s.frontend.ip()).collect();
        let mut refused = Vec::new();
        for (name, spec) in &mut desired {
            let frontend = spec.frontend.ip();
            retain_endpoints(spec, |e| {
                match self.refuse(e.addr.ip(), frontend, &frontends) {
                    None => true,
                    Some(why) => {
                        refused.push(Refusal {
                            service: name.clone(),
                            endpoint: e.addr.to_string(),
                            why,
                        });
                        false
                    }
                }
            });
        }
        refused.sort();
        (desired, refused)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::model::{parse_net, Endpoint, Proto, ServiceSpec};

    fn desired(endpoints: &[&str]) -> Desired {
        let mut d = Desired::new();
        d.insert(
            "web".into(),
            Arc::new(ServiceSpec {
                frontend: "10.96.0.10:80".parse().unwrap(),
                proto: Proto::Tcp,
                endpoints: endpoints
                    .iter()
                    .map(|a| Endpoint {
                        addr: a.parse().unwrap(),
                        weight: 1,
                    })
                    .collect(),
            }),
        );
        d
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(parse_net("10.1.0.0/16").unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert!(parse_net("0.0.0.0/0")
            .unwrap()
            .contains(&IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        assert!(parse_net("10.1.2.3/16")
            .unwrap_err()
            .contains("10.1.0.0/16"));
        assert!(parse_net("10.1.0.0/33").is_err());
        assert!(parse_net("nope/8").is_err());
        let c = parse_net("10.1.0.0/16").unwrap();
        assert!(c.contains(&IpAddr::V4(Ipv4Addr::new(10, 1, 255, 1))));
        assert!(!c.contains(&IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1))));
    }

    #[test]
    fn refused_ranges_and_frontends_are_left_out_and_the_rest_stays() {
        let p = BackendPolicy::default();
        let (out, refused) = p.filter(desired(&[
            "10.1.0.2:80",
            "127.0.0.1:80",
            "169.254.1.1:80",
            "224.0.0.5:80",
            "10.96.0.10:8080",
        ]));
        assert_eq!(out["web"].endpoints.len(), 1);
        assert_eq!(out["web"].endpoints[0].addr.to_string(), "10.1.0.2:80");
        let why: Vec<&str> = refused.iter().map(|r| r.why.as_str()).collect();
        assert_eq!(refused.len(), 4, "{why:?}");
        assert!(refused.iter().any(|r| r.why.contains("frontend")));
        assert!(refused.iter().any(|r| r.why.contains("loopback")));
    }

    #[test]
    fn ipv6_backends_follow_the_same_rules_and_families_never_mix() {
        let mut d = Desired::new();
        d.insert(
            "web6".into(),
            Arc::new(ServiceSpec {
                frontend: "[fd00:96::10]:80".parse().unwrap(),
                proto: Proto::Tcp,
                endpoints: [
                    "[fd00:1::2]:80",
                    "[::1]:80",
                    "[fe80::1]:80",
                    "[ff02::1]:80",
                    "10.1.0.2:80",
                    "[::ffff:127.0.0.1]:80",
                ]
                .iter()
                .map(|a| Endpoint {
                    addr: a.parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            }),
        );
        let p = BackendPolicy {
            allow: vec![parse_net("fd00:1::/64").unwrap()],
        };
        let (out, refused) = p.filter(d.clone());
        assert_eq!(out["web6"].endpoints.len(), 1, "{refused:?}");
        let why: Vec<&str> = refused.iter().map(|r| r.why.as_str()).collect();
        assert!(why.iter().any(|w| w.contains("loopback (::1)")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("link-local")), "{why:?}");
        assert!(why.iter().any(|w| w.contains("multicast")), "{why:?}");
        assert!(
            why.iter()
                .any(|w| w.contains("an IPv4 endpoint of an IPv6 frontend")),
            "{why:?}"
        );
        // An IPv4-mapped address is judged as the IPv4 address it carries.
        assert_eq!(refused.len(), 5, "{why:?}");
    }

    #[test]
    fn allow_backend_restricts() {
        let p = BackendPolicy {
            allow: vec![parse_net("10.1.0.0/16").unwrap()],
        };
        let (out, refused) = p.filter(desired(&["10.1.0.2:80", "10.2.0.2:80"]));
        assert_eq!(out["web"].endpoints.len(), 1);
        assert_eq!(refused.len(), 1);
        assert!(refused[0]
            .to_string()
            .contains("outside --allow-backend 10.1.0.0/16"));
    }
}
