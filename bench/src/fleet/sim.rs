//! The simulated hosts, made of the product's own cores: a client host is the daemon's core
//! (`etcd::follow`, then `Pipeline` into `tables::Memory`) with its own etcd connection and
//! watch; a backend host is the register's core (`register::serve`) with its own lease and a
//! synthetic container source. Nothing here decides anything the product does not.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ambassador_user::{
    commands::register::{self, AddressMode, RegisterConfig, Stats, SyntheticHandle},
    control::etcd::{self, EtcdOptions, Snapshot},
    core::{
        capacity::Capacity, model::Desired, pipeline::Pipeline, policy::BackendPolicy,
        reconcile::Installed, tables::Memory, trust::FrontendPolicy,
    },
    task::AbortOnDrop,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

/// A client host's applied state, sent at each apply.
pub struct Applied {
    /// Which host.
    pub host: usize,
    /// When it was in its tables.
    pub at: Instant,
    /// What its tables hold (after the policies).
    pub desired: Arc<Desired>,
    /// How long the daemon's core took to apply it (policies, fit, plan, tables), in µs.
    pub apply_us: f64,
}

/// Starts client host `host`: follows etcd at `endpoints` and reports each apply.
pub fn client_host(
    host: usize,
    endpoints: Vec<String>,
    prefix: &str,
    reports: mpsc::UnboundedSender<Applied>,
) -> JoinHandle<()> {
    let opts = EtcdOptions {
        endpoints,
        prefix: prefix.to_owned(),
        ..Default::default()
    };
    tokio::spawn(async move {
        let (tx, mut rx) = watch::channel(Snapshot::default());
        let _follower = AbortOnDrop(tokio::spawn(etcd::follow(opts, tx)).abort_handle());
        let mut core = Pipeline::new(
            Installed::default(),
            BackendPolicy::default(),
            FrontendPolicy::default(),
            Capacity::default(),
        );
        let mut tables = Memory::default();
        let own = BTreeSet::new();
        let mut last: Option<Arc<Desired>> = None;
        while rx.changed().await.is_ok() {
            let snap = rx.borrow_and_update().clone();
            core.follow_trust(snap.scope.clone(), snap.host_refused.clone());
            let Some(desired) = snap.unapplied(&mut last) else {
                continue;
            };
            let started = Instant::now();
            if let Ok(applied) = core.apply(&mut tables, &desired, &own) {
                let at = Instant::now();
                let report = Applied {
                    host,
                    at,
                    desired: applied.desired,
                    apply_us: (at - started).as_secs_f64() * 1e6,
                };
                if reports.send(report).is_err() {
                    return;
                }
            }
        }
    })
}

/// A simulated backend host: the register's core over synthetic containers.
pub struct BackendHost {
    /// Starts and stops its containers.
    pub containers: SyntheticHandle,
    /// The addresses of the containers it started, by id.
    pub started: Vec<(String, SocketAddr)>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<ambassador_user::error::Result<()>>,
}

impl BackendHost {
    /// Starts backend host `host` on `rt` against etcd at `endpoint`, with a lease of `ttl`
    /// seconds.
    pub fn start(
        rt: &tokio::runtime::Handle,
        host: usize,
        endpoint: String,
        prefix: &str,
        ttl: i64,
    ) -> Self {
        let (source, containers) = register::synthetic();
        let cfg = RegisterConfig {
            docker: String::new(),
            advertise_ip: None,
            ttl,
            host_id: format!("simb{host}"),
            address_mode: AddressMode::Container,
            reconcile_interval: Duration::from_secs(30),
            etcd: EtcdOptions {
                endpoints: vec![endpoint],
                prefix: prefix.to_owned(),
                ..Default::default()
            },
            metrics_addr: None,
            create_services: false,
        };
        let (stop, stopped) = oneshot::channel();
        let task = rt.spawn(async move {
            let stats = Arc::new(Stats::default());
            register::serve(&cfg, source, stats, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            containers,
            started: Vec::new(),
            stop: Some(stop),
            task,
        }
    }

    /// Starts a container of `service` at `addr`.
    pub fn run(&mut self, id: String, service: &str, addr: SocketAddr) {
        self.containers.start(&id, service, addr);
        self.started.push((id, addr));
    }

    /// The host dies: its register stops keeping the lease alive, and writes nothing more
    /// (its entries go when the lease expires, as when a machine loses power).
    pub fn die(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Drop for BackendHost {
    fn drop(&mut self) {
        self.die();
    }
}
