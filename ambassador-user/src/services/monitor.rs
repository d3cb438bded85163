//! The daemon's event stream for `ambassador monitor`: flows the datapath translated, re-pointed
//! or dropped, backends turning suspect and answering again, desired states applied. Any
//! number of monitors connect to a unix socket (root only) beside the daemon; each gets every
//! event as a JSON line and filters for itself.
//!
//! Bounded: the datapath emits flow events only while a monitor is connected (the daemon sets
//! the datapath's monitor switch from [`Hub::listening`]); each monitor has a queue of
//! [`QUEUE`] events, and one that reads too slowly loses the oldest, is told how many in a
//! `lost` event, and is counted; one that stops reading for [`WRITE_DEADLINE`] is closed.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{broadcast, watch},
};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    services::heartbeat::unix_ms,
};

/// Events queued for one monitor before it loses the oldest.
pub const QUEUE: usize = 4096;
/// How long a monitor may leave an event unread before it is closed.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Monitors connected at once; more are closed at once.
const MAX_MONITORS: usize = 16;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A new flow (or socket) translated from a frontend to a backend.
    Flow,
    /// A new flow sent away from a suspect backend to another (failover).
    Failover,
    /// A packet to a frontend dropped, and why.
    Drop,
    /// A backend this host's datapath now avoids (refused or silent).
    Suspect,
    /// A suspect backend answered a new flow: in use again.
    Recovered,
    /// A desired state applied to the maps (or failing to apply).
    Applied,
    /// Events this monitor missed because it read too slowly.
    Lost,
}

/// One event, as a JSON line on the socket and in `monitor --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time (ms) the daemon saw it.
    pub at_ms: u64,
    /// What happened.
    pub kind: Kind,
    /// The service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The backend's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The frontend the client dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
    /// The datapath that saw it: `tc`, `xdp` or `sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<String>,
    /// `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Why: a drop's reason, a suspicion's cause, what was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// More, for people (strikes and backoff, counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    /// An event of `kind` now, with nothing else said yet.
    pub fn new(kind: Kind) -> Self {
        Self {
            at_ms: unix_ms(std::time::SystemTime::now()),
            kind,
            service: None,
            backend: None,
            client: None,
            frontend: None,
            datapath: None,
            proto: None,
            reason: None,
            detail: None,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = serde_json::to_value(self.kind).expect("a kind serializes");
        write!(f, "{:<9}", kind.as_str().unwrap_or("?"))?;
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        match self.kind {
            Kind::Flow | Kind::Failover | Kind::Drop => write!(
                f,
                " {} {} {} -> {} -> {} ({})",
                or(&self.datapath),
                or(&self.proto),
                or(&self.client),
                or(&self.frontend),
                or(&self.backend),
                or(&self.service)
            )?,
            Kind::Suspect | Kind::Recovered => {
                write!(f, " {} of {}", or(&self.backend), or(&self.service))?
            }
            Kind::Applied | Kind::Lost => {
                let said: Vec<&str> = [&self.reason, &self.detail]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect();
                return write!(f, " {}", said.join(": "));
            }
        }
        for v in [&self.reason, &self.detail].into_iter().flatten() {
            write!(f, ": {v}")?;
        }
        Ok(())
    }
}

/// The event a datapath's record tells; `service` and `backend` name its ids (None: unknown
/// to the daemon, said by id).
pub fn from_datapath(r: &ambassador_common::monitor::FlowEvent, service: Option<String>) -> Event {
    use ambassador_common::{
        monitor::{datapath, kind},
        Reason,
    };
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let addr = |octets: [u8; 16], port_be: u16| -> String {
        let ip = if r.family == 4 {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        SocketAddr::new(ip, u16::from_be(port_be)).to_string()
    };
    let mut e = Event::new(match r.kind {
        kind::FAILOVER => Kind::Failover,
        kind::DROP => Kind::Drop,
        _ => Kind::Flow,
    });
    e.service = Some(service.unwrap_or_else(|| format!("id {}", r.service_id)));
    e.frontend = Some(addr(r.frontend, r.frontend_port_be));
    e.datapath = Some(
        match r.datapath {
            datapath::TC => "tc",
            datapath::XDP => "xdp",
            _ => "sock",
        }
        .to_owned(),
    );
    e.proto = Some(match r.proto {
        ambassador_common::proto::TCP => "tcp".to_owned(),
        ambassador_common::proto::UDP => "udp".to_owned(),
        other => other.to_string(),
    });
    if r.datapath == datapath::SOCK {
        e.detail = Some(format!("socket cookie {}", r.cookie));
    } else {
        e.client = Some(addr(r.client, r.client_port_be));
    }
    if r.kind != kind::DROP {
        e.backend = Some(addr(r.backend, r.backend_port_be));
    }
    if r.kind != kind::FLOW {
        e.reason = Reason::ALL
            .iter()
            .find(|x| **x as u32 == u32::from(r.reason))
            .map(|x| x.name().to_owned());
    }
    e
}

/// Where the daemon whose maps are pinned at `pin_dir` serves its events: one socket per pin
/// directory, so daemons on one host (tests, several datapaths) never share one.
pub fn socket_path(pin_dir: &Path) -> PathBuf {
    let name = pin_dir
        .file_name()
        .map_or_else(|| "ambassador".into(), |n| n.to_string_lossy());
    PathBuf::from("/run/ambassador").join(format!("{name}.monitor"))
}

/// The daemon's side: events in, monitors out.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<str>>,
    listening: watch::Sender<bool>,
    /// Events monitors lost because they read too slowly.
    lost: Arc<AtomicU64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(QUEUE).0,
            listening: watch::channel(false).0,
            lost: Arc::default(),
        }
    }
}

impl Hub {
    /// Whether any monitor is connected (the datapath emits flow events only then).
    pub fn is_listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Monitors connected.
    pub fn monitors(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Changes of [`Hub::is_listening`], for the daemon to switch the datapath's events.
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
    }

    /// Events monitors lost because they read too slowly.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Sends `event` to every monitor (nothing is built while none listens).
    pub fn publish(&self, event: impl FnOnce() -> Event) {
        if self.is_listening() {
            let line = serde_json::to_string(&event()).expect("an event serializes");
            let _ = self.tx.send(line.into());
        }
    }

    /// Listens at `path` (its folder made root-only, a stale socket replaced) and serves
    /// monitors in the background.
    pub fn serve(&self, path: &Path) -> Result<tokio::task::JoinHandle<()>> {
        let listener = bind(path)?;
        info!(socket = %path.display(), "events for `ambassador monitor` at {}", path.display());
        let hub = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) if hub.tx.receiver_count() >= MAX_MONITORS => {
                        debug!("monitor: {MAX_MONITORS} connected already; closing a new one");
                        drop(stream);
                    }
                    Ok((stream, _)) => {
                        let rx = hub.tx.subscribe();
                        hub.listening.send_replace(true);
                        tokio::spawn(hub.clone().feed(stream, rx));
                    }
                    Err(e) => {
                        warn!("accepting a monitor failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }))
    }

    /// Writes every event to one monitor until it goes, stalls, or the daemon stops.
    async fn feed(self, stream: UnixStream, mut rx: broadcast::Receiver<Arc<str>>) {
        // A monitor never writes: its side readable means it went (EOF), and it stops holding
        // the datapath's events on at once rather than at the next event.
        let (mut gone, mut stream) = stream.into_split();
        let mut byte = [0u8; 1];
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = gone.read(&mut byte) => break,
            };
            let line: Arc<str> = match next {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lost.fetch_add(n, Ordering::Relaxed);
                    let mut e = Event::new(Kind::Lost);
                    e.detail = Some(format!("{n} events missed: this monitor read too slowly"));
                    serde_json::to_string(&e)
                        .expect("an event serializes")
                        .into()
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            let write = async {
                stream.write_all(line.as_bytes()).await?;
                stream.write_all(b"\n").await
            };
            match tokio::time::timeout(WRITE_DEADLINE, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    debug!("monitor: not reading for {WRITE_DEADLINE:?}; closed");
                    break;
                }
            }
        }
        drop(rx);
        if self.tx.receiver_count() == 0 {
            self.listening.send_replace(false);
        }
    }
}

/// Binds the socket: its folder made (root only), a socket left by a dead daemon replaced, one
/// a live daemon serves refused.
fn bind(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::Usage(format!(
            "{} is served by another daemon: is one already running with this pin directory?",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(Error::io(format!("listening at {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io(format!("making {} root-only", path.display())))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    use super::*;

    #[test]
    fn events_read_as_people_expect() {
        let mut e = Event::new(Kind::Flow);
        e.datapath = Some("tc".into());
        e.proto = Some("tcp".into());
        e.client = Some("10.200.0.2:40000".into());
        e.frontend = Some("10.96.0.10:80".into());
        e.backend = Some("10.200.1.2:8080".into());
        e.service = Some("web".into());
        assert_eq!(
            e.to_string(),
            "flow      tc tcp 10.200.0.2:40000 -> 10.96.0.10:80 -> 10.200.1.2:8080 (web)"
        );
        let mut s = Event::new(Kind::Suspect);
        s.backend = Some("10.200.1.2:8080".into());
        s.service = Some("web".into());
        s.reason = Some("refused".into());
        s.detail = Some("1 in a row; next try in 1 s".into());
        assert_eq!(
            s.to_string(),
            "suspect   10.200.1.2:8080 of web: refused: 1 in a row; next try in 1 s"
        );
        let mut a = Event::new(Kind::Applied);
        a.reason = Some("etcd revision 58 applied".into());
        a.detail = Some("3 services, 2 changes".into());
        assert_eq!(
            a.to_string(),
            "applied   etcd revision 58 applied: 3 services, 2 changes"
        );
        let line = serde_json::to_string(&s).unwrap();
        assert!(line.contains(r#""kind":"suspect""#), "{line}");
        assert!(!line.contains("client"), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), s);
    }

    /// Nothing is built while no monitor listens; a monitor gets what is published; a slow
    /// one is told what it lost; the switch follows the monitors.
    #[tokio::test(flavor = "current_thread")]
    async fn monitors_get_events_and_a_slow_one_hears_what_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.monitor");
        let hub = Hub::default();
        let mut listening = hub.listening();
        hub.publish(|| unreachable!("built with no monitor"));
        let server = hub.serve(&path).unwrap();
        assert!(
            hub.serve(&path).is_err(),
            "a second daemon on the same socket"
        );
        let stream = UnixStream::connect(&path).await.unwrap();
        listening.wait_for(|l| *l).await.unwrap();
        let mut lines = BufReader::new(stream).lines();
        hub.publish(|| Event::new(Kind::Applied));
        let first: Event =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(first.kind, Kind::Applied);
        for _ in 0..QUEUE * 2 {
            hub.publish(|| Event::new(Kind::Flow));
        }
        let mut lost = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            let e: Event = serde_json::from_str(&line).unwrap();
            if e.kind == Kind::Lost {
                lost = e.detail;
                break;
            }
        }
        assert!(lost
            .unwrap()
            .ends_with("events missed: this monitor read too slowly"));
        assert!(hub.lost() > 0);
        // It goes: the switch turns off without waiting for another event.
        drop(lines);
        listening.wait_for(|l| !*l).await.unwrap();
        server.abort();
    }
}
