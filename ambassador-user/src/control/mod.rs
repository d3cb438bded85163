//! The control plane: etcd (follow, watch, reconnect, writes that renew a stale token), the
//! reconnect policy, frontend allocation.

pub mod etcd;
pub mod reconnect;
pub mod vips;
