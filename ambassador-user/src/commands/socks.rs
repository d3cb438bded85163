//! `ambassador socks`: the SOCKS5 door, on any host (ambassador's or not) with read access
//! to etcd. It follows the registry as `run` does and serves [`crate::services::socks`].

use std::{path::Path, sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
};
use tracing::{info, warn};

use crate::{
    commands::cli::SocksArgs,
    control::etcd::{self, EtcdOptions, Snapshot},
    core::policy::BackendPolicy,
    error::{Error, Result},
    services::{
        socks::{self, Door, DoorConfig, Users},
        web::{self, Site},
    },
    task::AbortOnDrop,
};

/// Reads a users file: `user:password` lines; blank lines and `#` comments are skipped.
pub fn read_users(path: &Path) -> Result<Users> {
    let text = std::fs::read_to_string(path).map_err(Error::io(format!(
        "reading the SOCKS users file {}",
        path.display()
    )))?;
    let mut users = Users::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, pass))
                if !user.is_empty()
                    && !pass.is_empty()
                    && user.len() <= 255
                    && pass.len() <= 255 =>
            {
                users.insert(user.to_owned(), pass.to_owned());
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{} line {}: expected user:password (1-255 bytes each)",
                    path.display(),
                    n + 1
                )))
            }
        }
    }
    if users.is_empty() {
        return Err(Error::Usage(format!("{} holds no user", path.display())));
    }
    Ok(users)
}

/// The door's settings from its flags.
pub fn config(a: &SocksArgs) -> Result<DoorConfig> {
    let users = a.users_file.as_deref().map(read_users).transpose()?;
    Ok(DoorConfig {
        domain: a.dns_domain.clone(),
        allow_client: a.allow_client.clone(),
        allow_destination: a.allow_destination.clone(),
        policy: BackendPolicy {
            allow: a.allow_backend.clone(),
        },
        users: users.map(Arc::new),
        max_connections: a.max_connections as usize,
        handshake_timeout: Duration::from_secs(a.handshake_timeout),
        connect_timeout: Duration::from_millis(a.connect_timeout),
        idle_timeout: Duration::from_secs(a.idle_timeout),
        copy: a.copy,
    })
}

/// Runs the door until SIGTERM or SIGINT.
pub async fn run(args: SocksArgs) -> Result<()> {
    let cfg = config(&args)?;
    socks::fds::raise_limit(cfg.max_connections, cfg.copy);
    let opts: EtcdOptions = args.etcd.into();
    let listener = socks::bind(args.listen).await?;
    let local = listener
        .local_addr()
        .map_err(Error::io("reading the SOCKS5 address"))?;
    if !local.ip().is_loopback() && args.allow_client.iter().all(|n| n.addr().is_loopback()) {
        warn!(
            "socks: listening on {local}, but only loopback clients are allowed (--allow-client)"
        );
    }
    socks::announce(local, &cfg);
    let door = Arc::new(Door::new(cfg));
    let _metrics = match args.metrics_addr {
        Some(addr) => {
            let stats = door.stats.clone();
            let site = Site::metrics(move || stats.render());
            Some(AbortOnDrop(web::serve(addr, site).await?.1.abort_handle()))
        }
        None => None,
    };
    let (tx, rx) = watch::channel(Snapshot::default());
    info!(endpoints = opts.endpoints.join(","), prefix = %opts.prefix, "socks: following etcd");
    let _follower = AbortOnDrop(tokio::spawn(etcd::follow(opts, tx)).abort_handle());
    let _names = AbortOnDrop(tokio::spawn(follow(rx, door.clone())).abort_handle());
    let _server = AbortOnDrop(tokio::spawn(socks::serve(listener, door)).abort_handle());
    let mut term =
        signal(SignalKind::terminate()).map_err(Error::io("installing the SIGTERM handler"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(Error::io("installing the SIGINT handler"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("socks: stopping");
    Ok(())
}

/// Keeps the door's names equal to the registry's.
async fn follow(mut rx: watch::Receiver<Snapshot>, door: Arc<Door>) {
    let mut last = None;
    let mut ready = false;
    while rx.changed().await.is_ok() {
        let snap = rx.borrow_and_update().clone();
        door.stats.etcd_connected.store(snap.connected, Relaxed);
        let Some(desired) = snap.unapplied(&mut last) else {
            continue;
        };
        door.update(&desired);
        if !ready {
            ready = true;
            info!(
                revision = snap.revision,
                services = desired.len(),
                "socks: ready"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(
            &path,
            "# who may use the door\nalice:s3cret:with:colons\n\nbob:pw\n",
        )
        .unwrap();
        let users = read_users(&path).unwrap();
        assert_eq!(users["alice"], "s3cret:with:colons");
        assert_eq!(users["bob"], "pw");
        for bad in ["alice\n", ":pw\n", "bob:\n", "# only a comment\n"] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(read_users(&path), Err(Error::Usage(_))), "{bad:?}");
        }
        assert!(read_users(&dir.path().join("missing")).is_err());
    }
}
