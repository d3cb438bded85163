//! Conntrack expiry and draining of terminating backends: the decisions (pure), and
//! [`collect`], which applies them to the maps.

use std::{collections::BTreeSet, time::Duration};

use ambassador_common::DaemonInfo;

use crate::{
    core::{
        model::Proto,
        reconcile::{Installed, Op},
    },
    datapath::maps::{Flow, Maps, SockEntry},
    error::Result,
};

/// How long an idle flow is kept.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// An established TCP flow with no packet for this long is forgotten.
    pub tcp: Duration,
    /// A TCP flow that saw FIN or RST is forgotten this long after its last packet.
    pub tcp_closing: Duration,
    /// A UDP flow with no packet for this long is forgotten.
    pub udp: Duration,
}

/// Default `--tcp-timeout`, in seconds.
pub const DEFAULT_TCP_S: u64 = 6 * 3600;
/// Default `--tcp-closing-timeout`, in seconds.
pub const DEFAULT_TCP_CLOSING_S: u64 = 10;
/// Default `--udp-timeout`, in seconds.
pub const DEFAULT_UDP_S: u64 = 120;
/// The longest flow timeout, in seconds (10 days: Linux conntrack keeps an established TCP flow
/// 5). Far from where the nanosecond arithmetic of the sweep could overflow.
pub const MAX_TIMEOUT_S: u64 = 10 * 24 * 3600;

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(DEFAULT_TCP_S),
            tcp_closing: Duration::from_secs(DEFAULT_TCP_CLOSING_S),
            udp: Duration::from_secs(DEFAULT_UDP_S),
        }
    }
}

impl Timeouts {
    /// Records these timeouts in the daemon's info (whole seconds).
    pub fn record(&self, info: &mut DaemonInfo) {
        let s = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        info.tcp_timeout_s = s(self.tcp);
        info.tcp_closing_timeout_s = s(self.tcp_closing);
        info.udp_timeout_s = s(self.udp);
    }

    /// The timeouts a daemon recorded in its info; the defaults for any it did not.
    pub fn recorded(info: &DaemonInfo) -> Self {
        let d = Self::default();
        let s = |v: u32, default: Duration| {
            if v == 0 {
                default
            } else {
                Duration::from_secs(u64::from(v))
            }
        };
        Self {
            tcp: s(info.tcp_timeout_s, d.tcp),
            tcp_closing: s(info.tcp_closing_timeout_s, d.tcp_closing),
            udp: s(info.udp_timeout_s, d.udp),
        }
    }
}

/// Whether `flow` is over at monotonic time `now_ns`. The datapath refreshes last-seen at most
/// once a second, so one second of slack is added.
pub fn expired(flow: &Flow, now_ns: u64, t: &Timeouts) -> bool {
    let limit = match (flow.proto, flow.closing) {
        (Proto::Tcp, true) => t.tcp_closing,
        (Proto::Tcp, false) => t.tcp,
        (Proto::Udp, _) => t.udp,
    } + Duration::from_secs(1);
    now_ns.saturating_sub(flow.last_seen_ns) > limit.as_nanos() as u64
}

/// Whether a translation of the socket datapath is over: one made by `connect` lives until
/// its socket closes (the kernel deletes it then), one made by `sendmsg` on an unconnected UDP
/// socket expires like a UDP flow.
pub fn sock_expired(entry: &SockEntry, now_ns: u64, t: &Timeouts) -> bool {
    let limit = t.udp + Duration::from_secs(1);
    !entry.connected && now_ns.saturating_sub(entry.last_seen_ns) > limit.as_nanos() as u64
}

/// Terminating backends that no live flow or socket (`used`: their backend ids) uses any
/// more: they can go.
pub fn drained_backends(installed: &Installed, used: &BTreeSet<u32>) -> Vec<u32> {
    installed
        .backends
        .iter()
        .filter(|(id, b)| b.terminating && !used.contains(id))
        .map(|(id, _)| *id)
        .collect()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Expired TC flows.
    pub flows: usize,
    /// Translations of the socket datapath whose socket is gone or idle.
    pub sockets: usize,
    /// Terminating backends no flow or socket uses any more.
    pub backends: usize,
}

/// Removes expired flows and socket translations, then drained terminating backends.
pub fn collect(
    maps: &mut Maps,
    installed: &mut Installed,
    timeouts: &Timeouts,
) -> Result<Collected> {
    let now = monotonic_ns();
    let mut used = BTreeSet::new();
    let mut done = Collected::default();
    for flow in maps.flows()? {
        if expired(&flow, now, timeouts) || !installed.backends.contains_key(&flow.backend_id) {
            maps.delete_flow(&flow)?;
            done.flows += 1;
        } else {
            used.insert(flow.backend_id);
        }
    }
    for entry in maps.sock_entries()? {
        if sock_expired(&entry, now, timeouts)
            || !installed.backends.contains_key(&entry.backend_id)
        {
            maps.delete_sock_entry(&entry)?;
            done.sockets += 1;
        } else {
            used.insert(entry.backend_id);
        }
    }
    let drained = drained_backends(installed, &used);
    for id in &drained {
        let op = Op::DeleteBackend { id: *id };
        maps.apply(&op)?;
        installed.apply(&op);
        maps.clear_suspect(*id)?;
    }
    done.backends = drained.len();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reconcile::InstalledBackend;

    fn flow(proto: Proto, closing: bool, last_seen_s: u64, backend_id: u32) -> Flow {
        Flow {
            client: "10.0.0.1:1234".parse().unwrap(),
            frontend: "10.96.0.1:80".parse().unwrap(),
            proto,
            service_id: 1,
            backend_id,
            backend: "10.0.1.1:80".parse().unwrap(),
            closing,
            created_ns: 0,
            last_seen_ns: last_seen_s * 1_000_000_000,
        }
    }

    #[test]
    fn expiry_follows_protocol_and_state() {
        let t = Timeouts::default();
        let now = 100_000 * 1_000_000_000;
        assert!(!expired(
            &flow(Proto::Tcp, false, 100_000 - 3600, 1),
            now,
            &t
        ));
        assert!(expired(
            &flow(Proto::Tcp, false, 100_000 - 6 * 3600 - 2, 1),
            now,
            &t
        ));
        assert!(!expired(&flow(Proto::Tcp, true, 100_000 - 5, 1), now, &t));
        assert!(expired(&flow(Proto::Tcp, true, 100_000 - 12, 1), now, &t));
        assert!(!expired(&flow(Proto::Udp, false, 100_000 - 60, 1), now, &t));
        assert!(expired(&flow(Proto::Udp, false, 100_000 - 122, 1), now, &t));
        // A flow seen "in the future" (clock read before the packet) is live.
        assert!(!expired(&flow(Proto::Udp, false, 100_001, 1), now, &t));
    }

    #[test]
    fn connected_sockets_never_expire_unconnected_ones_like_udp() {
        let t = Timeouts::default();
        let now = 100_000 * 1_000_000_000;
        let entry = |connected, last_seen_s: u64| SockEntry {
            reverse: true,
            cookie: 1,
            frontend: "10.96.0.1:53".parse().unwrap(),
            backend: "10.0.1.1:53".parse().unwrap(),
            proto: Proto::Udp,
            service_id: 1,
            backend_id: 1,
            connected,
            last_seen_ns: last_seen_s * 1_000_000_000,
        };
        assert!(!sock_expired(&entry(true, 0), now, &t));
        assert!(!sock_expired(&entry(false, 100_000 - 60), now, &t));
        assert!(sock_expired(&entry(false, 100_000 - 122), now, &t));
    }

    #[test]
    fn only_terminating_backends_without_flows_drain() {
        let mut inst = Installed::default();
        for (id, terminating) in [(1, false), (2, true), (3, true)] {
            inst.backends.insert(
                id,
                InstalledBackend {
                    service_id: 1,
                    addr: "10.0.1.1:80".parse().unwrap(),
                    terminating,
                },
            );
        }
        let used = BTreeSet::from([flow(Proto::Tcp, false, 0, 2).backend_id]);
        assert_eq!(drained_backends(&inst, &used), vec![3]);
    }
}
