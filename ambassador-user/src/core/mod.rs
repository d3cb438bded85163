//! The core: the desired state and its contract, who may publish what, the reconcile plan,
//! and the pipeline that converges any [`tables::Tables`]. Pure: no kernel, no network; its
//! tests need no root.

pub mod capacity;
pub mod config;
pub mod contract;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod reconcile;
pub mod tables;
pub mod trust;
