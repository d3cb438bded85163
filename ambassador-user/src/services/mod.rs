//! What other programs ask of a running host: names (DNS), `status` and the metrics page,
//! the heartbeat; and the SOCKS5 door for clients outside the fleet.

pub mod dns;
pub mod heartbeat;
pub mod metrics;
pub mod monitor;
pub mod socks;
pub mod status;
pub mod web;
