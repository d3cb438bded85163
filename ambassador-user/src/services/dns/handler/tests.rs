use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use super::*;
use crate::{
    core::model::{Desired, Endpoint, Proto, ServiceSpec},
    services::dns::zone::{
        endpoint_host, parse_domain, ENDPOINT_TTL, FRONTEND_TTL, MAX_DOMAIN_WIRE, NEGATIVE_TTL,
    },
};

fn zone() -> Zone {
    let mut d = Desired::new();
    d.insert(
        "db".into(),
        Arc::new(ServiceSpec {
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
        }),
    );
    d.insert(
        "dns-cache".into(),
        Arc::new(ServiceSpec {
            frontend: "10.96.0.11:53".parse().unwrap(),
            proto: Proto::Udp,
            endpoints: vec![],
        }),
    );
    let many = (0..60)
        .map(|i| Endpoint {
            addr: SocketAddr::from((Ipv4Addr::new(198, 51, 100, i), 8000)),
            weight: 1,
        })
        .collect();
    d.insert(
        "web".into(),
        Arc::new(ServiceSpec {
            frontend: "10.96.0.12:80".parse().unwrap(),
            proto: Proto::Tcp,
            endpoints: many,
        }),
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
    let mut m = Message::from_vec(&query("db.ambassador.internal.", RecordType::A, None)).unwrap();
    m.metadata.op_code = OpCode::Update;
    let Reply::Answer { rcode, .. } = handle(&m.to_vec().unwrap(), &z, Transport::Udp, true) else {
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
        Message::from_vec(&query("db.ambassador.internal.", RecordType::A, Some(1232))).unwrap();
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
        Arc::new(ServiceSpec {
            frontend: "[fd00:96::10]:80".parse().unwrap(),
            proto: Proto::Tcp,
            endpoints: vec![Endpoint {
                addr: "[fd00:1::2]:8080".parse().unwrap(),
                weight: 2,
            }],
        }),
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
        Arc::new(crate::core::model::ServiceSpec {
            frontend: "[fd00:10:96::1]:80".parse().unwrap(),
            proto: Proto::Tcp,
            endpoints: vec![crate::core::model::Endpoint {
                addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:80"
                    .parse()
                    .unwrap(),
                weight: 1,
            }],
        }),
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
