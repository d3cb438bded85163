//! Per-CPU scratch space for the connection table's keys and values (see `conntrack`): its
//! shape and its slots, apart from the table's logic so that the maps can declare it.

use ambassador_common::{monitor::FlowEvent, Addr, CtEntry, CtKey, RevNat};

/// Per-CPU scratch space for the connection table's keys and values. A TC program runs to its
/// end on its CPU before another starts there (softirq or bottom halves disabled), and each
/// hook has its own slot ([`INGRESS`], [`EGRESS`]), so nothing else writes it meanwhile.
#[repr(C)]
pub struct Scratch<A: Addr> {
    /// The packet's own key: the forward key on ingress, the reply key on egress (or the key
    /// of the packet answering an ICMP error's quote).
    pub key: CtKey<A>,
    /// The key of the flow's other direction.
    pub other: CtKey<A>,
    /// A new flow's forward entry.
    pub entry: CtEntry<A>,
    /// A reverse entry being written.
    pub rev: RevNat<A>,
    /// A flow event being written (see `monitor::staged`): paths with no stack to spare
    /// build it here.
    pub event: FlowEvent,
}

/// The ingress program's slot of the scratch maps.
pub const INGRESS: u32 = 0;
/// The egress program's slot of the scratch maps.
pub const EGRESS: u32 = 1;
