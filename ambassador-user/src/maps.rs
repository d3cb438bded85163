//! Typed access to the datapath's maps. This is the only module that converts between host and
//! network byte order: everything above it speaks `SocketAddrV4`.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use ambassador_common::{
    map_names as names, Backend4, CtEntry4, CtKey4, DaemonInfo, Reason, RevNat4, ServiceKey4,
    ServiceName, ServiceStats, ServiceValue4, SlotKey, SockKey4, SockNat4, Suspect,
    BACKEND_TERMINATING, CT_CLOSING, FRONTEND_MARKER_PORT, SOCK_CONNECTED,
};
use aya::{
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};

use crate::{
    capacity::Capacity,
    error::{Error, Result},
    model::Proto,
    reconcile::{Installed, InstalledBackend, Op},
};

fn addr_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip_of(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

fn sock(addr_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip_of(addr_be), u16::from_be(port_be))
}

fn service_key(frontend: SocketAddrV4, proto: Proto) -> ServiceKey4 {
    ServiceKey4 {
        vip_be: addr_be(*frontend.ip()),
        port_be: frontend.port().to_be(),
        proto: proto.number(),
        pad: 0,
    }
}

/// One tracked flow, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The client's address as it sent the packet.
    pub client: SocketAddrV4,
    /// The frontend it dialled.
    pub frontend: SocketAddrV4,
    /// Protocol.
    pub proto: Proto,
    /// Service of the flow.
    pub service_id: u32,
    /// Backend id of the flow.
    pub backend_id: u32,
    /// Backend address.
    pub backend: SocketAddrV4,
    /// A FIN or RST was seen.
    pub closing: bool,
    /// Monotonic time of the flow's first packet.
    pub created_ns: u64,
    /// Monotonic time a packet was last seen (refreshed at most once a second).
    pub last_seen_ns: u64,
}

/// One translation of the socket datapath, decoded: a reverse entry (socket, backend ->
/// frontend) or a forward one (unconnected socket, frontend -> backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEntry {
    /// Which map: reverse (true) or forward.
    pub reverse: bool,
    /// The socket's cookie.
    pub cookie: u64,
    /// The frontend the socket dialled.
    pub frontend: SocketAddrV4,
    /// The backend it was given.
    pub backend: SocketAddrV4,
    /// Protocol.
    pub proto: Proto,
    /// Service of the frontend.
    pub service_id: u32,
    /// Backend id.
    pub backend_id: u32,
    /// Made by `connect` (lives until the socket closes) rather than by `sendmsg` on an
    /// unconnected socket (expires like a UDP flow).
    pub connected: bool,
    /// Monotonic time of the translation (refreshed by an unconnected socket's datagrams).
    pub last_seen_ns: u64,
}

/// The datapath's maps.
pub struct Maps {
    services: HashMap<MapData, ServiceKey4, ServiceValue4>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend4>,
    conntrack: HashMap<MapData, CtKey4, CtEntry4>,
    reverse_nat: HashMap<MapData, CtKey4, RevNat4>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    reasons: PerCpuArray<MapData, u64>,
    names: HashMap<MapData, u32, ServiceName>,
    info: Array<MapData, DaemonInfo>,
    sock_forward: HashMap<MapData, SockKey4, SockNat4>,
    sock_reverse: HashMap<MapData, SockKey4, SockNat4>,
    suspects: HashMap<MapData, u32, Suspect>,
}

fn map_err(name: &'static str, what: impl Into<String>) -> impl FnOnce(MapError) -> Error {
    let what = what.into();
    move |source| match &source {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Error::MapFull {
                name,
                flag: crate::capacity::flag_of(name),
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

impl Maps {
    fn build(mut take: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            services: typed(names::SERVICES, &mut take)?,
            slots: typed(names::SLOTS, &mut take)?,
            backends: typed(names::BACKENDS, &mut take)?,
            conntrack: typed(names::CONNTRACK, &mut take)?,
            reverse_nat: typed(names::REVERSE_NAT, &mut take)?,
            service_stats: typed(names::SERVICE_STATS, &mut take)?,
            reasons: typed(names::REASONS, &mut take)?,
            names: typed(names::NAMES, &mut take)?,
            info: typed(names::INFO, &mut take)?,
            sock_forward: typed(names::SOCK_FORWARD, &mut take)?,
            sock_reverse: typed(names::SOCK_REVERSE, &mut take)?,
            suspects: typed(names::SUSPECTS, &mut take)?,
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
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(map_err(names::SERVICES, "iterating"))?;
            let Some(proto) = Proto::from_number(k.proto) else {
                continue;
            };
            if k.port_be == FRONTEND_MARKER_PORT {
                inst.markers.insert((ip_of(k.vip_be), proto));
            } else {
                inst.frontends
                    .insert((sock(k.vip_be, k.port_be), proto), (v.service_id, v.count));
            }
        }
        for entry in self.slots.iter() {
            let (k, v) = entry.map_err(map_err(names::SLOTS, "iterating"))?;
            inst.slots.insert((k.service_id, k.slot), v);
        }
        for entry in self.backends.iter() {
            let (id, b) = entry.map_err(map_err(names::BACKENDS, "iterating"))?;
            inst.backends.insert(
                id,
                InstalledBackend {
                    service_id: b.service_id,
                    addr: sock(b.addr_be, b.port_be),
                    terminating: b.flags & BACKEND_TERMINATING != 0,
                },
            );
            inst.next_backend_id = inst.next_backend_id.max(id + 1);
        }
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
            Op::ResetStats { id } => {
                let zeros = PerCpuValues::try_from(vec![ServiceStats::default(); cpus()?])
                    .map_err(Error::io("building zeroed counters"))?;
                self.service_stats.set(*id, zeros, 0).map_err(map_err(
                    names::SERVICE_STATS,
                    format!("resetting service {id}"),
                ))
            }
            Op::PutName { id, name } => {
                let value = ServiceName::new(name).ok_or_else(|| Error::Map {
                    name: names::NAMES,
                    what: format!("service name {name:?} is too long"),
                    source: MapError::InvalidName { name: name.clone() },
                })?;
                self.names
                    .insert(id, value, 0)
                    .map_err(map_err(names::NAMES, format!("writing {id}")))
            }
            Op::DeleteName { id } => ignore_missing(self.names.remove(id))
                .map_err(map_err(names::NAMES, format!("deleting {id}"))),
            Op::PutBackend { id, backend } => {
                let value = Backend4 {
                    addr_be: addr_be(*backend.addr.ip()),
                    port_be: backend.addr.port().to_be(),
                    pad: 0,
                    service_id: backend.service_id,
                    flags: if backend.terminating {
                        BACKEND_TERMINATING
                    } else {
                        0
                    },
                };
                self.backends
                    .insert(id, value, 0)
                    .map_err(map_err(names::BACKENDS, format!("writing backend {id}")))
            }
            Op::DeleteBackend { id } => ignore_missing(self.backends.remove(id))
                .map_err(map_err(names::BACKENDS, format!("deleting backend {id}"))),
            Op::PutSlot {
                service_id,
                slot,
                backend_id,
            } => self
                .slots
                .insert(
                    SlotKey {
                        service_id: *service_id,
                        slot: *slot,
                    },
                    backend_id,
                    0,
                )
                .map_err(map_err(
                    names::SLOTS,
                    format!("writing slot {service_id}/{slot}"),
                )),
            Op::DeleteSlot { service_id, slot } => ignore_missing(self.slots.remove(&SlotKey {
                service_id: *service_id,
                slot: *slot,
            }))
            .map_err(map_err(
                names::SLOTS,
                format!("deleting slot {service_id}/{slot}"),
            )),
            Op::PutService {
                frontend,
                proto,
                id,
                count,
            } => self
                .services
                .insert(
                    service_key(*frontend, *proto),
                    ServiceValue4 {
                        service_id: *id,
                        count: *count,
                    },
                    0,
                )
                .map_err(map_err(
                    names::SERVICES,
                    format!("writing {frontend}/{proto}"),
                )),
            Op::DeleteService { frontend, proto } => {
                ignore_missing(self.services.remove(&service_key(*frontend, *proto))).map_err(
                    map_err(names::SERVICES, format!("deleting {frontend}/{proto}")),
                )
            }
            Op::PutMarker { vip, proto } => self
                .services
                .insert(
                    service_key(SocketAddrV4::new(*vip, FRONTEND_MARKER_PORT), *proto),
                    ServiceValue4 {
                        service_id: 0,
                        count: 0,
                    },
                    0,
                )
                .map_err(map_err(names::SERVICES, format!("marking {vip}/{proto}"))),
            Op::DeleteMarker { vip, proto } => ignore_missing(self.services.remove(&service_key(
                SocketAddrV4::new(*vip, FRONTEND_MARKER_PORT),
                *proto,
            )))
            .map_err(map_err(names::SERVICES, format!("unmarking {vip}/{proto}"))),
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

    /// Every tracked flow.
    pub fn flows(&self) -> Result<Vec<Flow>> {
        let mut out = Vec::new();
        for entry in self.conntrack.iter() {
            let (k, e) = match entry {
                Ok(kv) => kv,
                // The LRU may drop an entry between two steps of the iteration.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::CONNTRACK, "iterating")(e)),
            };
            let Some(proto) = Proto::from_number(k.proto) else {
                continue;
            };
            out.push(Flow {
                client: sock(k.saddr_be, k.sport_be),
                frontend: sock(k.daddr_be, k.dport_be),
                proto,
                service_id: e.service_id,
                backend_id: e.backend_id,
                backend: sock(e.backend_addr_be, e.backend_port_be),
                closing: e.flags & CT_CLOSING != 0,
                created_ns: e.created_ns,
                last_seen_ns: e.last_seen_ns,
            });
        }
        Ok(out)
    }

    /// Forgets a flow: its conntrack entry and its reverse NAT entry.
    pub fn delete_flow(&mut self, flow: &Flow) -> Result<()> {
        let fwd = CtKey4::new(
            addr_be(*flow.client.ip()),
            flow.client.port().to_be(),
            addr_be(*flow.frontend.ip()),
            flow.frontend.port().to_be(),
            flow.proto.number(),
        );
        let rev = CtKey4::new(
            addr_be(*flow.backend.ip()),
            flow.backend.port().to_be(),
            addr_be(*flow.client.ip()),
            flow.client.port().to_be(),
            flow.proto.number(),
        );
        ignore_missing(self.reverse_nat.remove(&rev))
            .map_err(map_err(names::REVERSE_NAT, "deleting a flow"))?;
        ignore_missing(self.conntrack.remove(&fwd))
            .map_err(map_err(names::CONNTRACK, "deleting a flow"))
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

    /// Every translation of the socket datapath, reverse entries then forward ones.
    pub fn sock_entries(&self) -> Result<Vec<SockEntry>> {
        let mut out = Vec::new();
        for (reverse, name, map) in [
            (true, names::SOCK_REVERSE, &self.sock_reverse),
            (false, names::SOCK_FORWARD, &self.sock_forward),
        ] {
            for entry in map.iter() {
                let (k, v) = match entry {
                    Ok(kv) => kv,
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(map_err(name, "iterating")(e)),
                };
                let Some(proto) = Proto::from_number(v.proto) else {
                    continue;
                };
                let (key_addr, value_addr) =
                    (sock(k.addr_be, k.port_be), sock(v.addr_be, v.port_be));
                let (frontend, backend) = if reverse {
                    (value_addr, key_addr)
                } else {
                    (key_addr, value_addr)
                };
                out.push(SockEntry {
                    reverse,
                    cookie: k.cookie,
                    frontend,
                    backend,
                    proto,
                    service_id: v.service_id,
                    backend_id: v.backend_id,
                    connected: v.flags & SOCK_CONNECTED != 0,
                    last_seen_ns: v.last_seen_ns,
                });
            }
        }
        Ok(out)
    }

    /// Forgets one translation of the socket datapath.
    pub fn delete_sock_entry(&mut self, e: &SockEntry) -> Result<()> {
        let (name, map, addr) = if e.reverse {
            (names::SOCK_REVERSE, &mut self.sock_reverse, e.backend)
        } else {
            (names::SOCK_FORWARD, &mut self.sock_forward, e.frontend)
        };
        let key = SockKey4 {
            cookie: e.cookie,
            addr_be: addr_be(*addr.ip()),
            port_be: addr.port().to_be(),
            pad: 0,
        };
        ignore_missing(map.remove(&key)).map_err(map_err(name, "deleting a socket's entry"))
    }

    /// The capacity these maps were created with.
    pub fn capacity(&self) -> Result<Capacity> {
        let size = |name: &'static str, map: &MapData| {
            map.info()
                .map(|i| i.max_entries())
                .map_err(map_err(name, "reading its size"))
        };
        Ok(Capacity::from_entries(
            size(names::SERVICES, self.services.map())?,
            size(names::BACKENDS, self.backends.map())?,
            size(names::SLOTS, self.slots.map())?,
            size(names::CONNTRACK, self.conntrack.map())?,
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
        let mut out = BTreeMap::new();
        for reason in Reason::ALL {
            let per_cpu = self.reasons.get(&(reason as u32), 0).map_err(map_err(
                names::REASONS,
                format!("reading {}", reason.name()),
            ))?;
            out.insert(reason.name(), per_cpu.iter().sum());
        }
        Ok(out)
    }
}

fn cpus() -> Result<usize> {
    nr_cpus().map_err(|(what, e)| Error::io(format!("counting CPUs ({what})"))(e))
}
