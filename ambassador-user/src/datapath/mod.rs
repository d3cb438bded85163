//! The datapath: everything that touches the kernel. Loading and attaching the programs, the
//! maps as typed tables (the BPF implementation of the core's `Tables`), interfaces and
//! routes, the drivers' XDP features, sockets to destroy, flow expiry.

pub mod gc;
pub mod loader;
pub mod maps;
pub mod netdev;
pub mod netlink;
pub mod sockets;
