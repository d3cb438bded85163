//! ambassador's user space: the daemon, the status reader and their building blocks.
#![warn(clippy::too_many_lines)]

/// The eBPF object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ambassador"));
pub mod commands;
pub mod control;
pub mod core;
pub mod datapath;
pub mod error;
pub mod services;
pub mod task;
