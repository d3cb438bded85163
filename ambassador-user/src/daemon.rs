//! `ambassador run`: keeps the maps equal to the configuration and the conntrack tidy.

use std::{future::Future, path::PathBuf, time::Duration};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    config,
    error::{Error, Result},
    gc::{self, Timeouts},
    loader,
    maps::Maps,
    reconcile::{self, Desired, Installed, Op},
};

/// Validated settings of `ambassador run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Client-facing interfaces.
    pub ifaces: Vec<String>,
    /// The static configuration file.
    pub config: PathBuf,
    /// Where maps are pinned.
    pub pin_dir: PathBuf,
    /// How often expired flows and drained backends are removed.
    pub gc_interval: Duration,
    /// Flow timeouts.
    pub timeouts: Timeouts,
    /// How the TC programs attach.
    pub tc_attach: loader::TcAttach,
}

/// Installs `desired` op by op, keeping `installed` equal to the maps. Returns the op count.
pub fn converge(maps: &mut Maps, installed: &mut Installed, desired: &Desired) -> Result<usize> {
    reconcile::validate(desired)?;
    let ops = reconcile::plan(installed, desired);
    for op in &ops {
        maps.apply(op)?;
        installed.apply(op);
    }
    Ok(ops.len())
}

/// Removes expired flows and drained terminating backends. Returns (flows, backends) removed.
pub fn collect_garbage(
    maps: &mut Maps,
    installed: &mut Installed,
    timeouts: &Timeouts,
) -> Result<(usize, usize)> {
    let now = gc::monotonic_ns();
    let mut live = Vec::new();
    let mut removed_flows = 0;
    for flow in maps.flows()? {
        if gc::expired(&flow, now, timeouts) || !installed.backends.contains_key(&flow.backend_id) {
            maps.delete_flow(&flow)?;
            removed_flows += 1;
        } else {
            live.push(flow);
        }
    }
    let drained = gc::drained_backends(installed, &live);
    for id in &drained {
        let op = Op::DeleteBackend { id: *id };
        maps.apply(&op)?;
        installed.apply(&op);
    }
    Ok((removed_flows, drained.len()))
}

/// Runs the daemon until `shutdown` completes (or SIGTERM/SIGINT arrives). SIGHUP re-reads the
/// configuration: a bad file is reported and the running state stays as it was.
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    // Validate everything before touching the kernel.
    let desired = config::load(&cfg.config)?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(Error::io("installing the SIGHUP handler"))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(Error::io("installing the SIGTERM handler"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(Error::io("installing the SIGINT handler"))?;

    let mut dp = loader::start(&cfg.pin_dir, &cfg.ifaces, cfg.tc_attach)?;
    let mut installed = dp.maps.read_installed()?;
    let ops = converge(&mut dp.maps, &mut installed, &desired)?;
    info!(
        services = desired.len(),
        changes = ops,
        pin_dir = %cfg.pin_dir.display(),
        "ready"
    );

    let mut gc_tick = tokio::time::interval(cfg.gc_interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            _ = hup.recv() => match config::load(&cfg.config) {
                Ok(desired) => match converge(&mut dp.maps, &mut installed, &desired) {
                    Ok(n) => info!(services = desired.len(), changes = n, "configuration reloaded"),
                    Err(e) => error!("applying the reloaded configuration failed: {e}"),
                },
                Err(e) => warn!("configuration not reloaded, the running one stays: {e}"),
            },
            _ = gc_tick.tick() => match collect_garbage(&mut dp.maps, &mut installed, &cfg.timeouts) {
                Ok((0, 0)) => {}
                Ok((flows, backends)) => info!(flows, backends, "expired flows and drained backends removed"),
                Err(e) => warn!("garbage collection failed: {e}"),
            },
        }
    }
    // Dropping the datapath detaches the programs; the maps stay pinned for `status` and for
    // the next start, which adopts them.
    drop(dp);
    info!("stopped");
    Ok(())
}
