//! What the scenario measured, and its table for people.

use std::{net::SocketAddr, time::Duration};

use super::DELAYED;
use crate::testbed::DB_NAME;

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
    /// Lookups during the run (every [`RESOLVE_EVERY`](super::RESOLVE_EVERY)), and those that failed.
    pub lookups: u64,
    /// Lookups that failed.
    pub failed: u64,
}

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
