//! One reconnect policy for the long-lived sessions (the daemon's etcd watch, the register's
//! Docker and etcd session): delays from 100 ms, doubling up to 2.5 s, each stretched by a
//! random 0-100 % (backon's jitter). So a retry waits at most 5 s, and the daemons of a fleet
//! that lost etcd together do not reconnect, and list everything again, in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

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

#[cfg(test)]
mod tests {
    use super::*;

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
