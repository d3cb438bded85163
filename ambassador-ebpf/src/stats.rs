//! Per-CPU counters: no atomics needed, user space sums the CPUs.

use ambassador_common::{xdp::Forward, Reason, ServiceStats};

use crate::maps::{REASONS, SERVICE_STATS, XDP_FORWARD};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(counter) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU array slot belongs to this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_forward(outcome: Forward) {
    if let Some(counter) = XDP_FORWARD.get_ptr_mut(outcome as u32) {
        // SAFETY: as above.
        unsafe { *counter += 1 };
    }
}

/// Runs `f` on this CPU's counters for `service_id`.
#[inline(always)]
pub fn with_service(service_id: u32, f: impl FnOnce(&mut ServiceStats)) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: as above.
        f(unsafe { &mut *stats });
    }
}
