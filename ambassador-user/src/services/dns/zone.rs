//! The responder's zone: built from the desired state the daemon applied, it says which
//! records a name of the domain holds ([`Zone::lookup`]). The wire side (parsing a query,
//! limits, encoding) is [`super::handler`]; neither does I/O, so every case is unit-tested
//! and the handler is fuzzed (`fuzz/fuzz_targets/dns_query.rs`).
//!
//! Names under `<domain>` (default [`DEFAULT_DOMAIN`]):
//!
//! ```text
//! <service>.<domain>                        A    the service's frontend address
//! _<service>._<proto>.<domain>              SRV  0 0 <frontend port> <service>.<domain>
//! _<service>._<proto>.endpoints.<domain>    SRV  0 <weight> <published port> a-b-c-d.endpoints.<domain>
//! a-b-c-d.endpoints.<domain>                A    a.b.c.d (an endpoint's advertised address)
//! <domain>                                  SOA, NS ns.dns.<domain>
//! ns.dns.<domain>                           A    the responder's listen addresses
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use hickory_proto::rr::{
    rdata::{A, AAAA, NS, SOA, SRV},
    Name, RData, Record, RecordType,
};

use crate::core::model::{Desired, Proto};

/// The domain answered when `--dns-domain` is not given. `.internal` is reserved for private
/// use (ICANN, 2024), so it never collides with a public name.
pub const DEFAULT_DOMAIN: &str = "ambassador.internal";

/// TTL of a service's address and SRV records: a frontend is stable, so caches may keep it.
pub const FRONTEND_TTL: u32 = 300;
/// TTL of the endpoint records, which change as containers come and go.
pub const ENDPOINT_TTL: u32 = 5;
/// How long a resolver may cache "no such name" (the SOA minimum, RFC 2308): a service created
/// a moment later is found within this time.
pub const NEGATIVE_TTL: u32 = 5;
/// TTL of the SOA and NS records.
pub const ZONE_TTL: u32 = 3600;

/// A service as the responder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    frontend: SocketAddr,
    proto: Proto,
    endpoints: Vec<(SocketAddr, u32)>,
}

/// Everything the responder answers from: built from the applied desired state, replaced whole
/// at every apply.
#[derive(Clone, Debug)]
pub struct Zone {
    domain: Name,
    services: BTreeMap<String, Entry>,
    endpoint_addrs: BTreeSet<IpAddr>,
    ns_addrs: Vec<IpAddr>,
    serial: u32,
}

/// Parses a `--dns-domain`: an absolute, lower-case name (a trailing dot is optional).
pub fn parse_domain(s: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(s).map_err(|e| format!("{s:?} is not a domain name: {e}"))?;
    if name.is_root() {
        return Err("the root cannot be the responder's domain".into());
    }
    name.set_fqdn(true);
    if wire_len(&name) > MAX_DOMAIN_WIRE {
        return Err(format!(
            "{s:?} is too long: at most {} characters, so that every name of the zone (the longest: a 63-character service's <service>.<domain>) fits DNS's 255 bytes",
            MAX_DOMAIN_WIRE - 2
        ));
    }
    Ok(name.to_lowercase())
}

/// The longest domain, encoded (labels with their length bytes, and the root): the zone's
/// longest name is a 63-character service name under it (64 bytes more), and DNS names are
/// at most 255 bytes.
pub const MAX_DOMAIN_WIRE: usize = 255 - 64;

/// A name's encoded length.
fn wire_len(name: &Name) -> usize {
    name.iter().map(|l| l.len() + 1).sum::<usize>() + 1
}

/// The name of an endpoint's address record: `10-0-0-1.endpoints.<domain>`, or for IPv6 the
/// eight groups of the address: `fd00-0-0-0-0-0-0-10.endpoints.<domain>`.
pub fn endpoint_host(addr: IpAddr, domain: &Name) -> Name {
    let label = match addr {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.segments().map(|g| format!("{g:x}")).join("-"),
    };
    Name::from_labels([label.as_bytes(), b"endpoints"])
        .and_then(|n| n.append_domain(domain))
        .expect("a dotted quad and a valid domain make a valid name")
}

impl Zone {
    /// The zone of `desired`. `ns_addrs` are where the responder listens (the glue of its NS
    /// record); `serial` changes with every apply.
    pub fn new(domain: Name, desired: &Desired, ns_addrs: Vec<IpAddr>, serial: u32) -> Self {
        let services: BTreeMap<String, Entry> = desired
            .iter()
            .map(|(name, spec)| {
                let entry = Entry {
                    frontend: spec.frontend,
                    proto: spec.proto,
                    endpoints: spec.endpoints.iter().map(|e| (e.addr, e.weight)).collect(),
                };
                (name.clone(), entry)
            })
            .collect();
        let endpoint_addrs = services
            .values()
            .flat_map(|e| e.endpoints.iter().map(|(a, _)| a.ip()))
            .collect();
        Self {
            domain,
            services,
            endpoint_addrs,
            ns_addrs,
            serial,
        }
    }

    /// An empty zone (before the first apply).
    pub fn empty(domain: Name, ns_addrs: Vec<IpAddr>) -> Self {
        Self::new(domain, &Desired::new(), ns_addrs, 0)
    }

    /// The domain answered.
    pub fn domain(&self) -> &Name {
        &self.domain
    }

    fn sub(&self, labels: &[&str]) -> Name {
        Name::from_labels(labels.iter().map(|l| l.as_bytes()))
            .and_then(|n| n.append_domain(&self.domain))
            .expect("labels of the zone are valid")
    }

    fn ns_name(&self) -> Name {
        self.sub(&["ns", "dns"])
    }

    /// The zone's SOA record (what a negative answer carries, RFC 2308).
    pub(super) fn soa(&self) -> Record {
        let soa = SOA::new(
            self.ns_name(),
            self.sub(&["hostmaster"]),
            self.serial,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        );
        Record::from_rdata(self.domain.clone(), NEGATIVE_TTL, RData::SOA(soa))
    }

    fn ns_glue(&self) -> Vec<Record> {
        self.ns_addrs
            .iter()
            .map(|ip| Record::from_rdata(self.ns_name(), ZONE_TTL, address(*ip)))
            .collect()
    }

    /// The records of `qname` (lower case, inside the domain) that answer `qtype`, written
    /// with `owner` (the name as the client spelled it).
    pub(super) fn lookup(&self, qname: &Name, owner: &Name, qtype: RecordType) -> Lookup {
        let below = (qname.num_labels() - self.domain.num_labels()) as usize;
        let labels: Vec<String> = qname
            .iter()
            .take(below)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        let mut found = Lookup {
            exists: true,
            ..Lookup::default()
        };
        let record = |ttl, data| Record::from_rdata(owner.clone(), ttl, data);
        match self.node(&labels) {
            Node::Apex => {
                if wants(RecordType::SOA) {
                    let mut soa = self.soa();
                    soa.ttl = ZONE_TTL;
                    soa.name = owner.clone();
                    found.answers.push(soa);
                }
                if qtype == RecordType::NS {
                    let ns = RData::NS(NS(self.ns_name()));
                    found.answers.push(record(ZONE_TTL, ns));
                    found.additionals.extend(self.ns_glue());
                }
            }
            Node::NameServer => {
                for mut r in self.ns_glue() {
                    if wants(r.record_type()) {
                        r.name = owner.clone();
                        found.answers.push(r);
                    }
                }
            }
            Node::Service(e) => {
                if wants(address_type(e.frontend.ip())) {
                    found
                        .answers
                        .push(record(FRONTEND_TTL, address(e.frontend.ip())));
                }
            }
            Node::Srv(name, e) => {
                if wants(RecordType::SRV) {
                    let target = self.sub(&[name]);
                    let srv = SRV::new(0, 0, e.frontend.port(), target.clone());
                    found.answers.push(record(FRONTEND_TTL, RData::SRV(srv)));
                    let a = address(e.frontend.ip());
                    found
                        .additionals
                        .push(Record::from_rdata(target, FRONTEND_TTL, a));
                }
            }
            Node::EndpointSrv(e) => {
                if wants(RecordType::SRV) {
                    self.endpoint_srv(e, &record, &mut found);
                }
            }
            Node::EndpointHost(ip) => {
                if wants(address_type(ip)) {
                    found.answers.push(record(ENDPOINT_TTL, address(ip)));
                }
            }
            Node::Empty => {}
            Node::Missing => found.exists = false,
        }
        found
    }

    /// One SRV record per endpoint, each target's address as an additional record.
    fn endpoint_srv(&self, e: &Entry, record: &dyn Fn(u32, RData) -> Record, found: &mut Lookup) {
        for (addr, weight) in &e.endpoints {
            let target = endpoint_host(addr.ip(), &self.domain);
            let w = (*weight).min(u16::MAX as u32) as u16;
            let srv = SRV::new(0, w, addr.port(), target.clone());
            found.answers.push(record(ENDPOINT_TTL, RData::SRV(srv)));
            let a = Record::from_rdata(target, ENDPOINT_TTL, address(addr.ip()));
            if !found.additionals.contains(&a) {
                found.additionals.push(a);
            }
        }
    }

    /// What `labels` (the query name below the domain, leftmost first, lower case) is.
    fn node(&self, labels: &[String]) -> Node<'_> {
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        match l.as_slice() {
            [] => Node::Apex,
            [name] => match self.services.get(*name) {
                Some(e) => Node::Service(e),
                None if matches!(*name, "endpoints" | "dns" | "_tcp" | "_udp") => Node::Empty,
                None => Node::Missing,
            },
            ["ns", "dns"] => Node::NameServer,
            [svc, proto] => match self.srv_entry(svc, proto) {
                Some((name, e)) => Node::Srv(name, e),
                None if *proto == "endpoints" && matches!(*svc, "_tcp" | "_udp") => Node::Empty,
                None if *proto == "endpoints" => match endpoint_ip(svc) {
                    Some(ip) if self.endpoint_addrs.contains(&ip) => Node::EndpointHost(ip),
                    _ => Node::Missing,
                },
                None => Node::Missing,
            },
            [svc, proto, "endpoints"] => match self.srv_entry(svc, proto) {
                Some((_, e)) => Node::EndpointSrv(e),
                None => Node::Missing,
            },
            _ => Node::Missing,
        }
    }

    /// The service of `_<service>._<proto>`, when it exists with that protocol.
    fn srv_entry(&self, svc: &str, proto: &str) -> Option<(&str, &Entry)> {
        let name = svc.strip_prefix('_')?;
        let proto = match proto {
            "_tcp" => Proto::Tcp,
            "_udp" => Proto::Udp,
            _ => return None,
        };
        let (name, e) = self.services.get_key_value(name)?;
        (e.proto == proto).then_some((name.as_str(), e))
    }
}

/// What the zone holds for one question.
#[derive(Debug, Default)]
pub(super) struct Lookup {
    /// Whether the name exists (false: NXDOMAIN).
    pub exists: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The additional section (addresses of the answers' targets).
    pub additionals: Vec<Record>,
}

/// A name of the zone, and what it holds.
enum Node<'a> {
    Apex,
    NameServer,
    Service(&'a Entry),
    Srv(&'a str, &'a Entry),
    EndpointSrv(&'a Entry),
    EndpointHost(IpAddr),
    /// A name with nothing of its own but names below it (RFC 8020: never NXDOMAIN, or a
    /// resolver doing QNAME minimisation would stop there).
    Empty,
    Missing,
}

/// The address an endpoint name's first label stands for ([`endpoint_host`] backwards):
/// `10-0-0-1` -> 10.0.0.1.
pub fn endpoint_ip(label: &str) -> Option<IpAddr> {
    let v4 = Ipv4Addr::from_str(&label.replace('-', "."))
        .ok()
        .map(IpAddr::V4);
    v4.or_else(|| {
        Ipv6Addr::from_str(&label.replace('-', ":"))
            .ok()
            .map(IpAddr::V6)
    })
}

/// The A or AAAA record data of an address.
fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// The record type of an address.
fn address_type(ip: IpAddr) -> RecordType {
    if ip.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    }
}
