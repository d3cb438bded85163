//! Reaching etcd: the options (endpoints, TLS, user and password), connecting with a
//! deadline, and requests that renew a stale token.

use std::{path::PathBuf, sync::RwLock, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tracing::debug;

use crate::error::{Error, Result};

/// How to reach etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of the contract (default `/ambassador`).
    pub prefix: String,
    /// CA certificate (PEM) to verify the servers with.
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// User name for etcd authentication.
    pub user: Option<String>,
    /// Password for etcd authentication (never logged).
    pub password: Option<String>,
    /// A file holding the password (read at each connection).
    pub password_file: Option<PathBuf>,
}

/// How long one request (not a watch) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Who this process talks to etcd as, for the errors that name it. One process uses one
/// credential (the one on its command line), so the last connection's is the one to name.
static IDENTITY: RwLock<String> = RwLock::new(String::new());

fn identity() -> String {
    let id = IDENTITY.read().unwrap_or_else(|p| p.into_inner());
    if id.is_empty() {
        "no credential".into()
    } else {
        id.clone()
    }
}

/// Whether etcd refused a request for its credential (RBAC), or the credential itself.
fn denied(e: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    let msg = status.message();
    let auth = [
        "permission denied",
        "user name is empty",
        "authentication failed",
        "invalid auth token",
        "user name not found",
    ];
    if status.code() != tonic::Code::PermissionDenied && !auth.iter().any(|a| msg.contains(a)) {
        return None;
    }
    let msg = msg.trim_start_matches("etcdserver: ");
    Some(if msg.contains("user name is empty") {
        "etcd has authentication on and this command gave no credential (--etcd-user with AMBASSADOR_ETCD_PASSWORD or --etcd-password-file, or --etcd-cert and --etcd-key)".to_owned()
    } else {
        msg.to_owned()
    })
}

/// Whether etcd refused a request because its token predates a change of users or roles
/// ("revision of auth store is old", not retried by etcd-client): a new token
/// (`Client::refresh_token`) makes it pass.
pub fn stale_token(e: &Error) -> bool {
    matches!(e, Error::Etcd { source: etcd_client::Error::GRpcStatus(s), .. }
        if s.message().contains("revision of auth store is old"))
}

/// Runs an etcd request as [`timed`] does; when etcd refuses the token as older than a change
/// of users or roles ([`stale_token`]), renews it and runs the request again (five times at
/// most: each change of users overtakes the writes in flight). Any write may meet that after
/// an `auth` command, not only the next one on the same connection: a member stamps a request
/// with the auth revision it has applied, and the change may be applied between the stamp and
/// the request's turn in the log (etcd's own client retries these the same way).
///
/// `request` gets a client of its own each time (a clone: cheap, the connection is shared), so
/// the futures it makes hold no borrow of one and can run on any thread.
pub async fn fresh<T, F>(
    client: &Client,
    what: &str,
    mut request: impl FnMut(Client) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let c = client.clone();
    let mut renewed = 0;
    loop {
        match timed(what, request(c.clone())).await {
            Err(e) if stale_token(&e) && renewed < 5 => {
                renewed += 1;
                debug!("{e}: renewing the token");
                timed("renewing the etcd token", c.refresh_token()).await?;
            }
            done => return done,
        }
    }
}

/// Runs one etcd request with [`REQUEST_TIMEOUT`], saying `what` it was if it fails; a refusal
/// by etcd's access control says so, and names the credential.
pub async fn timed<T>(
    what: impl Into<String>,
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(r) => r.map_err(|source| match denied(&source) {
            Some(detail) => Error::EtcdDenied {
                what: what.into(),
                detail,
                identity: identity(),
            },
            None => Error::Etcd {
                what: what.into(),
                source,
            },
        }),
        Err(_) => Err(Error::EtcdTimeout { what: what.into() }),
    }
}

impl EtcdOptions {
    /// Connects (and authenticates, when a user is set).
    pub async fn connect(&self) -> Result<Client> {
        self.connect_to(&self.endpoints).await
    }

    /// Connects to `endpoints` (some of [`EtcdOptions::endpoints`]), as [`connect`] does.
    ///
    /// [`connect`]: EtcdOptions::connect
    pub async fn connect_to(&self, endpoints: &[String]) -> Result<Client> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // HTTP/2 pings notice a dead member within ~10 s even on an idle watch. etcd
            // closes connections that ping more often than every 5 s (--grpc-keepalive-min-time).
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(4))
            .with_keep_alive_while_idle(true)
            // A member cut off from the quorum fails the watch instead of going silent.
            .with_require_leader(true);
        if let Some(user) = &self.user {
            let password = match &self.password_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(Error::io(format!(
                        "reading the etcd password from {}",
                        f.display()
                    )))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => self.password.clone().unwrap_or_default(),
            };
            opts = opts
                .with_user(user.clone(), password)
                // Simple tokens expire (etcd's --auth-token-ttl, 300 s): a daemon lives longer.
                .with_auto_token_refresh(true);
        }
        *IDENTITY.write().unwrap_or_else(|p| p.into_inner()) = match (&self.user, &self.cert) {
            (Some(user), _) => format!("etcd user {user:?}"),
            (None, Some(cert)) => format!(
                "the etcd user named by the CN of client certificate {}",
                cert.display()
            ),
            (None, None) => String::new(),
        };
        if self.cacert.is_some() || self.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cacert {
                let pem =
                    std::fs::read(ca).map_err(Error::io(format!("reading {}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    let c = std::fs::read(cert)
                        .map_err(Error::io(format!("reading {}", cert.display())))?;
                    let k = std::fs::read(key)
                        .map_err(Error::io(format!("reading {}", key.display())))?;
                    tls = tls.identity(Identity::from_pem(c, k));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::Usage(
                        "--etcd-cert and --etcd-key go together".into(),
                    ))
                }
            }
            opts = opts.with_tls(tls);
        }
        timed(
            format!("connecting to {}", endpoints.join(",")),
            Client::connect(endpoints, Some(opts)),
        )
        .await
    }
}
