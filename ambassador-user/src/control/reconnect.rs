//! One reconnect policy for the long-lived sessions (the daemon's etcd watch, the register's
//! Docker and etcd session): delays from 100 ms, doubling up to 2.5 s, each stretched by a
//! random 0-100 % (backon's jitter). So a retry waits at most 5 s, and the daemons of a fleet
//! that lost etcd together do not reconnect, and list everything again, in lockstep.
//!
//! A session given several etcd members talks to one of them at a time ([`Members`]): a
//! member that fails is left for the next one at once, and the backoff starts only when
//! every member has failed.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use rand::{seq::SliceRandom as _, RngExt as _};

/// The first delay.
const MIN: Duration = Duration::from_millis(100);
/// The longest delay before jitter (with it, up to twice this).
const MAX: Duration = Duration::from_millis(2500);

/// The delays of one outage; [`Reconnect::reset`] when a session got through.
pub struct Reconnect(ExponentialBackoff);

impl Default for Reconnect {
    fn default() -> Self {
        Self(
            ExponentialBuilder::default()
                .with_min_delay(MIN)
                .with_max_delay(MAX)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }
}

impl Reconnect {
    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(MAX)
    }

    /// Starts over from the shortest delay (a session got through).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The etcd members a session may use, one at a time, each host in an order of its own.
///
/// One connection to one member, not one to each (as a client given every member holds
/// through its balancer): a fleet costs each member a third of the connections. And after a
/// member dies, a balancer's next requests may still be sent to it, each failure waiting
/// for the next, longer backoff (seconds, measured at 1,000 hosts); here the session that
/// lost its member lists from the next one at once. The order is shuffled per host, so the
/// hosts of a dead member spread over the others instead of all moving to the same one.
pub struct Members {
    order: Vec<String>,
    at: usize,
    /// Members that failed since a session last got through.
    failed: usize,
}

impl Members {
    /// `endpoints` in a random order (one endpoint, a grpc-proxy or a load balancer, is the
    /// only member).
    pub fn new(endpoints: &[String]) -> Self {
        let mut order = endpoints.to_vec();
        order.shuffle(&mut rand::rng());
        Self {
            order,
            at: 0,
            failed: 0,
        }
    }

    /// The member to use now.
    pub fn current(&self) -> &[String] {
        let n = self.order.len();
        if n == 0 {
            return &[];
        }
        std::slice::from_ref(&self.order[self.at % n])
    }

    /// A session got through: the member is good.
    pub fn reached(&mut self) {
        self.failed = 0;
    }

    /// The session on the current member ended in failure: the next member is used, and
    /// the delay before it is returned: a short random one (so the hosts of a dead member
    /// do not all arrive at once) while some member has not failed yet, else `backoff`'s.
    pub fn failed(&mut self, backoff: &mut Reconnect) -> Duration {
        self.at = (self.at + 1) % self.order.len().max(1);
        self.failed += 1;
        if self.failed >= self.order.len() {
            backoff.next_delay()
        } else {
            MIN.mul_f64(rand::rng().random::<f64>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_one_at_a_time_and_backoff_only_when_all_failed() {
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut m = Members::new(&all);
        let mut backoff = Reconnect::default();
        let first = m.current().to_vec();
        assert_eq!(first.len(), 1);
        let mut seen = vec![first[0].clone()];
        // Two failures: each moves on at once (under MIN), to a member not yet tried.
        for _ in 0..2 {
            assert!(m.failed(&mut backoff) < MIN);
            seen.push(m.current()[0].clone());
        }
        seen.sort();
        assert_eq!(seen, all);
        // The third: every member failed, so the backoff's delay, growing from there.
        assert!(m.failed(&mut backoff) >= MIN);
        assert_eq!(m.current(), first);
        // Once a session gets through, one failure moves on at once again.
        m.reached();
        assert!(m.failed(&mut backoff) < MIN);
        // One endpoint: every failure backs off.
        let mut one = Members::new(&all[..1]);
        assert_eq!(one.current(), &all[..1]);
        let mut backoff = Reconnect::default();
        assert!(one.failed(&mut backoff) >= MIN);
    }

    #[test]
    fn delays_grow_to_a_bound_and_differ_between_daemons() {
        let mut a = Reconnect::default();
        let delays: Vec<Duration> = (0..20).map(|_| a.next_delay()).collect();
        assert!(delays[0] >= MIN && delays[0] < 2 * MIN, "{delays:?}");
        assert!(delays.iter().all(|d| *d < 2 * MAX), "{delays:?}");
        assert!(delays[19] >= MAX, "{delays:?}");
        // Two daemons that failed together wait differently (jitter).
        let mut b = Reconnect::default();
        let other: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert_ne!(delays, other);
        a.reset();
        assert!(a.next_delay() < 2 * MIN);
    }
}
