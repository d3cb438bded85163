//! The daemon's heartbeat in the info map: the daemon writes it, `status` and the metrics read
//! it. Its own module so that neither side imports the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the daemon refreshes its heartbeat in the info map.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Unix time in milliseconds.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a heartbeat written at `heartbeat_ms` (0: never, or the daemon stopped) says the
/// daemon is running at `now_ms`: three missed beats and a second of slack say it is not.
pub fn alive(heartbeat_ms: u64, now_ms: u64) -> bool {
    heartbeat_ms != 0
        && now_ms.saturating_sub(heartbeat_ms) < 3 * INTERVAL.as_millis() as u64 + 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_missed_beats_mean_stopped() {
        assert!(!alive(0, 10_000));
        assert!(alive(10_000, 12_000));
        assert!(alive(10_000, 16_999));
        assert!(!alive(10_000, 17_000));
    }
}
