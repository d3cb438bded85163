//! The register's core without Docker: a synthetic container source drives the same code as
//! `ambassador register` (its etcd writes under one lease, its host key space), against
//! Debian's etcd, and a real `ambassador run` forwards a client to the synthetic containers'
//! addresses. This is how the fleet simulator runs a thousand registers in one process.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ambassador_tests::*;
use ambassador_user::{
    commands::register::{self, AddressMode, RegisterConfig, Stats},
    control::etcd::EtcdOptions,
};

const VIP: &str = "10.96.0.10:80";
const TTL: i64 = 2;

fn endpoint_keys(etcd: &Etcd) -> Vec<String> {
    let out = etcd.ctl(&["get", "/ambassador/v1/hosts/", "--prefix", "--keys-only"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The register's core for host `sim1` over a synthetic source, on a thread of the forwarding
/// host's namespace, writing to etcd at `urls`: its containers, its stop, its end.
fn register_core(
    topo: &Topology,
    urls: &str,
) -> (
    register::SyntheticHandle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<ambassador_user::error::Result<()>>,
) {
    let (source, containers) = register::synthetic();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = RegisterConfig {
        docker: String::new(),
        advertise_ip: None,
        ttl: TTL,
        host_id: "sim1".into(),
        address_mode: AddressMode::Container,
        reconcile_interval: Duration::from_secs(30),
        etcd: EtcdOptions {
            endpoints: urls.split(',').map(str::to_owned).collect(),
            prefix: "/ambassador".into(),
            ..Default::default()
        },
        metrics_addr: None,
        create_services: true,
    };
    let register = topo.fwd.spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stats = Arc::new(Stats::default());
        rt.block_on(register::serve(&cfg, source, stats, async {
            let _ = stop_rx.await;
        }))
    });
    (containers, stop_tx, register)
}

fn greeting(topo: &Topology) -> Option<String> {
    tcp_connect(&topo.client, VIP).ok().map(|(_, who)| who)
}

#[test]
fn a_synthetic_source_drives_the_register_core_into_etcd_and_the_datapath() {
    let test = "a_synthetic_source_drives_the_register_core_into_etcd_and_the_datapath";
    if !require_root(test) {
        return;
    }
    let topo = Topology::new(2);
    let _servers = topo.greeters(8080);
    let etcd = Etcd::single(&topo.fwd);
    let urls = etcd.urls();
    let pin = PinDir::new();
    let mut daemon = Daemon::run_etcd(&topo.fwd, "c0", &urls, &pin.path, &[]);
    daemon.wait_ready();
    ambassador_ok(
        &topo.fwd,
        &["service", "set", "web", "--frontend", VIP, "--etcd", &urls],
    );

    let (containers, stop_tx, register) = register_core(&topo, &urls);
    // A container starts: its endpoint is written under this host's prefix, with a lease, and
    // the daemon sends the client to it.
    let b1: SocketAddr = Topology::backend_addr(1, 8080).parse().unwrap();
    containers.start("aaaaaaaaaaaa01", "web", b1);
    assert!(
        wait_until(Duration::from_secs(10), || greeting(&topo).as_deref()
            == Some("b1")),
        "the synthetic container's endpoint never reached the datapath: keys {:?}\n{}",
        endpoint_keys(&etcd),
        daemon.log()
    );
    let keys = endpoint_keys(&etcd);
    assert_eq!(
        keys,
        ["/ambassador/v1/hosts/sim1/endpoints/web/sim1-aaaaaaaaaaaa"],
        "one endpoint, in the host's own key space"
    );
    let lease = etcd.ctl(&["get", &keys[0], "-w", "json"]);
    let lease = String::from_utf8_lossy(&lease.stdout);
    assert!(
        lease.contains("\"lease\":") && !lease.contains("\"lease\":0"),
        "the endpoint lives under the register's lease: {lease}"
    );

    // It moves: the old container stops, a new one starts elsewhere.
    let b2: SocketAddr = Topology::backend_addr(2, 8080).parse().unwrap();
    containers.start("bbbbbbbbbbbb02", "web", b2);
    containers.stop("aaaaaaaaaaaa01");
    assert!(
        wait_until(Duration::from_secs(10), || endpoint_keys(&etcd)
            == ["/ambassador/v1/hosts/sim1/endpoints/web/sim1-bbbbbbbbbbbb"]),
        "the stopped container's endpoint stayed: {:?}",
        endpoint_keys(&etcd)
    );
    assert!(
        wait_until(Duration::from_secs(10), || (0..5)
            .all(|_| greeting(&topo).as_deref() == Some("b2"))),
        "the client was not sent to the new container\n{}",
        daemon.log()
    );

    // The register stops: its entries stay until the lease expires (a restarted register
    // takes them over), then go.
    stop_tx.send(()).unwrap();
    register
        .join()
        .unwrap()
        .expect("the register core stops cleanly");
    assert_eq!(endpoint_keys(&etcd).len(), 1, "entries outlive the process");
    assert!(
        wait_until(Duration::from_secs(TTL as u64 + 5), || endpoint_keys(&etcd)
            .is_empty()),
        "the entries did not expire with the lease: {:?}",
        endpoint_keys(&etcd)
    );
    assert_eq!(containers.running(), 1);
}

/// A zone's hosts through `etcd grpc-proxy` (one proxy in front of a 3-member cluster): the
/// daemon follows etcd through it, the operator commands write through it, and the register's
/// core keeps its lease alive through it; a stopped register's entries expire through it too.
#[test]
fn run_and_the_register_work_through_grpc_proxy() {
    if !require_root("run_and_the_register_work_through_grpc_proxy") {
        return;
    }
    let topo = Topology::new(1);
    let _servers = topo.greeters(8080);
    let etcd = Etcd::cluster(&topo.fwd, 3);
    let proxy = EtcdProxy::start(&topo.fwd, &etcd, "127.0.0.1:23790");
    let pin = PinDir::new();
    let mut daemon = Daemon::run_etcd(&topo.fwd, "c0", &proxy.url, &pin.path, &[]);
    daemon.wait_ready();
    ambassador_ok(
        &topo.fwd,
        &[
            "service",
            "set",
            "web",
            "--frontend",
            VIP,
            "--etcd",
            &proxy.url,
        ],
    );
    let (containers, stop_tx, register) = register_core(&topo, &proxy.url);
    let b1: SocketAddr = Topology::backend_addr(1, 8080).parse().unwrap();
    containers.start("cccccccccccc01", "web", b1);
    assert!(
        wait_until(Duration::from_secs(10), || greeting(&topo).as_deref()
            == Some("b1")),
        "through the proxy, the container never reached the datapath: keys {:?}\n{}",
        endpoint_keys(&etcd),
        daemon.log()
    );
    // Its lease is kept alive through the proxy: still there after three TTLs.
    std::thread::sleep(Duration::from_secs(3 * TTL as u64));
    assert_eq!(
        endpoint_keys(&etcd).len(),
        1,
        "the lease lapsed through the proxy"
    );
    stop_tx.send(()).unwrap();
    register
        .join()
        .unwrap()
        .expect("the register core stops cleanly");
    assert!(
        wait_until(Duration::from_secs(TTL as u64 + 5), || endpoint_keys(&etcd)
            .is_empty()),
        "the entries did not expire: {:?}",
        endpoint_keys(&etcd)
    );
    assert!(
        wait_until(Duration::from_secs(10), || greeting(&topo).is_none()),
        "the daemon kept the expired endpoint\n{}",
        daemon.log()
    );
}
