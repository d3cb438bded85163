//! The hosts of most tests: a client, a forwarding host and backends, each a namespace.

use super::*;

/// The client -> forwarding host -> backends topology of the integration tests:
///
/// ```text
/// client 10.200.0.2 --eth0/c0-- fwd 10.200.0.1 | 10.200.N.1 --bN/eth0-- backend N 10.200.N.2
/// ```
///
/// The client's default route is the forwarding host, which forwards and runs ambassador with
/// `--iface c0`. Every link has transmit checksum offload off.
pub struct Topology {
    /// The client.
    pub client: NetNs,
    /// The forwarding host.
    pub fwd: NetNs,
    /// The backends, `backends[i]` at `10.200.{i+1}.2`.
    pub backends: Vec<NetNs>,
}

impl Topology {
    /// Builds the topology with `n` backends.
    pub fn new(n: usize) -> Self {
        let client = NetNs::new("c");
        let fwd = NetNs::new("f");
        veth(
            &client,
            "eth0",
            "10.200.0.2/24",
            &fwd,
            "c0",
            "10.200.0.1/24",
        );
        client.ip(&["route", "add", "default", "via", "10.200.0.1"]);
        fwd.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut backends = Vec::new();
        for i in 1..=n {
            let b = NetNs::new(&format!("b{i}"));
            veth(
                &fwd,
                &format!("b{i}"),
                &format!("10.200.{i}.1/24"),
                &b,
                "eth0",
                &format!("10.200.{i}.2/24"),
            );
            b.ip(&["route", "add", "default", "via", &format!("10.200.{i}.1")]);
            backends.push(b);
        }
        Self {
            client,
            fwd,
            backends,
        }
    }

    /// A TCP server on every backend at `port`, each greeting with its name ("b1", "b2"...).
    pub fn greeters(&self, port: u16) -> Vec<TcpServer> {
        (1..=self.backends.len())
            .map(|i| {
                TcpServer::start(
                    &self.backends[i - 1],
                    &Self::backend_addr(i, port),
                    &format!("b{i}"),
                )
            })
            .collect()
    }

    /// Address of backend `i` (1-based) on `port`.
    pub fn backend_addr(i: usize, port: u16) -> String {
        format!("10.200.{i}.2:{port}")
    }

    /// Adds IPv6 beside IPv4: the client `fd00:200::2/64` (default route via the forwarding
    /// host's `fd00:200::1`), backend N `fd00:200:N::2/64` (via `fd00:200:N::1`), forwarding on.
    /// Addresses skip duplicate address detection, so they are usable at once.
    pub fn add_ipv6(&self) {
        let add = |ns: &NetNs, addr: &str, dev: &str| {
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        };
        add(&self.client, "fd00:200::2/64", "eth0");
        add(&self.fwd, "fd00:200::1/64", "c0");
        self.client
            .ip(&["-6", "route", "add", "default", "via", "fd00:200::1"]);
        self.fwd
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        for (i, b) in self.backends.iter().enumerate() {
            let n = i + 1;
            add(&self.fwd, &format!("fd00:200:{n}::1/64"), &format!("b{n}"));
            add(b, &format!("fd00:200:{n}::2/64"), "eth0");
            b.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:200:{n}::1"),
            ]);
        }
        // The links' own link-local addresses go through duplicate address detection (about
        // a second), and neighbour discovery is unreliable until it ends.
        let all: Vec<&NetNs> = [&self.client, &self.fwd]
            .into_iter()
            .chain(&self.backends)
            .collect();
        let settled = wait_until(Duration::from_secs(10), || {
            all.iter().all(|ns| {
                ns.ip(&["-6", "addr", "show", "tentative"])
                    .trim()
                    .is_empty()
            })
        });
        assert!(settled, "IPv6 addresses still tentative after 10 s");
    }

    /// IPv6 address of backend `i` (1-based) on `port`.
    pub fn backend_addr6(i: usize, port: u16) -> String {
        format!("[fd00:200:{i}::2]:{port}")
    }
}
