//! The network interfaces of this network namespace, from rtnetlink (an RTM_GETLINK dump, and
//! the RTMGRP_LINK multicast group for changes), their addresses (an RTM_GETADDR dump) and the
//! route to an address (RTM_GETROUTE), through the netlink-packet-route and netlink-sys
//! crates; and the one request/answer loop every netlink user here shares.
//!
//! Not sysfs: /sys/class/net shows the namespace of whoever mounted sysfs, which is not this
//! process's under `nsenter --net` or in a container without its own /sys.

use std::io;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    route::{RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// One interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Index of the bridge (or bond) it is enslaved to.
    pub master: Option<u32>,
    /// Link kind ("bridge", "veth", ...), when the kernel reports one.
    pub kind: Option<String>,
    /// How an XDP program is attached: "native" (the driver runs it), "generic" (the stack
    /// does), "offload"; `None` without one.
    pub xdp: Option<&'static str>,
}

impl From<&LinkMessage> for Link {
    fn from(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            master: None,
            kind: None,
            xdp: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Controller(index) => link.master = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    });
                }
                LinkAttribute::Xdp(xdp) => {
                    link.xdp = xdp.iter().find_map(|x| match x {
                        LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
                        LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
                        LinkXdp::Attached(XdpAttached::Multiple) => Some("several modes"),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {e}"))
}

/// Sends one request of netlink `protocol` and hands each answer to `each` until the kernel says
/// done (a dump) or acknowledges (a single request with NLM_F_ACK). An error answer is the
/// request's error.
pub fn exchange<T, R>(
    protocol: isize,
    payload: T,
    flags: u16,
    mut each: impl FnMut(&NetlinkPayload<R>),
) -> io::Result<()>
where
    T: NetlinkSerializable,
    NetlinkPayload<T>: From<T>,
    R: NetlinkDeserializable,
{
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(payload));
    request.header.flags = flags;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = Vec::with_capacity(64 * 1024);
    loop {
        rx.clear();
        let n = socket.recv(&mut rx, 0)?;
        let mut at = 0;
        while at < n.min(rx.len()) {
            let msg = NetlinkMessage::<R>::deserialize(&rx[at..]).map_err(invalid)?;
            match &msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        Some(_) => Err(e.to_io()),
                        None => Ok(()), // the acknowledgement of a single request
                    };
                }
                p => each(p),
            }
            let len = msg.header.length as usize;
            if len == 0 {
                return Err(invalid("a message of length 0"));
            }
            at += len.next_multiple_of(4);
        }
    }
}

/// Lists the interfaces of the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let mut links = Vec::new();
    exchange(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP | NLM_F_REQUEST,
        |p| {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) = p {
                links.push(Link::from(m));
            }
        },
    )?;
    Ok(links)
}

/// The addresses of this network namespace's interfaces, with their prefixes (the subnets the
/// host is on).
pub fn addresses() -> io::Result<Vec<ipnet::IpNet>> {
    let mut nets = Vec::new();
    exchange(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_DUMP | NLM_F_REQUEST,
        |p| {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) = p {
                // IFA_LOCAL is the interface's own address on point-to-point links, where
                // IFA_ADDRESS is the peer's; elsewhere they are equal.
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(net) =
                    addr.and_then(|ip| ipnet::IpNet::new(ip, m.header.prefix_len).ok())
                {
                    nets.push(net);
                }
            }
        },
    )?;
    Ok(nets)
}

/// The index of the interface this namespace's routes send packets for `ip` out of (what `ip
/// route get` says); `None` when no route leads there (unreachable, or a local address).
pub fn route_oif(ip: std::net::IpAddr) -> io::Result<Option<u32>> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::from(ip);
    m.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
    m.attributes.push(RouteAttribute::Destination(ip.into()));
    let mut oif = None;
    let answer = exchange(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetRoute(m),
        // The acknowledgement ends the exchange (the answer itself is one message, no dump).
        NLM_F_REQUEST | NLM_F_ACK,
        |p| {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = p {
                oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
            }
        },
    );
    match answer {
        // No route: unreachable, prohibited, or a blackhole.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(oif),
    }
}

/// A socket that becomes readable whenever an interface appears, changes or goes (the
/// RTMGRP_LINK multicast group), so bridge ports are attached as soon as they join.
pub struct LinkEvents {
    socket: Socket,
}

impl LinkEvents {
    /// Subscribes to link events of this network namespace.
    pub fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
        socket.set_non_blocking(true)?;
        Ok(Self { socket })
    }

    /// Reads and discards every pending event; true if there was at least one (or the queue
    /// overflowed, which also means "something changed").
    pub fn drain(&self) -> bool {
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut any = false;
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) if n > 0 => any = true,
                Ok(_) => return any,
                Err(e) => return any || e.raw_os_error() == Some(libc::ENOBUFS),
            }
        }
    }
}

impl std::os::fd::AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_loopback_leaves_through_lo() {
        assert_eq!(route_oif("127.0.0.1".parse().unwrap()).unwrap(), Some(1));
    }

    #[test]
    fn loopback_is_listed() {
        let links = links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.index, 1);
        assert_eq!(lo.master, None);
    }

    #[test]
    fn a_link_message_becomes_a_link() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes = vec![
            LinkAttribute::IfName("veth1".into()),
            LinkAttribute::Controller(3),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                netlink_packet_route::link::InfoKind::Veth,
            )]),
        ];
        assert_eq!(
            Link::from(&m),
            Link {
                index: 7,
                name: "veth1".into(),
                master: Some(3),
                kind: Some("veth".into()),
                xdp: None,
            }
        );
    }
}
