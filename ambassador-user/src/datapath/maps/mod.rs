//! Typed access to the datapath's maps. This is the only module that converts between host and
//! network byte order: everything above it speaks `SocketAddr`. Each address family has its
//! own frontend, backend and connection maps of the same shapes.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use ambassador_common::{
    map_names as names, DaemonInfo, Reason, ServiceName, ServiceStats, ServiceValue4, SlotKey,
    Suspect, FRONTEND_MARKER_PORT,
};
use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};

mod family;
mod monitor;
mod xdp;

use family::{service_key, v4, FamilyMaps};
pub use family::{Flow, SockEntry};
use monitor::MonitorMaps;
use xdp::XdpMaps;

use crate::{
    core::{
        capacity::Capacity,
        model::Proto,
        reconcile::{Installed, Op},
        tables::Tables,
    },
    error::{Error, Result},
};

/// The port of a frontend address's marker entry, in host order.
const MARKER_PORT: u16 = u16::from_be(FRONTEND_MARKER_PORT);

/// The datapath's maps.
pub struct Maps {
    v4: FamilyMaps<u32>,
    v6: FamilyMaps<[u8; 16]>,
    slots: HashMap<MapData, SlotKey, u32>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    reasons: PerCpuArray<MapData, u64>,
    names: HashMap<MapData, u32, ServiceName>,
    info: Array<MapData, DaemonInfo>,
    suspects: HashMap<MapData, u32, Suspect>,
    /// The `xdp` datapath's maps; `None` when opening the pins of a daemon from before them.
    xdp: Option<XdpMaps>,
    /// The monitor's switch and loss count; `None` likewise.
    monitor: Option<MonitorMaps>,
}

fn map_err(name: &'static str, what: impl Into<String>) -> impl FnOnce(MapError) -> Error {
    let what = what.into();
    move |source| match &source {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Error::MapFull {
                name,
                flag: crate::core::capacity::flag_of(name),
                what,
            }
        }
        _ => Error::Map { name, what, source },
    }
}

/// Takes a map out of a source by name and converts it to its typed handle.
fn typed<T>(name: &'static str, take: &mut impl FnMut(&'static str) -> Result<Map>) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = take(name)?;
    T::try_from(map).map_err(map_err(name, "unexpected map type"))
}

/// Ignores "not found" on deletes: deleting what is already gone is success.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The BPF maps are the tables the daemon's core converges.
impl Tables for Maps {
    fn apply(&mut self, op: &Op) -> Result<()> {
        Maps::apply(self, op)
    }

    fn clear_suspect(&mut self, id: u32) -> Result<()> {
        Maps::clear_suspect(self, id)
    }
}

impl Maps {
    fn build(mut take: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            v4: FamilyMaps::build(
                [
                    names::SERVICES,
                    names::BACKENDS,
                    names::CONNTRACK,
                    names::REVERSE_NAT,
                    names::SOCK_FORWARD,
                    names::SOCK_REVERSE,
                ],
                &mut take,
            )?,
            v6: FamilyMaps::build(
                [
                    names::SERVICES6,
                    names::BACKENDS6,
                    names::CONNTRACK6,
                    names::REVERSE_NAT6,
                    names::SOCK_FORWARD6,
                    names::SOCK_REVERSE6,
                ],
                &mut take,
            )?,
            slots: typed(names::SLOTS, &mut take)?,
            service_stats: typed(names::SERVICE_STATS, &mut take)?,
            reasons: typed(names::REASONS, &mut take)?,
            names: typed(names::NAMES, &mut take)?,
            info: typed(names::INFO, &mut take)?,
            suspects: typed(names::SUSPECTS, &mut take)?,
            // Missing only from an older daemon's pins: a permission or type problem has
            // already failed one of the maps above.
            xdp: XdpMaps::build(&mut take).ok(),
            monitor: MonitorMaps::build(&mut take).ok(),
        })
    }

    /// Takes the maps out of a loaded object (the programs keep their own references).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                name,
                what: "missing from the eBPF object".into(),
                source: MapError::InvalidName { name: name.into() },
            })
        })
    }

    /// Opens the maps a daemon pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        if !dir.join(names::SERVICES).exists() {
            return Err(Error::NotRunning {
                path: dir.to_owned(),
            });
        }
        Self::build(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(|e| match e {
                MapError::SyscallError(ref s)
                    if s.io_error.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    Error::Permission {
                        what: format!("opening {}", dir.join(name).display()),
                    }
                }
                e => Error::Map {
                    name,
                    what: format!("opening the pin under {}", dir.display()),
                    source: e,
                },
            })?;
            Map::from_map_data(data).map_err(map_err(name, "unexpected map type"))
        })
    }

    /// Reads what is installed. Entries the planner does not recognise (a protocol it does not
    /// know, a name that is not UTF-8) are left out, so the next plan removes them.
    pub fn read_installed(&self) -> Result<Installed> {
        let mut inst = Installed::default();
        self.v4.read_services(&mut inst)?;
        self.v6.read_services(&mut inst)?;
        for entry in self.slots.iter() {
            let (k, v) = entry.map_err(map_err(names::SLOTS, "iterating"))?;
            inst.slots.insert((k.service_id, k.slot), v);
        }
        self.v4.read_backends(&mut inst)?;
        self.v6.read_backends(&mut inst)?;
        for entry in self.names.iter() {
            let (id, n) = entry.map_err(map_err(names::NAMES, "iterating"))?;
            if let Some(name) = n.as_str() {
                inst.names.insert(id, name.to_owned());
            }
        }
        // Flows may still name backends that were deleted before a restart: never reuse those.
        for flow in self.flows()? {
            inst.next_backend_id = inst.next_backend_id.max(flow.backend_id + 1);
        }
        Ok(inst)
    }

    /// Applies one planned operation.
    pub fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::ResetStats { id } => self.reset_stats(*id),
            Op::PutName { id, name } => self.put_name(*id, name),
            Op::DeleteName { id } => ignore_missing(self.names.remove(id))
                .map_err(map_err(names::NAMES, format!("deleting {id}"))),
            Op::PutBackend { id, backend } => match backend.addr.ip() {
                ip @ IpAddr::V4(_) => self.v4.put_backend(*id, v4(ip), backend),
                IpAddr::V6(ip) => self.v6.put_backend(*id, ip.octets(), backend),
            },
            // A backend's family never changes (a new address is a new id): it is in one map.
            Op::DeleteBackend { id } => {
                self.v4.delete_backend(*id)?;
                self.v6.delete_backend(*id)
            }
            Op::PutSlot {
                service_id,
                slot,
                backend_id,
            } => {
                let key = SlotKey {
                    service_id: *service_id,
                    slot: *slot,
                };
                self.slots.insert(key, backend_id, 0).map_err(map_err(
                    names::SLOTS,
                    format!("writing slot {service_id}/{slot}"),
                ))
            }
            Op::DeleteSlot { service_id, slot } => {
                let key = SlotKey {
                    service_id: *service_id,
                    slot: *slot,
                };
                ignore_missing(self.slots.remove(&key)).map_err(map_err(
                    names::SLOTS,
                    format!("deleting slot {service_id}/{slot}"),
                ))
            }
            Op::PutService {
                frontend,
                proto,
                id,
                count,
            } => {
                let value = ServiceValue4 {
                    service_id: *id,
                    count: *count,
                };
                let what = format!("writing {frontend}/{proto}");
                self.put_service(frontend.ip(), frontend.port(), *proto, value, what)
            }
            Op::DeleteService { frontend, proto } => {
                let what = format!("deleting {frontend}/{proto}");
                self.delete_service(frontend.ip(), frontend.port(), *proto, what)
            }
            Op::PutMarker { vip, proto } => {
                let marker = ServiceValue4 {
                    service_id: 0,
                    count: 0,
                };
                let what = format!("marking {vip}/{proto}");
                self.put_service(*vip, MARKER_PORT, *proto, marker, what)
            }
            Op::DeleteMarker { vip, proto } => {
                let what = format!("unmarking {vip}/{proto}");
                self.delete_service(*vip, MARKER_PORT, *proto, what)
            }
        }
    }

    fn reset_stats(&mut self, id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); cpus()?])
            .map_err(Error::io("building zeroed counters"))?;
        self.service_stats.set(id, zeros, 0).map_err(map_err(
            names::SERVICE_STATS,
            format!("resetting service {id}"),
        ))
    }

    fn put_name(&mut self, id: u32, name: &str) -> Result<()> {
        let value = ServiceName::new(name).ok_or_else(|| Error::Map {
            name: names::NAMES,
            what: format!("service name {name:?} is too long"),
            source: MapError::InvalidName {
                name: name.to_owned(),
            },
        })?;
        self.names
            .insert(id, value, 0)
            .map_err(map_err(names::NAMES, format!("writing {id}")))
    }

    fn put_service(
        &mut self,
        vip: IpAddr,
        port: u16,
        proto: Proto,
        value: ServiceValue4,
        what: String,
    ) -> Result<()> {
        match vip {
            IpAddr::V4(_) => self
                .v4
                .put_service(service_key(v4(vip), port, proto), value, what),
            IpAddr::V6(v6) => {
                self.v6
                    .put_service(service_key(v6.octets(), port, proto), value, what)
            }
        }
    }

    fn delete_service(&mut self, vip: IpAddr, port: u16, proto: Proto, what: String) -> Result<()> {
        match vip {
            IpAddr::V4(_) => self
                .v4
                .delete_service(service_key(v4(vip), port, proto), what),
            IpAddr::V6(v6) => self
                .v6
                .delete_service(service_key(v6.octets(), port, proto), what),
        }
    }

    /// The daemon's control-plane state.
    pub fn info(&self) -> Result<DaemonInfo> {
        self.info
            .get(&0, 0)
            .map_err(map_err(names::INFO, "reading"))
    }

    /// Records the daemon's control-plane state.
    pub fn set_info(&mut self, info: &DaemonInfo) -> Result<()> {
        self.info
            .set(0, info, 0)
            .map_err(map_err(names::INFO, "writing"))
    }

    /// Every tracked flow, IPv4 then IPv6.
    pub fn flows(&self) -> Result<Vec<Flow>> {
        let mut out = Vec::new();
        self.v4.flows(&mut out)?;
        self.v6.flows(&mut out)?;
        Ok(out)
    }

    /// Forgets a flow: its conntrack entry and its reverse NAT entry.
    pub fn delete_flow(&mut self, flow: &Flow) -> Result<()> {
        self.v4
            .delete_flow(flow)
            .or_else(|| self.v6.delete_flow(flow))
            .unwrap_or(Ok(()))
    }

    /// The backends the datapath holds suspect, by id.
    pub fn suspects(&self) -> Result<BTreeMap<u32, Suspect>> {
        let mut out = BTreeMap::new();
        for entry in self.suspects.iter() {
            match entry {
                Ok((id, s)) => {
                    out.insert(id, s);
                }
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::SUSPECTS, "iterating")(e)),
            }
        }
        Ok(out)
    }

    /// Forgets that backend `id` was suspect (its entry changed, or it is gone).
    pub fn clear_suspect(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.suspects.remove(&id))
            .map_err(map_err(names::SUSPECTS, format!("clearing backend {id}")))
    }

    /// Every translation of the socket datapath: IPv4 then IPv6, reverse entries then forward
    /// ones.
    pub fn sock_entries(&self) -> Result<Vec<SockEntry>> {
        let mut out = Vec::new();
        self.v4.sock_entries(&mut out)?;
        self.v6.sock_entries(&mut out)?;
        Ok(out)
    }

    /// Forgets one translation of the socket datapath.
    pub fn delete_sock_entry(&mut self, e: &SockEntry) -> Result<()> {
        self.v4
            .delete_sock_entry(e)
            .or_else(|| self.v6.delete_sock_entry(e))
            .unwrap_or(Ok(()))
    }

    /// The capacity these maps were created with.
    pub fn capacity(&self) -> Result<Capacity> {
        let size = |name: &'static str, map: &MapData| {
            map.info()
                .map(|i| i.max_entries())
                .map_err(map_err(name, "reading its size"))
        };
        Ok(Capacity::from_entries(
            size(names::SERVICES, self.v4.services.map())?,
            size(names::BACKENDS, self.v4.backends.map())?,
            size(names::SLOTS, self.slots.map())?,
            size(names::CONNTRACK, self.v4.conntrack.map())?,
        ))
    }

    /// A service's counters, summed over CPUs.
    pub fn service_stats(&self, id: u32) -> Result<ServiceStats> {
        let per_cpu = self.service_stats.get(&id, 0).map_err(map_err(
            names::SERVICE_STATS,
            format!("reading service {id}"),
        ))?;
        Ok(per_cpu.iter().fold(ServiceStats::default(), |mut acc, s| {
            acc += *s;
            acc
        }))
    }

    /// Packets per reason, summed over CPUs.
    pub fn reasons(&self) -> Result<BTreeMap<&'static str, u64>> {
        summed(
            &self.reasons,
            names::REASONS,
            Reason::ALL.map(|r| (r as u32, r.name())),
        )
    }
}

/// Per-CPU counters, each summed over the CPUs, by name.
fn summed<const N: usize>(
    counters: &PerCpuArray<MapData, u64>,
    map: &'static str,
    indexes: [(u32, &'static str); N],
) -> Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for (index, name) in indexes {
        let per_cpu = counters
            .get(&index, 0)
            .map_err(map_err(map, format!("reading {name}")))?;
        out.insert(name, per_cpu.iter().sum());
    }
    Ok(out)
}

fn cpus() -> Result<usize> {
    nr_cpus().map_err(|(what, e)| Error::io(format!("counting CPUs ({what})"))(e))
}
