//! Restarts and upgrades without outage: the program links are pinned, so forwarding goes on
//! while no daemon runs, and the next daemon swaps its program into the same links.

use std::{
    io::BufReader,
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use ambassador_tests::*;

const VIP: &str = "10.96.0.10:80";

/// Traffic through the VIP while it lives: one long-lived connection echoing every 20 ms, and
/// a new connection (connect, identity, echo, close) every 5 ms. Every failure is counted.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    long_lived: Option<JoinHandle<Result<u64, String>>>,
    loop_: Option<JoinHandle<()>>,
}

fn connect(addr: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, String)> {
    tcp_connect_here(addr, Duration::from_secs(1))
}

/// One echo that must come back unchanged.
fn echo(c: &mut BufReader<TcpStream>, line: &str) -> std::io::Result<()> {
    let back = tcp_echo(c, line)?;
    if back != line {
        return Err(std::io::Error::other(format!("echo {back:?} for {line:?}")));
    }
    Ok(())
}

impl Traffic {
    fn start(client: &NetNs) -> Self {
        let addr: SocketAddr = VIP.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let s = stop.clone();
        let long_lived = client.spawn(move || {
            let (mut c, _) = connect(addr).map_err(|e| format!("connect: {e}"))?;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                echo(&mut c, &format!("long {n}")).map_err(|e| format!("echo {n}: {e}"))?;
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(n)
        });
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let loop_ = client.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = connect(addr).and_then(|(mut c, _)| echo(&mut c, "short"));
                match r {
                    Ok(()) => o.fetch_add(1, Ordering::Relaxed),
                    Err(_) => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            ok,
            failed,
            long_lived: Some(long_lived),
            loop_: Some(loop_),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits for `n` more successful connections (so each phase is really exercised).
    fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        assert!(
            wait_until(Duration::from_secs(10), || self.ok() >= target),
            "traffic stalled at {} ok, {} failed",
            self.ok(),
            self.failed.load(Ordering::Relaxed)
        );
    }

    /// Stops; returns (new connections ok, failed, echoes on the long-lived connection).
    fn finish(mut self) -> (u64, u64, Result<u64, String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.loop_.take().unwrap().join().unwrap();
        let long = self.long_lived.take().unwrap().join().unwrap();
        (self.ok(), self.failed.load(Ordering::Relaxed), long)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
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
    let dir = TempDir::new("amb-upgrade");
    let new_bin = dir.path.join("ambassador-new");
    std::fs::copy(ambassador_bin(), &new_bin).unwrap();
    let args = [
        "run",
        "--iface",
        "c0",
        "--config",
        cfg.as_str(),
        "--pin-path",
        pin.path.to_str().unwrap(),
    ];
    let run = |bin: &Path| {
        let mut d = Daemon::start_bin(&topo.fwd, bin, &args, &[]);
        d.wait_ready();
        d
    };

    let mut d = run(&ambassador_bin());
    let (link, first_prog) = pinned_link(&ingress);
    let traffic = Traffic::start(&topo.client);
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

    let (ok, failed, long) = traffic.finish();
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    let echoes = long.expect("the long-lived connection lived through all of it");
    assert!(echoes > 50, "{echoes} echoes on the long-lived connection");
    eprintln!("{ok} connections and {echoes} long-lived echoes, none failed");

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
