//! etcd as the source of the desired state: connect (TLS, user/password), list the prefix,
//! watch it from the listed revision, and on any failure or compaction reconnect with backoff
//! and list again. What was last listed stays in force while etcd is away.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
    WatchStream,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    control::reconnect::{Members, Reconnect},
    core::{
        contract::{self, PutOutcome, Store},
        model::Desired,
        policy::Refusal,
        trust::{FrontendScope, Mode},
    },
    error::{Error, Result},
};

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of the contract (default `/ambassador`).
    pub prefix: String,
    /// CA certificate (PEM) to verify the servers with.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// User name for etcd authentication.
    pub user: Option<String>,
    /// Password for etcd authentication (never logged).
    pub password: Option<String>,
    /// A file holding the password (read at each connection).
    pub password_file: Option<PathBuf>,
}

/// How long one request (not a watch) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Who this process talks to etcd as, for the errors that name it. One process uses one
/// credential (the one on its command line), so the last connection's is the one to name.
static IDENTITY: RwLock<String> = RwLock::new(String::new());

fn identity() -> String {
    let id = IDENTITY.read().unwrap_or_else(|p| p.into_inner());
    if id.is_empty() {
        "no credential".into()
    } else {
        id.clone()
    }
}

/// Whether etcd refused a request for its credential (RBAC), or the credential itself.
fn denied(e: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    let msg = status.message();
    let auth = [
        "permission denied",
        "user name is empty",
        "authentication failed",
        "invalid auth token",
        "user name not found",
    ];
    if status.code() != tonic::Code::PermissionDenied && !auth.iter().any(|a| msg.contains(a)) {
        return None;
    }
    let msg = msg.trim_start_matches("etcdserver: ");
    Some(if msg.contains("user name is empty") {
        "etcd has authentication on and this command gave no credential (--etcd-user with AMBASSADOR_ETCD_PASSWORD or --etcd-password-file, or --etcd-cert and --etcd-key)".to_owned()
    } else {
        msg.to_owned()
    })
}

/// Whether etcd refused a request because its token predates a change of users or roles
/// ("revision of auth store is old", not retried by etcd-client): a new token
/// (`Client::refresh_token`) makes it pass.
pub fn stale_token(e: &Error) -> bool {
    matches!(e, Error::Etcd { source: etcd_client::Error::GRpcStatus(s), .. }
        if s.message().contains("revision of auth store is old"))
}

/// Runs an etcd request as [`timed`] does; when etcd refuses the token as older than a change
/// of users or roles ([`stale_token`]), renews it and runs the request again (five times at
/// most: each change of users overtakes the writes in flight). Any write may meet that after
/// an `auth` command, not only the next one on the same connection: a member stamps a request
/// with the auth revision it has applied, and the change may be applied between the stamp and
/// the request's turn in the log (etcd's own client retries these the same way).
///
/// `request` gets a client of its own each time (a clone: cheap, the connection is shared), so
/// the futures it makes hold no borrow of one and can run on any thread.
pub async fn fresh<T, F>(
    client: &Client,
    what: &str,
    mut request: impl FnMut(Client) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let c = client.clone();
    let mut renewed = 0;
    loop {
        match timed(what, request(c.clone())).await {
            Err(e) if stale_token(&e) && renewed < 5 => {
                renewed += 1;
                debug!("{e}: renewing the token");
                timed("renewing the etcd token", c.refresh_token()).await?;
            }
            done => return done,
        }
    }
}

/// Runs one etcd request with [`REQUEST_TIMEOUT`], saying `what` it was if it fails; a refusal
/// by etcd's access control says so, and names the credential.
pub async fn timed<T>(
    what: impl Into<String>,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(r) => r.map_err(|source| match denied(&source) {
            Some(detail) => Error::EtcdDenied {
                what: what.into(),
                detail,
                identity: identity(),
            },
            None => Error::Etcd {
                what: what.into(),
                source,
            },
        }),
        Err(_) => Err(Error::EtcdTimeout { what: what.into() }),
    }
}

impl EtcdOptions {
    /// Connects (and authenticates, when a user is set).
    pub async fn connect(&self) -> Result<Client> {
        self.connect_to(&self.endpoints).await
    }

    /// Connects to `endpoints` (some of [`EtcdOptions::endpoints`]), as [`connect`] does.
    ///
    /// [`connect`]: EtcdOptions::connect
    pub async fn connect_to(&self, endpoints: &[String]) -> Result<Client> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // HTTP/2 pings notice a dead member within ~10 s even on an idle watch. etcd
            // closes connections that ping more often than every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(4))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum fails the watch instead of going silent.
            .with_require_leader(true);
        if let Some(user) = &self.user {
            let password = match &self.password_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(Error::io(format!(
                        "reading the etcd password from {}",
                        f.display()
                    )))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => self.password.clone().unwrap_or_default(),
            };
            opts = opts
                .with_user(user.clone(), password)
                // Simple tokens expire (etcd's --auth-token-ttl, 300 s): a daemon lives longer.
                .with_auto_token_refresh(true);
        }
        *IDENTITY.write().unwrap_or_else(|p| p.into_inner()) = match (&self.user, &self.cert) {
            (Some(user), _) => format!("etcd user {user:?}"),
            (None, Some(cert)) => format!(
                "the etcd user named by the CN of client certificate {}",
                cert.display()
            ),
            (None, None) => String::new(),
        };
        if self.cacert.is_some() || self.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cacert {
                let pem =
                    std::fs::read(ca).map_err(Error::io(format!("reading {}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    let c = std::fs::read(cert)
                        .map_err(Error::io(format!("reading {}", cert.display())))?;
                    let k = std::fs::read(key)
                        .map_err(Error::io(format!("reading {}", key.display())))?;
                    tls = tls.identity(Identity::from_pem(c, k));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::Usage(
                        "--etcd-cert and --etcd-key go together".into(),
                    ))
                }
            }
            opts = opts.with_tls(tls);
        }
        timed(
            format!("connecting to {}", endpoints.join(",")),
            Client::connect(endpoints, Some(opts)),
        )
        .await
    }
}

/// What the watcher knows, published to the daemon after every change.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The desired state; `None` until the first successful listing.
    pub desired: Option<Arc<Desired>>,
    /// The etcd revision it reflects.
    pub revision: i64,
    /// Whether the watch is established right now.
    pub connected: bool,
    /// When `connected` last changed.
    pub since: SystemTime,
    /// Malformed values skipped so far (each key and revision counted once).
    pub malformed: u64,
    /// Services currently left out for claiming another service's frontend.
    pub conflicts: u64,
    /// When the etcd response behind `desired` arrived (the start of the control-plane lag).
    pub received: Option<Instant>,
    /// Where the cluster places frontends (each daemon refuses the others).
    pub scope: Arc<FrontendScope>,
    /// The cluster's trust mode.
    pub mode: Mode,
    /// Endpoints left out of `desired` because their host's record does not allow them.
    pub host_refused: Arc<Vec<Refusal>>,
}

impl Snapshot {
    /// The desired state, unless it is `last` (the one applied before, which it then
    /// replaces): a follower applies each snapshot's state once, however often it is woken.
    pub fn unapplied(&self, last: &mut Option<Arc<Desired>>) -> Option<Arc<Desired>> {
        let desired = self.desired.as_ref()?;
        if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, desired)) {
            return None;
        }
        *last = Some(desired.clone());
        Some(desired.clone())
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            desired: None,
            revision: 0,
            connected: false,
            since: SystemTime::now(),
            malformed: 0,
            conflicts: 0,
            received: None,
            scope: Arc::default(),
            mode: Mode::default(),
            host_refused: Arc::default(),
        }
    }
}

/// Follows etcd forever, publishing into `tx`. Returns only when every receiver is gone.
pub async fn follow(opts: EtcdOptions, tx: watch::Sender<Snapshot>) {
    let mut warned: HashSet<(Vec<u8>, i64)> = HashSet::new();
    let mut backoff = Reconnect::default();
    let mut members = Members::new(&opts.endpoints);
    let mut failures: u64 = 0;
    loop {
        let result = session(&opts, members.current(), &tx, &mut warned).await;
        if tx.borrow().connected {
            // The session got as far as a listing: a new outage starts now.
            backoff.reset();
            members.reached();
            failures = 0;
        }
        let delay = match result {
            // Cancelled by etcd (compaction): list again, from the same member.
            Ok(()) => backoff.next_delay(),
            Err(_) => members.failed(&mut backoff),
        };
        if let Err(e) = result {
            // The first failure of an outage, then every tenth: enough to follow, not a flood.
            let next = members.current().join(",");
            if failures.is_multiple_of(10) {
                warn!("{e}; forwarding continues with the last known state, retrying {next} in {delay:?}");
            } else {
                debug!(
                    "{e}; retrying {next} in {delay:?} (attempt {})",
                    failures + 1
                );
            }
            failures += 1;
        }
        if tx.is_closed() {
            return;
        }
        tx.send_if_modified(|s| {
            let changed = s.connected;
            if changed {
                s.connected = false;
                s.since = SystemTime::now();
            }
            changed
        });
        tokio::time::sleep(delay).await;
    }
}

/// Watch responses taken together before the desired state is built once.
const MAX_BATCH: usize = 256;

/// One connection to `member`: list, then watch until something breaks. `Ok` means the
/// watch was cancelled by etcd (compaction) and should be re-listed at once.
async fn session(
    opts: &EtcdOptions,
    member: &[String],
    tx: &watch::Sender<Snapshot>,
    warned: &mut HashSet<(Vec<u8>, i64)>,
) -> Result<()> {
    let mut client = opts.connect_to(member).await?;
    let root = contract::watch_prefix(&opts.prefix);
    let listing = timed(
        format!("listing {root}"),
        client.get(root.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let received = Instant::now();
    let mut revision = listing.header().map_or(0, |h| h.revision());
    let mut store = Store::default();
    let mut malformed = tx.borrow().malformed;
    let mut conflicts = Vec::new();
    for kv in listing.kvs() {
        note(
            &opts.prefix,
            &mut store,
            kv.key(),
            kv.value(),
            kv.mod_revision(),
            warned,
            &mut malformed,
        );
    }
    info!(
        revision,
        keys = listing.kvs().len(),
        member = %member.join(","),
        "etcd: listed {root}"
    );
    publish(
        tx,
        &mut store,
        revision,
        malformed,
        &mut conflicts,
        received,
    );

    let mut stream = watch_from(&mut client, &root, revision + 1).await?;
    loop {
        let Some((events, received)) = next_batch(
            &mut stream,
            opts,
            &mut store,
            &mut revision,
            warned,
            &mut malformed,
        )
        .await?
        else {
            return Ok(());
        };
        if events > 0 {
            publish(
                tx,
                &mut store,
                revision,
                malformed,
                &mut conflicts,
                received,
            );
        }
    }
}

/// Waits for the next watch response; then takes every response that has already arrived
/// too, before the desired state is built once: under heavy churn of many services that
/// build, not etcd, is the cost, and the daemon only ever needs the newest state. Bounded, so
/// that a writer faster than this loop still sees its changes applied. Returns the events
/// taken into `store` (0: created or progress notifications only) and when the first
/// response arrived; None when etcd cancelled the watch (compaction).
async fn next_batch(
    stream: &mut WatchStream,
    opts: &EtcdOptions,
    store: &mut Store,
    revision: &mut i64,
    warned: &mut HashSet<(Vec<u8>, i64)>,
    malformed: &mut u64,
) -> Result<Option<(usize, Instant)>> {
    let mut next = Some(stream.message().await);
    let received = Instant::now();
    let (mut events, mut batched) = (0, 0);
    while let Some(ready) = next.take() {
        let resp = delivered(ready)?;
        batched += 1;
        match absorb(opts, &resp, store, revision, warned, malformed) {
            Some(more) => events += more,
            None => return Ok(None),
        }
        if batched < MAX_BATCH {
            // Err: nothing more has arrived.
            next = tokio::time::timeout(Duration::ZERO, stream.message())
                .await
                .ok();
        }
    }
    if events > 0 {
        debug!(revision = *revision, events, batched, "etcd: changes");
    }
    Ok(Some((events, received)))
}

/// A watch of everything under `root` from `revision` on, with progress notifications.
async fn watch_from(client: &mut Client, root: &str, revision: i64) -> Result<WatchStream> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision)
        .with_progress_notify();
    client
        .watch(root, Some(options))
        .await
        .map_err(|source| Error::Etcd {
            what: format!("watching {root}"),
            source,
        })
}

/// A watch response, or why the stream broke.
fn delivered(
    next: std::result::Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
) -> Result<etcd_client::WatchResponse> {
    match next {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => Err(Error::EtcdTimeout {
            what: "the watch stream closed".into(),
        }),
        Err(source) => Err(Error::Etcd {
            what: "watching".into(),
            source,
        }),
    }
}

/// Applies one watch response to the store and returns how many events it held. `None`: etcd
/// cancelled the watch (compaction), so the caller lists again.
fn absorb(
    opts: &EtcdOptions,
    resp: &etcd_client::WatchResponse,
    store: &mut Store,
    revision: &mut i64,
    warned: &mut HashSet<(Vec<u8>, i64)>,
    malformed: &mut u64,
) -> Option<usize> {
    if resp.canceled() {
        info!(
            compact_revision = resp.compact_revision(),
            reason = resp.cancel_reason(),
            "etcd: watch cancelled; listing again"
        );
        return None;
    }
    if resp.events().is_empty() {
        return Some(0);
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        match ev.event_type() {
            EventType::Put => note(
                &opts.prefix,
                store,
                kv.key(),
                kv.value(),
                kv.mod_revision(),
                warned,
                malformed,
            ),
            EventType::Delete => store.delete(&opts.prefix, kv.key()),
        }
        *revision = (*revision).max(kv.mod_revision());
    }
    if let Some(h) = resp.header() {
        *revision = (*revision).max(h.revision());
    }
    Some(resp.events().len())
}

/// Applies one put to the store, warning once per malformed key and revision.
fn note(
    prefix: &str,
    store: &mut Store,
    key: &[u8],
    value: &[u8],
    mod_revision: i64,
    warned: &mut HashSet<(Vec<u8>, i64)>,
    malformed: &mut u64,
) {
    if let PutOutcome::Malformed(reason) = store.put(prefix, key, value) {
        if warned.insert((key.to_vec(), mod_revision)) {
            *malformed += 1;
            warn!(key = %String::from_utf8_lossy(key), "etcd: skipping a malformed value: {reason}");
        }
    }
}

/// Publishes the store's desired state; warns about frontend conflicts when they change.
fn publish(
    tx: &watch::Sender<Snapshot>,
    store: &mut Store,
    revision: i64,
    malformed: u64,
    last_conflicts: &mut Vec<String>,
    received: Instant,
) {
    let judged = store.judge();
    let conflicts = judged.conflicts;
    if conflicts != *last_conflicts {
        for c in conflicts.iter().filter(|c| !last_conflicts.contains(c)) {
            warn!("etcd: {c}");
        }
        *last_conflicts = conflicts.clone();
    }
    tx.send_modify(|s| {
        if !s.connected {
            s.connected = true;
            s.since = SystemTime::now();
        }
        s.desired = Some(Arc::new(judged.desired));
        s.scope = Arc::new(judged.scope);
        s.mode = judged.mode;
        s.host_refused = Arc::new(judged.refused);
        s.revision = revision;
        s.malformed = malformed;
        s.conflicts = conflicts.len() as u64;
        s.received = Some(received);
    });
}
