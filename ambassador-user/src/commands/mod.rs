//! The command line and the long-running roles (`run`, `register`, `socks`) that wire the core, the
//! datapath, the control plane and the services together.

pub mod auth;
pub mod cli;
pub mod ctl;
pub mod daemon;
pub mod monitor;
pub mod register;
pub mod socks;
