//! Backend health as this host's datapath sees it. A backend that refuses a new flow (a RST
//! answers its SYN) or ignores it (the client has to retransmit the SYN) becomes *suspect*: new
//! flows avoid it until its backoff ends (1 s, doubled per failure in a row, up to 64 s); then
//! one new flow may try it, and a SYN-ACK from it clears it. etcd stays the source of truth
//! for membership: suspicion is local and short-lived. The daemon hears of each transition
//! through a ring buffer.

use ambassador_common::{suspicion, HealthEvent, Suspect};

use crate::maps::{HEALTH_EVENTS, SUSPECTS};

/// Whether new flows should avoid `backend_id` at time `now`: while it is suspect, or only
/// until its backoff ends when the flow may be the one that tries it again (`retry`).
#[inline(always)]
pub fn avoided(backend_id: u32, now: u64, retry: bool) -> bool {
    // SAFETY: plain integers, replaced whole.
    match unsafe { SUSPECTS.get(&backend_id) } {
        Some(s) => !retry || now < s.retry_ns,
        None => false,
    }
}

/// `backend_id` failed a new flow of `service_id` (`reason`: a `suspicion::*`). A failure while
/// it is already avoided (flows that were on their way to it) changes nothing; a failure of a
/// try after the backoff doubles the backoff.
#[inline(always)]
pub fn failed(backend_id: u32, service_id: u32, reason: u32, now: u64) {
    // SAFETY: as above.
    let (strikes, since_ns) = match unsafe { SUSPECTS.get(&backend_id) } {
        Some(s) if now < s.retry_ns => return,
        Some(s) => (s.strikes.saturating_add(1), s.since_ns),
        None => (1, now),
    };
    let suspect = Suspect {
        since_ns,
        retry_ns: now + suspicion::backoff_ns(strikes),
        strikes,
        reason,
    };
    let _ = SUSPECTS.insert(&backend_id, &suspect, 0);
    emit(backend_id, service_id, reason, strikes, now);
}

/// `backend_id` answered a new flow (a SYN-ACK): if it was suspect, it no longer is.
#[inline(always)]
pub fn answered(backend_id: u32, service_id: u32, now: u64) {
    if SUSPECTS.get_ptr(&backend_id).is_some() && SUSPECTS.remove(&backend_id).is_ok() {
        emit(backend_id, service_id, suspicion::ANSWERED, 0, now);
    }
}

#[inline(always)]
fn emit(backend_id: u32, service_id: u32, reason: u32, strikes: u32, at_ns: u64) {
    let event = HealthEvent {
        backend_id,
        service_id,
        reason,
        strikes,
        at_ns,
    };
    // A full ring only loses the log line: the suspect map itself is already written.
    let _ = HEALTH_EVENTS.output::<HealthEvent>(&event, 0);
}
