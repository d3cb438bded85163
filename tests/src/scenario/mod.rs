//! The seed's migration scenario on the testbed: a client container on h1 uses the database
//! `db` through its VIP, with short connections at a steady rate and one long-lived
//! connection, while the database moves h2 -> h3 -> h4 (h4 behind NAT, another "cloud") in
//! the seed's order: start the new backend, then stop the old one. Then the hard failure: h2's
//! register and backend are killed without cleanup.

mod clients;
mod report;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub use clients::resolve;
use clients::{load, long_lived, snapshot, spawn_in, Shared};
pub use report::*;

use crate::testbed::{db_name, Testbed, DB_FRONTEND_PORT, DB_NAME, DB_PORT};

/// Requests per second of the short-connection loop.
pub const RATE: u32 = 50;

/// A request slower than this waited for something (a SYN retransmission: 1 s).
pub const DELAYED: Duration = Duration::from_millis(500);

/// How often the client looks its name up again during the run, as a client whose cached
/// answer expires would.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(2);

/// Waits until `cond` or panics after `timeout` with `what`.
fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    assert!(crate::wait_until(timeout, &mut cond), "timed out: {what}");
}

/// Runs the scenario on an up testbed. `bin` is the host's `ambassador` (for `service set`
/// and `status`); `progress` is called about twice a second.
pub fn run(tb: &Testbed, bin: &Path, progress: &(dyn Fn(&Progress) + Sync)) -> Report {
    let frontend = prepare(tb, bin);
    let monitor = start_monitors(tb);
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
    let timeline = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                progress(&snapshot(&shared, &phase.lock().unwrap()));
            }
        });
        scope.spawn(|| follow_the_name(tb, &shared, &naming));
        std::thread::sleep(Duration::from_secs(2));
        let timeline = choreography(tb, &shared, &|p| *phase.lock().unwrap() = p);
        *phase.lock().unwrap() = "done".into();
        shared.stop.store(true, Ordering::Relaxed);
        timeline
    });
    for t in threads {
        let _ = t.join();
    }
    let monitor = monitor
        .into_iter()
        .map(monitor_lines)
        .collect::<Result<Vec<_>, _>>()
        .map(|m| m.concat());
    tally(tb, &shared, naming.into_inner().unwrap(), timeline, monitor)
}

/// The service (its frontend allocated: no address is chosen by hand), the database on h2 in
/// h1's maps, and the frontend as the client finds it by name.
fn prepare(tb: &Testbed, bin: &Path) -> SocketAddr {
    let port = DB_FRONTEND_PORT.to_string();
    tb.ctl(bin, &["service", "set", "db", "--port", &port]);
    tb.start_db("h2");
    let pin = tb.pin("h1");
    let advertise = crate::testbed::HOSTS
        .iter()
        .find(|h| h.name == "h2")
        .unwrap()
        .advertise;
    let want = format!("{advertise}:{DB_PORT}");
    wait("db on h2 in h1's maps", Duration::from_secs(20), || {
        Command::new(bin)
            .args(["status", "--json", "--pin-path", pin.to_str().unwrap()])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&want))
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
    first.expect("resolved")
}

/// An operator's view of the same run, as a person would take it: `ambassador monitor` by
/// `docker exec` into h1's `run` container, until it has seen a few flows and a change.
fn start_monitors(tb: &Testbed) -> [Child; 2] {
    ["flow", "applied"].map(|kind| {
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
    })
}

/// Looks the name up every [`RESOLVE_EVERY`] until the end, pointing the client at it.
fn follow_the_name(tb: &Testbed, shared: &Shared, naming: &Mutex<Naming>) {
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
}

/// When the scenario's phases ended, and the moves.
struct Timeline {
    moves: Vec<Move>,
    /// The end of the graceful moves.
    graceful_end: Duration,
    /// The hard failure's kill.
    kill: Duration,
}

/// The moves h2 -> h3 -> h4 in the seed's order, then the hard failure: h2 serves again
/// beside h4, then its register and backend die without any cleanup; h2 stays in the maps
/// until the register's lease expires.
fn choreography(tb: &Testbed, shared: &Shared, set_phase: &dyn Fn(String)) -> Timeline {
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
    let kill = shared.start.elapsed();
    tb.docker("h2", &["kill", "ambassador-register"]);
    tb.docker("h2", &["kill", &db_name("h2")]);
    std::thread::sleep(Duration::from_secs(tb.ttl as u64 + 3));
    Timeline {
        moves,
        graceful_end,
        kill,
    }
}

/// Every request falls in exactly one phase: the graceful moves, the rejoin, the hard
/// failure.
fn tally(
    tb: &Testbed,
    shared: &Shared,
    naming: Naming,
    timeline: Timeline,
    monitor: Result<Vec<String>, String>,
) -> Report {
    let Timeline {
        moves,
        graceful_end,
        kill,
    } = timeline;
    let samples = shared.samples.lock().unwrap().clone();
    let graceful: Vec<&Sample> = samples.iter().filter(|s| s.at < graceful_end).collect();
    let rejoin: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= graceful_end && s.at < kill)
        .collect();
    let hard_failures: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= kill && s.result.is_err())
        .collect();
    let window = hard_failures.last().map_or(Duration::ZERO, |s| s.at - kill);
    let after_kill = || samples.iter().filter(|s| s.at >= kill);
    let delayed = after_kill()
        .filter(|s| s.result.is_ok() && s.took > DELAYED)
        .count() as u64;
    let slowest = after_kill().map(|s| s.took).max().unwrap_or_default();
    Report {
        naming,
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
        long: shared.long.lock().unwrap().clone(),
        hard: Hard {
            failed: hard_failures.len() as u64,
            delayed,
            slowest,
            window,
            ttl: Duration::from_secs(tb.ttl as u64),
        },
        monitor,
    }
}

/// What one `monitor --count` printed once it ended (killed if it has not within 5 s).
fn monitor_lines(mut child: Child) -> Result<Vec<String>, String> {
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
