//! Map capacities: settings with defaults (`ambassador_common::limits`), checked against maps
//! already pinned, applied when the object is loaded; and the fit of a desired state into them.
//! What does not fit is left out, logged and counted, never half-applied.

use std::{net::SocketAddr, path::Path};

use ambassador_common::{limits, map_names as names};
use aya::maps::MapInfo;

use crate::{
    core::model::{retain_endpoints, Desired, MAX_WEIGHT},
    error::{Error, Result},
};

/// How many entries each kind of map holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Services (frontends).
    pub services: u32,
    /// Backends over all services, terminating ones included.
    pub backends: u32,
    /// Slots over all services (a backend takes as many as its weight).
    pub slots: u32,
    /// Flows tracked at once (least recently used evicted beyond).
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: limits::DEFAULT_SERVICES,
            backends: limits::DEFAULT_BACKENDS,
            slots: limits::DEFAULT_SLOTS,
            flows: limits::DEFAULT_FLOWS,
        }
    }
}

/// The capacities asked for on the command line; `None` keeps what is pinned, or the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    /// `--max-services`.
    pub services: Option<u32>,
    /// `--max-backends`.
    pub backends: Option<u32>,
    /// `--max-slots`.
    pub slots: Option<u32>,
    /// `--max-flows`.
    pub flows: Option<u32>,
}

impl Capacity {
    /// Every map whose size follows a setting, with that size. Service ids run from 1 to
    /// `services` and index the counter array, which is one longer.
    /// The IPv6 maps take the same settings as the IPv4 ones.
    pub fn map_sizes(&self) -> [(&'static str, u32); 12] {
        [
            // One entry per service, and one address marker per distinct frontend address.
            (names::SERVICES, self.services.saturating_mul(2)),
            (names::SERVICES6, self.services.saturating_mul(2)),
            (names::BACKENDS6, self.backends),
            (names::CONNTRACK6, self.flows),
            (names::REVERSE_NAT6, self.flows),
            (names::NAMES, self.services),
            (names::SERVICE_STATS, self.services + 1),
            (names::BACKENDS, self.backends),
            (names::SUSPECTS, self.backends),
            (names::SLOTS, self.slots),
            (names::CONNTRACK, self.flows),
            (names::REVERSE_NAT, self.flows),
        ]
    }

    /// The capacity of maps created with these sizes (the inverse of [`Self::map_sizes`]).
    pub fn from_entries(services_map: u32, backends: u32, slots: u32, flows: u32) -> Self {
        Self {
            services: services_map / 2,
            backends,
            slots,
            flows,
        }
    }

    /// The capacity of the maps pinned under `dir`, if there are any.
    pub fn pinned(dir: &Path) -> Result<Option<Self>> {
        let size = |name: &'static str| -> Result<Option<u32>> {
            let path = dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            MapInfo::from_pin(&path)
                .map(|i| Some(i.max_entries()))
                .map_err(|source| Error::Map {
                    name,
                    what: "reading the pinned map's size".into(),
                    source,
                })
        };
        let (Some(services), Some(backends), Some(slots), Some(flows)) = (
            size(names::SERVICES)?,
            size(names::BACKENDS)?,
            size(names::SLOTS)?,
            size(names::CONNTRACK)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Self::from_entries(services, backends, slots, flows)))
    }

    /// What to load with: the pinned capacity where maps are pinned (a map's size is fixed
    /// when it is created, so a different request is refused with what to do), otherwise the
    /// request, otherwise the default.
    pub fn resolve(requested: Requested, pinned: Option<Self>, dir: &Path) -> Result<Self> {
        let Some(pinned) = pinned else {
            let d = Self::default();
            return Ok(Self {
                services: requested.services.unwrap_or(d.services),
                backends: requested.backends.unwrap_or(d.backends),
                slots: requested.slots.unwrap_or(d.slots),
                flows: requested.flows.unwrap_or(d.flows),
            });
        };
        for (flag, want, have) in [
            ("--max-services", requested.services, pinned.services),
            ("--max-backends", requested.backends, pinned.backends),
            ("--max-slots", requested.slots, pinned.slots),
            ("--max-flows", requested.flows, pinned.flows),
        ] {
            if let Some(want) = want.filter(|w| *w != have) {
                return Err(Error::CapacityMismatch {
                    path: dir.to_owned(),
                    flag,
                    pinned: have,
                    requested: want,
                });
            }
        }
        Ok(pinned)
    }

    /// The part of `desired` that fits: services in name order while there is room, and for
    /// each its endpoints in order while the backend and slot maps have room. Returns it with
    /// one line per service or endpoint left out.
    pub fn fit(&self, mut desired: Desired) -> (Desired, Vec<String>) {
        let (mut backends, mut slots, mut services) = (0u64, 0u64, 0u64);
        let mut left_out = Vec::new();
        // The addresses a service kept so far: duplicates merge into one backend.
        let mut kept: Vec<SocketAddr> = Vec::new();
        desired.retain(|name, spec| {
            if services >= u64::from(self.services) {
                left_out.push(format!(
                    "service {name} left out: the service map is full ({} services; raise --max-services)",
                    self.services
                ));
                return false;
            }
            services += 1;
            kept.clear();
            retain_endpoints(spec, |ep| {
                let merged = kept.contains(&ep.addr);
                let weight = u64::from(ep.weight.clamp(1, MAX_WEIGHT));
                let more_backends = u64::from(!merged);
                if backends + more_backends > u64::from(self.backends) {
                    left_out.push(format!(
                        "endpoint {} of {name} left out: the backend map is full ({} backends; raise --max-backends)",
                        ep.addr, self.backends
                    ));
                    return false;
                }
                if slots + weight > u64::from(self.slots) {
                    left_out.push(format!(
                        "endpoint {} of {name} left out: the slot map is full ({} slots, one per unit of weight; raise --max-slots)",
                        ep.addr, self.slots
                    ));
                    return false;
                }
                backends += more_backends;
                slots += weight;
                kept.push(ep.addr);
                true
            });
            true
        });
        (desired, left_out)
    }
}

/// The setting that sizes map `name`.
pub fn flag_of(name: &str) -> &'static str {
    match name {
        names::BACKENDS | names::BACKENDS6 | names::SUSPECTS => "--max-backends",
        names::SLOTS => "--max-slots",
        names::CONNTRACK
        | names::REVERSE_NAT
        | names::CONNTRACK6
        | names::REVERSE_NAT6
        | names::SOCK_FORWARD
        | names::SOCK_REVERSE
        | names::SOCK_FORWARD6
        | names::SOCK_REVERSE6 => "--max-flows",
        _ => "--max-services",
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc};

    use super::*;
    use crate::core::model::{Endpoint, Proto, ServiceSpec};

    fn desired(services: &[(&str, &[(u16, u32)])]) -> Desired {
        services
            .iter()
            .enumerate()
            .map(|(i, (name, eps))| {
                let spec = Arc::new(ServiceSpec {
                    frontend: SocketAddr::from(([10, 96, 0, i as u8 + 1], 80)),
                    proto: Proto::Tcp,
                    endpoints: eps
                        .iter()
                        .map(|&(port, weight)| Endpoint {
                            addr: SocketAddr::from(([10, 1, 0, 1], port)),
                            weight,
                        })
                        .collect(),
                });
                (name.to_string(), spec)
            })
            .collect()
    }

    fn cap(services: u32, backends: u32, slots: u32) -> Capacity {
        Capacity {
            services,
            backends,
            slots,
            flows: 16,
        }
    }

    #[test]
    fn what_fits_is_kept_whole_and_the_rest_is_named() {
        let d = desired(&[("a", &[(1, 1), (2, 1)]), ("b", &[(3, 1)]), ("c", &[(4, 1)])]);
        let (fit, out) = cap(2, 100, 100).fit(d.clone());
        assert_eq!(fit.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(fit, d.into_iter().take(2).collect());
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("service c") && out[0].contains("--max-services"));
    }

    #[test]
    fn endpoints_beyond_the_backend_or_slot_map_are_left_out() {
        let d = desired(&[("a", &[(1, 1), (2, 1)]), ("b", &[(3, 1), (4, 1)])]);
        let (fit, out) = cap(10, 3, 100).fit(d.clone());
        assert_eq!(fit["b"].endpoints.len(), 1);
        assert_eq!(out.len(), 1);
        assert!(out[0].contains("10.1.0.1:4") && out[0].contains("--max-backends"));

        let weighted = desired(&[("a", &[(1, 3), (2, 3)])]);
        let (fit, out) = cap(10, 10, 4).fit(weighted.clone());
        assert_eq!(fit["a"].endpoints.len(), 1);
        assert!(out[0].contains("--max-slots"), "{out:?}");
    }

    #[test]
    fn a_duplicate_address_takes_no_second_backend() {
        let d = desired(&[("a", &[(1, 1), (1, 1)])]);
        let (fit, out) = cap(10, 1, 10).fit(d.clone());
        assert_eq!(fit["a"].endpoints.len(), 2);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn pinned_maps_decide_and_a_different_request_is_refused() {
        let dir = Path::new("/sys/fs/bpf/x");
        let pinned = cap(5, 6, 7);
        assert_eq!(
            Capacity::resolve(Requested::default(), Some(pinned), dir).unwrap(),
            pinned
        );
        let same = Requested {
            services: Some(5),
            ..Requested::default()
        };
        assert_eq!(Capacity::resolve(same, Some(pinned), dir).unwrap(), pinned);
        let other = Requested {
            flows: Some(32),
            ..Requested::default()
        };
        let e = Capacity::resolve(other, Some(pinned), dir).unwrap_err();
        assert!(e.to_string().contains("--max-flows"), "{e}");
        assert_eq!(e.exit_code(), 64);
        let fresh = Capacity::resolve(other, None, dir).unwrap();
        assert_eq!(fresh.flows, 32);
        assert_eq!(fresh.services, limits::DEFAULT_SERVICES);
    }
}
