//! Seeing what the datapath does: the daemon's status page in a real browser (Debian's
//! Chromium) while it forwards traffic.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use ambassador_tests::{
    metrics::{get, served_at},
    *,
};

const VIP: &str = "10.96.0.10:80";

/// New connections through the VIP, one every 5 ms, until dropped; counts those answered.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(client: &NetNs) -> Self {
        let addr: SocketAddr = VIP.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), answered.clone());
        let thread = client.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if tcp_connect_here(addr, Duration::from_secs(5)).is_ok() {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            answered,
            thread: Some(thread),
        }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The state the page gives the backend at `addr` (`data-state` of its row), if it lists it.
fn state_on_page<'a>(dom: &'a str, addr: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-addr=\"{addr}\" data-state=\""))?;
    let rest = &dom[at..];
    let rest = &rest[rest.find("data-state=\"")? + "data-state=\"".len()..];
    rest.split('"').next()
}

/// How many times the page's script refreshed it in place (`data-refreshes` of `<main>`).
fn refreshes(dom: &str) -> u32 {
    dom.split("<main data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no <main data-refreshes> in the page:\n{dom}"))
}

#[test]
fn the_status_page_shows_a_backend_turn_suspect_in_a_browser() {
    let topo = Topology::new(2);
    let (b1, b2) = (
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
    );
    let mut s1 = Some(TcpServer::start(&topo.backends[0], &b1, "b1"));
    let _s2 = TcpServer::start(&topo.backends[1], &b2, "b2");
    let pin = PinDir::new();
    let cfg = TempFile::new(&format!(
        "[[service]]\nname = \"web\"\nfrontend = \"{VIP}\"\nendpoints = [\"{b1}\", \"{b2}\"]\n",
    ));
    let mut d = Daemon::run_file(
        &topo.fwd,
        "c0",
        cfg.as_str(),
        &pin.path,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    d.wait_ready();
    d.wait_log("status page at http://", Duration::from_secs(5));
    let at = served_at(&d.log());
    let url = format!("http://{at}/");

    let load = Load::start(&topo.client);
    assert!(wait_until(Duration::from_secs(10), || load.answered() >= 50));

    // Both backends active, on the page as Chromium builds it and in the JSON.
    let shot = screenshot_path("status-page-before.png");
    let dom = chromium(&topo.fwd, &[], &url, &shot);
    assert_eq!(state_on_page(&dom, &b1), Some("active"), "{dom}");
    assert_eq!(state_on_page(&dom, &b2), Some("active"), "{dom}");
    assert!(dom.contains("<title>ambassador on "), "{dom}");
    let (line, json) = get(&topo.fwd.name, at, "/status.json");
    assert_eq!(line, "HTTP/1.1 200 OK", "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["services"][0]["name"], "web", "{json}");
    assert!(json["daemon"]["applies"].as_u64().unwrap() >= 1, "{json}");

    // b1's process is killed: the datapath meets its RST, holds it suspect, and so does the
    // page; the page's script refreshed it in place at least once meanwhile (Chromium's
    // virtual time runs the page's timers without waiting for them).
    s1.take();
    assert!(
        wait_until(Duration::from_secs(20), || {
            !service_status(&pin.path, "web").unwrap()["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["addr"] == b1.as_str())
                .unwrap()["suspect"]
                .is_null()
        }),
        "b1 never became suspect:\n{}",
        d.log()
    );
    let shot = screenshot_path("status-page.png");
    let dom = chromium(
        &topo.fwd,
        &["--virtual-time-budget=5000", "--window-size=1000,760"],
        &url,
        &shot,
    );
    assert_eq!(state_on_page(&dom, &b1), Some("suspect"), "{dom}");
    assert_eq!(state_on_page(&dom, &b2), Some("active"), "{dom}");
    assert!(dom.contains("<strong>suspect</strong> (refused, "), "{dom}");
    assert!(refreshes(&dom) >= 1, "never refreshed in place:\n{dom}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "no screenshot at {}", shot.display());
    eprintln!("the status page, b1 suspect: {}", shot.display());
    let answered = load.answered();
    assert!(
        wait_until(Duration::from_secs(5), || load.answered() > answered + 20),
        "the traffic stopped"
    );
}
