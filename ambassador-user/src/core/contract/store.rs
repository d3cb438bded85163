//! The contract's contents as last seen, and their judgement: the desired state, with what
//! the trust model leaves out (host records) and what the daemon needs to judge frontends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use super::{parse, Entry, Key, Setting};
use crate::core::{
    model::{Desired, Endpoint, Proto, Ranges, ServiceSpec},
    policy::Refusal,
    trust::{FrontendScope, HostRecord, Mode},
};

/// An endpoint's place: (service, publishing host or None for the operator's, id).
type EndpointKey = (String, Option<String>, String);

/// The contract's contents as last seen: what was parsed, by key.
#[derive(Clone, Debug, Default)]
pub struct Store {
    services: BTreeMap<String, (SocketAddr, Proto)>,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    hosts: BTreeMap<String, HostRecord>,
    allocations: BTreeMap<IpAddr, String>,
    /// `vip-range` and `vip-range6` as set (None: the default).
    ranges: (Option<IpNet>, Option<IpNet>),
    mode: Mode,
    /// Keys whose current value is malformed, with the reason.
    pub malformed: BTreeMap<String, String>,
}

/// What a `put` did to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Parsed and stored.
    Stored,
    /// Not part of the v1 contract; ignored.
    Ignored,
    /// Malformed: skipped (the key's previous value, if any, is dropped too).
    Malformed(String),
}

/// The store judged: what to apply, and what was left out and why.
#[derive(Clone, Debug, Default)]
pub struct Judged {
    /// The desired state (frontends still to be judged by each host: see `scope`).
    pub desired: Desired,
    /// Services left out because another service (first by name) claims their frontend.
    pub conflicts: Vec<String>,
    /// Endpoints published by a host that its record does not allow (`hosts` mode).
    pub refused: Vec<Refusal>,
    /// Where the cluster places frontends.
    pub scope: FrontendScope,
    /// The trust mode.
    pub mode: Mode,
}

impl Store {
    /// Records a key's new value.
    pub fn put(&mut self, prefix: &str, key: &[u8], value: &[u8]) -> PutOutcome {
        let key_str = String::from_utf8_lossy(key).into_owned();
        self.remove_key(prefix, key);
        match parse(prefix, key, value) {
            Ok(Some(entry)) => {
                self.insert(entry);
                PutOutcome::Stored
            }
            Ok(None) => PutOutcome::Ignored,
            Err(reason) => {
                if matches!(
                    Key::split(prefix, &key_str),
                    Some(Key::Setting { name: "trust" })
                ) {
                    // Unreadable: the stricter reading, never a silent opening.
                    self.mode = Mode::Hosts;
                }
                self.malformed.insert(key_str, reason.clone());
                PutOutcome::Malformed(reason)
            }
        }
    }

    fn insert(&mut self, entry: Entry) {
        match entry {
            Entry::Service {
                name,
                frontend,
                proto,
            } => {
                self.services.insert(name, (frontend, proto));
            }
            Entry::Endpoint {
                service,
                id,
                host,
                endpoint,
            } => {
                self.endpoints.insert((service, host, id), endpoint);
            }
            Entry::HostPolicy { host, record } => {
                self.hosts.insert(host, record);
            }
            Entry::Vip { ip, service } => {
                self.allocations.insert(ip, service);
            }
            Entry::Setting(Setting::VipRange(net)) => match net {
                IpNet::V4(_) => self.ranges.0 = Some(net),
                IpNet::V6(_) => self.ranges.1 = Some(net),
            },
            Entry::Setting(Setting::Trust(mode)) => self.mode = mode,
        }
    }

    /// Records a key's deletion.
    pub fn delete(&mut self, prefix: &str, key: &[u8]) {
        self.remove_key(prefix, key);
    }

    fn remove_key(&mut self, prefix: &str, key: &[u8]) {
        let key_str = String::from_utf8_lossy(key);
        self.malformed.remove(key_str.as_ref());
        match Key::split(prefix, &key_str) {
            Some(Key::Service { name }) => {
                self.services.remove(name);
            }
            Some(Key::Endpoint { service, id }) => {
                self.endpoints
                    .remove(&(service.to_owned(), None, id.to_owned()));
            }
            Some(Key::HostEndpoint { host, service, id }) => {
                self.endpoints
                    .remove(&(service.to_owned(), Some(host.to_owned()), id.to_owned()));
            }
            Some(Key::HostPolicy { host }) => {
                self.hosts.remove(host);
            }
            Some(Key::Vip { addr }) => {
                if let Ok(ip) = addr.parse() {
                    self.allocations.remove(&ip);
                }
            }
            Some(Key::Setting { name }) => match name {
                "vip-range" => self.ranges.0 = None,
                "vip-range6" => self.ranges.1 = None,
                "trust" => self.mode = Mode::Open,
                _ => {}
            },
            Some(Key::Unknown) | None => {}
        }
    }

    /// Where the cluster places frontends: its ranges (defaults where unset) and allocations.
    pub fn scope(&self) -> FrontendScope {
        let mut ranges = Ranges::default();
        if let Some(IpNet::V4(n)) = self.ranges.0 {
            ranges.v4 = n;
        }
        if let Some(IpNet::V6(n)) = self.ranges.1 {
            ranges.v6 = n;
        }
        FrontendScope {
            ranges,
            allocations: self.allocations.clone(),
        }
    }

    /// Why an endpoint published by `host` may not be applied, if it may not.
    fn refuse(&self, host: &str, service: &str, ip: IpAddr) -> Option<String> {
        if self.mode == Mode::Open {
            return None;
        }
        match self.hosts.get(host) {
            Some(record) => record.refuse(host, service, ip),
            None => Some(format!(
                "host {host:?} has no host record, so it may publish nothing (an admin adds one: `ambassador auth add-host {host} --address CIDR --service NAME`)"
            )),
        }
    }

    /// The desired state with everything the contract and the host records leave out.
    pub fn judge(&self) -> Judged {
        let mut judged = Judged {
            scope: self.scope(),
            mode: self.mode,
            ..Judged::default()
        };
        let mut claimed: BTreeMap<(SocketAddr, Proto), &str> = BTreeMap::new();
        for (name, &(frontend, proto)) in &self.services {
            if let Some(owner) = claimed.get(&(frontend, proto)) {
                judged.conflicts.push(format!(
                    "service {name:?} left out: frontend {frontend}/{proto} already belongs to {owner:?}"
                ));
                continue;
            }
            claimed.insert((frontend, proto), name);
            let mut endpoints = Vec::new();
            for ((_, host, id), e) in self
                .endpoints
                .range((name.clone(), None, String::new())..)
                .take_while(|((s, _, _), _)| s == name)
            {
                match host
                    .as_deref()
                    .and_then(|h| self.refuse(h, name, e.addr.ip()))
                {
                    Some(why) => judged.refused.push(Refusal {
                        service: name.clone(),
                        endpoint: format!("{} ({id})", e.addr),
                        why,
                    }),
                    None => endpoints.push(e.clone()),
                }
            }
            judged.desired.insert(
                name.clone(),
                ServiceSpec {
                    frontend,
                    proto,
                    endpoints,
                },
            );
        }
        judged.refused.sort();
        judged
    }

    /// The desired state, and the services left out because another service (first by name)
    /// already claims their frontend (the host records applied; see [`Store::judge`]).
    pub fn desired(&self) -> (Desired, Vec<String>) {
        let judged = self.judge();
        (judged.desired, judged.conflicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/ambassador";

    #[test]
    fn store_follows_puts_and_deletes_and_resolves_frontend_conflicts() {
        let mut s = Store::default();
        assert_eq!(
            s.put(
                P,
                b"/ambassador/v1/services/b",
                br#"{"frontend":"10.96.0.1:80"}"#
            ),
            PutOutcome::Stored
        );
        assert_eq!(
            s.put(
                P,
                b"/ambassador/v1/services/a",
                br#"{"frontend":"10.96.0.1:80"}"#
            ),
            PutOutcome::Stored
        );
        s.put(P, b"/ambassador/v1/endpoints/a/1", b"10.0.0.1:80");
        s.put(P, b"/ambassador/v1/endpoints/b/1", b"10.0.0.2:80");
        s.put(P, b"/ambassador/v1/endpoints/ab/1", b"10.0.0.9:80"); // a prefix of neither
        let (d, conflicts) = s.desired();
        assert_eq!(d.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(d["a"].endpoints.len(), 1);
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts[0].contains("\"b\""));

        // A malformed update replaces the good value: the key is skipped, not half-applied.
        assert!(matches!(
            s.put(P, b"/ambassador/v1/endpoints/a/1", b"garbage"),
            PutOutcome::Malformed(_)
        ));
        assert!(s.desired().0["a"].endpoints.is_empty());
        assert_eq!(s.malformed.len(), 1);
        s.delete(P, b"/ambassador/v1/endpoints/a/1");
        assert!(s.malformed.is_empty());
        s.delete(P, b"/ambassador/v1/services/a");
        let (d, conflicts) = s.desired();
        assert_eq!(d.keys().collect::<Vec<_>>(), ["b"]);
        assert!(conflicts.is_empty());
        assert_eq!(s.put(P, b"/ambassador/v2/x", b"y"), PutOutcome::Ignored);
    }

    #[test]
    fn host_endpoints_apply_as_their_record_allows_in_hosts_mode() {
        let mut s = Store::default();
        s.put(
            P,
            b"/ambassador/v1/services/db",
            br#"{"frontend":"10.96.0.1:6379"}"#,
        );
        s.put(P, b"/ambassador/v1/endpoints/db/manual", b"10.9.9.9:6379");
        s.put(
            P,
            b"/ambassador/v1/hosts/h2/endpoints/db/h2-a",
            b"10.0.2.5:6379",
        );
        s.put(
            P,
            b"/ambassador/v1/hosts/h2/endpoints/db/h2-b",
            b"10.0.3.5:6379",
        );
        s.put(
            P,
            b"/ambassador/v1/hosts/h3/endpoints/db/h3-a",
            b"10.0.3.5:6379",
        );
        // Open (the default): everything applies.
        let j = s.judge();
        assert_eq!(j.mode, Mode::Open);
        assert_eq!(j.desired["db"].endpoints.len(), 4);
        assert!(j.refused.is_empty());

        assert_eq!(
            s.put(P, b"/ambassador/v1/settings/trust", b"hosts"),
            PutOutcome::Stored
        );
        s.put(
            P,
            b"/ambassador/v1/host-policy/h2",
            br#"{"addresses":["10.0.2.0/24"],"services":["db"]}"#,
        );
        let j = s.judge();
        let addrs: Vec<String> = j.desired["db"]
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["10.9.9.9:6379", "10.0.2.5:6379"],
            "the operator's and h2's own"
        );
        assert_eq!(j.refused.len(), 2, "{:?}", j.refused);
        assert!(j
            .refused
            .iter()
            .any(|r| r.why.contains("may not advertise 10.0.3.5")));
        assert!(j
            .refused
            .iter()
            .any(|r| r.why.contains("\"h3\" has no host record")));

        // The record goes: h2 publishes nothing; a broken trust setting reads as hosts.
        s.delete(P, b"/ambassador/v1/host-policy/h2");
        assert_eq!(s.judge().desired["db"].endpoints.len(), 1);
        assert!(matches!(
            s.put(P, b"/ambassador/v1/settings/trust", b"maybe"),
            PutOutcome::Malformed(_)
        ));
        assert_eq!(s.judge().mode, Mode::Hosts);
        s.delete(P, b"/ambassador/v1/settings/trust");
        assert_eq!(s.judge().mode, Mode::Open);
        assert_eq!(s.judge().desired["db"].endpoints.len(), 4);
    }

    #[test]
    fn the_scope_follows_ranges_and_allocations() {
        let mut s = Store::default();
        assert_eq!(s.scope(), FrontendScope::default());
        s.put(P, b"/ambassador/v1/settings/vip-range", b"10.200.0.0/16");
        s.put(P, b"/ambassador/v1/vips/10.96.0.1", b"db");
        let scope = s.scope();
        assert_eq!(scope.ranges.v4.to_string(), "10.200.0.0/16");
        assert!(
            scope.places("db", "10.96.0.1".parse().unwrap()),
            "an allocation outlives its range"
        );
        assert!(!scope.places("web", "10.96.0.1".parse().unwrap()));
        assert!(matches!(
            s.put(P, b"/ambassador/v1/settings/vip-range", b"fd00::/64"),
            PutOutcome::Malformed(_)
        ));
        assert_eq!(
            s.scope().ranges,
            Ranges::default(),
            "a malformed range is the default"
        );
        s.delete(P, b"/ambassador/v1/vips/10.96.0.1");
        assert!(s.scope().allocations.is_empty());
    }
}
