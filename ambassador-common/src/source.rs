//! Where the daemon's desired state comes from.

/// No daemon has written its state yet.
pub const NONE: u32 = 0;
/// A static configuration file.
pub const FILE: u32 = 1;
/// etcd.
pub const ETCD: u32 = 2;
