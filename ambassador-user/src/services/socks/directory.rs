//! What a SOCKS destination means, decided from the registry alone (no I/O, so every case is
//! unit-tested and the handshake is fuzzed): a service's name or frontend goes to its
//! endpoints, an endpoint's name to that endpoint, and anything else only where the operator
//! allows it (`--allow-destination`).
//!
//! The names are the DNS responder's (see [`crate::services::dns::zone`]):
//!
//! ```text
//! <service>.<domain>               the service, at its frontend's port
//! a-b-c-d.endpoints.<domain>       the endpoint at a.b.c.d, at its own port (or its service's)
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
};

use hickory_proto::rr::Name;
use ipnet::IpNet;

use crate::{
    core::model::{Desired, Endpoint, Proto},
    services::dns::zone::endpoint_ip,
};

/// Where a client asked to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A name and a port (SOCKS5 address type 3).
    Name(String, u16),
    /// An address (types 1 and 4).
    Addr(SocketAddr),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Name(n, p) => write!(f, "{n}:{p}"),
            Destination::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Where the connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// One of a service's endpoints, tried in turn.
    Service {
        /// The service's name.
        name: String,
        /// Its endpoints with their weights.
        endpoints: Vec<Endpoint>,
    },
    /// One endpoint, by its name.
    Endpoint(SocketAddr),
    /// An address the operator allows as it is.
    Allowed(SocketAddr),
    /// A name outside the domain, to be resolved and then checked against the allowed
    /// ranges ([`Directory::allows`]).
    Resolve(String, u16),
}

/// Why a destination is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A name of the domain that names nothing (or a UDP service: SOCKS CONNECT is TCP).
    Unknown(String),
    /// A name outside the domain, and no `--allow-destination`.
    OutsideDomain(String),
    /// A service or endpoint asked at another port than its own.
    Port {
        /// What was asked.
        what: String,
        /// The port asked.
        port: u16,
        /// The ports it has.
        has: Vec<u16>,
    },
    /// A service with no endpoint right now.
    NoEndpoints(String),
    /// An address outside the allowed ranges.
    Address(SocketAddr),
}

impl Refusal {
    /// The metric label of the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unknown(_) => "unknown_name",
            Refusal::OutsideDomain(_) => "outside_domain",
            Refusal::Port { .. } => "wrong_port",
            Refusal::NoEndpoints(_) => "no_endpoints",
            Refusal::Address(_) => "destination_not_allowed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unknown(n) => write!(f, "{n} names no TCP service or endpoint"),
            Refusal::OutsideDomain(n) => write!(
                f,
                "{n} is outside the registry's domain (other names need --allow-destination)"
            ),
            Refusal::Port { what, port, has } => {
                let has: Vec<String> = has.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "{what} is not served at port {port} (only {})",
                    has.join(", ")
                )
            }
            Refusal::NoEndpoints(s) => write!(f, "service {s} has no endpoint right now"),
            Refusal::Address(a) => {
                write!(f, "{a} is not a frontend nor inside --allow-destination")
            }
        }
    }
}

/// The registry's TCP services by name and by frontend, and the allowed ranges.
#[derive(Clone, Debug)]
pub struct Directory {
    domain: Name,
    /// The TCP services (SOCKS CONNECT is TCP).
    services: Desired,
    by_frontend: BTreeMap<SocketAddr, String>,
    allow: Vec<IpNet>,
}

impl Directory {
    /// The directory of `desired` (after the backend policy) under `domain`, allowing
    /// `allow` as destinations besides.
    pub fn new(domain: Name, desired: &Desired, allow: Vec<IpNet>) -> Self {
        let services: Desired = desired
            .iter()
            .filter(|(_, s)| s.proto == Proto::Tcp)
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect();
        let by_frontend = services
            .iter()
            .map(|(n, s)| (s.frontend, n.clone()))
            .collect();
        Self {
            domain,
            services,
            by_frontend,
            allow,
        }
    }

    /// Where `dest` goes, or why not.
    pub fn route(&self, dest: &Destination) -> Result<Route, Refusal> {
        match dest {
            Destination::Addr(addr) => match self.by_frontend.get(addr) {
                Some(name) => self.service(name),
                None if self.allows(addr.ip()) => Ok(Route::Allowed(*addr)),
                None => Err(Refusal::Address(*addr)),
            },
            Destination::Name(name, port) => self.by_name(name, *port),
        }
    }

    /// Whether `ip` is inside an allowed range.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|net| net.contains(&ip))
    }

    fn by_name(&self, raw: &str, port: u16) -> Result<Route, Refusal> {
        let Ok(name) = Name::from_ascii(raw).map(|mut n| {
            n.set_fqdn(true);
            n.to_lowercase()
        }) else {
            return Err(Refusal::Unknown(raw.to_owned()));
        };
        if !self.domain.zone_of(&name) {
            return if self.allow.is_empty() {
                Err(Refusal::OutsideDomain(raw.to_owned()))
            } else {
                Ok(Route::Resolve(raw.to_owned(), port))
            };
        }
        let below = (name.num_labels() - self.domain.num_labels()) as usize;
        let labels: Vec<String> = name
            .iter()
            .take(below)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        match labels.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [service] if self.services.contains_key(service) => {
                let frontend = self.services[service].frontend.port();
                if port != frontend {
                    return Err(Refusal::Port {
                        what: format!("service {service}"),
                        port,
                        has: vec![frontend],
                    });
                }
                self.service(service)
            }
            [host, "endpoints"] => match endpoint_ip(host) {
                Some(ip) => self.endpoint(raw, ip, port),
                None => Err(Refusal::Unknown(raw.to_owned())),
            },
            _ => Err(Refusal::Unknown(raw.to_owned())),
        }
    }

    fn service(&self, name: &str) -> Result<Route, Refusal> {
        let s = &self.services[name];
        if s.endpoints.is_empty() {
            return Err(Refusal::NoEndpoints(name.to_owned()));
        }
        Ok(Route::Service {
            name: name.to_owned(),
            endpoints: s.endpoints.clone(),
        })
    }

    /// The endpoint at `ip` asked at `port`: the one listening there, else the one of a
    /// service whose frontend port it is.
    fn endpoint(&self, raw: &str, ip: IpAddr, port: u16) -> Result<Route, Refusal> {
        let mut has = Vec::new();
        let mut by_frontend = None;
        for s in self.services.values() {
            for addr in s.endpoints.iter().map(|e| e.addr).filter(|a| a.ip() == ip) {
                if addr.port() == port {
                    return Ok(Route::Endpoint(addr));
                }
                if s.frontend.port() == port {
                    by_frontend.get_or_insert(addr);
                }
                has.push(addr.port());
            }
        }
        if let Some(addr) = by_frontend {
            return Ok(Route::Endpoint(addr));
        }
        if has.is_empty() {
            return Err(Refusal::Unknown(raw.to_owned()));
        }
        has.sort_unstable();
        has.dedup();
        Err(Refusal::Port {
            what: format!("endpoint {raw}"),
            port,
            has,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{core::model::ServiceSpec, services::dns::zone::parse_domain};

    fn directory(allow: &[&str]) -> Directory {
        let mut d = Desired::new();
        let svc = |frontend: &str, proto, eps: &[(&str, u32)]| {
            Arc::new(ServiceSpec {
                frontend: frontend.parse().unwrap(),
                proto,
                endpoints: eps
                    .iter()
                    .map(|(a, w)| Endpoint {
                        addr: a.parse().unwrap(),
                        weight: *w,
                    })
                    .collect(),
            })
        };
        d.insert(
            "web".into(),
            svc(
                "10.96.0.10:80",
                Proto::Tcp,
                &[("10.0.0.1:8080", 1), ("10.0.0.2:8080", 3)],
            ),
        );
        d.insert("empty".into(), svc("10.96.0.11:80", Proto::Tcp, &[]));
        d.insert(
            "dns".into(),
            svc("10.96.0.12:53", Proto::Udp, &[("10.0.0.3:53", 1)]),
        );
        d.insert(
            "v6".into(),
            svc("[fd00::10]:443", Proto::Tcp, &[("[fd00::1:2]:8443", 1)]),
        );
        let allow = allow.iter().map(|a| a.parse().unwrap()).collect();
        Directory::new(parse_domain("ambassador.internal").unwrap(), &d, allow)
    }

    fn name(n: &str, port: u16) -> Destination {
        Destination::Name(n.into(), port)
    }

    #[test]
    fn a_service_by_name_or_frontend_goes_to_its_endpoints() {
        let d = directory(&[]);
        let want = Route::Service {
            name: "web".into(),
            endpoints: vec![
                Endpoint {
                    addr: "10.0.0.1:8080".parse().unwrap(),
                    weight: 1,
                },
                Endpoint {
                    addr: "10.0.0.2:8080".parse().unwrap(),
                    weight: 3,
                },
            ],
        };
        for dest in [
            name("web.ambassador.internal", 80),
            name("WEB.Ambassador.Internal.", 80),
            Destination::Addr("10.96.0.10:80".parse().unwrap()),
        ] {
            assert_eq!(d.route(&dest), Ok(want.clone()), "{dest}");
        }
    }

    #[test]
    fn an_endpoint_by_name_at_its_port_or_its_services() {
        let d = directory(&[]);
        let ep = Route::Endpoint("10.0.0.2:8080".parse().unwrap());
        assert_eq!(
            d.route(&name("10-0-0-2.endpoints.ambassador.internal", 8080)),
            Ok(ep.clone())
        );
        assert_eq!(
            d.route(&name("10-0-0-2.endpoints.ambassador.internal", 80)),
            Ok(ep)
        );
        let v6 = name("fd00-0-0-0-0-0-1-2.endpoints.ambassador.internal", 8443);
        assert_eq!(
            d.route(&v6),
            Ok(Route::Endpoint("[fd00::1:2]:8443".parse().unwrap()))
        );
        let wrong = d.route(&name("10-0-0-2.endpoints.ambassador.internal", 22));
        assert!(
            matches!(wrong, Err(Refusal::Port { ref has, .. }) if has == &[8080]),
            "{wrong:?}"
        );
    }

    #[test]
    fn refusals_say_why() {
        let d = directory(&[]);
        let cases = [
            (name("nope.ambassador.internal", 80), "unknown_name"),
            (name("dns.ambassador.internal", 53), "unknown_name"),
            (name("_web._tcp.ambassador.internal", 80), "unknown_name"),
            (
                name("10-9-9-9.endpoints.ambassador.internal", 80),
                "unknown_name",
            ),
            (name("not a name..", 80), "unknown_name"),
            (name("web.ambassador.internal", 8080), "wrong_port"),
            (name("empty.ambassador.internal", 80), "no_endpoints"),
            (name("example.com", 80), "outside_domain"),
            (name("ambassador.internal.evil.com", 80), "outside_domain"),
            (
                Destination::Addr("10.0.0.1:8080".parse().unwrap()),
                "destination_not_allowed",
            ),
            (
                Destination::Addr("127.0.0.1:22".parse().unwrap()),
                "destination_not_allowed",
            ),
        ];
        for (dest, reason) in cases {
            let got = d.route(&dest).expect_err(&dest.to_string());
            assert_eq!(got.reason(), reason, "{dest}: {got}");
        }
    }

    #[test]
    fn allowed_ranges_open_addresses_and_other_names() {
        let d = directory(&["192.0.2.0/24", "2001:db8::/32"]);
        let a: SocketAddr = "192.0.2.7:443".parse().unwrap();
        assert_eq!(d.route(&Destination::Addr(a)), Ok(Route::Allowed(a)));
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:443".parse().unwrap();
        assert_eq!(
            d.route(&Destination::Addr(mapped)),
            Ok(Route::Allowed(mapped))
        );
        assert!(d
            .route(&Destination::Addr("198.51.100.1:443".parse().unwrap()))
            .is_err());
        assert_eq!(
            d.route(&name("example.com", 443)),
            Ok(Route::Resolve("example.com".into(), 443))
        );
        assert!(d.allows("2001:db8::1".parse().unwrap()));
        assert!(!d.allows("10.0.0.1".parse().unwrap()));
    }
}
