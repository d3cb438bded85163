//! Where the register learns about containers: the [`Source`] trait. Docker's engine is one
//! implementation ([`super::docker::DockerEngine`]); a synthetic one
//! ([`super::synthetic::Synthetic`]) drives the same core in the fleet simulator and in tests.
//! A container is described by Docker's own inspection model whatever the source, so what a
//! container makes of itself ([`super::registration`]) is one function for all of them.

use std::future::Future;

use bollard::models::ContainerInspectResponse;

use super::events::Change;
use crate::error::Result;

/// A source of containers and of their events.
pub trait Source: Send {
    /// What it is, for the logs ("Docker").
    fn kind(&self) -> &'static str;
    /// Where it is, for the logs (the engine's socket).
    fn name(&self) -> String;
    /// (Re)connects and subscribes to events, before any listing, so that nothing happening
    /// between the subscription and the listing is missed.
    fn open(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// The labelled containers, inspected (one gone between the listing and its inspection
    /// is left out).
    fn list(&mut self) -> impl Future<Output = Result<Vec<ContainerInspectResponse>>> + Send;
    /// One container as it is now; `None` when it is gone.
    fn inspect(
        &mut self,
        id: &str,
    ) -> impl Future<Output = Option<ContainerInspectResponse>> + Send;
    /// The next event that changes a container's endpoint. Cancel-safe (it is raced against
    /// the periodic reconcile). An error means the subscription broke: the caller re-opens.
    fn next_event(&mut self) -> impl Future<Output = Result<(Change, String)>> + Send;
}
