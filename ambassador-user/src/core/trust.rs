//! Who may publish what (README, "Trust model"). etcd's RBAC decides who may write which key;
//! this module is every daemon's second check of what it applies, so a stolen credential
//! stays what it was:
//!
//! - a frontend is rewritten only inside the cluster's VIP ranges, at an address allocated
//!   to its service, or in a range this host's operator allows (`--allow-frontend`), and
//!   never at one of this host's own addresses;
//! - in the `hosts` trust mode, an endpoint a host published (`hosts/<host>/endpoints/...`)
//!   is applied only at an address and for a service its admin-written host record allows.
//!
//! Pure: the daemon and the etcd follower hand it what they know.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::core::model::{check_service_name, parse_net, Desired, Ranges};

/// How far the cluster trusts the hosts that publish endpoints
/// (`<prefix>/v1/settings/trust`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// No host records are checked: every endpoint any etcd writer published applies (a
    /// cluster without etcd auth, or one that opted out). The default when unset.
    #[default]
    Open,
    /// Endpoints under `hosts/<host>/` apply only as the host's record allows; a host without
    /// a record publishes nothing (`ambassador auth init` sets this).
    Hosts,
}

impl Mode {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Hosts => "hosts",
        }
    }

    /// Parses the setting's value.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "open" => Ok(Mode::Open),
            "hosts" => Ok(Mode::Hosts),
            other => Err(format!("trust mode {other:?} is not \"open\" or \"hosts\"")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pattern of service names a host may serve: a name (`db`), a prefix (`web-*`), or `*`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePattern(String);

impl ServicePattern {
    /// Parses a pattern: a DNS label, optionally ending in `*`, or `*` alone.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.strip_suffix('*') {
            Some("") => Ok(Self(s.to_owned())),
            Some(stem) if !stem.contains('*') => {
                // The stem of a prefix may end in '-' (web-*): check it as a label with a
                // letter after it.
                check_service_name(&format!("{stem}x"))
                    .map(|()| Self(s.to_owned()))
                    .map_err(|_| {
                        format!("service pattern {s:?} is not a DNS label followed by '*'")
                    })
            }
            Some(_) => Err(format!("service pattern {s:?}: '*' may only end it")),
            None => check_service_name(s).map(|()| Self(s.to_owned())),
        }
    }

    /// Whether `service` matches.
    pub fn matches(&self, service: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(stem) => service.starts_with(stem),
            None => self.0 == service,
        }
    }
}

impl fmt::Display for ServicePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host record as stored at `<prefix>/v1/host-policy/<host>` (admin-written).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecordValue {
    /// Ranges the host may advertise endpoints at (`10.0.0.2/32`, `fd00:2::/64`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Services the host may serve: names, `prefix-*`, or `*`.
    #[serde(default)]
    pub services: Vec<String>,
}

/// What a host may publish (a parsed [`HostRecordValue`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRecord {
    /// Where its endpoints may be.
    pub addresses: Vec<IpNet>,
    /// Which services they may belong to.
    pub services: Vec<ServicePattern>,
}

impl HostRecord {
    /// Parses a stored record.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v: HostRecordValue = serde_json::from_str(value).map_err(|e| {
            format!("host record is not {{\"addresses\":[CIDR...],\"services\":[NAME...]}}: {e}")
        })?;
        Ok(Self {
            addresses: v
                .addresses
                .iter()
                .map(|a| parse_net(a))
                .collect::<Result<_, _>>()?,
            services: v
                .services
                .iter()
                .map(|s| ServicePattern::parse(s))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The stored form.
    pub fn value(&self) -> HostRecordValue {
        HostRecordValue {
            addresses: self.addresses.iter().map(ToString::to_string).collect(),
            services: self.services.iter().map(ToString::to_string).collect(),
        }
    }

    /// Whether the host may serve `service`.
    pub fn serves(&self, service: &str) -> bool {
        self.services.iter().any(|p| p.matches(service))
    }

    /// Why the host may not publish an endpoint of `service` at `ip`, if it may not.
    pub fn refuse(&self, host: &str, service: &str, ip: IpAddr) -> Option<String> {
        if !self.serves(service) {
            return Some(format!(
                "host {host:?} may not serve {service:?} (its record allows: {})",
                list(&self.services)
            ));
        }
        let ip = ip.to_canonical();
        if !self.addresses.iter().any(|n| n.contains(&ip)) {
            return Some(format!(
                "host {host:?} may not advertise {ip} (its record allows: {})",
                list(&self.addresses)
            ));
        }
        None
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "nothing".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Host names (the register's `--host-id`): 1-200 printable ASCII characters without `/`.
pub fn check_host_name(host: &str) -> Result<(), String> {
    if host.is_empty()
        || host.len() > 200
        || !host.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(format!(
            "host name {host:?} must be 1-200 printable ASCII characters without '/'"
        ));
    }
    Ok(())
}

/// What the cluster says about where frontends may be: its VIP ranges and the addresses
/// allocated to services (an allocation stays valid when the range changes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendScope {
    /// The VIP ranges (defaults when unset).
    pub ranges: Ranges,
    /// Allocated address -> service.
    pub allocations: BTreeMap<IpAddr, String>,
}

impl FrontendScope {
    /// Whether the cluster places `service`'s frontend at `ip`: inside a VIP range, or an
    /// address allocated to that service.
    pub fn places(&self, service: &str, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ranges.of(ip.is_ipv6()).contains(&ip)
            || self.allocations.get(&ip).is_some_and(|s| s == service)
    }
}

/// One service left out because of its frontend, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FrontendRefusal {
    /// The service.
    pub service: String,
    /// Its frontend address.
    pub frontend: String,
    /// Why.
    pub why: String,
}

impl fmt::Display for FrontendRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {:?}: frontend {} refused, never rewritten: {}",
            self.service, self.frontend, self.why
        )
    }
}

/// This host's rule for frontends.
#[derive(Clone, Debug, Default)]
pub struct FrontendPolicy {
    /// `--allow-frontend` ranges: frontends allowed on this host beyond the cluster's scope.
    pub allow: Vec<IpNet>,
}

impl FrontendPolicy {
    /// `desired` without the services whose frontend may not be rewritten here, and why.
    /// `scope` is the cluster's (None: a local file, trusted as this host's operator's own);
    /// `own` are this host's addresses, never a frontend (that would capture the host's own
    /// services).
    pub fn filter(
        &self,
        mut desired: Desired,
        scope: Option<&FrontendScope>,
        own: &BTreeSet<IpAddr>,
    ) -> (Desired, Vec<FrontendRefusal>) {
        let mut refused = Vec::new();
        desired.retain(|name, spec| {
            let ip = spec.frontend.ip().to_canonical();
            let why = if own.contains(&ip) {
                Some("it is one of this host's own addresses".to_owned())
            } else if scope.is_some_and(|s| !s.places(name, ip))
                && !self.allow.iter().any(|n| n.contains(&ip))
            {
                let scope = scope.expect("checked above");
                let mut why = format!(
                    "outside the VIP range {} and not allocated to the service",
                    scope.ranges.of(ip.is_ipv6())
                );
                if !self.allow.is_empty() {
                    why.push_str(&format!(
                        " or inside --allow-frontend {}",
                        list(&self.allow)
                    ));
                }
                Some(why)
            } else {
                None
            };
            match why {
                Some(why) => {
                    refused.push(FrontendRefusal {
                        service: name.clone(),
                        frontend: spec.frontend.to_string(),
                        why,
                    });
                    false
                }
                None => true,
            }
        });
        (desired, refused)
    }
}

/// This host's own addresses (every interface of its network namespace), so that no frontend
/// captures them. Empty if they cannot be read (the check is then skipped, said by the caller).
pub fn own_addresses() -> std::io::Result<BTreeSet<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|a| {
            let sa = a.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::model::{Proto, ServiceSpec};

    fn desired(services: &[(&str, &str)]) -> Desired {
        services
            .iter()
            .map(|(name, frontend)| {
                (
                    (*name).to_owned(),
                    Arc::new(ServiceSpec {
                        frontend: frontend.parse().unwrap(),
                        proto: Proto::Tcp,
                        endpoints: vec![],
                    }),
                )
            })
            .collect()
    }

    #[test]
    fn patterns_match_names_prefixes_and_everything() {
        let p = |s: &str| ServicePattern::parse(s).unwrap();
        assert!(p("db").matches("db"));
        assert!(!p("db").matches("db2"));
        assert!(p("web-*").matches("web-eu"));
        assert!(!p("web-*").matches("api"));
        assert!(p("*").matches("anything"));
        for bad in ["DB", "a*b", "**", "-*", "a b", ""] {
            assert!(ServicePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_host_record_allows_only_its_addresses_and_services() {
        let r = HostRecord::parse(r#"{"addresses":["10.0.2.0/24"],"services":["db","web-*"]}"#)
            .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.refuse("h2", "db", ip("10.0.2.7")), None);
        assert_eq!(r.refuse("h2", "web-eu", ip("10.0.2.7")), None);
        assert_eq!(r.refuse("h2", "db", ip("::ffff:10.0.2.7")), None);
        assert!(r
            .refuse("h2", "db", ip("10.0.3.7"))
            .unwrap()
            .contains("10.0.3.7"));
        assert!(r
            .refuse("h2", "api", ip("10.0.2.7"))
            .unwrap()
            .contains("\"api\""));
        assert_eq!(
            HostRecord::parse(&serde_json::to_string(&r.value()).unwrap()),
            Ok(r)
        );
        assert!(HostRecord::parse(r#"{"addresses":["10.0.2.1/24"]}"#).is_err());
        assert!(HostRecord::parse(r#"{"services":["DB"]}"#).is_err());
        assert!(HostRecord::parse(r#"{"extra":1}"#).is_err());
        let nothing = HostRecord::parse("{}").unwrap();
        assert!(nothing
            .refuse("h9", "db", ip("10.0.2.7"))
            .unwrap()
            .contains("nothing"));
    }

    #[test]
    fn frontends_outside_the_scope_or_at_own_addresses_are_refused() {
        let mut scope = FrontendScope::default();
        scope
            .allocations
            .insert("10.200.0.1".parse().unwrap(), "moved".into());
        let d = desired(&[
            ("db", "10.96.0.10:6379"),
            ("bank", "1.1.1.1:443"),
            ("moved", "10.200.0.1:80"),
            ("thief", "10.200.0.1:81"),
            ("six", "[fd00:10:96::5]:80"),
            ("mine", "10.96.0.99:22"),
        ]);
        let own = BTreeSet::from(["10.96.0.99".parse().unwrap()]);
        let p = FrontendPolicy::default();
        let (out, refused) = p.filter(d.clone(), Some(&scope), &own);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["db", "moved", "six"]);
        let names: Vec<&str> = refused.iter().map(|r| r.service.as_str()).collect();
        assert_eq!(names, ["bank", "mine", "thief"]);
        assert!(refused[0].why.contains("10.96.0.0/12"), "{}", refused[0]);
        assert!(refused[1].why.contains("own"));

        // --allow-frontend widens this host's scope; own addresses stay refused.
        let p = FrontendPolicy {
            allow: vec!["1.1.1.0/24".parse().unwrap()],
        };
        let (out, refused) = p.filter(d.clone(), Some(&scope), &own);
        assert!(out.contains_key("bank"));
        assert_eq!(refused.len(), 2);

        // A local file is trusted, except for this host's own addresses.
        let (out, refused) = FrontendPolicy::default().filter(d.clone(), None, &own);
        assert_eq!(out.len(), 5);
        assert_eq!(refused[0].service, "mine");
    }

    #[test]
    fn trust_modes_parse_and_host_names_are_checked() {
        assert_eq!(Mode::parse("hosts"), Ok(Mode::Hosts));
        assert_eq!(Mode::parse(" open\n"), Ok(Mode::Open));
        assert!(Mode::parse("closed").is_err());
        assert!(check_host_name("h2.example").is_ok());
        assert!(check_host_name("a/b").is_err());
        assert!(check_host_name("").is_err());
    }
}
