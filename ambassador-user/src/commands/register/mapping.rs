//! The pure part of the register: a container, as Docker describes it, to the etcd entry that
//! stands for it, or why it has none. Whatever it returns, every daemon's watcher accepts
//! (`entry` checks with the watcher's own parser; the docker_labels fuzzer holds it to that).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};

use super::config::{AddressMode, RegisterConfig};
use crate::core::{
    contract::{self, EndpointValue},
    model::{check_service_name, parse_weight, Proto},
};

/// Container labels of the Docker contract.
pub mod labels {
    /// The service a container backs.
    pub const SERVICE: &str = "ambassador.service";
    /// Which container port to register when several are published.
    pub const PORT: &str = "ambassador.port";
    /// Share of new flows.
    pub const WEIGHT: &str = "ambassador.weight";
}

/// One container's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The service.
    pub service: String,
    /// The endpoint id (`<host-id>-<container id, 12 characters>`).
    pub id: String,
    /// The address other hosts dial.
    pub addr: SocketAddr,
    /// The weight.
    pub weight: u32,
    /// The container port, which a service created for it (zero-configuration) listens on.
    pub frontend_port: u16,
    /// The port's protocol.
    pub proto: Proto,
}

/// The container port and protocol of a Docker port key (`6379/tcp`, `53/udp`, `80`).
fn key_port(key: &str) -> (Option<u16>, Proto) {
    let mut parts = key.split('/');
    let port = parts.next().and_then(nonzero_port);
    let proto = match parts.next() {
        Some("udp") => Proto::Udp,
        _ => Proto::Tcp,
    };
    (port, proto)
}

/// What the register writes for `c`: `Ok(None)` when it is not labelled (not ours),
/// `Err(why)` when it is labelled but unusable.
pub fn registration(
    c: &ContainerInspectResponse,
    cfg: &RegisterConfig,
) -> Result<Option<Registration>, String> {
    let labels = c.config.as_ref().and_then(|cfg| cfg.labels.as_ref());
    let Some(service) = labels.and_then(|l| l.get(labels::SERVICE)) else {
        return Ok(None);
    };
    check_service_name(service)?;
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    let weight = match label(labels::WEIGHT) {
        None => 1,
        Some(w) => w
            .parse::<i64>()
            .map_err(|_| format!("label {}={w:?} is not a number", labels::WEIGHT))
            .and_then(|n| parse_weight(Some(n)))
            .map_err(|m| format!("label {}: {m}", labels::WEIGHT))?,
    };
    let wanted_port = label(labels::PORT);
    let (addr, (frontend_port, proto)) = match cfg.address_mode {
        AddressMode::Published => {
            let advertise = cfg
                .advertise_ip
                .ok_or("published mode needs --advertise-ip")?;
            let published = published_ports(c);
            let (key, host_port) = pick(&published, wanted_port, "published")?;
            (SocketAddr::new(advertise, host_port), key_port(key))
        }
        AddressMode::Container | AddressMode::ContainerIpv6 => {
            let ipv6_only = cfg.address_mode == AddressMode::ContainerIpv6;
            let ip = container_ip(c, ipv6_only).ok_or(if ipv6_only {
                "the container has no global IPv6 address on any network (dockerd --ipv6 and an IPv6 subnet give it one)"
            } else {
                "the container has no IPv4 or global IPv6 address on any network"
            })?;
            let exposed = exposed_ports(c);
            let (key, port) = pick(&exposed, wanted_port, "exposed")?;
            (SocketAddr::new(ip, port), key_port(key))
        }
    };
    let container_id = c.id.as_deref().ok_or("the container has no id")?;
    let id = format!("{}-{}", cfg.host_id, short_id(container_id));
    // Docker's ids are hex; anything else would make a key every daemon skips.
    crate::core::model::check_endpoint_id(&id)?;
    Ok(Some(Registration {
        service: service.clone(),
        id,
        addr,
        weight,
        frontend_port: frontend_port.unwrap_or(addr.port()),
        proto,
    }))
}

/// The container's ports published on the host: `"<port>/<proto>"` -> host port.
fn published_ports(c: &ContainerInspectResponse) -> BTreeMap<&str, u16> {
    let ports = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|(cport, bindings)| {
            let host_port = bindings
                .as_ref()?
                .iter()
                .find_map(|b| nonzero_port(b.host_port.as_deref()?))?;
            Some((cport.as_str(), host_port))
        })
        .collect()
}

/// The ports the container exposes (its image's and its own): `"<port>/<proto>"` -> port.
fn exposed_ports(c: &ContainerInspectResponse) -> BTreeMap<&str, u16> {
    let ports = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    let from_config = c.config.as_ref().and_then(|cfg| cfg.exposed_ports.as_ref());
    let mut exposed = BTreeMap::new();
    for p in from_config
        .into_iter()
        .flatten()
        .map(String::as_str)
        .chain(ports.into_iter().flatten().map(|(k, _)| k.as_str()))
    {
        if let Some(n) = p.split('/').next().and_then(nonzero_port) {
            exposed.insert(p, n);
        }
    }
    exposed
}

/// An IPv4 address of any of the container's networks (by network name), else a global IPv6
/// one; only the latter when `ipv6_only`.
fn container_ip(c: &ContainerInspectResponse, ipv6_only: bool) -> Option<IpAddr> {
    let nets = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    let v4 = names.iter().filter(|_| !ipv6_only).find_map(|n| {
        let ip = nets[*n].ip_address.as_deref()?.parse::<Ipv4Addr>().ok()?;
        Some(IpAddr::V4(ip))
    });
    v4.or_else(|| {
        names.iter().find_map(|n| {
            let ip = nets[*n].global_ipv6_address.as_deref()?;
            Some(IpAddr::V6(ip.parse::<Ipv6Addr>().ok()?))
        })
    })
}

/// Whether a container may take traffic: running, and healthy if it has a health check
/// (registered before it listens, its first clients would be refused).
pub fn ready(c: &ContainerInspectResponse) -> bool {
    let Some(state) = c.state.as_ref() else {
        return false;
    };
    let health = state.health.as_ref().and_then(|h| h.status);
    state.running.unwrap_or(false)
        && !matches!(
            health,
            Some(HealthStatusEnum::STARTING) | Some(HealthStatusEnum::UNHEALTHY)
        )
}

/// Picks the port: the labelled one, else the only one. Returns its key (`6379/tcp`) and value.
fn pick<'a>(
    ports: &BTreeMap<&'a str, u16>,
    wanted: Option<&str>,
    kind: &str,
) -> Result<(&'a str, u16), String> {
    match wanted {
        Some(w) => {
            let w_full = if w.contains('/') {
                w.to_owned()
            } else {
                format!("{w}/tcp")
            };
            let w_udp = format!("{w}/udp");
            ports
                .get_key_value(w_full.as_str())
                .or_else(|| ports.get_key_value(w_udp.as_str()))
                .map(|(k, v)| (*k, *v))
                .ok_or_else(|| {
                    format!(
                        "label {}={w} names no {kind} port (have: {})",
                        labels::PORT,
                        list(ports)
                    )
                })
        }
        None => match ports.len() {
            1 => Ok(ports.iter().next().map(|(k, v)| (*k, *v)).expect("one")),
            0 => Err(format!(
                "no {kind} port (publish one with -p, or use --address-mode container)"
            )),
            _ => Err(format!(
                "several {kind} ports ({}): pick one with the label {}",
                list(ports),
                labels::PORT
            )),
        },
    }
}

fn list(ports: &BTreeMap<&str, u16>) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports.keys().copied().collect::<Vec<_>>().join(", ")
}

/// A port number as Docker writes it; 0 (not a port a client can reach) is none.
fn nonzero_port(s: &str) -> Option<u16> {
    s.parse::<std::num::NonZeroU16>().ok().map(u16::from)
}

/// The first 12 characters of a container id, as `docker ps` shows it (Docker's ids are hex;
/// this never splits a character of anything else).
pub(super) fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
}

/// The etcd key and value of a registration, or why it cannot be written: the entry is checked
/// with the watcher's own parser (`contract::parse`), so the register never writes what every
/// daemon would skip (a container id long or odd enough to push the value past the size limit,
/// say).
pub fn entry(
    cfg: &RegisterConfig,
    r: &Registration,
    container_id: &str,
) -> Result<(String, String), String> {
    let value = EndpointValue {
        addr: r.addr.to_string(),
        weight: Some(r.weight as i64),
        host: Some(cfg.host_id.clone()),
        container: Some(container_id.to_owned()),
    };
    let key = contract::host_endpoint_key(&cfg.etcd.prefix, &cfg.host_id, &r.service, &r.id);
    let value = serde_json::to_string(&value).expect("serializable");
    match contract::parse(&cfg.etcd.prefix, key.as_bytes(), value.as_bytes()) {
        Ok(Some(contract::Entry::Endpoint { .. })) => Ok((key, value)),
        Ok(_) => Err(format!("its entry {key} is outside the etcd contract")),
        Err(why) => Err(format!("every daemon would skip its entry: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use bollard::models::{
        ContainerConfig, ContainerState, EndpointSettings, NetworkSettings, PortBinding,
    };

    use super::*;
    use crate::control::etcd::EtcdOptions;

    fn cfg(mode: AddressMode) -> RegisterConfig {
        RegisterConfig {
            docker: "/x".into(),
            advertise_ip: Some("192.0.2.7".parse().unwrap()),
            ttl: 10,
            host_id: "h2".into(),
            address_mode: mode,
            reconcile_interval: Duration::from_secs(30),
            metrics_addr: None,
            create_services: true,
            etcd: EtcdOptions {
                prefix: "/ambassador".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn short_ids_are_twelve_characters_and_never_split_one() {
        assert_eq!(short_id("0123456789abcdef0123"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("ééééééééééééé"), "éééééééééééé");
    }

    fn container(
        labels: &[(&str, &str)],
        ports: &[(&str, Option<&str>)],
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                exposed_ports: Some(ports.iter().map(|(p, _)| p.to_string()).collect()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(
                    ports
                        .iter()
                        .map(|(p, host)| {
                            let b = host.map(|h| {
                                vec![PortBinding {
                                    host_ip: Some("0.0.0.0".into()),
                                    host_port: Some(h.into()),
                                }]
                            });
                            (p.to_string(), b)
                        })
                        .collect(),
                ),
                networks: Some(HashMap::from([(
                    "bridge".to_owned(),
                    EndpointSettings {
                        ip_address: Some("10.250.0.5".into()),
                        global_ipv6_address: Some("fd00:250::5".into()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_running_and_not_unhealthy_containers_are_ready() {
        use bollard::models::Health;
        let mut c = container(&[("ambassador.service", "db")], &[]);
        assert!(ready(&c), "no health check: running is enough");
        for (status, want) in [
            (HealthStatusEnum::STARTING, false),
            (HealthStatusEnum::UNHEALTHY, false),
            (HealthStatusEnum::HEALTHY, true),
            (HealthStatusEnum::NONE, true),
        ] {
            c.state.as_mut().unwrap().health = Some(Health {
                status: Some(status),
                ..Default::default()
            });
            assert_eq!(ready(&c), want, "{status:?}");
        }
        c.state.as_mut().unwrap().running = Some(false);
        assert!(!ready(&c));
    }

    #[test]
    fn published_mode_uses_the_advertised_ip_and_host_port() {
        let c = container(
            &[("ambassador.service", "db")],
            &[("3306/tcp", Some("32769"))],
        );
        let r = registration(&c, &cfg(AddressMode::Published))
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Registration {
                service: "db".into(),
                id: "h2-0123456789ab".into(),
                addr: "192.0.2.7:32769".parse().unwrap(),
                weight: 1,
                frontend_port: 3306,
                proto: Proto::Tcp,
            }
        );
    }

    /// Found by the docker_labels fuzzer (seed `long-container-id`): the id went into the value
    /// unchecked, and a long one made an entry over the watcher's size limit.
    #[test]
    fn an_entry_every_daemon_would_skip_is_refused_not_written() {
        let cfg = cfg(AddressMode::Published);
        let c = container(
            &[("ambassador.service", "db")],
            &[("3306/tcp", Some("32769"))],
        );
        let r = registration(&c, &cfg).unwrap().unwrap();
        let (key, value) = entry(&cfg, &r, "0123456789abcdef0123").unwrap();
        assert!(matches!(
            contract::parse(&cfg.etcd.prefix, key.as_bytes(), value.as_bytes()),
            Ok(Some(contract::Entry::Endpoint { .. }))
        ));
        // Each NUL serializes as six bytes: 1,000 of them pass the 4,096-byte value limit.
        let long = format!("0123456789ab{}", "\0".repeat(1000));
        let why = entry(&cfg, &r, &long).unwrap_err();
        assert!(why.contains("every daemon would skip its entry"), "{why}");
    }

    #[test]
    fn container_mode_uses_the_container_ip_and_port() {
        let c = container(
            &[("ambassador.service", "db"), ("ambassador.weight", "3")],
            &[("3306/tcp", None)],
        );
        let r = registration(&c, &cfg(AddressMode::Container))
            .unwrap()
            .unwrap();
        assert_eq!(r.addr, "10.250.0.5:3306".parse().unwrap());
        assert_eq!(r.weight, 3);
        let r = registration(&c, &cfg(AddressMode::ContainerIpv6))
            .unwrap()
            .unwrap();
        assert_eq!(r.addr, "[fd00:250::5]:3306".parse().unwrap());
    }

    #[test]
    fn the_port_label_picks_among_several() {
        let ports = [("8080/tcp", Some("32001")), ("9090/tcp", Some("32002"))];
        let c = container(&[("ambassador.service", "web")], &ports);
        let err = registration(&c, &cfg(AddressMode::Published)).unwrap_err();
        assert!(
            err.contains("several") && err.contains("ambassador.port"),
            "{err}"
        );
        let c = container(
            &[("ambassador.service", "web"), ("ambassador.port", "9090")],
            &ports,
        );
        assert_eq!(
            registration(&c, &cfg(AddressMode::Published))
                .unwrap()
                .unwrap()
                .addr
                .port(),
            32002
        );
        let c = container(
            &[("ambassador.service", "web"), ("ambassador.port", "7070")],
            &ports,
        );
        assert!(registration(&c, &cfg(AddressMode::Published))
            .unwrap_err()
            .contains("7070"));
    }

    #[test]
    fn unlabelled_containers_are_not_ours_and_bad_labels_are_errors() {
        let c = container(&[("other", "x")], &[("80/tcp", Some("1"))]);
        assert_eq!(registration(&c, &cfg(AddressMode::Published)), Ok(None));
        for labels in [
            &[("ambassador.service", "Bad_Name")][..],
            &[("ambassador.service", "db"), ("ambassador.weight", "0")][..],
            &[("ambassador.service", "db"), ("ambassador.weight", "x")][..],
        ] {
            assert!(registration(
                &container(labels, &[("80/tcp", Some("1"))]),
                &cfg(AddressMode::Published)
            )
            .is_err());
        }
        let unpublished = container(&[("ambassador.service", "db")], &[("80/tcp", None)]);
        assert!(registration(&unpublished, &cfg(AddressMode::Published))
            .unwrap_err()
            .contains("no published port"));
        let mut no_ip = cfg(AddressMode::Published);
        no_ip.advertise_ip = None;
        assert!(registration(&container(&[("ambassador.service", "db")], &[]), &no_ip).is_err());
    }

    /// Both found by `cargo xtask fuzz` (docker_labels): each made a key or value that every
    /// daemon then skipped as malformed.
    #[test]
    fn port_zero_and_odd_container_ids_are_never_registered() {
        let zero = container(&[("ambassador.service", "db")], &[("80/tcp", Some("0"))]);
        assert!(registration(&zero, &cfg(AddressMode::Published)).is_err());
        let mut odd = container(&[("ambassador.service", "db")], &[("80/tcp", Some("1"))]);
        odd.id = Some("deadbeefc\t\0afe".into());
        assert!(registration(&odd, &cfg(AddressMode::Published))
            .unwrap_err()
            .contains("printable ASCII"));
    }
}
