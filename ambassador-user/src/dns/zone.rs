//! The responder's zone and its query handler, as pure functions: a [`Zone`] is built from the
//! desired state the daemon applied, and [`handle`] turns one query's bytes into what to do
//! (answer with these bytes, forward, or drop). No I/O, so every case is unit-tested and the
//! handler is fuzzed (`fuzz/fuzz_targets/dns_query.rs`).
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

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, AAAA, NS, SOA, SRV},
        DNSClass, Name, RData, Record, RecordType,
    },
};

use crate::model::{Desired, Proto};

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

/// The largest UDP answer sent, whatever a query's EDNS0 buffer size says (the DNS flag day
/// 2020 value, which avoids IP fragmentation on every usual path).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// A UDP answer to a query without EDNS0 (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// How a query arrived: answers over UDP are bounded by what the query invites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: at most 512 bytes, or the query's EDNS0 size up to [`MAX_UDP_PAYLOAD`].
    Udp,
    /// TCP: up to 65,535 bytes.
    Tcp,
}

/// What to do with one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer {
        /// The encoded answer.
        bytes: Vec<u8>,
        /// Its response code.
        rcode: ResponseCode,
        /// Whether it was cut to fit (TC set: the client retries over TCP).
        truncated: bool,
    },
    /// A name outside the domain from a client that may use forwarding: relay it upstream, and
    /// send back at most `limit` bytes (see [`fit`]).
    Forward {
        /// The largest answer the client invited.
        limit: usize,
    },
    /// Not a query that deserves an answer (too short to carry an id, or a response: answering
    /// those could loop between two servers). Counted as malformed.
    Drop,
}

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

    fn soa(&self) -> Record {
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
                None if *proto == "endpoints" => match host_label(svc) {
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

/// `10-0-0-1` -> 10.0.0.1.
fn host_label(label: &str) -> Option<IpAddr> {
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

/// The largest answer a query invites over `transport`.
fn limit(query: &Message, transport: Transport) -> usize {
    match (transport, &query.edns) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, None) => CLASSIC_UDP_PAYLOAD as usize,
        (Transport::Udp, Some(e)) => {
            e.max_payload().clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize
        }
    }
}

/// Handles one query. `may_forward`: whether this client may have names outside the domain
/// forwarded (forwarding is on and the client is allowed).
pub fn handle(bytes: &[u8], zone: &Zone, transport: Transport, may_forward: bool) -> Reply {
    let query = match Message::from_vec(bytes) {
        Ok(q) => q,
        Err(_) => return malformed(bytes),
    };
    if query.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let limit = limit(&query, transport);
    if query.op_code != OpCode::Query {
        return error(&query, ResponseCode::NotImp, limit);
    }
    let [q] = query.queries.as_slice() else {
        return error(&query, ResponseCode::FormErr, limit);
    };
    if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return error(&query, ResponseCode::BADVERS, limit);
    }
    let qname = q.name().to_lowercase();
    if !zone.domain.zone_of(&qname) {
        return if may_forward {
            Reply::Forward { limit }
        } else {
            error(&query, ResponseCode::Refused, limit)
        };
    }
    if q.query_class() != DNSClass::IN
        || matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        return error(&query, ResponseCode::Refused, limit);
    }
    let below = (qname.num_labels() - zone.domain.num_labels()) as usize;
    let labels: Vec<String> = qname
        .iter()
        .take(below)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let mut response = response_to(&query);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = may_forward;
    let owner = q.name().clone();
    let qtype = q.query_type();
    let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    let mut exists = true;
    match zone.node(&labels) {
        Node::Apex => {
            if wants(RecordType::SOA) {
                let mut soa = zone.soa();
                soa.ttl = ZONE_TTL;
                soa.name = owner.clone();
                answers.push(soa);
            }
            if qtype == RecordType::NS {
                let ns = RData::NS(NS(zone.ns_name()));
                answers.push(Record::from_rdata(owner.clone(), ZONE_TTL, ns));
                additionals.extend(zone.ns_glue());
            }
        }
        Node::NameServer => {
            for mut r in zone.ns_glue() {
                if wants(r.record_type()) {
                    r.name = owner.clone();
                    answers.push(r);
                }
            }
        }
        Node::Service(e) => {
            if wants(address_type(e.frontend.ip())) {
                let a = address(e.frontend.ip());
                answers.push(Record::from_rdata(owner.clone(), FRONTEND_TTL, a));
            }
        }
        Node::Srv(name, e) => {
            if wants(RecordType::SRV) {
                let target = zone.sub(&[name]);
                let srv = SRV::new(0, 0, e.frontend.port(), target.clone());
                answers.push(Record::from_rdata(
                    owner.clone(),
                    FRONTEND_TTL,
                    RData::SRV(srv),
                ));
                let a = address(e.frontend.ip());
                additionals.push(Record::from_rdata(target, FRONTEND_TTL, a));
            }
        }
        Node::EndpointSrv(e) => {
            if wants(RecordType::SRV) {
                for (addr, weight) in &e.endpoints {
                    let target = endpoint_host(addr.ip(), &zone.domain);
                    let w = (*weight).min(u16::MAX as u32) as u16;
                    let srv = SRV::new(0, w, addr.port(), target.clone());
                    answers.push(Record::from_rdata(
                        owner.clone(),
                        ENDPOINT_TTL,
                        RData::SRV(srv),
                    ));
                    let a = Record::from_rdata(target, ENDPOINT_TTL, address(addr.ip()));
                    if !additionals.contains(&a) {
                        additionals.push(a);
                    }
                }
            }
        }
        Node::EndpointHost(ip) => {
            if wants(address_type(ip)) {
                answers.push(Record::from_rdata(owner.clone(), ENDPOINT_TTL, address(ip)));
            }
        }
        Node::Empty => {}
        Node::Missing => exists = false,
    }
    if !exists {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    if answers.is_empty() {
        // NXDOMAIN or NODATA: the SOA says how long to remember it (RFC 2308).
        response.add_authority(zone.soa());
    }
    response.add_answers(answers);
    response.add_additionals(additionals);
    encode(response, limit)
}

/// Fits a forwarded answer into what the client invited: as it is when it fits, else the
/// header and question with TC set (the client retries over TCP). `None` when it is not a
/// DNS message at all.
pub fn fit(answer: &[u8], limit: usize) -> Option<Vec<u8>> {
    if answer.len() <= limit {
        return Some(answer.to_vec());
    }
    let message = Message::from_vec(answer).ok()?;
    Some(truncated(&message))
}

/// A response carrying the query's id, opcode, RD bit, question and (when asked) EDNS0.
fn response_to(query: &Message) -> Message {
    let mut response = Message::response(query.id, query.op_code);
    response.metadata.recursion_desired = query.recursion_desired;
    response.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(edns);
    }
    response
}

fn error(query: &Message, rcode: ResponseCode, limit: usize) -> Reply {
    let mut response = response_to(query);
    if query.queries.len() > 1 {
        response.queries.clear();
    }
    response.metadata.response_code = rcode;
    encode(response, limit)
}

/// A query that does not parse: FORMERR with its id when it has a header, else nothing.
fn malformed(bytes: &[u8]) -> Reply {
    // The header is 12 bytes; QR (the top bit of byte 2) set means a response.
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let op = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let response = Message::error_msg(id, op, ResponseCode::FormErr);
    let bytes = response.to_vec().expect("a bare header encodes");
    Reply::Answer {
        bytes,
        rcode: ResponseCode::FormErr,
        truncated: false,
    }
}

/// Encodes `response` within `limit`: additional records go first, then the answers (TC).
fn encode(mut response: Message, limit: usize) -> Reply {
    let rcode = response.response_code;
    let mut bytes = response.to_vec().unwrap_or_default();
    if bytes.len() > limit && !response.additionals.is_empty() {
        response.additionals.clear();
        bytes = response.to_vec().unwrap_or_default();
    }
    let mut cut = false;
    if bytes.is_empty() || bytes.len() > limit {
        bytes = truncated(&response);
        cut = true;
    }
    Reply::Answer {
        bytes,
        rcode,
        truncated: cut,
    }
}

fn truncated(message: &Message) -> Vec<u8> {
    let mut cut = message.truncate();
    cut.metadata.id = message.id;
    cut.to_vec().expect("a header and a question encode")
}

/// `answer` cut to its header and question, with TC set (what a rate limit "slips"); None
/// if it does not parse.
pub fn truncate(answer: &[u8]) -> Option<Vec<u8>> {
    Message::from_vec(answer).ok().map(|m| truncated(&m))
}

/// A query for tests, benches and fuzz seeds.
pub fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid test name"),
        qtype,
    ));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("a query encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServiceSpec};

    fn zone() -> Zone {
        let mut d = Desired::new();
        d.insert(
            "db".into(),
            ServiceSpec {
                frontend: "10.96.0.10:6379".parse().unwrap(),
                proto: Proto::Tcp,
                endpoints: vec![
                    Endpoint {
                        addr: "192.0.2.1:32768".parse().unwrap(),
                        weight: 3,
                    },
                    Endpoint {
                        addr: "192.0.2.2:32769".parse().unwrap(),
                        weight: 1,
                    },
                ],
            },
        );
        d.insert(
            "dns-cache".into(),
            ServiceSpec {
                frontend: "10.96.0.11:53".parse().unwrap(),
                proto: Proto::Udp,
                endpoints: vec![],
            },
        );
        let many = (0..60)
            .map(|i| Endpoint {
                addr: SocketAddr::from((Ipv4Addr::new(198, 51, 100, i), 8000)),
                weight: 1,
            })
            .collect();
        d.insert(
            "web".into(),
            ServiceSpec {
                frontend: "10.96.0.12:80".parse().unwrap(),
                proto: Proto::Tcp,
                endpoints: many,
            },
        );
        Zone::new(
            parse_domain("Ambassador.Internal").unwrap(),
            &d,
            vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53))],
            7,
        )
    }

    fn ask(name: &str, t: RecordType, transport: Transport, edns: Option<u16>) -> Message {
        match handle(&query(name, t, edns), &zone(), transport, false) {
            Reply::Answer { bytes, .. } => {
                assert!(
                    bytes.len()
                        <= limit(
                            &Message::from_vec(&query(name, t, edns)).unwrap(),
                            transport
                        )
                );
                Message::from_vec(&bytes).unwrap()
            }
            other => panic!("{name} {t}: {other:?}"),
        }
    }

    fn rdata(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_service_name_answers_its_frontend_authoritatively_whatever_the_case() {
        let m = ask(
            "DB.ambassador.internal.",
            RecordType::A,
            Transport::Udp,
            None,
        );
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.authoritative);
        assert!(!m.recursion_available);
        assert_eq!(rdata(&m), ["10.96.0.10"]);
        assert_eq!(m.answers[0].ttl, FRONTEND_TTL);
        assert!(m.answers[0]
            .name
            .to_string()
            .eq_ignore_ascii_case("db.ambassador.internal."));
        assert_eq!(m.id, 0x1234);
    }

    #[test]
    fn srv_gives_the_frontend_port_with_its_address_as_additional() {
        let m = ask(
            "_db._tcp.ambassador.internal.",
            RecordType::SRV,
            Transport::Udp,
            None,
        );
        assert_eq!(rdata(&m), ["0 0 6379 db.ambassador.internal."]);
        assert_eq!(m.additionals[0].data.to_string(), "10.96.0.10");
        let udp = ask(
            "_dns-cache._udp.ambassador.internal.",
            RecordType::SRV,
            Transport::Udp,
            None,
        );
        assert_eq!(rdata(&udp), ["0 0 53 dns-cache.ambassador.internal."]);
        // The wrong protocol is not a name of the zone.
        let m = ask(
            "_db._udp.ambassador.internal.",
            RecordType::SRV,
            Transport::Udp,
            None,
        );
        assert_eq!(m.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn endpoint_srv_lists_every_endpoint_with_its_weight_and_a_resolvable_target() {
        let m = ask(
            "_db._tcp.endpoints.ambassador.internal.",
            RecordType::SRV,
            Transport::Udp,
            None,
        );
        assert_eq!(
            rdata(&m),
            [
                "0 3 32768 192-0-2-1.endpoints.ambassador.internal.",
                "0 1 32769 192-0-2-2.endpoints.ambassador.internal."
            ]
        );
        assert_eq!(m.answers[0].ttl, ENDPOINT_TTL);
        assert_eq!(m.additionals.len(), 2);
        let a = ask(
            "192-0-2-2.endpoints.ambassador.internal.",
            RecordType::A,
            Transport::Udp,
            None,
        );
        assert_eq!(rdata(&a), ["192.0.2.2"]);
        // Only current endpoints: not an address echo service.
        let a = ask(
            "192-0-2-9.endpoints.ambassador.internal.",
            RecordType::A,
            Transport::Udp,
            None,
        );
        assert_eq!(a.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn unknown_names_are_nxdomain_with_the_soa_and_empty_non_terminals_are_nodata() {
        let m = ask(
            "nope.ambassador.internal.",
            RecordType::A,
            Transport::Udp,
            None,
        );
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].ttl, NEGATIVE_TTL);
        for ent in [
            "_tcp.ambassador.internal.",
            "endpoints.ambassador.internal.",
            "_tcp.endpoints.ambassador.internal.",
            "dns.ambassador.internal.",
        ] {
            let m = ask(ent, RecordType::A, Transport::Udp, None);
            assert_eq!(m.response_code, ResponseCode::NoError, "{ent}");
            assert!(m.answers.is_empty(), "{ent}");
        }
        // NODATA: the name exists, the type does not.
        let m = ask(
            "db.ambassador.internal.",
            RecordType::AAAA,
            Transport::Udp,
            None,
        );
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.len(), 1);
    }

    #[test]
    fn the_apex_has_soa_and_ns_with_glue() {
        let m = ask(
            "ambassador.internal.",
            RecordType::SOA,
            Transport::Udp,
            None,
        );
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        assert!(rdata(&m)[0].contains("ns.dns.ambassador.internal."));
        assert!(rdata(&m)[0].contains(" 7 "), "serial: {:?}", rdata(&m));
        let m = ask("ambassador.internal.", RecordType::NS, Transport::Udp, None);
        assert_eq!(rdata(&m), ["ns.dns.ambassador.internal."]);
        assert_eq!(m.additionals[0].data.to_string(), "127.0.0.53");
        let m = ask(
            "ns.dns.ambassador.internal.",
            RecordType::A,
            Transport::Udp,
            None,
        );
        assert_eq!(rdata(&m), ["127.0.0.53"]);
    }

    #[test]
    fn answers_fit_what_the_query_invites() {
        // 60 endpoints: about 4 KB with additionals.
        let name = "_web._tcp.endpoints.ambassador.internal.";
        let plain = ask(name, RecordType::SRV, Transport::Udp, None);
        assert!(plain.truncation);
        assert!(plain.answers.is_empty());
        let edns = ask(name, RecordType::SRV, Transport::Udp, Some(4096));
        assert!(edns.truncation, "capped at {MAX_UDP_PAYLOAD} bytes");
        assert!(edns.edns.is_some());
        let tcp = ask(name, RecordType::SRV, Transport::Tcp, None);
        assert!(!tcp.truncation);
        assert_eq!(tcp.answers.len(), 60);
        assert_eq!(tcp.additionals.len(), 60);
    }

    #[test]
    fn other_names_are_forwarded_only_when_allowed() {
        let q = query("example.org.", RecordType::A, None);
        assert_eq!(
            handle(&q, &zone(), Transport::Udp, true),
            Reply::Forward { limit: 512 }
        );
        let m = ask("example.org.", RecordType::A, Transport::Udp, None);
        assert_eq!(m.response_code, ResponseCode::Refused);
        // Inside the domain the zone answers even when forwarding is allowed, with RA.
        let Reply::Answer { bytes, .. } = handle(
            &query("db.ambassador.internal.", RecordType::A, None),
            &zone(),
            Transport::Udp,
            true,
        ) else {
            panic!()
        };
        assert!(Message::from_vec(&bytes).unwrap().recursion_available);
    }

    #[test]
    fn malformed_odd_and_hostile_queries_get_a_clear_code_or_nothing() {
        let z = zone();
        assert_eq!(handle(&[], &z, Transport::Udp, true), Reply::Drop);
        assert_eq!(handle(&[1, 2, 3], &z, Transport::Udp, true), Reply::Drop);
        let mut junk = query("db.ambassador.internal.", RecordType::A, None);
        junk.truncate(20);
        match handle(&junk, &z, Transport::Udp, true) {
            Reply::Answer { rcode, bytes, .. } => {
                assert_eq!(rcode, ResponseCode::FormErr);
                assert_eq!(Message::from_vec(&bytes).unwrap().id, 0x1234);
            }
            other => panic!("{other:?}"),
        }
        // A response is never answered (no loops between servers).
        let mut resp = query("db.ambassador.internal.", RecordType::A, None);
        resp[2] |= 0x80;
        assert_eq!(handle(&resp, &z, Transport::Udp, true), Reply::Drop);
        let axfr = ask(
            "ambassador.internal.",
            RecordType::AXFR,
            Transport::Tcp,
            None,
        );
        assert_eq!(axfr.response_code, ResponseCode::Refused);
        let mut m =
            Message::from_vec(&query("db.ambassador.internal.", RecordType::A, None)).unwrap();
        m.metadata.op_code = OpCode::Update;
        let Reply::Answer { rcode, .. } = handle(&m.to_vec().unwrap(), &z, Transport::Udp, true)
        else {
            panic!()
        };
        assert_eq!(rcode, ResponseCode::NotImp);
        let mut two = m.clone();
        two.metadata.op_code = OpCode::Query;
        two.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
        let Reply::Answer { rcode, .. } = handle(&two.to_vec().unwrap(), &z, Transport::Udp, true)
        else {
            panic!()
        };
        assert_eq!(rcode, ResponseCode::FormErr);
        let mut v1 =
            Message::from_vec(&query("db.ambassador.internal.", RecordType::A, Some(1232)))
                .unwrap();
        v1.edns.as_mut().unwrap().set_version(1);
        let Reply::Answer { rcode, .. } = handle(&v1.to_vec().unwrap(), &z, Transport::Udp, true)
        else {
            panic!()
        };
        assert_eq!(rcode, ResponseCode::BADVERS);
    }

    #[test]
    fn forwarded_answers_too_large_for_the_client_are_cut_to_tc() {
        let big = ask(
            "_web._tcp.endpoints.ambassador.internal.",
            RecordType::SRV,
            Transport::Tcp,
            None,
        );
        let bytes = big.to_vec().unwrap();
        assert_eq!(fit(&bytes, 65535).unwrap(), bytes);
        let cut = Message::from_vec(&fit(&bytes, 512).unwrap()).unwrap();
        assert!(cut.truncation);
        assert_eq!(cut.id, big.id);
        assert!(fit(&[0xff; 600], 512).is_none());
    }

    #[test]
    fn ipv6_services_answer_aaaa_and_their_endpoints_have_names() {
        let mut d = Desired::new();
        d.insert(
            "web6".into(),
            ServiceSpec {
                frontend: "[fd00:96::10]:80".parse().unwrap(),
                proto: Proto::Tcp,
                endpoints: vec![Endpoint {
                    addr: "[fd00:1::2]:8080".parse().unwrap(),
                    weight: 2,
                }],
            },
        );
        let z = Zone::new(parse_domain("ambassador.internal").unwrap(), &d, vec![], 1);
        let get = |name: &str, t: RecordType| match handle(
            &query(name, t, None),
            &z,
            Transport::Udp,
            false,
        ) {
            Reply::Answer { bytes, .. } => Message::from_vec(&bytes).unwrap(),
            other => panic!("{other:?}"),
        };
        let m = get("web6.ambassador.internal.", RecordType::AAAA);
        assert_eq!(rdata(&m), ["fd00:96::10"]);
        let m = get("web6.ambassador.internal.", RecordType::A);
        assert!(m.answers.is_empty(), "NODATA for A");
        assert_eq!(m.response_code, ResponseCode::NoError);
        let m = get("_web6._tcp.endpoints.ambassador.internal.", RecordType::SRV);
        assert_eq!(
            rdata(&m),
            ["0 2 8080 fd00-1-0-0-0-0-0-2.endpoints.ambassador.internal."]
        );
        let m = get(
            "fd00-1-0-0-0-0-0-2.endpoints.ambassador.internal.",
            RecordType::AAAA,
        );
        assert_eq!(rdata(&m), ["fd00:1::2"]);
    }

    #[test]
    fn domains_are_validated_and_normalised() {
        assert_eq!(
            parse_domain("Svc.Example.").unwrap().to_string(),
            "svc.example."
        );
        assert!(parse_domain(".").is_err());
        assert!(parse_domain("a..b").is_err());
    }

    /// Found by reading: a domain of about 206 bytes and up made the endpoint names, and of
    /// 249 and up the SOA's, longer than DNS allows, and building them panicked.
    #[test]
    fn the_longest_domain_still_makes_every_name_of_the_zone() {
        let label = "a".repeat(63);
        // 63 + 1 + 63 + 1 + 59 = 187 characters, 189 with the last label's length byte and
        // the root: the longest accepted (see MAX_DOMAIN_WIRE) with one character to spare.
        let longest = format!("{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), MAX_DOMAIN_WIRE - 2);
        let domain = parse_domain(&longest).unwrap();
        assert!(parse_domain(&format!("{longest}c"))
            .unwrap_err()
            .contains("at most 189"));
        let service = "s".repeat(63);
        let mut desired = Desired::new();
        desired.insert(
            service.clone(),
            crate::model::ServiceSpec {
                frontend: "[fd00:10:96::1]:80".parse().unwrap(),
                proto: Proto::Tcp,
                endpoints: vec![crate::model::Endpoint {
                    addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80"
                        .parse()
                        .unwrap(),
                    weight: 1,
                }],
            },
        );
        let zone = Zone::new(domain.clone(), &desired, vec![], 1);
        let _ = endpoint_host(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            &domain,
        );
        for q in [
            format!("{service}.{longest}"),
            format!("nothing.{longest}"),
            format!("_{}._tcp.endpoints.{longest}", "s".repeat(40)),
            format!("ns.dns.{longest}"),
            longest.clone(),
        ] {
            for t in [
                RecordType::A,
                RecordType::AAAA,
                RecordType::SRV,
                RecordType::SOA,
                RecordType::NS,
            ] {
                let _ = handle(&query(&q, t, Some(1232)), &zone, Transport::Udp, false);
                let _ = handle(&query(&q, t, None), &zone, Transport::Tcp, false);
            }
        }
    }
}
