//! The SOCKS5 door's handshake: any bytes a client sends (greeting, authentication, request)
//! must end in a destination or an error, never a panic; and whatever the destination, the
//! directory's answer and the reply written for it must not panic either. Flag bit 0: the
//! door requires a username and password.
#![no_main]

use std::{collections::HashMap, sync::Arc};

use ambassador_user::{
    core::model::{Desired, Endpoint, Proto, ServiceSpec},
    services::{
        dns::zone::parse_domain,
        socks::{negotiate, reply_for, Directory},
    },
};
use futures_util::FutureExt as _;
use libfuzzer_sys::fuzz_target;

fn directory() -> Directory {
    let mut d = Desired::new();
    d.insert(
        "web".into(),
        Arc::new(ServiceSpec {
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: Proto::Tcp,
            endpoints: vec![Endpoint {
                addr: "192.0.2.1:8080".parse().unwrap(),
                weight: 1,
            }],
        }),
    );
    let allow = vec!["198.51.100.0/24".parse().unwrap()];
    Directory::new(parse_domain("ambassador.internal").unwrap(), &d, allow)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let users: Option<HashMap<String, String>> =
        (flags & 1 == 1).then(|| HashMap::from([("alice".into(), "pw".into())]));
    // The client's bytes are all there at once and every write succeeds: the handshake
    // never waits, so it completes in one poll.
    let stream = tokio::io::join(bytes, Vec::new());
    let done = negotiate(stream, users.as_ref())
        .now_or_never()
        .expect("a handshake over ready bytes never waits");
    if let Ok((proto, dest)) = done {
        if let Err(refusal) = directory().route(&dest) {
            let _ = proto.reply_error(&reply_for(&refusal)).now_or_never();
        }
    }
});
