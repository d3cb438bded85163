//! etcd as the source of the desired state: connect (TLS, user/password), list the prefix,
//! watch it from the listed revision, and on any failure or compaction reconnect with backoff
//! and list again. What was last listed stays in force while etcd is away.

mod connect;
mod list;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use connect::{fresh, stale_token, timed, EtcdOptions};
pub use list::{list, Listing, PAGE};

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
    let listing = list(&client, &root).await?;
    let received = Instant::now();
    let mut revision = listing.revision;
    let mut store = Store::default();
    let mut malformed = tx.borrow().malformed;
    let mut conflicts = Vec::new();
    for kv in &listing.kvs {
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
        keys = listing.kvs.len(),
        pages = listing.pages,
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
pub async fn watch_from(client: &mut Client, root: &str, revision: i64) -> Result<WatchStream> {
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
