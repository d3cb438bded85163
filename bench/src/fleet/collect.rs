//! Waiting for the fleet: every client host's applies arrive on one channel, and a wait ends
//! when every host's tables satisfy a condition (or at a deadline, counting who did not).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ambassador_user::core::model::Desired;
use tokio::sync::mpsc;

use super::sim::Applied;

/// The latest applied state of every client host.
pub struct Collector {
    rx: mpsc::UnboundedReceiver<Applied>,
    latest: Vec<Option<Arc<Desired>>>,
    /// Applies received so far, over all hosts.
    pub applies: u64,
    /// How long each apply took the daemon's core, µs (since the last [`Collector::costs`]).
    apply_us: Vec<f64>,
}

/// How one wait ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per host that got there: ms from the start until its tables satisfied the condition.
    pub delays_ms: Vec<f64>,
    /// Hosts that had not got there by the deadline.
    pub missing: usize,
    /// For a change: ms from the start until etcd accepted it.
    pub accepted_ms: Option<f64>,
}

impl Outcome {
    /// ms until every host got there (None if some never did).
    pub fn all_ms(&self) -> Option<f64> {
        (self.missing == 0).then(|| self.delays_ms.iter().copied().fold(0.0, f64::max))
    }
}

impl Collector {
    /// A collector for `hosts` client hosts.
    pub fn new(rx: mpsc::UnboundedReceiver<Applied>, hosts: usize) -> Self {
        Self {
            rx,
            latest: vec![None; hosts],
            applies: 0,
            apply_us: Vec::new(),
        }
    }

    /// Waits (at most `timeout`) until every host's tables are the same, and returns them; None
    /// if they still differ then. Changes may still be arriving (a register rewriting its
    /// entries after etcd came back): a comparison at one instant would race with them.
    pub async fn agreed(&mut self, timeout: Duration) -> Option<Arc<Desired>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.drain();
            let first = self.latest.first().cloned().flatten();
            if let Some(f) =
                first.filter(|f| self.latest.iter().all(|l| l.as_deref() == Some(&**f)))
            {
                return Some(f);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes in every report that has arrived.
    pub fn drain(&mut self) {
        while let Ok(a) = self.rx.try_recv() {
            self.take(a);
        }
    }

    /// The apply times taken in since the last call (µs), and starts again.
    pub fn costs(&mut self) -> Vec<f64> {
        self.drain();
        std::mem::take(&mut self.apply_us)
    }

    fn take(&mut self, a: Applied) {
        self.applies += 1;
        self.apply_us.push(a.apply_us);
        self.latest[a.host] = Some(a.desired);
    }

    /// Waits until every host's tables satisfy `done`, from `start` for at most `timeout`.
    /// A host whose tables already do counts 0.
    pub async fn until(
        &mut self,
        start: Instant,
        timeout: Duration,
        done: impl Fn(&Desired) -> bool,
    ) -> Outcome {
        let mut at: Vec<Option<f64>> = self
            .latest
            .iter()
            .map(|d| d.as_deref().filter(|d| done(d)).map(|_| 0.0))
            .collect();
        let mut left = at.iter().filter(|a| a.is_none()).count();
        let deadline = tokio::time::Instant::from_std(start + timeout);
        while left > 0 {
            let Ok(Some(a)) = tokio::time::timeout_at(deadline, self.rx.recv()).await else {
                break;
            };
            let (host, when) = (a.host, a.at);
            let ok = done(&a.desired);
            self.take(a);
            if ok && at[host].is_none() {
                at[host] = Some(when.saturating_duration_since(start).as_secs_f64() * 1e3);
                left -= 1;
            } else if !ok && at[host].is_some() {
                // Satisfied, then not any more: it counts from its next satisfying apply.
                at[host] = None;
                left += 1;
            }
        }
        Outcome {
            delays_ms: at.iter().flatten().copied().collect(),
            missing: left,
            accepted_ms: None,
        }
    }
}

/// Per event, the time until every host had it; hosts that never did are counted apart.
pub fn every_host(events: &[Outcome]) -> (Vec<f64>, usize) {
    let all: Vec<f64> = events.iter().filter_map(Outcome::all_ms).collect();
    let missed = events.iter().filter(|e| e.missing > 0).count();
    (all, missed)
}

/// Every host's delay, over every event.
pub fn per_host(events: &[Outcome]) -> Vec<f64> {
    events
        .iter()
        .flat_map(|e| e.delays_ms.iter().copied())
        .collect()
}
