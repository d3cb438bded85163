//! Restarts and upgrades without outage: the program links are pinned, so forwarding goes on
//! while no daemon runs, and the next daemon swaps its program into the same links.

use std::{
    io::BufReader,
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use ambassador_tests::{traffic::Traffic, *};

const VIP: &str = "10.96.0.10:80";

fn connect(addr: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, String)> {
    tcp_connect_here(addr, Duration::from_secs(1))
}

/// (link id, program id) of the TCX link pinned at `path`.
fn pinned_link(path: &Path) -> (u64, u64) {
    let out = sh(&[
        "bpftool",
        "link",
        "show",
        "pinned",
        path.to_str().unwrap(),
        "-j",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (v["id"].as_u64().unwrap(), v["prog_id"].as_u64().unwrap())
}

#[test]
fn forwarding_never_stops_across_sigterm_sigkill_and_an_upgrade_and_uninstall_removes_it() {
    if !require_root(
        "forwarding_never_stops_across_sigterm_sigkill_and_an_upgrade_and_uninstall_removes_it",
    ) {
        return;
    }
    let topo = Topology::new(1);
    let _server = TcpServer::start(&topo.backends[0], &Topology::backend_addr(1, 8080), "b1");
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP}\"\nendpoints = [\"{}\"]\n",
        Topology::backend_addr(1, 8080)
    ));
    let ingress = pin.path.join("links/c0_ingress");
    // The upgrade: another copy of the binary, at another path.
    let dir = temp_dir("amb-upgrade");
    let new_bin = dir.path().join("ambassador-new");
    std::fs::copy(ambassador_bin(), &new_bin).unwrap();
    let args = Daemon::run_file_args("c0", cfg.as_str(), &pin.path);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = |bin: &Path| {
        let mut d = Daemon::start_bin(&topo.fwd, bin, &args, &[]);
        d.wait_ready();
        d
    };

    let mut d = run(&ambassador_bin());
    let (link, first_prog) = pinned_link(&ingress);
    let traffic = Traffic::start(&topo.client, VIP);
    traffic.wait_more(50);

    // SIGTERM: the daemon exits, forwarding goes on without it.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
    traffic.wait_more(100);
    assert_eq!(pinned_link(&ingress), (link, first_prog), "nothing changed");

    // A new daemon adopts the link: same link, its own program swapped in.
    let mut d = run(&ambassador_bin());
    assert!(d.log().contains("datapath adopted"), "{}", d.log());
    let (link2, second_prog) = pinned_link(&ingress);
    assert_eq!(link2, link, "the same link");
    assert_ne!(second_prog, first_prog, "the new daemon's program runs");
    traffic.wait_more(50);

    // SIGKILL: no chance to clean up, and none needed.
    d.kill();
    traffic.wait_more(100);

    // The upgrade: the other binary adopts the same link.
    let d = run(&new_bin);
    assert!(d.log().contains("datapath adopted"), "{}", d.log());
    let (link3, third_prog) = pinned_link(&ingress);
    assert_eq!(link3, link);
    assert_ne!(third_prog, second_prog);
    traffic.wait_more(50);

    // Uninstall refuses while a daemon runs.
    let out = ambassador(&["uninstall", "--pin-path", pin.path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    drop(d);
    traffic.wait_more(50);

    let outcome = traffic.finish();
    outcome.assert_nothing_lost();
    eprintln!("across SIGTERM, SIGKILL and an upgrade: {outcome:?}");

    // Uninstall: everything goes, and so does forwarding.
    let out = ambassador(&["uninstall", "--pin-path", pin.path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("removed 2 program links (c0_egress, c0_ingress)"),
        "{text}"
    );
    assert!(!pin.path.exists());
    assert!(
        topo.fwd
            .exec(&["bpftool", "net", "show", "dev", "c0"])
            .find("amb_tc")
            .is_none(),
        "programs still attached"
    );
    let addr: SocketAddr = VIP.parse().unwrap();
    let after = topo.client.run(move || connect(addr).map(|(_, who)| who));
    assert!(after.is_err(), "the VIP still answers: {after:?}");
    let out = ambassador(&["uninstall", "--pin-path", pin.path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing installed"));
}
