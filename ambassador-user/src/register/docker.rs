//! The register's Docker side: connecting to the engine, what a container's inspection makes
//! of it (an entry, or nothing), the full listing that reconciles etcd with the running
//! containers, and one event at a time.

use std::collections::HashMap;

use bollard::{
    models::ContainerInspectResponse, query_parameters::ListContainersOptions, Docker,
    API_DEFAULT_VERSION,
};
use tracing::{debug, info, warn};

use super::{
    allowed::Allowance, entry, events::Change, labels, mapping::short_id, ready, registration,
    Register,
};
use crate::error::{Error, Result};

/// Connects to the Docker engine, agreeing on an API version it speaks.
pub async fn connect_docker(path: &str) -> Result<Docker> {
    let docker = Docker::connect_with_unix(path, 30, API_DEFAULT_VERSION).map_err(|source| {
        Error::Docker {
            what: format!("connecting to {path}"),
            source,
        }
    })?;
    docker
        .negotiate_version()
        .await
        .map_err(|source| Error::Docker {
            what: format!("talking to {path}"),
            source,
        })
}

impl Register {
    /// The entry for one container, reporting an unusable label once.
    pub(super) fn entry_of(&mut self, c: &ContainerInspectResponse) -> Option<(String, String)> {
        let id = c.id.clone().unwrap_or_default();
        let started = c
            .state
            .as_ref()
            .and_then(|s| s.started_at.clone())
            .unwrap_or_default();
        match self.stopping.get(&id) {
            Some(run) if *run == started => return None, // draining
            Some(_) => {
                self.stopping.remove(&id); // started again since
            }
            None => {}
        }
        if !ready(c) {
            return None;
        }
        let host = &self.cfg.host_id;
        let reg = registration(c, &self.cfg).and_then(|r| match r {
            Some(r) => match self.allowance.refuse(host, &r.service, r.addr.ip()) {
                Some(why) => Err(why),
                None => Ok(Some(r)),
            },
            None => Ok(None),
        });
        if let Ok(Some(r)) = &reg {
            self.services.entry(r.service.clone()).or_insert((
                r.frontend_port,
                r.proto,
                r.addr.is_ipv6(),
            ));
            if let Some(frontend) = self.ensured.get(&r.service) {
                if frontend.port() != r.frontend_port && self.disagreeing.insert(id.clone()) {
                    info!(container = %short_id(&id), service = %r.service, %frontend, "the container's port {} differs from its service's frontend port: it is registered with its own port, and clients reach it through {frontend}", r.frontend_port);
                }
            }
        }
        match reg.and_then(|r| r.map(|r| entry(&self.cfg, &r, &id)).transpose()) {
            Ok(Some(e)) => {
                self.reported.remove(&id);
                Some(e)
            }
            Ok(None) => None,
            Err(why) => {
                if self.reported.insert(id.clone()) {
                    warn!(container = %short_id(&id), "not registered: {why}");
                }
                None
            }
        }
    }

    /// Lists the labelled running containers and syncs etcd with them.
    pub(super) async fn reconcile(&mut self, docker: &Docker) -> Result<usize> {
        let allowance =
            Allowance::read(&self.etcd, &self.cfg.etcd.prefix, &self.cfg.host_id).await?;
        if allowance.mode() != self.allowance.mode() {
            info!(trust = %allowance.mode(), "the cluster's trust mode changed");
            self.uncreated.clear();
        }
        self.allowance = allowance;
        let filters = HashMap::from([("label".to_owned(), vec![labels::SERVICE.to_owned()])]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|source| Error::Docker {
                what: "listing containers".into(),
                source,
            })?;
        let mut wanted = HashMap::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            match docker.inspect_container(&id, None).await {
                Ok(c) => {
                    if let Some(kv) = self.entry_of(&c) {
                        wanted.insert(id, kv);
                    }
                }
                // Gone between the list and the inspect: not running any more.
                Err(e) => debug!(container = %id, "inspect failed: {e}"),
            }
        }
        let n = wanted.len();
        self.sync(wanted).await?;
        self.ensure_services().await?;
        self.count();
        Ok(n)
    }

    /// Acts on one container event.
    pub(super) async fn event(&mut self, docker: &Docker, change: Change, id: &str) -> Result<()> {
        match change {
            Change::Started | Change::Health => {
                if change == Change::Started {
                    self.stopping.remove(id);
                }
                match docker.inspect_container(id, None).await {
                    Ok(c) => match self.entry_of(&c) {
                        Some(kv) => {
                            self.put(id, kv).await?;
                            self.ensure_services().await?;
                        }
                        None => self.remove(id).await?,
                    },
                    Err(e) => debug!(container = %id, "inspect failed: {e}"),
                }
            }
            // Leaving at the stop signal gives a container that drains on SIGTERM (see the
            // README) time to finish while clients already go elsewhere. It stays out (even if
            // a reconcile sees it still running and healthy) until it starts again.
            Change::Stopping => {
                let started = match docker.inspect_container(id, None).await {
                    Ok(c) => c.state.and_then(|s| s.started_at).unwrap_or_default(),
                    Err(_) => String::new(),
                };
                self.stopping.insert(id.to_owned(), started);
                self.remove(id).await?;
            }
            Change::Stopped => self.remove(id).await?,
            Change::Gone => {
                self.stopping.remove(id);
                self.remove(id).await?;
            }
        }
        Ok(())
    }
}
