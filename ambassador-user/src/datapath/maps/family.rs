//! Each address family's maps (frontends, backends, flows, socket translations): the same
//! shapes over a `u32` (IPv4) or 16-byte (IPv6) address, and what they decode to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ambassador_common::{
    Addr, Backend, CtEntry, CtKey, RevNat, ServiceKey, ServiceValue4, SockKey, SockNat,
    BACKEND_TERMINATING, CT_CLOSING, FRONTEND_MARKER_PORT, SOCK_CONNECTED,
};
use aya::maps::{HashMap, Map, MapData, MapError};

use super::{ignore_missing, map_err, typed};
use crate::{
    core::{
        model::Proto,
        reconcile::{Installed, InstalledBackend},
    },
    error::Result,
};

/// An address as a map holds it (network byte order): `u32` for IPv4, 16 bytes for IPv6.
pub(super) trait Wire: Addr + aya::Pod {
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
pub(super) fn v4(ip: IpAddr) -> u32 {
    u32::wire(ip).unwrap_or_default()
}

pub(super) fn service_key<A: Wire>(vip: A, port: u16, proto: Proto) -> ServiceKey<A> {
    ServiceKey {
        vip_be: vip,
        port_be: port.to_be(),
        proto: proto.number(),
        pad: 0,
    }
}

/// The maps of one address family.
pub(super) struct FamilyMaps<A: Addr> {
    pub(super) services: HashMap<MapData, ServiceKey<A>, ServiceValue4>,
    pub(super) backends: HashMap<MapData, u32, Backend<A>>,
    pub(super) conntrack: HashMap<MapData, CtKey<A>, CtEntry<A>>,
    pub(super) reverse_nat: HashMap<MapData, CtKey<A>, RevNat<A>>,
    pub(super) sock_forward: HashMap<MapData, SockKey<A>, SockNat<A>>,
    pub(super) sock_reverse: HashMap<MapData, SockKey<A>, SockNat<A>>,
    /// Services, backends, conntrack, reverse NAT, socket forward, socket reverse.
    pub(super) names: [&'static str; 6],
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
    pub(super) fn build(
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

    pub(super) fn read_services(&self, inst: &mut Installed) -> Result<()> {
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

    pub(super) fn read_backends(&self, inst: &mut Installed) -> Result<()> {
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

    pub(super) fn put_backend(
        &mut self,
        id: u32,
        addr: A,
        backend: &InstalledBackend,
    ) -> Result<()> {
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

    pub(super) fn delete_backend(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.backends.remove(&id))
            .map_err(map_err(self.names[1], format!("deleting backend {id}")))
    }

    pub(super) fn put_service(
        &mut self,
        key: ServiceKey<A>,
        value: ServiceValue4,
        what: String,
    ) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err(self.names[0], what))
    }

    pub(super) fn delete_service(&mut self, key: ServiceKey<A>, what: String) -> Result<()> {
        ignore_missing(self.services.remove(&key)).map_err(map_err(self.names[0], what))
    }

    pub(super) fn flows(&self, out: &mut Vec<Flow>) -> Result<()> {
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
    pub(super) fn delete_flow(&mut self, flow: &Flow) -> Option<Result<()>> {
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

    pub(super) fn sock_entries(&self, out: &mut Vec<SockEntry>) -> Result<()> {
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
    pub(super) fn delete_sock_entry(&mut self, e: &SockEntry) -> Option<Result<()>> {
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
