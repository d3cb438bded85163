//! The DNS responder's query handler: any datagram or TCP message must be answered within
//! what the query invites (or dropped), never panic, and an answer must parse, as must its
//! truncated form (what the rate limit sends instead). With flag 4 the bytes are a TCP stream,
//! framed by the responder's own reader.
#![no_main]

use std::sync::Arc;

use ambassador_user::{
    core::model::{Desired, Endpoint, Proto, ServiceSpec},
    services::dns::{
        handler,
        zone::{parse_domain, Zone},
        Reply, Transport,
    },
};
use futures_util::FutureExt as _;
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
            Arc::new(ServiceSpec {
                frontend: frontend.parse().unwrap(),
                proto,
                endpoints,
            }),
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
    if flags & 4 != 0 {
        // The bytes as a TCP stream: each length-prefixed message in turn, through the
        // responder's own framing, until the stream ends or breaks off.
        let mut stream = query;
        for _ in 0..64 {
            let read = ambassador_user::services::dns::read_message(&mut stream)
                .now_or_never()
                .expect("a byte slice is always ready");
            match read {
                Ok(Some(message)) => check(&zone, &message, Transport::Tcp, flags & 2 != 0),
                Ok(None) | Err(_) => break,
            }
        }
        return;
    }
    check(&zone, query, transport, flags & 2 != 0);
});

/// Handles one message and checks the answer.
fn check(zone: &Zone, query: &[u8], transport: Transport, may_forward: bool) {
    match handler::handle(query, zone, transport, may_forward) {
        Reply::Answer { bytes, .. } => {
            if transport == Transport::Udp {
                assert!(
                    bytes.len() <= handler::MAX_UDP_PAYLOAD as usize,
                    "{} bytes",
                    bytes.len()
                );
            }
            hickory_proto::op::Message::from_vec(&bytes).expect("an answer parses");
            // What the rate limit sends instead ("slip"): no larger, and it parses, truncated.
            let cut = handler::truncate(&bytes).expect("an answer can be slipped");
            assert!(cut.len() <= bytes.len().max(512));
            let m = hickory_proto::op::Message::from_vec(&cut).expect("a slipped answer parses");
            assert!(m.metadata.truncation);
        }
        Reply::Forward { limit } => assert!(limit >= 512),
        Reply::Drop => {}
    }
}
