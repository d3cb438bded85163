//! The network interfaces of this network namespace, from rtnetlink (RTM_GETLINK dump).
//!
//! Not sysfs: /sys/class/net shows the namespace of whoever mounted sysfs, which is not this
//! process's under `nsenter --net` or in a container without its own /sys.

use std::{io, mem::size_of};

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
}

const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Walks the rtattrs in `buf`, calling `f(type, payload)` for each.
fn attrs(mut buf: &[u8], mut f: impl FnMut(u16, &[u8])) {
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff; // drop NLA_F_NESTED etc.
        if len < 4 || len > buf.len() {
            return;
        }
        f(ty, &buf[4..len]);
        buf = &buf[align4(len).min(buf.len())..];
    }
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses one RTM_NEWLINK message body (after the netlink header).
fn parse_link(body: &[u8]) -> Option<Link> {
    if body.len() < IFINFOMSG_LEN {
        return None;
    }
    let index = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let mut link = Link {
        index,
        name: String::new(),
        master: None,
        kind: None,
    };
    attrs(&body[IFINFOMSG_LEN..], |ty, payload| match ty {
        IFLA_IFNAME => link.name = c_string(payload),
        IFLA_MASTER if payload.len() >= 4 => {
            link.master = Some(u32::from_ne_bytes(
                payload[..4].try_into().expect("4 bytes"),
            ))
        }
        IFLA_LINKINFO => attrs(payload, |ty, p| {
            if ty == IFLA_INFO_KIND {
                link.kind = Some(c_string(p));
            }
        }),
        _ => {}
    });
    Some(link)
}

/// Lists the interfaces of the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    // SAFETY: plain socket syscalls on a descriptor we own and close below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = dump(fd);
    unsafe { libc::close(fd) };
    result
}

fn dump(fd: i32) -> io::Result<Vec<Link>> {
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    req[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    // SAFETY: sending a buffer we own; the kernel is the destination (zeroed sockaddr_nl).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    let sent = unsafe {
        libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
            let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < NLMSG_HDRLEN || len > msgs.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            match ty {
                NLMSG_DONE => return Ok(links),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(msgs[16..20].try_into().expect("4 bytes"));
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ => links.extend(parse_link(&msgs[NLMSG_HDRLEN..len])),
            }
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
    }
}

/// A socket that becomes readable whenever an interface appears, changes or goes (the
/// RTMGRP_LINK multicast group), so bridge ports are attached as soon as they join.
pub struct LinkEvents {
    fd: std::os::fd::OwnedFd,
}

impl LinkEvents {
    /// Subscribes to link events of this network namespace.
    pub fn subscribe() -> io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket syscalls; the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads and discards every pending event; true if there was at least one (or the queue
    /// overflowed, which also means "something changed").
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut any = false;
        loop {
            // SAFETY: receiving into a buffer we own, without blocking.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                any = true;
                continue;
            }
            let err = io::Error::last_os_error();
            return any || err.raw_os_error() == Some(libc::ENOBUFS);
        }
    }
}

impl std::os::fd::AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let links = links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert_eq!(lo.index, 1);
        assert_eq!(lo.master, None);
    }

    #[test]
    fn malformed_attributes_do_not_panic() {
        assert!(parse_link(&[0u8; 8]).is_none());
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body.extend_from_slice(&[200, 0, 3, 0, b'x']); // an attribute longer than the buffer
        assert_eq!(parse_link(&body).unwrap().name, "");
        body.truncate(IFINFOMSG_LEN);
        body.extend_from_slice(&[8, 0, 3, 0, b'e', b't', b'h', 0]);
        assert_eq!(parse_link(&body).unwrap().name, "eth");
    }
}
