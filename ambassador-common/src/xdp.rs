//! The `xdp` datapath's forwarding, shared by kernel and user space: what became of each
//! translated frame, and which interfaces may be handed redirected frames.

/// Flags of one interface in [`crate::map_names::XDP_TARGETS`] (keyed by interface index). An
/// interface missing from the map has none: frames for it go to the stack.
pub mod target {
    /// The interface transmits frames a native XDP program redirects to it (the kernel's
    /// `NETDEV_XDP_ACT_NDO_XMIT`; a veth has it only while its peer has GRO or an XDP program,
    /// and drops redirected frames otherwise).
    pub const NDO_XMIT: u32 = 1;
    /// The XDP program on this interface runs in generic mode: what it redirects or sends back
    /// goes through the stack's transmit path, which every interface takes.
    pub const GENERIC: u32 = 2;
}

/// What the `xdp` datapath did with a frame it translated, counted in the
/// [`crate::map_names::XDP_FORWARD`] per-CPU array at this index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Redirected to the next hop's interface.
    Redirected = 0,
    /// Sent back out of the interface it came in on (`XDP_TX`).
    SentBack = 1,
    /// Handed to the stack, translated: the next hop's interface cannot transmit redirected
    /// frames ([`target::NDO_XMIT`]).
    TargetCannotXmit = 2,
    /// Handed to the stack, translated: the next hop's neighbour entry is not resolved yet.
    NoNeighbour = 3,
    /// Handed to the stack, translated: too big for the next link (the stack answers with
    /// "fragmentation needed" or "packet too big").
    FragNeeded = 4,
    /// Handed to the stack, translated: the FIB gave no forwarding answer (local delivery,
    /// forwarding off, no route, a spent TTL...).
    NotForwarded = 5,
}

impl Forward {
    /// Number of outcomes (the size of the array).
    pub const COUNT: u32 = 6;
    /// Every outcome, in index order.
    pub const ALL: [Forward; Self::COUNT as usize] = [
        Forward::Redirected,
        Forward::SentBack,
        Forward::TargetCannotXmit,
        Forward::NoNeighbour,
        Forward::FragNeeded,
        Forward::NotForwarded,
    ];

    /// Stable name for status and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Forward::Redirected => "redirected",
            Forward::SentBack => "sent_back",
            Forward::TargetCannotXmit => "target_cannot_xmit",
            Forward::NoNeighbour => "no_neighbour",
            Forward::FragNeeded => "frag_needed",
            Forward::NotForwarded => "not_forwarded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_indexed_in_order() {
        for (i, f) in Forward::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{}", f.name());
        }
    }
}
