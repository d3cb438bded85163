//! The DNS responder's query handler: any datagram or TCP message must be answered within
//! what the query invites (or dropped), never panic, and an answer must parse.
#![no_main]

use ambassador_user::{
    dns::zone::{self, parse_domain, Reply, Transport, Zone},
    model::{Desired, Endpoint, Proto, ServiceSpec},
};
use libfuzzer_sys::fuzz_target;

fn zone() -> Zone {
    let mut d = Desired::new();
    let endpoints = (1..=40)
        .map(|i| Endpoint {
            addr: format!("192.0.2.{i}:3{i:04}").parse().unwrap(),
            weight: i,
        })
        .collect();
    for (name, frontend, proto, endpoints) in [
        ("db", "10.96.0.10:6379", Proto::Tcp, vec![]),
        ("dns", "10.96.0.11:53", Proto::Udp, vec![]),
        ("web", "10.96.0.12:80", Proto::Tcp, endpoints),
    ] {
        d.insert(
            name.into(),
            ServiceSpec {
                frontend: frontend.parse().unwrap(),
                proto,
                endpoints,
            },
        );
    }
    Zone::new(
        parse_domain("ambassador.internal").unwrap(),
        &d,
        vec!["127.0.0.53".parse().unwrap()],
        1,
    )
}

fuzz_target!(|data: &[u8]| {
    let zone = zone();
    let Some((&flags, query)) = data.split_first() else {
        return;
    };
    let transport = if flags & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    match zone::handle(query, &zone, transport, flags & 2 != 0) {
        Reply::Answer { bytes, .. } => {
            if transport == Transport::Udp {
                assert!(
                    bytes.len() <= zone::MAX_UDP_PAYLOAD as usize,
                    "{} bytes",
                    bytes.len()
                );
            }
            hickory_proto::op::Message::from_vec(&bytes).expect("an answer parses");
        }
        Reply::Forward { limit } => assert!(limit >= 512),
        Reply::Drop => {}
    }
});
