//! What became of a packet, and which end of it a rewrite changes: shared by the translation
//! (`nat`) and the ICMP errors about translated flows (`icmp`).

use ambassador_common::Reason;

/// What became of a packet.
pub enum Verdict {
    /// Not ours: untouched, uncounted.
    Pass,
    /// Handled (rewritten or dropped) for this reason.
    Done(Reason),
}

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
pub enum Side {
    Source,
    Destination,
}
