//! `ambassador auth`: the trust model (README, "Trust model") set up with etcd's own access
//! control. etcd enforces who may write which key; no auth server of ours is involved.
//!
//! | user | role grants |
//! |---|---|
//! | `root` | everything (etcd needs it to enable authentication; user and role management) |
//! | `ambassador-admin` | read and write `<prefix>/` |
//! | `ambassador-host-<host>` | read `<prefix>/`, write `<prefix>/v1/hosts/<host>/` |
//! | `ambassador-reader` | read `<prefix>/` |
//!
//! Every step is idempotent: a role, user or grant that exists is kept (an existing user keeps
//! its password), so `init` can be run again, and `add-host` again to change a host record.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use etcd_client::{Client, Permission, UserAddOptions};

use crate::{
    commands::cli::{AuthCmd, CredentialArgs},
    control::etcd::{fresh, EtcdOptions},
    core::{
        contract,
        trust::{HostRecord, Mode},
    },
    error::{Error, Result},
};

/// The admin's user and role.
pub const ADMIN: &str = "ambassador-admin";
/// The read-only daemons' user and role.
pub const READER: &str = "ambassador-reader";

/// The user and role of `host`.
pub fn host_user(host: &str) -> String {
    format!("ambassador-host-{host}")
}

/// `ambassador auth ...`.
pub async fn run(cmd: AuthCmd) -> Result<()> {
    match cmd {
        AuthCmd::Init { creds, etcd } => {
            let opts: EtcdOptions = etcd.into();
            let mut s = Setup::new(&opts, creds).await?;
            let root = contract::watch_prefix(&opts.prefix);
            s.user("root", "root", &[]).await?;
            let all = Permission::read_write(root.clone()).with_prefix();
            s.user(ADMIN, ADMIN, &[all]).await?;
            let read = Permission::read(root.clone()).with_prefix();
            s.user(READER, READER, &[read]).await?;
            let key = contract::trust_key(&opts.prefix);
            s.request(&format!("writing {key}"), |mut c| {
                let key = key.clone();
                async move { c.put(key, Mode::Hosts.as_str(), None).await }
            })
            .await?;
            s.said(format!(
                "trust mode: {key} = hosts (a host's endpoints apply only as its host record allows)"
            ));
            s.request("enabling authentication", |mut c| async move {
                c.auth_enable().await
            })
            .await?;
            s.said("etcd authentication: enabled (run `auth` again as root)".into());
            s.said("next: `ambassador auth add-host HOST --address CIDR --service NAME` for each backend host".into());
            Ok(())
        }
        AuthCmd::AddHost {
            host,
            addresses,
            services,
            creds,
            etcd,
        } => {
            let opts: EtcdOptions = etcd.into();
            let mut s = Setup::new(&opts, creds).await?;
            let user = host_user(&host);
            let read = Permission::read(contract::watch_prefix(&opts.prefix)).with_prefix();
            let own =
                Permission::read_write(contract::host_prefix(&opts.prefix, &host)).with_prefix();
            s.user(&user, &user, &[read, own]).await?;
            let record = HostRecord {
                addresses,
                services,
            };
            let key = contract::host_policy_key(&opts.prefix, &host);
            let value = serde_json::to_string(&record.value()).expect("serializable");
            s.request(&format!("writing {key}"), |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
            s.said(format!("host record: {key} = {value}"));
            s.said(format!(
                "host {host}: run its register with --host-id {host} --etcd-user {user} (or a client certificate with CN={user})"
            ));
            Ok(())
        }
    }
}

/// One `auth` run: the connection and how new users get their credentials.
struct Setup {
    client: Client,
    creds: CredentialArgs,
}

impl Setup {
    async fn new(opts: &EtcdOptions, creds: CredentialArgs) -> Result<Self> {
        if let Some(dir) = &creds.credentials_dir {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        Ok(Self {
            client: opts.connect().await?,
            creds,
        })
    }

    /// One request; users and roles change as this runs, so a stale token is renewed.
    async fn request<T, F>(&self, what: &str, request: impl FnMut(Client) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        fresh(&self.client, what, request).await
    }

    fn said(&self, line: String) {
        println!("{line}");
    }

    /// Makes `user` exist with `role`, and `role` (unless built in) with `perms`.
    async fn user(&mut self, user: &str, role: &str, perms: &[Permission]) -> Result<()> {
        if role != "root" {
            let created = kept(
                self.request(&format!("creating role {role}"), |mut c| async move {
                    c.role_add(role).await
                })
                .await,
            )?;
            for p in perms {
                self.request(&format!("granting role {role} {p:?}"), |mut c| {
                    let p = p.clone();
                    async move { c.role_grant_permission(role, p).await }
                })
                .await?;
            }
            let what: Vec<String> = perms.iter().map(describe).collect();
            self.said(format!(
                "{} role {role}: {}",
                if created { "created" } else { "kept" },
                what.join(", ")
            ));
        }
        let how = if self.creds.cert_auth {
            let added = kept(
                self.request(&format!("creating user {user}"), |mut c| async move {
                    c.user_add(user, "", Some(UserAddOptions::new().with_no_pwd()))
                        .await
                })
                .await,
            )?;
            if added {
                format!("created user {user} (no password: a client certificate with CN={user})")
            } else {
                format!("kept user {user}")
            }
        } else {
            let dir = self
                .creds
                .credentials_dir
                .clone()
                .expect("clap requires it without --cert-auth");
            self.user_with_password(user, &dir).await?
        };
        self.request(
            &format!("granting user {user} role {role}"),
            |mut c| async move { c.user_grant_role(user, role).await },
        )
        .await?;
        self.said(format!("{how}, role {role}"));
        Ok(())
    }

    /// Creates `user` with a new password written to `<dir>/<user>.password` first (so a
    /// created user's password is never lost), or keeps an existing user and its password.
    async fn user_with_password(&mut self, user: &str, dir: &Path) -> Result<String> {
        let path = dir.join(format!("{user}.password"));
        let pending = dir.join(format!(".{user}.password.new"));
        let password = new_password()?;
        write_secret(&pending, &password)?;
        let added = kept(
            self.request(&format!("creating user {user}"), |mut c| {
                let password = password.clone();
                async move { c.user_add(user, password, None).await }
            })
            .await,
        );
        match added {
            Ok(true) => {
                std::fs::rename(&pending, &path)
                    .map_err(Error::io(format!("writing {}", path.display())))?;
                Ok(format!(
                    "created user {user} (password in {})",
                    path.display()
                ))
            }
            other => {
                let _ = std::fs::remove_file(&pending);
                other.map(|_| format!("kept user {user} and its password"))
            }
        }
    }
}

/// `Ok(true)` when created, `Ok(false)` when it existed already.
fn kept<T>(result: Result<T>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(Error::Etcd {
            source: etcd_client::Error::GRpcStatus(status),
            ..
        }) if status.message().contains("already exists") => Ok(false),
        Err(e) => Err(e),
    }
}

fn describe(p: &Permission) -> String {
    use etcd_client::PermissionType as T;
    let kind = match p.get_type() {
        t if t == T::Read as i32 => "read",
        t if t == T::Write as i32 => "write",
        _ => "read and write",
    };
    format!("{kind} {}*", String::from_utf8_lossy(p.key()))
}

/// 160 random bits, hex.
fn new_password() -> Result<String> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::io("generating a password")(std::io::Error::other(e.to_string())))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &PathBuf, secret: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("writing {}", path.display())))?;
    writeln!(f, "{secret}").map_err(Error::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_secrets_private() {
        let (a, b) = (new_password().unwrap(), new_password().unwrap());
        assert_eq!(a.len(), 40);
        assert_ne!(a, b);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.password");
        write_secret(&path, &a).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), a);
    }
}
