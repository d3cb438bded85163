//! [`DaemonInfo::trust`] values.

/// Not from etcd (a local file), or not known yet.
pub const LOCAL: u32 = 0;
/// `open`: host records are not checked.
pub const OPEN: u32 = 1;
/// `hosts`: endpoints apply only as their host's record allows.
pub const HOSTS: u32 = 2;
