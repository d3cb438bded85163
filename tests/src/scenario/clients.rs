//! The client container's side: its short requests at a steady rate, its long-lived
//! connection, its name lookups, each on a thread inside the container's network namespace.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{LongLife, Progress, Sample, RATE};
use crate::testbed::{Testbed, DB_NAME};

/// Runs `f` on a thread that joined the network namespace at `path` (e.g. a container's).
pub(super) fn spawn_in(path: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
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

/// What the client's threads share with the scenario.
pub(super) struct Shared {
    /// Where the name points (the resolver thread keeps it current).
    pub(super) target: Mutex<SocketAddr>,
    /// When the scenario started.
    pub(super) start: Instant,
    /// Set when the threads should end.
    pub(super) stop: AtomicBool,
    /// Every short request.
    pub(super) samples: Mutex<Vec<Sample>>,
    /// The long-lived connection's lives.
    pub(super) long: Mutex<Vec<LongLife>>,
}

impl Shared {
    /// When `host` last answered, if it did at `after` or later.
    pub(super) fn answered_by(&self, host: &str, after: Duration) -> Option<Duration> {
        let s = self.samples.lock().unwrap();
        s.iter()
            .rev()
            .find(|x| x.at >= after && x.result.as_deref() == Ok(host))
            .map(|x| x.at)
    }
}

/// Short requests at [`RATE`] per second, each on a new connection.
pub(super) fn load(shared: Arc<Shared>) {
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

/// One connection asking every 100 ms; a new one when it ends.
pub(super) fn long_lived(shared: Arc<Shared>) {
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

/// What the display shows now.
pub(super) fn snapshot(shared: &Shared, phase: &str) -> Progress {
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
