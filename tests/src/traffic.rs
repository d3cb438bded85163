//! Steady traffic through a frontend while something goes wrong, with a record of what was
//! lost and for how long anything was degraded.

use std::{
    io::BufReader,
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{tcp_connect_here, tcp_echo, wait_until, NetNs};

/// Traffic through a VIP while it lives: one long-lived connection echoing every 20 ms, and a
/// new connection (connect, identity, echo, close) every 5 ms. Every failure is counted, and
/// the longest stretch without a successful new connection is kept.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    gap: Arc<Mutex<Gap>>,
    long_lived: Option<JoinHandle<Result<u64, String>>>,
    loop_: Option<JoinHandle<()>>,
}

/// The longest time between two successful new connections.
struct Gap {
    last_ok: Instant,
    longest: Duration,
}

/// What the traffic saw.
#[derive(Debug)]
pub struct Outcome {
    /// New connections that worked.
    pub ok: u64,
    /// New connections that failed (connect, identity or echo).
    pub failed: u64,
    /// Echoes on the long-lived connection, or how it broke.
    pub long_lived: Result<u64, String>,
    /// The longest stretch without a successful new connection (degradation, if any).
    pub longest_gap: Duration,
}

impl Outcome {
    /// Panics unless nothing was lost: no failed connection, the long-lived one intact.
    pub fn assert_nothing_lost(&self) {
        assert_eq!(
            self.failed,
            0,
            "{} of {} new connections failed ({self:?})",
            self.failed,
            self.ok + self.failed
        );
        let echoes = self
            .long_lived
            .as_ref()
            .unwrap_or_else(|e| panic!("the long-lived connection broke: {e} ({self:?})"));
        assert!(*echoes > 10, "only {echoes} long-lived echoes ({self:?})");
    }
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
    /// Starts both loops from `client`, against `vip`.
    pub fn start(client: &NetNs, vip: &str) -> Self {
        let addr: SocketAddr = vip.parse().expect("a VIP:port");
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let gap = Arc::new(Mutex::new(Gap {
            last_ok: Instant::now(),
            longest: Duration::ZERO,
        }));
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
        let (s, o, f, g) = (stop.clone(), ok.clone(), failed.clone(), gap.clone());
        let loop_ = client.spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = connect(addr).and_then(|(mut c, _)| echo(&mut c, "short"));
                match r {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        let mut g = g.lock().unwrap();
                        let now = Instant::now();
                        g.longest = g.longest.max(now - g.last_ok);
                        g.last_ok = now;
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            ok,
            failed,
            gap,
            long_lived: Some(long_lived),
            loop_: Some(loop_),
        }
    }

    /// New connections that worked so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// New connections that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits for `n` more successful connections (so each phase is really exercised).
    pub fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        assert!(
            wait_until(Duration::from_secs(10), || self.ok() >= target),
            "traffic stalled at {} ok, {} failed",
            self.ok(),
            self.failed()
        );
    }

    /// Stops and says what happened.
    pub fn finish(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.loop_.take().expect("running").join().expect("loop");
        let long_lived = self
            .long_lived
            .take()
            .expect("running")
            .join()
            .expect("long");
        let longest_gap = self.gap.lock().unwrap().longest;
        Outcome {
            ok: self.ok(),
            failed: self.failed(),
            long_lived,
            longest_gap,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
