//! A synthetic container source: containers that exist only in memory, started and stopped
//! through a [`SyntheticHandle`], so the register's real core (its etcd writes, its lease, its
//! host record checks) runs without a Docker engine: a simulated fleet runs thousands of them
//! in one process, and tests drive it with exact timing. Its containers look like Docker's
//! inspections (a label, a network address, a published port), so they go through the same
//! [`super::registration`] as real ones.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bollard::models::{
    ContainerConfig, ContainerInspectResponse, ContainerState, EndpointSettings, NetworkSettings,
    PortBinding,
};
use tokio::sync::mpsc;

use super::{events::Change, labels, source::Source};
use crate::error::Result;

type Running = Arc<Mutex<HashMap<String, ContainerInspectResponse>>>;

/// The register's side of a synthetic source.
pub struct Synthetic {
    running: Running,
    events: mpsc::UnboundedReceiver<(Change, String)>,
}

/// Starts and stops the containers of a [`Synthetic`] source (cheap to clone).
#[derive(Clone)]
pub struct SyntheticHandle {
    running: Running,
    events: mpsc::UnboundedSender<(Change, String)>,
    runs: Arc<std::sync::atomic::AtomicU64>,
}

/// A synthetic source and the handle that drives it.
pub fn synthetic() -> (Synthetic, SyntheticHandle) {
    let running = Running::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = SyntheticHandle {
        running: running.clone(),
        events: tx,
        runs: Default::default(),
    };
    (
        Synthetic {
            running,
            events: rx,
        },
        handle,
    )
}

impl SyntheticHandle {
    /// Starts container `id` (hex, as Docker's ids are) labelled with `service`, listening on
    /// `addr`: its network address is `addr`'s and its port `addr`'s, published on the host
    /// at the same port (so both address modes of the register find it).
    pub fn start(&self, id: &str, service: &str, addr: SocketAddr) {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port_key = format!("{}/tcp", addr.port());
        let binding = PortBinding {
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(addr.port().to_string()),
        };
        let network = match addr {
            SocketAddr::V4(a) => EndpointSettings {
                ip_address: Some(a.ip().to_string()),
                ..Default::default()
            },
            SocketAddr::V6(a) => EndpointSettings {
                global_ipv6_address: Some(a.ip().to_string()),
                ..Default::default()
            },
        };
        let container = ContainerInspectResponse {
            id: Some(id.to_owned()),
            config: Some(ContainerConfig {
                labels: Some(HashMap::from([(labels::SERVICE.into(), service.into())])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                started_at: Some(format!("run {run}")),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(HashMap::from([(port_key, Some(vec![binding]))])),
                networks: Some(HashMap::from([("synthetic".into(), network)])),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.lock().insert(id.to_owned(), container);
        let _ = self.events.send((Change::Started, id.to_owned()));
    }

    /// Stops and removes container `id`.
    pub fn stop(&self, id: &str) {
        self.lock().remove(id);
        let _ = self.events.send((Change::Gone, id.to_owned()));
    }

    /// The containers running now.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerInspectResponse>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Synthetic {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerInspectResponse>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Source for Synthetic {
    fn kind(&self) -> &'static str {
        "synthetic"
    }

    fn name(&self) -> String {
        "synthetic containers".into()
    }

    async fn open(&mut self) -> Result<()> {
        // Events already queued describe changes the next listing sees anyway.
        while self.events.try_recv().is_ok() {}
        Ok(())
    }

    async fn list(&mut self) -> Result<Vec<ContainerInspectResponse>> {
        Ok(self.lock().values().cloned().collect())
    }

    async fn inspect(&mut self, id: &str) -> Option<ContainerInspectResponse> {
        self.lock().get(id).cloned()
    }

    async fn next_event(&mut self) -> Result<(Change, String)> {
        match self.events.recv().await {
            Some(event) => Ok(event),
            // Every handle is gone: nothing changes any more.
            None => std::future::pending().await,
        }
    }
}
