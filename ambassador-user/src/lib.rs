//! ambassador's user space: the daemon, the status reader and their building blocks.

/// The eBPF object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ambassador"));
pub mod auth;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod contract;
pub mod ctl;
pub mod daemon;
pub mod dns;
pub mod error;
pub mod etcd;
pub mod gc;
pub mod heartbeat;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod netdev;
pub mod netlink;
pub mod pipeline;
pub mod policy;
pub mod reconcile;
pub mod reconnect;
pub mod register;
pub mod sockets;
pub mod status;
pub mod tables;
pub mod task;
pub mod trust;
pub mod vips;
