//! What the maps hold, mirrored: applying an [`Op`] to it is the same as applying it to the
//! maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{Op, Scope};
use crate::core::model::{Desired, Endpoint, Proto, ServiceSpec};

/// A backend as installed in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledBackend {
    /// Owning service.
    pub service_id: u32,
    /// Address.
    pub addr: SocketAddr,
    /// Takes no new flows.
    pub terminating: bool,
}

/// A mirror of the maps' contents, keyed as the maps are, so that applying an [`Op`] to it is
/// the same as applying it to the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Service map (real frontends): (frontend, proto) -> (service id, slot count).
    pub frontends: BTreeMap<(SocketAddr, Proto), (u32, u32)>,
    /// Service map address markers: (VIP, proto).
    pub markers: BTreeSet<(IpAddr, Proto)>,
    /// Slot map: (service id, slot) -> backend id.
    pub slots: BTreeMap<(u32, u32), u32>,
    /// Backend map.
    pub backends: BTreeMap<u32, InstalledBackend>,
    /// Name map: service id -> name.
    pub names: BTreeMap<u32, String>,
    /// Next unused backend id (ids are never reused, so a stale flow cannot meet a new backend).
    pub next_backend_id: u32,
}

impl Installed {
    /// Each service's backends (id, backend), in one pass: looking them up per service would
    /// scan every backend once per service (10,000 services: 10,000 scans).
    pub fn backends_by_service(&self) -> BTreeMap<u32, Vec<(u32, InstalledBackend)>> {
        self.backends_in(&Scope(None))
    }

    /// [`Installed::backends_by_service`] for the services in `scope`.
    pub(super) fn backends_in(&self, scope: &Scope) -> BTreeMap<u32, Vec<(u32, InstalledBackend)>> {
        let mut owned: BTreeMap<u32, Vec<(u32, InstalledBackend)>> = BTreeMap::new();
        for (&bid, b) in &self.backends {
            if scope.covers(b.service_id) {
                owned.entry(b.service_id).or_default().push((bid, *b));
            }
        }
        owned
    }

    /// Applies one operation to this mirror, exactly as the maps apply it. The daemon keeps
    /// its mirror current this way instead of re-reading the maps after every change.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::ResetStats { .. } => {}
            Op::PutName { id, name } => {
                self.names.insert(*id, name.clone());
            }
            Op::DeleteName { id } => {
                self.names.remove(id);
            }
            Op::PutBackend { id, backend } => {
                self.backends.insert(*id, *backend);
                self.next_backend_id = self.next_backend_id.max(id + 1);
            }
            Op::DeleteBackend { id } => {
                self.backends.remove(id);
            }
            Op::PutSlot {
                service_id,
                slot,
                backend_id,
            } => {
                self.slots.insert((*service_id, *slot), *backend_id);
            }
            Op::DeleteSlot { service_id, slot } => {
                self.slots.remove(&(*service_id, *slot));
            }
            Op::PutService {
                frontend,
                proto,
                id,
                count,
            } => {
                self.frontends.insert((*frontend, *proto), (*id, *count));
            }
            Op::DeleteService { frontend, proto } => {
                self.frontends.remove(&(*frontend, *proto));
            }
            Op::PutMarker { vip, proto } => {
                self.markers.insert((*vip, *proto));
            }
            Op::DeleteMarker { vip, proto } => {
                self.markers.remove(&(*vip, *proto));
            }
        }
    }

    /// The datapath's safety invariant: every slot a lookup can pick exists and names an
    /// existing backend of the same service. `plan` keeps it true after every single op.
    pub fn check_datapath_invariant(&self) -> Result<(), String> {
        for (&(frontend, proto), &(id, count)) in &self.frontends {
            for slot in 0..count {
                let Some(bid) = self.slots.get(&(id, slot)) else {
                    return Err(format!(
                        "{frontend}/{proto}: slot {slot} of {count} is empty"
                    ));
                };
                match self.backends.get(bid) {
                    Some(b) if b.service_id == id => {}
                    _ => {
                        return Err(format!(
                            "{frontend}/{proto}: slot {slot} -> bad backend {bid}"
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// The services as a desired state would describe them (active backends, weight = slots).
    pub fn as_desired(&self) -> Desired {
        let mut out = Desired::new();
        for (&(frontend, proto), &(id, count)) in &self.frontends {
            let Some(name) = self.names.get(&id) else {
                continue;
            };
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for slot in 0..count {
                let Some(b) = self
                    .slots
                    .get(&(id, slot))
                    .and_then(|bid| self.backends.get(bid))
                else {
                    continue;
                };
                match endpoints.iter_mut().find(|e| e.addr == b.addr) {
                    Some(e) => e.weight += 1,
                    None => endpoints.push(Endpoint {
                        addr: b.addr,
                        weight: 1,
                    }),
                }
            }
            let spec = ServiceSpec {
                frontend,
                proto,
                endpoints,
            };
            out.insert(name.clone(), Arc::new(spec));
        }
        out
    }
}
