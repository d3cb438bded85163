//! The register's etcd side: requests retried across members, and the lease kept alive.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{control::etcd::fresh, error::Result};

/// Runs an etcd request up to three times: with several members, a request that met a member
/// going away succeeds on another. A stale token is renewed first ([`fresh`]).
pub(super) async fn retry<T, F>(
    client: &Client,
    what: &str,
    mut request: impl FnMut(Client) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fresh(client, what, &mut request).await {
            Err(err) if attempt < 3 => {
                debug!("{err}; trying again");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            done => return done,
        }
    }
}

/// Keeps `lease` alive every third of its TTL; sets `lost` when it cannot.
pub(super) async fn keep_lease(
    mut client: Client,
    lease: i64,
    ttl: i64,
    lost: watch::Sender<bool>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    let result: Result<(), String> = async {
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(ttl as u64), stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Err("the lease expired".into()),
                Ok(Ok(None)) => return Err("the keep-alive stream closed".into()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no keep-alive answer within the TTL".into()),
            }
        }
    }
    .await;
    if let Err(why) = result {
        warn!("etcd lease {lease:x} lost ({why}): reconnecting, granting a new lease and rewriting every entry");
    }
    let _ = lost.send(true);
}
