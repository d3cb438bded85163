//! A key space larger than one etcd answer may be (tonic's 4 MiB): the daemon and the
//! operator commands list it a page at a time, at one revision, and forward as usual.

use std::time::Duration;

use ambassador_tests::*;
use ambassador_user::core::contract::{endpoint_key, service_key};
use etcd_client::{Txn, TxnOp};

const VIP: &str = "10.96.0.10:80";
/// Endpoints of a service nobody defined (a register publishes before the operator names
/// the service): listed, shown, not forwarded to.
const IDLE: usize = 2_400;
/// Each with a 2 KiB container id: about 5 MiB in all, over three pages.
const PAD: usize = 2_048;

#[test]
fn a_key_space_larger_than_one_etcd_answer_is_listed_a_page_at_a_time() {
    if !require_root("a_key_space_larger_than_one_etcd_answer_is_listed_a_page_at_a_time") {
        return;
    }
    let topo = Topology::new(2);
    let _servers = topo.greeters(8080);
    let etcd = Etcd::single(&topo.fwd);
    let url = etcd.members[0].url.clone();
    let backends = [1, 2].map(|i| Topology::backend_addr(i, 8080));
    let web = backends.clone();
    topo.fwd.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut c = etcd_client::Client::connect([url], None).await.unwrap();
                let mut ops = vec![TxnOp::put(
                    service_key("/ambassador", "web"),
                    format!("{{\"frontend\":\"{VIP}\",\"proto\":\"tcp\"}}"),
                    None,
                )];
                for (i, addr) in web.iter().enumerate() {
                    let key = endpoint_key("/ambassador", "web", &format!("b{}", i + 1));
                    ops.push(TxnOp::put(key, format!("{{\"addr\":\"{addr}\"}}"), None));
                }
                for i in 0..IDLE {
                    let value = format!(
                        "{{\"addr\":\"10.77.{}.{}:8080\",\"container\":\"{:0>PAD$x}\"}}",
                        i / 250,
                        i % 250 + 1,
                        i
                    );
                    let key = endpoint_key("/ambassador", "idle", &format!("e{i}"));
                    ops.push(TxnOp::put(key, value, None));
                }
                for chunk in ops.chunks(100) {
                    c.txn(Txn::new().and_then(chunk.to_vec())).await.unwrap();
                }
            })
    });

    let pin = PinDir::new();
    let mut daemon = Daemon::run_etcd(&topo.fwd, "c0", &etcd.urls(), &pin.path, &[]);
    daemon.wait_ready();
    let mut want = backends.to_vec();
    want.sort();
    let forwarded = wait_until(Duration::from_secs(20), || {
        let mut have = active_backends(&pin.path, "web");
        have.sort();
        have == want
    });
    assert!(
        forwarded,
        "web's endpoints never installed:\n{}",
        daemon.log()
    );
    let who = tcp_connect(&topo.client, VIP)
        .expect("connect through the VIP")
        .1;
    assert!(["b1", "b2"].contains(&who.as_str()), "answered by {who}");
    let log = daemon.log();
    let listed = log
        .lines()
        .find(|l| l.contains("etcd: listed"))
        .unwrap_or_else(|| panic!("the daemon never listed:\n{log}"));
    assert!(
        listed.contains(&format!("keys={}", IDLE + 3)) && listed.contains("pages=3"),
        "one listing of every key, in three pages: {listed}"
    );

    let out = ambassador_ok(
        &topo.fwd,
        &["service", "ls", "--json", "--etcd", &etcd.urls()],
    );
    let rows: serde_json::Value = serde_json::from_str(&out).expect("service ls --json");
    let endpoints = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["endpoints"].as_array().unwrap().len())
    };
    assert_eq!(endpoints("web"), Some(2), "{}", rows[0]);
    assert_eq!(
        endpoints("idle"),
        Some(IDLE),
        "the undefined service's endpoints"
    );
}
