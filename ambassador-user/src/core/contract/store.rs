//! The contract's contents as last seen, and their judgement: the desired state, with what
//! the trust model leaves out (host records) and what the daemon needs to judge frontends.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
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

/// A service's judgement: its spec (shared with every desired state handed out since) and
/// the endpoints its publishers' host records refused.
type ServiceJudgement = (Arc<ServiceSpec>, Vec<Refusal>);

/// The contract's contents as last seen: what was parsed, by key. Each service's judgement is
/// kept until a key it depends on changes, so judging after one change rebuilds one service,
/// and every other service's spec is the very one judged before.
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
    /// The last judgement of each service, until one of its keys changes.
    judged: BTreeMap<String, ServiceJudgement>,
    /// Services whose keys changed since the last judgement.
    stale: BTreeSet<String>,
    /// Whether a host record or the trust mode changed since (every service is stale).
    all_stale: bool,
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
        // Every change of a key goes through here first (a put removes the old value), so
        // this is where a judgement goes stale.
        match Key::split(prefix, &key_str) {
            Some(Key::Service { name }) => {
                self.services.remove(name);
                self.stale.insert(name.to_owned());
            }
            Some(Key::Endpoint { service, id }) => {
                self.endpoints
                    .remove(&(service.to_owned(), None, id.to_owned()));
                self.stale.insert(service.to_owned());
            }
            Some(Key::HostEndpoint { host, service, id }) => {
                self.endpoints
                    .remove(&(service.to_owned(), Some(host.to_owned()), id.to_owned()));
                self.stale.insert(service.to_owned());
            }
            Some(Key::HostPolicy { host }) => {
                self.hosts.remove(host);
                self.all_stale = true;
            }
            Some(Key::Vip { addr }) => {
                if let Ok(ip) = addr.parse() {
                    self.allocations.remove(&ip);
                }
            }
            Some(Key::Setting { name }) => match name {
                "vip-range" => self.ranges.0 = None,
                "vip-range6" => self.ranges.1 = None,
                "trust" => {
                    self.mode = Mode::Open;
                    self.all_stale = true;
                }
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
    /// Services whose keys did not change since the last call keep their judgement (and
    /// their spec is the same `Arc`).
    pub fn judge(&mut self) -> Judged {
        if std::mem::take(&mut self.all_stale) {
            self.judged.clear();
        }
        for name in std::mem::take(&mut self.stale) {
            self.judged.remove(&name);
        }
        let unjudged: Vec<String> = self
            .services
            .keys()
            .filter(|name| !self.judged.contains_key(*name))
            .cloned()
            .collect();
        for name in unjudged {
            let judgement = self.judge_service(&name);
            self.judged.insert(name, judgement);
        }

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
            let (spec, refused) = &self.judged[name];
            judged.refused.extend(refused.iter().cloned());
            judged.desired.insert(name.clone(), spec.clone());
        }
        judged.refused.sort();
        judged
    }

    /// One service as its keys and the host records make it (the service must exist).
    fn judge_service(&self, name: &str) -> ServiceJudgement {
        let (frontend, proto) = self.services[name];
        let mut endpoints = Vec::new();
        let mut refused = Vec::new();
        for ((_, host, id), e) in self
            .endpoints
            .range((name.to_owned(), None, String::new())..)
            .take_while(|((s, _, _), _)| s == name)
        {
            match host
                .as_deref()
                .and_then(|h| self.refuse(h, name, e.addr.ip()))
            {
                Some(why) => refused.push(Refusal {
                    service: name.to_owned(),
                    endpoint: format!("{} ({id})", e.addr),
                    why,
                }),
                None => endpoints.push(e.clone()),
            }
        }
        let spec = ServiceSpec {
            frontend,
            proto,
            endpoints,
        };
        (Arc::new(spec), refused)
    }

    /// The desired state, and the services left out because another service (first by name)
    /// already claims their frontend (the host records applied; see [`Store::judge`]).
    pub fn desired(&mut self) -> (Desired, Vec<String>) {
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

    /// A judgement is rebuilt only for the services whose keys changed: the others' specs
    /// are the very ones judged before (what lets each host plan one change, not all).
    #[test]
    fn judging_again_rebuilds_only_what_changed() {
        let mut s = Store::default();
        for (name, vip) in [("a", "10.96.0.1:80"), ("b", "10.96.0.2:80")] {
            let key = format!("/ambassador/v1/services/{name}");
            s.put(
                P,
                key.as_bytes(),
                format!(r#"{{"frontend":"{vip}"}}"#).as_bytes(),
            );
            let key = format!("/ambassador/v1/hosts/h1/endpoints/{name}/1");
            s.put(P, key.as_bytes(), b"10.0.0.1:80");
        }
        let first = s.judge().desired;
        s.put(P, b"/ambassador/v1/endpoints/b/2", b"10.0.0.2:80");
        s.put(P, b"/ambassador/v1/vips/10.96.0.9", b"a");
        let second = s.judge().desired;
        assert!(Arc::ptr_eq(&first["a"], &second["a"]), "a is untouched");
        assert!(!Arc::ptr_eq(&first["b"], &second["b"]));
        assert_eq!(second["b"].endpoints.len(), 2);

        // A deleted service is gone; a service put again with the same value is rebuilt.
        s.delete(P, b"/ambassador/v1/services/b");
        s.put(
            P,
            b"/ambassador/v1/services/a",
            br#"{"frontend":"10.96.0.1:80"}"#,
        );
        let third = s.judge().desired;
        assert_eq!(third.keys().collect::<Vec<_>>(), ["a"]);
        assert!(!Arc::ptr_eq(&second["a"], &third["a"]));
        assert_eq!(second["a"], third["a"]);

        // The trust mode and host records judge every service's hosts' endpoints again.
        s.put(P, b"/ambassador/v1/settings/trust", b"hosts");
        let fourth = s.judge();
        assert!(fourth.desired["a"].endpoints.is_empty());
        assert_eq!(fourth.refused.len(), 1);
        s.put(
            P,
            b"/ambassador/v1/host-policy/h1",
            br#"{"addresses":["10.0.0.0/24"],"services":["a"]}"#,
        );
        assert_eq!(s.judge().desired["a"].endpoints.len(), 1);
        s.delete(P, b"/ambassador/v1/host-policy/h1");
        assert!(s.judge().desired["a"].endpoints.is_empty());
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
