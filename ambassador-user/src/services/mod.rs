//! What other programs ask of a running host: names (DNS), `status` and the metrics page,
//! the heartbeat.

pub mod dns;
pub mod heartbeat;
pub mod metrics;
pub mod status;
