//! The register's core on the container side: what a container's inspection makes of it (an
//! entry, or nothing), the full listing that reconciles etcd with the running containers, and
//! one event at a time; from any [`Source`].

use std::collections::HashMap;

use bollard::models::ContainerInspectResponse;
use tracing::{info, warn};

use super::{
    allowed::Allowance, entry, events::Change, mapping::short_id, ready, registration,
    source::Source, Register,
};
use crate::error::Result;

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
    pub(super) async fn reconcile(&mut self, source: &mut impl Source) -> Result<usize> {
        let allowance =
            Allowance::read(&self.etcd, &self.cfg.etcd.prefix, &self.cfg.host_id).await?;
        if allowance.mode() != self.allowance.mode() {
            info!(trust = %allowance.mode(), "the cluster's trust mode changed");
            self.uncreated.clear();
        }
        self.allowance = allowance;
        let mut wanted = HashMap::new();
        for c in source.list().await? {
            if let Some(kv) = self.entry_of(&c) {
                wanted.insert(c.id.clone().unwrap_or_default(), kv);
            }
        }
        let n = wanted.len();
        self.sync(wanted).await?;
        self.ensure_services().await?;
        self.count();
        Ok(n)
    }

    /// Acts on one container event.
    pub(super) async fn event(
        &mut self,
        source: &mut impl Source,
        change: Change,
        id: &str,
    ) -> Result<()> {
        match change {
            Change::Started | Change::Health => {
                if change == Change::Started {
                    self.stopping.remove(id);
                }
                if let Some(c) = source.inspect(id).await {
                    match self.entry_of(&c) {
                        Some(kv) => {
                            self.put(id, kv).await?;
                            self.ensure_services().await?;
                        }
                        None => self.remove(id).await?,
                    }
                }
            }
            // Leaving at the stop signal gives a container that drains on SIGTERM (see the
            // README) time to finish while clients already go elsewhere. It stays out (even if
            // a reconcile sees it still running and healthy) until it starts again.
            Change::Stopping => {
                let started = source
                    .inspect(id)
                    .await
                    .and_then(|c| c.state?.started_at)
                    .unwrap_or_default();
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
