//! Why a packet took the path it took: the verdicts the datapath counts.

/// Why a packet took the path it took. Shared by kernel and user space: the kernel counts
/// each verdict in the [`crate::map_names::REASONS`] per-CPU array at this index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A packet to a frontend was rewritten to a backend.
    Forwarded = 0,
    /// A reply from a backend had its source restored to the frontend.
    ReverseNat = 1,
    /// Dropped: the frontend has no active backend.
    NoBackend = 2,
    /// Dropped: an IPv4 fragment addressed to a frontend (ports are unknowable).
    Fragment = 3,
    /// Dropped: a packet to a frontend whose L4 header is missing or truncated.
    Malformed = 4,
    /// Dropped: the conntrack entry for a new flow could not be written.
    CtInsertFailed = 5,
    /// Dropped: the chosen slot points at a backend that does not exist (a control-plane bug).
    BackendMissing = 6,
    /// Dropped: a kernel helper failed while rewriting the packet.
    RewriteFailed = 7,
    /// Dropped on purpose: a backend refused a new flow (RST to its SYN) while the service has
    /// another backend; the flow was re-pointed there, and the client's SYN retransmission
    /// lands on it instead of the client seeing the refusal.
    Failover = 8,
    /// Translated: an ICMP error about a translated flow (its quoted packet, and the outer
    /// address that was the backend or the frontend), so the client's or the backend's stack
    /// matches it to its socket (path MTU discovery through a frontend).
    IcmpError = 9,
}

impl Reason {
    /// Number of reasons (the size of the reasons array).
    pub const COUNT: u32 = 10;
    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Forwarded,
        Reason::ReverseNat,
        Reason::NoBackend,
        Reason::Fragment,
        Reason::Malformed,
        Reason::CtInsertFailed,
        Reason::BackendMissing,
        Reason::RewriteFailed,
        Reason::Failover,
        Reason::IcmpError,
    ];

    /// Stable name for logs, status and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ReverseNat => "reverse_nat",
            Reason::NoBackend => "no_backend",
            Reason::Fragment => "fragment",
            Reason::Malformed => "malformed",
            Reason::CtInsertFailed => "ct_insert_failed",
            Reason::BackendMissing => "backend_missing",
            Reason::RewriteFailed => "rewrite_failed",
            Reason::Failover => "failover",
            Reason::IcmpError => "icmp_error",
        }
    }

    /// Whether packets counted under this reason were dropped.
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::Forwarded | Reason::ReverseNat | Reason::IcmpError
        )
    }
}
