//! The seed experiment in CI: the four-host testbed, the database moved h2 -> h3 -> h4 under
//! load with zero failed requests, then the hard failure with a window bounded by the lease.

use std::time::Duration;

use ambassador_tests::{ambassador_bin, require_root, scenario, testbed};

/// Tears the testbed down when the test ends, failed or not.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        testbed::down(&self.0);
    }
}

#[test]
fn the_database_moves_across_hosts_and_clouds_without_a_failed_request() {
    if !require_root("the_database_moves_across_hosts_and_clouds_without_a_failed_request") {
        return;
    }
    let prefix = format!("amt{}", std::process::id());
    let _down = Down(prefix.clone());
    let bin = ambassador_bin();
    let tb = testbed::up(&prefix, &bin, 3, &|m| eprintln!("testbed: {m}"));
    let report = scenario::run(&tb, &bin, &|_| {});
    let text = scenario::render(&report);
    eprintln!("{text}");

    assert!(report.requests > 300, "the load ran: {text}");
    // The client found the database by name, through the responder, during the whole run.
    assert!(report.naming.frontend.is_some(), "{text}");
    assert!(report.naming.lookups > 5, "{text}");
    assert_eq!(report.naming.failed, 0, "{text}");
    assert_eq!(
        report.failed, 0,
        "graceful moves must not fail a request: {text}"
    );
    assert!(report.rejoin_requests > 20, "{text}");
    assert_eq!(
        report.rejoin_failed, 0,
        "h2 rejoining must not fail a request: {text}"
    );
    assert_eq!(report.moves.len(), 2);
    for m in &report.moves {
        assert!(m.takeover < Duration::from_secs(10), "{text}");
    }
    // The long-lived connection lived on every host in turn and is still open on h4.
    let hosts: Vec<&str> = report.long.iter().map(|l| l.backend.as_str()).collect();
    assert_eq!(hosts, ["h2", "h3", "h4"], "{text}");
    assert!(report.long.last().unwrap().ended.is_none(), "{text}");
    // The hard failure: h2 is dead but still registered until its lease expires. The
    // datapath leaves it at its first refusal, so at most the requests in flight at the kill
    // fail; the ones that meet h2 first wait for one SYN retransmission.
    // The compose file ran `sock` too: a process of h1's own cgroup (in h1's namespace, with
    // no route to the frontend) reaches the database through it, translated at connect().
    let frontend = report.naming.frontend.expect("resolved");
    let out = tb.run_in_cgroup(
        "h1",
        "redis-cli",
        &[
            "-h",
            &frontend.ip().to_string(),
            "-p",
            &frontend.port().to_string(),
            "get",
            "host",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "h4",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An operator saw it happen: `ambassador monitor` in h1's `run` container (docker exec)
    // printed flows to the database's frontend and changes applied from etcd.
    let monitor = report.monitor.as_ref().expect("monitor ran");
    let events: Vec<serde_json::Value> = monitor
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "flow" && e["service"] == "db")
            .count()
            >= 3,
        "{text}"
    );
    assert!(
        events.iter().any(|e| e["kind"] == "applied"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("etcd revision"))),
        "{text}"
    );
    assert!(report.hard.failed <= 2, "{text}");
    assert!(report.hard.slowest < Duration::from_secs(3), "{text}");
    assert!(
        report.hard.window <= report.hard.ttl + Duration::from_secs(2),
        "{text}"
    );
}
