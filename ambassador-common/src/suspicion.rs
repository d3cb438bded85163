//! Why a backend became suspect.

/// It refused a new flow: a RST answered the SYN.
pub const REFUSED: u32 = 1;
/// It stayed silent: the client retransmitted a SYN that was never answered.
pub const SILENT: u32 = 2;
/// (An event only) it answered a new flow again: no longer suspect.
pub const ANSWERED: u32 = 3;

/// A suspect's reason as `status` and `monitor` say it: "silent", or "refused" (a RST or an
/// ICMP error).
pub const fn name(reason: u32) -> &'static str {
    if reason == SILENT {
        "silent"
    } else {
        "refused"
    }
}

/// How long new flows avoid a backend after `strikes` (1 or more) failures in a row: 1 s,
/// doubled per failure after the first, up to 64 s.
pub const fn backoff_ns(strikes: u32) -> u64 {
    let doublings = strikes.saturating_sub(1);
    let shift = if doublings < 6 { doublings } else { 6 };
    1_000_000_000 << shift
}
