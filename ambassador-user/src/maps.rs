//! Typed access to the datapath's maps. This is the only module that converts between host and
//! network byte order: everything above it speaks `SocketAddr`. Each address family has its
//! own frontend, backend and connection maps of the same shapes.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use ambassador_common::{
    map_names as names, Addr, Backend, CtEntry, CtKey, DaemonInfo, Reason, RevNat, ServiceKey,
    ServiceName, ServiceStats, ServiceValue4, SlotKey, SockKey, SockNat, Suspect,
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

/// An address as a map holds it (network byte order): `u32` for IPv4, 16 bytes for IPv6.
trait Wire: Addr + aya::Pod {
    /// The map form of `ip`, if it is of this family.
    fn wire(ip: IpAddr) -> Option<Self>;
    /// The address.
    fn ip(self) -> IpAddr;
}

impl Wire for u32 {
    fn wire(ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(v4) => Some(u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(_) => None,
        }
    }
    fn ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.to_ne_bytes()))
    }
}

impl Wire for [u8; 16] {
    fn wire(ip: IpAddr) -> Option<[u8; 16]> {
        match ip {
            IpAddr::V6(v6) => Some(v6.octets()),
            IpAddr::V4(_) => None,
        }
    }
    fn ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }
}

fn sock<A: Wire>(addr_be: A, port_be: u16) -> SocketAddr {
    SocketAddr::new(addr_be.ip(), u16::from_be(port_be))
}

/// The IPv4 form of an address the caller knows to be IPv4.
fn v4(ip: IpAddr) -> u32 {
    u32::wire(ip).unwrap_or_default()
}

fn service_key<A: Wire>(vip: A, port: u16, proto: Proto) -> ServiceKey<A> {
    ServiceKey {
        vip_be: vip,
        port_be: port.to_be(),
        proto: proto.number(),
        pad: 0,
    }
}

/// The maps of one address family.
struct FamilyMaps<A: Addr> {
    services: HashMap<MapData, ServiceKey<A>, ServiceValue4>,
    backends: HashMap<MapData, u32, Backend<A>>,
    conntrack: HashMap<MapData, CtKey<A>, CtEntry<A>>,
    reverse_nat: HashMap<MapData, CtKey<A>, RevNat<A>>,
    sock_forward: HashMap<MapData, SockKey<A>, SockNat<A>>,
    sock_reverse: HashMap<MapData, SockKey<A>, SockNat<A>>,
    /// Services, backends, conntrack, reverse NAT, socket forward, socket reverse.
    names: [&'static str; 6],
}

impl<A: Wire> FamilyMaps<A>
where
    ServiceKey<A>: aya::Pod,
    Backend<A>: aya::Pod,
    CtKey<A>: aya::Pod,
    CtEntry<A>: aya::Pod,
    RevNat<A>: aya::Pod,
    SockKey<A>: aya::Pod,
    SockNat<A>: aya::Pod,
{
    fn build(
        names: [&'static str; 6],
        take: &mut impl FnMut(&'static str) -> Result<Map>,
    ) -> Result<Self> {
        Ok(Self {
            services: typed(names[0], take)?,
            backends: typed(names[1], take)?,
            conntrack: typed(names[2], take)?,
            reverse_nat: typed(names[3], take)?,
            sock_forward: typed(names[4], take)?,
            sock_reverse: typed(names[5], take)?,
            names,
        })
    }

    fn read_services(&self, inst: &mut Installed) -> Result<()> {
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(map_err(self.names[0], "iterating"))?;
            let Some(proto) = Proto::from_number(k.proto) else {
                continue;
            };
            if k.port_be == FRONTEND_MARKER_PORT {
                inst.markers.insert((k.vip_be.ip(), proto));
            } else {
                inst.frontends
                    .insert((sock(k.vip_be, k.port_be), proto), (v.service_id, v.count));
            }
        }
        Ok(())
    }

    fn read_backends(&self, inst: &mut Installed) -> Result<()> {
        for entry in self.backends.iter() {
            let (id, b) = entry.map_err(map_err(self.names[1], "iterating"))?;
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
        Ok(())
    }

    fn put_backend(&mut self, id: u32, addr: A, backend: &InstalledBackend) -> Result<()> {
        let value = Backend {
            addr_be: addr,
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
            .map_err(map_err(self.names[1], format!("writing backend {id}")))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id))
            .map_err(map_err(self.names[1], format!("deleting backend {id}")))
    }

    fn put_service(
        &mut self,
        key: ServiceKey<A>,
        value: ServiceValue4,
        what: String,
    ) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err(self.names[0], what))
    }

    fn delete_service(&mut self, key: ServiceKey<A>, what: String) -> Result<()> {
        ignore_missing(self.services.remove(&key)).map_err(map_err(self.names[0], what))
    }

    fn flows(&self, out: &mut Vec<Flow>) -> Result<()> {
        for entry in self.conntrack.iter() {
            let (k, e) = match entry {
                Ok(kv) => kv,
                // The LRU may drop an entry between two steps of the iteration.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(self.names[2], "iterating")(e)),
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
        Ok(())
    }

    /// Forgets a flow of this family (`None`: not of this family).
    fn delete_flow(&mut self, flow: &Flow) -> Option<Result<()>> {
        let (client, frontend, backend) = (
            A::wire(flow.client.ip())?,
            A::wire(flow.frontend.ip())?,
            A::wire(flow.backend.ip())?,
        );
        let proto = flow.proto.number();
        let fwd = CtKey::new(
            client,
            flow.client.port().to_be(),
            frontend,
            flow.frontend.port().to_be(),
            proto,
        );
        let rev = CtKey::new(
            backend,
            flow.backend.port().to_be(),
            client,
            flow.client.port().to_be(),
            proto,
        );
        let result = ignore_missing(self.reverse_nat.remove(&rev))
            .map_err(map_err(self.names[3], "deleting a flow"))
            .and_then(|()| {
                ignore_missing(self.conntrack.remove(&fwd))
                    .map_err(map_err(self.names[2], "deleting a flow"))
            });
        Some(result)
    }

    fn sock_entries(&self, out: &mut Vec<SockEntry>) -> Result<()> {
        for (reverse, name, map) in [
            (true, self.names[5], &self.sock_reverse),
            (false, self.names[4], &self.sock_forward),
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
        Ok(())
    }

    /// Forgets a translation of this family (`None`: not of this family).
    fn delete_sock_entry(&mut self, e: &SockEntry) -> Option<Result<()>> {
        let (name, map, addr) = if e.reverse {
            (self.names[5], &mut self.sock_reverse, e.backend)
        } else {
            (self.names[4], &mut self.sock_forward, e.frontend)
        };
        let key = SockKey::new(e.cookie, A::wire(addr.ip())?, addr.port().to_be());
        Some(ignore_missing(map.remove(&key)).map_err(map_err(name, "deleting a socket's entry")))
    }
}

/// One tracked flow, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The client's address as it sent the packet.
    pub client: SocketAddr,
    /// The frontend it dialled.
    pub frontend: SocketAddr,
    /// Protocol.
    pub proto: Proto,
    /// Service of the flow.
    pub service_id: u32,
    /// Backend id of the flow.
    pub backend_id: u32,
    /// Backend address.
    pub backend: SocketAddr,
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
    pub frontend: SocketAddr,
    /// The backend it was given.
    pub backend: SocketAddr,
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
    v4: FamilyMaps<u32>,
    v6: FamilyMaps<[u8; 16]>,
    slots: HashMap<MapData, SlotKey, u32>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    reasons: PerCpuArray<MapData, u64>,
    names: HashMap<MapData, u32, ServiceName>,
    info: Array<MapData, DaemonInfo>,
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
            } => self.put_service(
                frontend.ip(),
                frontend.port(),
                *proto,
                ServiceValue4 {
                    service_id: *id,
                    count: *count,
                },
                format!("writing {frontend}/{proto}"),
            ),
            Op::DeleteService { frontend, proto } => self.delete_service(
                frontend.ip(),
                frontend.port(),
                *proto,
                format!("deleting {frontend}/{proto}"),
            ),
            Op::PutMarker { vip, proto } => self.put_service(
                *vip,
                u16::from_be(FRONTEND_MARKER_PORT),
                *proto,
                ServiceValue4 {
                    service_id: 0,
                    count: 0,
                },
                format!("marking {vip}/{proto}"),
            ),
            Op::DeleteMarker { vip, proto } => self.delete_service(
                *vip,
                u16::from_be(FRONTEND_MARKER_PORT),
                *proto,
                format!("unmarking {vip}/{proto}"),
            ),
        }
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
