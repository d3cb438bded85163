//! Default capacity of each map: what the object declares, and what `ambassador run` creates
//! unless `--max-services`, `--max-backends`, `--max-slots` or `--max-flows` say otherwise (the
//! loader sets every map's size at load time). About 44 MiB of kernel memory on a 2-CPU host,
//! 32 MiB more with the socket datapath; see the README's "Capacity".

/// Services (frontends). Service ids are 1..=services, indexing per-CPU counter arrays.
pub const DEFAULT_SERVICES: u32 = 4_096;
/// Backends over all services (active and terminating).
pub const DEFAULT_BACKENDS: u32 = 16_384;
/// Slots over all services (a backend takes as many as its weight).
pub const DEFAULT_SLOTS: u32 = 65_536;
/// Flows tracked at once; the least recently used entry is evicted beyond this.
pub const DEFAULT_FLOWS: u32 = 65_536;
/// Interfaces the `xdp` datapath knows the redirect capability of (every interface of the
/// namespace, up to this many; frames to the others go to the stack).
pub const XDP_TARGETS: u32 = 1_024;
/// Longest service name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
