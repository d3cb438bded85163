//! The seed's migration scenario on the testbed: a client container on h1 uses the database
//! `db` through its VIP, with short connections at a steady rate and one long-lived
//! connection, while the database moves h2 -> h3 -> h4 (h4 behind NAT, another "cloud") in
//! the seed's order: start the new backend, then stop the old one. Then the hard failure: h2's
//! register and backend are killed without cleanup.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::testbed::{db_name, Testbed, DB_FRONTEND_PORT, DB_NAME, DB_PORT};

/// Requests per second of the short-connection loop.
pub const RATE: u32 = 50;

/// One short request: when it started, and which host answered (or why it failed).
#[derive(Clone, Debug)]
pub struct Sample {
    /// Start, relative to the scenario's start.
    pub at: Duration,
    /// The host that answered, or the error.
    pub result: Result<String, String>,
    /// How long it took.
    pub took: Duration,
}

/// One life of the long-lived connection.
#[derive(Clone, Debug)]
pub struct LongLife {
    /// The host it was connected to.
    pub backend: String,
    /// When it was opened and how long it lived.
    pub opened: Duration,
    /// How long it lived.
    pub lasted: Duration,
    /// Requests answered on it.
    pub answered: u64,
    /// How it ended (None: still open at the end).
    pub ended: Option<String>,
}

/// One move of the database.
#[derive(Clone, Debug)]
pub struct Move {
    /// Old host.
    pub from: String,
    /// New host.
    pub to: String,
    /// From starting the new backend to its first answer through the VIP.
    pub takeover: Duration,
    /// From stopping the old backend to its last answer through the VIP.
    pub drain: Duration,
}

/// A request slower than this waited for something (a SYN retransmission: 1 s).
pub const DELAYED: Duration = Duration::from_millis(500);

/// The hard failure.
#[derive(Clone, Debug)]
pub struct Hard {
    /// Requests that failed.
    pub failed: u64,
    /// Requests that succeeded after waiting longer than [`DELAYED`].
    pub delayed: u64,
    /// The slowest request after the kill.
    pub slowest: Duration,
    /// From the kill to the last failed request.
    pub window: Duration,
    /// The registers' lease TTL.
    pub ttl: Duration,
}

/// The client's name lookups (its container's resolver: the responder on h1's docker0).
#[derive(Clone, Debug, Default)]
pub struct Naming {
    /// The address and port the name and its SRV record gave.
    pub frontend: Option<SocketAddr>,
    /// Lookups during the run (every [`RESOLVE_EVERY`]), and those that failed.
    pub lookups: u64,
    /// Lookups that failed.
    pub failed: u64,
}

/// How often the client looks its name up again during the run, as a client whose cached
/// answer expires would.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(2);

/// What the scenario measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The client's name lookups.
    pub naming: Naming,
    /// Short requests sent during the graceful moves (from the first request).
    pub requests: u64,
    /// Of which failed.
    pub failed: u64,
    /// Short requests while h2 rejoined beside h4 (between the moves and the kill).
    pub rejoin_requests: u64,
    /// Of which failed.
    pub rejoin_failed: u64,
    /// Short requests from the kill to the end (the hard failure).
    pub hard_requests: u64,
    /// The failed ones before the kill (time and error), for diagnosis.
    pub failures: Vec<(Duration, String)>,
    /// The moves.
    pub moves: Vec<Move>,
    /// The long-lived connection's lives.
    pub long: Vec<LongLife>,
    /// The hard failure.
    pub hard: Hard,
    /// What `ambassador monitor`, run by `docker exec` in h1's `run` container during the
    /// moves, printed: flows, then the changes applied (JSON lines), or why it did not.
    pub monitor: Result<Vec<String>, String>,
}

/// A snapshot for a live display.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Time since the start.
    pub elapsed: Duration,
    /// What is happening.
    pub phase: String,
    /// Hosts that answered in the last second.
    pub serving: Vec<String>,
    /// Requests per second over the last second.
    pub rate: u32,
    /// Requests so far.
    pub requests: u64,
    /// Failed so far.
    pub failed: u64,
    /// The long-lived connection's current backend (None while reconnecting).
    pub long: Option<String>,
}

/// Runs `f` on a thread that joined the network namespace at `path` (e.g. a container's).
fn spawn_in(path: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// `GET host` on an open connection: which host this redis runs on ("-" while a just-started
/// redis has not stored its host name yet: it answered, so the request succeeded).
fn ask(conn: &mut BufReader<TcpStream>) -> Result<String, String> {
    conn.get_mut()
        .write_all(b"GET host\r\n")
        .map_err(|e| e.to_string())?;
    let mut len = String::new();
    match conn.read_line(&mut len) {
        Ok(0) => return Err("closed by the server".into()),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    match len.trim_end() {
        "$-1" => return Ok("-".into()),
        l if l.starts_with('$') => {}
        other => return Err(format!("unexpected answer {other:?}")),
    }
    let mut value = String::new();
    conn.read_line(&mut value).map_err(|e| e.to_string())?;
    Ok(value.trim().to_owned())
}

/// Looks `db` up as the client container does (busybox nslookup, through its resolv.conf,
/// which `docker run --dns` points at the responder): the address from the A record, the port
/// from the SRV record.
pub fn resolve(tb: &Testbed) -> Result<SocketAddr, String> {
    let a = tb.docker_output("h1", &["exec", "client", "nslookup", "-type=A", DB_NAME])?;
    let ip = a
        .split(&format!("Name:\t{DB_NAME}"))
        .nth(1)
        .and_then(|rest| rest.lines().find_map(|l| l.strip_prefix("Address: ")))
        .and_then(|ip| ip.trim().parse::<std::net::Ipv4Addr>().ok())
        .ok_or_else(|| format!("no address for {DB_NAME}: {a}"))?;
    let srv_name = format!("_db._tcp.{}", DB_NAME.trim_start_matches("db."));
    let srv = tb.docker_output(
        "h1",
        &["exec", "client", "nslookup", "-type=SRV", &srv_name],
    )?;
    let port = srv
        .lines()
        .find_map(|l| l.split("service = ").nth(1))
        .and_then(|v| v.split_whitespace().nth(2))
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| format!("no SRV record for {srv_name}: {srv}"))?;
    Ok(SocketAddr::from((ip, port)))
}

fn connect(addr: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    // A client's usual connect timeout outlasts one SYN retransmission (1 s), which is what a
    // connection that meets a dead backend waits for while the datapath re-points it.
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(BufReader::new(s))
}

struct Shared {
    /// Where the name points (the resolver thread keeps it current).
    target: Mutex<SocketAddr>,
    start: Instant,
    stop: AtomicBool,
    samples: Mutex<Vec<Sample>>,
    long: Mutex<Vec<LongLife>>,
}

impl Shared {
    fn answered_by(&self, host: &str, after: Duration) -> Option<Duration> {
        let s = self.samples.lock().unwrap();
        s.iter()
            .rev()
            .find(|x| x.at >= after && x.result.as_deref() == Ok(host))
            .map(|x| x.at)
    }
}

fn load(shared: Arc<Shared>) {
    let period = Duration::from_secs(1) / RATE;
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let at = shared.start.elapsed();
        let target = *shared.target.lock().unwrap();
        let result = connect(target).and_then(|mut c| ask(&mut c));
        let took = shared.start.elapsed() - at;
        shared
            .samples
            .lock()
            .unwrap()
            .push(Sample { at, result, took });
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else {
            next = Instant::now();
        }
    }
}

fn long_lived(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let target = *shared.target.lock().unwrap();
        let Ok(mut conn) = connect(target) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let opened = shared.start.elapsed();
        let Ok(backend) = ask(&mut conn) else {
            continue;
        };
        let idx = {
            let mut l = shared.long.lock().unwrap();
            l.push(LongLife {
                backend,
                opened,
                lasted: Duration::ZERO,
                answered: 1,
                ended: None,
            });
            l.len() - 1
        };
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let r = ask(&mut conn);
            let mut l = shared.long.lock().unwrap();
            let life = &mut l[idx];
            life.lasted = shared.start.elapsed() - opened;
            match r {
                Ok(_) => life.answered += 1,
                Err(e) => {
                    life.ended = Some(e);
                    break;
                }
            }
        }
    }
}

/// Waits until `cond` or panics after `timeout` with `what`.
fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    assert!(crate::wait_until(timeout, &mut cond), "timed out: {what}");
}

/// Runs the scenario on an up testbed. `bin` is the host's `ambassador` (for `service set`
/// and `status`); `progress` is called about twice a second.
pub fn run(tb: &Testbed, bin: &Path, progress: &(dyn Fn(&Progress) + Sync)) -> Report {
    // No address is chosen by hand: the service's frontend is allocated, and the client finds
    // it by name.
    let port = DB_FRONTEND_PORT.to_string();
    tb.ctl(bin, &["service", "set", "db", "--port", &port]);
    tb.start_db("h2");
    let pin = tb.pin("h1");
    let backend_in_maps = |host: &str| {
        let advertise = crate::testbed::HOSTS
            .iter()
            .find(|h| h.name == host)
            .unwrap()
            .advertise;
        let want = format!("{advertise}:{DB_PORT}");
        Command::new(bin)
            .args(["status", "--json", "--pin-path", pin.to_str().unwrap()])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&want))
    };
    wait("db on h2 in h1's maps", Duration::from_secs(20), || {
        backend_in_maps("h2")
    });

    // An operator's view of the same run, as a person would take it: `ambassador monitor` by
    // `docker exec` into h1's `run` container, until it has seen a few flows and a change.
    let monitor = ["flow", "applied"].map(|kind| {
        tb.docker_spawn(
            "h1",
            &[
                "exec",
                "ambassador-run",
                "/usr/local/bin/ambassador",
                "monitor",
                "--json",
                "--kind",
                kind,
                "--count",
                "3",
            ],
        )
    });

    let mut first = Err(String::new());
    wait(
        &format!("{DB_NAME} answered by the responder"),
        Duration::from_secs(20),
        || {
            first = resolve(tb);
            first.is_ok()
        },
    );
    let frontend = first.expect("resolved");
    let naming = Mutex::new(Naming {
        frontend: Some(frontend),
        lookups: 1,
        failed: 0,
    });
    let shared = Arc::new(Shared {
        target: Mutex::new(frontend),
        start: Instant::now(),
        stop: AtomicBool::new(false),
        samples: Mutex::new(Vec::new()),
        long: Mutex::new(Vec::new()),
    });
    let client = tb.container_netns("h1", "client");
    let threads = [
        spawn_in(client.clone(), {
            let s = shared.clone();
            move || load(s)
        }),
        spawn_in(client, {
            let s = shared.clone();
            move || long_lived(s)
        }),
    ];
    let phase = Mutex::new("warming up on h2".to_owned());
    let set_phase = |p: String| *phase.lock().unwrap() = p;
    let (moves, graceful_end, t_kill) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                progress(&snapshot(&shared, &phase.lock().unwrap()));
            }
        });
        scope.spawn(|| {
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(RESOLVE_EVERY);
                let looked_up = resolve(tb);
                let mut n = naming.lock().unwrap();
                n.lookups += 1;
                match looked_up {
                    Ok(addr) => {
                        *shared.target.lock().unwrap() = addr;
                        n.frontend = Some(addr);
                    }
                    Err(_) => n.failed += 1,
                }
            }
        });
        std::thread::sleep(Duration::from_secs(2));

        let mut moves = Vec::new();
        for (from, to) in [("h2", "h3"), ("h3", "h4")] {
            set_phase(format!("moving {from} -> {to}: starting db on {to}"));
            let t0 = shared.start.elapsed();
            tb.start_db(to);
            wait(
                &format!("first answer from {to}"),
                Duration::from_secs(20),
                || shared.answered_by(to, t0).is_some(),
            );
            let first = shared.answered_by(to, t0).unwrap();
            // Both serve for a moment, as in the seed.
            std::thread::sleep(Duration::from_secs(1));
            set_phase(format!("moving {from} -> {to}: stopping db on {from}"));
            let t1 = shared.start.elapsed();
            tb.docker(from, &["stop", &db_name(from)]);
            std::thread::sleep(Duration::from_secs(1));
            let last = shared
                .answered_by(from, Duration::ZERO)
                .unwrap_or(t1)
                .max(t1);
            moves.push(Move {
                from: from.into(),
                to: to.into(),
                takeover: first - t0,
                drain: last - t1,
            });
        }
        let graceful_end = shared.start.elapsed();

        // The hard failure: h2 serves again beside h4, then its register and backend die
        // without any cleanup; h2 stays in the maps until the register's lease expires.
        set_phase("hard failure: db back on h2 beside h4".into());
        let t = shared.start.elapsed();
        tb.start_db("h2");
        wait(
            "first answer from h2 again",
            Duration::from_secs(20),
            || shared.answered_by("h2", t).is_some(),
        );
        std::thread::sleep(Duration::from_secs(1));
        set_phase("hard failure: h2's register and db killed (SIGKILL)".into());
        let t_kill = shared.start.elapsed();
        tb.docker("h2", &["kill", "ambassador-register"]);
        tb.docker("h2", &["kill", &db_name("h2")]);
        std::thread::sleep(Duration::from_secs(tb.ttl as u64 + 3));
        set_phase("done".into());
        shared.stop.store(true, Ordering::Relaxed);
        (moves, graceful_end, t_kill)
    });
    for t in threads {
        let _ = t.join();
    }
    let monitor = monitor
        .into_iter()
        .map(monitor_lines)
        .collect::<Result<Vec<_>, _>>()
        .map(|m| m.concat());
    let ttl = Duration::from_secs(tb.ttl as u64);

    let samples = shared.samples.lock().unwrap().clone();
    // Every request falls in exactly one phase: the graceful moves, the rejoin, the hard
    // failure.
    let graceful: Vec<&Sample> = samples.iter().filter(|s| s.at < graceful_end).collect();
    let rejoin: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= graceful_end && s.at < t_kill)
        .collect();
    let hard_failures: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= t_kill && s.result.is_err())
        .collect();
    let window = hard_failures
        .last()
        .map_or(Duration::ZERO, |s| s.at - t_kill);
    let after_kill = || samples.iter().filter(|s| s.at >= t_kill);
    let delayed = after_kill()
        .filter(|s| s.result.is_ok() && s.took > DELAYED)
        .count() as u64;
    let slowest = after_kill().map(|s| s.took).max().unwrap_or_default();
    let long = shared.long.lock().unwrap().clone();
    Report {
        naming: naming.into_inner().unwrap(),
        requests: graceful.len() as u64,
        failed: graceful.iter().filter(|s| s.result.is_err()).count() as u64,
        rejoin_requests: rejoin.len() as u64,
        rejoin_failed: rejoin.iter().filter(|s| s.result.is_err()).count() as u64,
        hard_requests: after_kill().count() as u64,
        failures: graceful
            .iter()
            .chain(&rejoin)
            .filter_map(|s| s.result.clone().err().map(|e| (s.at, e)))
            .collect(),
        moves,
        long,
        hard: Hard {
            failed: hard_failures.len() as u64,
            delayed,
            slowest,
            window,
            ttl,
        },
        monitor,
    }
}

/// What one `monitor --count` printed once it ended (killed if it has not within 5 s).
fn monitor_lines(mut child: std::process::Child) -> Result<Vec<String>, String> {
    let done = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if out.status.success() {
        Ok(lines)
    } else {
        Err(format!(
            "monitor {}: {}{}",
            out.status,
            lines.join("\n"),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the display shows now.
fn snapshot(shared: &Shared, phase: &str) -> Progress {
    let elapsed = shared.start.elapsed();
    let s = shared.samples.lock().unwrap();
    let recent: Vec<&Sample> = s
        .iter()
        .filter(|x| x.at + Duration::from_secs(1) >= elapsed)
        .collect();
    let serving: BTreeSet<String> = recent
        .iter()
        .filter_map(|x| x.result.clone().ok())
        .collect();
    let long = shared
        .long
        .lock()
        .unwrap()
        .last()
        .filter(|l| l.ended.is_none())
        .map(|l| l.backend.clone());
    Progress {
        elapsed,
        phase: phase.to_owned(),
        serving: serving.into_iter().collect(),
        rate: recent.len() as u32,
        requests: s.len() as u64,
        failed: s.iter().filter(|x| x.result.is_err()).count() as u64,
        long,
    }
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "name: {DB_NAME} -> {} (A and SRV, from the client container's resolver: the responder on h1's docker0); {} lookups during the run, {} failed\n\n",
        r.naming.frontend.map_or("-".into(), |a| a.to_string()),
        r.naming.lookups,
        r.naming.failed
    ));
    out.push_str(&format!(
        "graceful moves: {} requests through the VIP, {} failed\n",
        r.requests, r.failed
    ));
    out.push_str(&format!(
        "h2 rejoining beside h4: {} requests, {} failed\n",
        r.rejoin_requests, r.rejoin_failed
    ));
    out.push_str(&format!(
        "every request: {} ({} before the hard failure, {} after the kill)\n\n",
        r.requests + r.rejoin_requests + r.hard_requests,
        r.requests + r.rejoin_requests,
        r.hard_requests
    ));
    for (at, e) in &r.failures {
        out.push_str(&format!("  failed at {:.3} s: {e}\n", at.as_secs_f64()));
    }
    out.push_str(&format!(
        "{:<10} {:>16} {:>14}\n",
        "MOVE", "NEW ANSWERS IN", "OLD DRAINED IN"
    ));
    for m in &r.moves {
        out.push_str(&format!(
            "{:<10} {:>13.0} ms {:>11.0} ms\n",
            format!("{} -> {}", m.from, m.to),
            m.takeover.as_secs_f64() * 1000.0,
            m.drain.as_secs_f64() * 1000.0
        ));
    }
    match &r.monitor {
        Ok(lines) => {
            out.push_str(&format!(
                "\n`docker exec ambassador-run ambassador monitor --json` on h1 saw {} events, among them:\n",
                lines.len()
            ));
            for line in lines.iter().take(1).chain(lines.last()) {
                out.push_str(&format!("  {line}\n"));
            }
        }
        Err(e) => out.push_str(&format!("\nambassador monitor on h1 failed: {e}\n")),
    }
    out.push_str("\nlong-lived connection (one request every 100 ms):\n");
    for l in &r.long {
        out.push_str(&format!(
            "  on {:<3} opened at {:>5.1} s, lived {:>5.1} s, {:>4} answers, {}\n",
            l.backend,
            l.opened.as_secs_f64(),
            l.lasted.as_secs_f64(),
            l.answered,
            match &l.ended {
                None => "open at the end".to_owned(),
                Some(e) =>
                    format!("ended when its backend stopped ({e}); reconnected through the VIP"),
            }
        ));
    }
    out.push_str(&format!(
        "\nhard failure (h2's register and backend SIGKILLed): {} requests failed{}, {} delayed past {} ms (slowest {:.2} s) while h2 stayed registered (lease TTL {} s)\n",
        r.hard.failed,
        if r.hard.failed > 0 {
            format!(" over {:.1} s", r.hard.window.as_secs_f64())
        } else {
            String::new()
        },
        r.hard.delayed,
        DELAYED.as_millis(),
        r.hard.slowest.as_secs_f64(),
        r.hard.ttl.as_secs()
    ));
    out
}
