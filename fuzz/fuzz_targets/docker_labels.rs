//! Docker's view of a container (labels, ports, id, state), as the register reads it: never a
//! panic, and whatever it registers is an entry the daemon's watcher accepts.
#![no_main]

use std::collections::HashMap;

use ambassador_user::{
    commands::register::{self, AddressMode, RegisterConfig},
    control::etcd::EtcdOptions,
    core::contract::{self, Entry},
};
use bollard::models::{
    ContainerConfig, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    EndpointSettings, NetworkSettings, PortBinding,
};
use libfuzzer_sys::fuzz_target;

fn cfg(mode: AddressMode) -> RegisterConfig {
    RegisterConfig {
        docker: "unix:///fuzz".into(),
        advertise_ip: Some("192.0.2.7".parse().unwrap()),
        ttl: 10,
        host_id: "h1".into(),
        address_mode: mode,
        reconcile_interval: std::time::Duration::from_secs(30),
        metrics_addr: None,
        create_services: true,
        etcd: EtcdOptions {
            prefix: "/ambassador".into(),
            ..Default::default()
        },
    }
}

/// Fields separated by newlines: the id, the container IP, then `k=v` labels and `p:h` ports
/// (a port `8080/tcp` published on host port `h`, or exposed only when `h` is empty).
fn container(text: &str) -> ContainerInspectResponse {
    let mut lines = text.split('\n');
    let id = lines.next().unwrap_or_default().to_owned();
    let ip = lines.next().unwrap_or_default().to_owned();
    let mut labels = HashMap::new();
    let mut ports = HashMap::new();
    let mut exposed = Vec::new();
    for line in lines {
        if let Some((k, v)) = line.split_once('=') {
            labels.insert(
                format!("ambassador.{}", k.trim_start_matches("ambassador.")),
                v.to_owned(),
            );
        } else if let Some((p, h)) = line.split_once(':') {
            exposed.push(p.to_owned());
            let binding = (!h.is_empty()).then(|| {
                vec![PortBinding {
                    host_ip: Some("0.0.0.0".into()),
                    host_port: Some(h.to_owned()),
                }]
            });
            ports.insert(p.to_owned(), binding);
        }
    }
    ContainerInspectResponse {
        id: Some(id),
        config: Some(ContainerConfig {
            labels: Some(labels),
            exposed_ports: Some(exposed),
            ..Default::default()
        }),
        state: Some(ContainerState {
            status: Some(ContainerStateStatusEnum::RUNNING),
            running: Some(true),
            ..Default::default()
        }),
        network_settings: Some(NetworkSettings {
            ports: Some(ports),
            networks: Some(HashMap::from([(
                "bridge".to_owned(),
                EndpointSettings {
                    ip_address: Some(ip),
                    ..Default::default()
                },
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let c = container(text);
    let _ = register::ready(&c);
    for mode in [AddressMode::Published, AddressMode::Container] {
        let cfg = cfg(mode);
        if let Ok(Some(r)) = register::registration(&c, &cfg) {
            // Refused (and reported as unusable) is fine; written must be readable.
            let Ok((key, value)) = register::entry(&cfg, &r, c.id.as_deref().unwrap_or_default())
            else {
                continue;
            };
            match contract::parse("/ambassador", key.as_bytes(), value.as_bytes()) {
                Ok(Some(Entry::Endpoint { .. })) => {}
                other => panic!("the register wrote {key}={value}, the watcher read {other:?}"),
            }
        }
    }
});
