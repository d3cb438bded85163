//! Seeing what the datapath does: the daemon's status page in a real browser (Debian's
//! Chromium) while it forwards traffic; the Grafana dashboard and the alert rules in
//! `monitoring/` evaluated by a real Prometheus against a daemon under traffic, and checked and
//! unit-tested by promtool.

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
    prometheus::Prometheus,
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

/// `web` at the VIP over b1 and b2 (a server each, in its namespace), and the gateway's daemon
/// with `extra` flags, ready.
struct Web {
    d: Daemon,
    s1: Option<TcpServer>,
    _s2: TcpServer,
    _cfg: TempFile,
    pin: PinDir,
    b1: String,
    b2: String,
    topo: Topology,
}

impl Web {
    fn start(extra: &[&str]) -> Self {
        let topo = Topology::new(2);
        let (b1, b2) = (
            Topology::backend_addr(1, 8080),
            Topology::backend_addr(2, 8080),
        );
        let s1 = Some(TcpServer::start(&topo.backends[0], &b1, "b1"));
        let _s2 = TcpServer::start(&topo.backends[1], &b2, "b2");
        let pin = PinDir::new();
        let _cfg = TempFile::new(&format!(
            "[[service]]\nname = \"web\"\nfrontend = \"{VIP}\"\nendpoints = [\"{b1}\", \"{b2}\"]\n",
        ));
        let mut d = Daemon::run_file(&topo.fwd, "c0", _cfg.as_str(), &pin.path, extra);
        d.wait_ready();
        Self {
            d,
            s1,
            _s2,
            _cfg,
            pin,
            b1,
            b2,
            topo,
        }
    }
}

/// Whether the backend at `addr` of service `web` is suspect.
fn suspect(pin: &std::path::Path, addr: &str) -> bool {
    !service_status(pin, "web").unwrap()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr)
        .unwrap_or_else(|| panic!("{addr} is not a backend of web"))["suspect"]
        .is_null()
}

#[test]
fn the_status_page_shows_a_backend_turn_suspect_in_a_browser() {
    if !require_root("the_status_page_shows_a_backend_turn_suspect_in_a_browser") {
        return;
    }
    // Bound in this order so they drop in the reverse one: the daemon first, the namespaces
    // last.
    let Web {
        topo,
        b1,
        b2,
        pin,
        _cfg,
        _s2,
        mut s1,
        mut d,
    } = Web::start(&["--metrics-addr", "127.0.0.1:0"]);
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
        wait_until(Duration::from_secs(20), || suspect(&pin.path, &b1)),
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

/// The repository's `monitoring/` folder.
fn monitoring() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

/// The metric names an expression reads (`ambassador_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .match_indices("ambassador_")
        .filter(|(at, _)| {
            // The start of a name, not the middle of one.
            !expr[..*at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The dashboard's expressions with its variables given values: every host, every service,
/// a one-minute rate window. With the variables' own queries.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fill = |e: &str| {
        e.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$service", ".*")
    };
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = format!("panel {:?}", p["title"].as_str().unwrap_or_default());
            out.push((title, fill(t["expr"].as_str().unwrap())));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        // label_values(SELECTOR, label): the selector must find series.
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel)
                .unwrap_or_else(|| panic!("variable query {q}"));
            out.push((format!("variable {}", v["name"]), fill(inner)));
        }
    }
    out
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"][..],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(monitoring())
            .output()
            .unwrap_or_else(|e| panic!("promtool (Debian's prometheus package): {e}"));
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Debian's Prometheus scrapes a daemon that follows etcd, answers DNS and forwards traffic;
/// every expression of the dashboard and of the alert rules evaluates without error, every
/// dashboard expression finds series, and every metric the rules read exists. Then a backend's
/// process is killed and the backend alert goes pending.
#[test]
fn prometheus_evaluates_the_dashboard_and_the_alert_rules_against_a_daemon_under_traffic() {
    if !require_root(
        "prometheus_evaluates_the_dashboard_and_the_alert_rules_against_a_daemon_under_traffic",
    ) {
        return;
    }
    let topo = Topology::new(2);
    let etcd = Etcd::single(&topo.fwd);
    let (b1, b2) = (
        Topology::backend_addr(1, 8080),
        Topology::backend_addr(2, 8080),
    );
    let mut s1 = Some(TcpServer::start(&topo.backends[0], &b1, "b1"));
    let _s2 = TcpServer::start(&topo.backends[1], &b2, "b2");
    let pin = PinDir::new();
    let urls = etcd.urls();
    let ctl = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--etcd", &urls]);
        ambassador_ok(&topo.fwd, &full)
    };
    ctl(&["service", "set", "web", "--frontend", VIP]);
    ctl(&["endpoint", "add", "web", &b1, "--id", "b1"]);
    ctl(&["endpoint", "add", "web", &b2, "--id", "b2"]);
    let mut d = Daemon::run_etcd(
        &topo.fwd,
        "c0",
        &urls,
        &pin.path,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:53",
        ],
    );
    d.wait_ready();
    let load = Load::start(&topo.client);
    assert!(wait_until(Duration::from_secs(10), || load.answered() >= 50));
    // A name the responder answers, and a change through etcd (for the lag).
    topo.fwd
        .exec(&["dig", "+short", "@127.0.0.1", "web.ambassador.internal"]);
    ctl(&["endpoint", "add", "web", &b2, "--id", "b2", "--weight", "2"]);

    let target = served_at(&d.log()).to_string();
    let alerts = monitoring().join("alerts.yml");
    let prom = Prometheus::start(&topo.fwd, "ambassador", &[target], &[&alerts]);
    // Enough scrapes for a rate over one minute.
    assert!(
        wait_until(Duration::from_secs(30), || prom
            .query(r#"count_over_time(up{job="ambassador"}[1m]) >= 5"#)
            .is_ok_and(|r| !r.is_empty())),
        "Prometheus never scraped the daemon 5 times:\n{}",
        prom.log()
    );
    assert_eq!(
        prom.query(r#"up{job="ambassador"}"#).unwrap()[0]["value"][1],
        "1"
    );

    let mut problems = Vec::new();
    let dashboard = dashboard_expressions();
    assert!(dashboard.len() >= 20, "{dashboard:?}");
    for (what, expr) in &dashboard {
        match prom.query(expr) {
            Ok(r) if r.is_empty() => problems.push(format!("{what}: no series from {expr}")),
            Ok(_) => {}
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    let groups = prom.api("/api/v1/rules", &[]).unwrap();
    let rules: Vec<(String, String)> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["query"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(rules.len(), 7, "{groups}");
    for (name, expr) in &rules {
        if let Err(e) = prom.query(expr) {
            problems.push(format!("rule {name}: {e}"));
        }
        for metric in metric_names(expr) {
            match prom.query(&metric) {
                Ok(r) if r.is_empty() => {
                    problems.push(format!("rule {name}: no series of {metric}"))
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("rule {name}: {e}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "{} dashboard expressions and {} alert rules evaluated by Prometheus",
        dashboard.len(),
        rules.len()
    );

    // b1's process is killed: the datapath holds it suspect, and so does the alert.
    s1.take();
    assert!(
        wait_until(Duration::from_secs(20), || suspect(&pin.path, &b1)),
        "b1 never became suspect:\n{}",
        d.log()
    );
    let pending = wait_until(Duration::from_secs(20), || {
        prom.api("/api/v1/alerts", &[]).is_ok_and(|a| {
            a["alerts"].as_array().unwrap().iter().any(|x| {
                x["labels"]["alertname"] == "AmbassadorBackendSuspect"
                    && x["labels"]["backend"] == b1.as_str()
                    && x["state"] == "pending"
            })
        })
    });
    assert!(
        pending,
        "AmbassadorBackendSuspect never went pending: {:?}",
        prom.api("/api/v1/alerts", &[])
    );
    // And nothing else is pending: a healthy daemon raises no other alert.
    let others: Vec<serde_json::Value> = prom.api("/api/v1/alerts", &[]).unwrap()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["labels"]["alertname"] != "AmbassadorBackendSuspect")
        .cloned()
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

/// `ambassador monitor`, from other processes: every flow the `tc` datapath translates (client,
/// frontend, backend, service), the backend killed turning suspect, the flows re-pointed away
/// from it, a reload applied; a filtered monitor prints only what it asked for, as text; and
/// the datapath's events stop when the monitors go.
#[test]
fn the_monitor_streams_flows_failovers_suspects_and_changes_from_another_process() {
    if !require_root(
        "the_monitor_streams_flows_failovers_suspects_and_changes_from_another_process",
    ) {
        return;
    }
    // Bound in this order so they drop in the reverse one: the daemon first, the namespaces
    // last.
    let Web {
        topo,
        b1,
        b2,
        pin,
        _cfg,
        _s2,
        mut s1,
        mut d,
    } = Web::start(&[]);
    let pin_arg = pin.path.to_str().unwrap();
    let mut all = monitor(&topo.fwd, &mut d, &pin.path, &[]);
    let mut only = Daemon::start(
        &topo.fwd,
        &[
            "monitor",
            "--pin-path",
            pin_arg,
            "--kind",
            "flow",
            "--client",
            "10.200.0.2",
            "--backend",
            &b2,
        ],
    );

    let load = Load::start(&topo.client);
    let flow_to = |who: &str| {
        monitor_events(&all).iter().any(|e| {
            e["kind"] == "flow"
                && e["datapath"] == "tc"
                && e["proto"] == "tcp"
                && e["service"] == "web"
                && e["frontend"] == VIP
                && e["backend"] == who
                && e["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("10.200.0.2:"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || flow_to(&b1) && flow_to(&b2)),
        "no flow to each backend in the monitor's events:\n{}",
        all.log()
    );

    // b1's process is killed: suspect, and new flows re-pointed from it.
    s1.take();
    let seen = |kind: &str| {
        monitor_events(&all)
            .iter()
            .any(|e| e["kind"] == kind && e["backend"] == b1.as_str() && e["service"] == "web")
    };
    assert!(
        wait_until(Duration::from_secs(20), || seen("suspect")
            && seen("failover")),
        "no suspect and failover events for b1:\n{}",
        all.log()
    );
    // A reload, applied.
    d.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || monitor_events(&all).iter().any(
            |e| e["kind"] == "applied" && e["reason"] == "configuration reloaded"
        )),
        "{}",
        all.log()
    );

    // The filtered monitor printed text, and only flows of that client to b2.
    assert!(
        wait_until(Duration::from_secs(10), || only.log().lines().count() >= 5),
        "{}",
        only.log()
    );
    let text = only.log();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 5, "{text}");
    for line in &lines {
        assert!(
            line.starts_with("flow      tc tcp 10.200.0.2:")
                && line.ends_with(&format!(" -> {VIP} -> {b2} (web)")),
            "{line:?} in:\n{text}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || load.answered() > 50),
        "the traffic stopped"
    );

    // The monitors go, with no traffic left to make an event: the daemon sees them go at once
    // and turns the datapath's events off.
    drop(load);
    all.kill();
    only.kill();
    d.wait_log("flow events are off", Duration::from_secs(10));
}
