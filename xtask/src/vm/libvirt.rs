//! libvirt for the Vagrant testbed: the machine's own daemon when one answers, else one this
//! task starts (and stops by PID when done: machines without systemd, like CI's, run none),
//! and a storage pool of the testbed's own under `target/`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};

use super::qemu::Accel;

/// The system instance: the one that can make bridges for isolated networks.
pub const URI: &str = "qemu:///system";
/// The user QEMU runs as under Debian's libvirt (`libvirt-daemon-system` creates it;
/// `scripts/setup.sh` does where that package is not installed).
const QEMU_USER: &str = "libvirt-qemu";

/// `virsh ARGS` against [`URI`]: its output, or why it failed.
pub fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running virsh (Debian's libvirt-clients; scripts/setup.sh installs it)")?;
    ensure!(
        out.status.success(),
        "virsh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A libvirt daemon that answers; dropping it stops the daemon (and its log daemon) if this
/// task started them.
pub struct Daemon {
    own: Vec<Child>,
}

impl Daemon {
    /// The machine's daemon, or one started now (its log, and virtlogd's, beside `log`). Under
    /// emulation, one started here does not see `/dev/kvm`: probing a KVM that cannot run the
    /// guests (a nested PVM) makes each probe of QEMU wait for its timeout, minutes in all.
    pub fn ensure(log: &Path, accel: &Accel) -> Result<Self> {
        if virsh(&["version"]).is_ok() {
            eprintln!("[xtask] libvirt: using the machine's daemon ({URI})");
            return Ok(Self { own: Vec::new() });
        }
        // SAFETY: geteuid has no preconditions.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "no libvirt daemon answers at {URI}, and starting one needs root"
        );
        let known = Command::new("id")
            .arg(QEMU_USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(
            known.success(),
            "user {QEMU_USER} is missing: install libvirt-daemon-system, or run scripts/setup.sh"
        );
        for dir in ["/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt"] {
            std::fs::create_dir_all(dir)?;
        }
        // QEMU's output goes through virtlogd, which systemd would start on demand.
        let mut daemon = Self { own: Vec::new() };
        let hide_kvm = matches!(accel, Accel::Tcg(_)) && Path::new("/dev/kvm").exists();
        for name in ["virtlogd", "libvirtd"] {
            let out = log.with_file_name(format!("{name}.log"));
            let mut cmd = if name == "libvirtd" && hide_kvm {
                // Its own mount namespace, where /dev/kvm is /dev/null (same PID: exec).
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind /dev/null /dev/kvm && exec libvirtd");
                c
            } else {
                Command::new(name)
            };
            let file = std::fs::File::create(&out)?;
            let child = cmd
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {name} (Debian's libvirt-daemon; scripts/setup.sh installs it)"
                    )
                })?;
            daemon.own.push(child);
        }
        let up =
            ambassador_tests::wait_until(Duration::from_secs(30), || virsh(&["version"]).is_ok());
        if !up {
            bail!(
                "libvirtd started but did not answer within 30 s; see {}",
                log.display()
            );
        }
        eprintln!(
            "[xtask] libvirt: started virtlogd and libvirtd (PIDs {:?}), stopped at the end",
            daemon.own.iter().map(Child::id).collect::<Vec<_>>()
        );
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // libvirtd first: it was started last.
        for child in self.own.iter_mut().rev() {
            // SAFETY: the PID of a child this process started and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let stopped = ambassador_tests::wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A directory storage pool (where Vagrant's box volumes and the VMs' disks go), defined for
/// this run and undefined when dropped; its files stay, so the box's volume is uploaded once.
pub struct Pool {
    name: String,
}

impl Pool {
    /// Defines and starts pool `name` at `dir` (replacing a leftover definition).
    pub fn new(name: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let pool = Self {
            name: name.to_owned(),
        };
        pool.remove();
        let dir = dir.to_str().context("pool path is not UTF-8")?;
        virsh(&["pool-define-as", name, "dir", "--target", dir])?;
        virsh(&["pool-start", name])?;
        Ok(pool)
    }

    fn remove(&self) {
        let _ = virsh(&["pool-destroy", &self.name]);
        let _ = virsh(&["pool-undefine", &self.name]);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The libvirt names (domains, networks) starting with `prefix`, of kind `what` (`list` or
/// `net-list`), for removing leftovers.
pub fn names(what: &str, prefix: &str) -> Vec<String> {
    virsh(&[what, "--all", "--name"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Removes every domain and network whose name starts with `prefix` (a leftover of an
/// interrupted run), with their disks in `pool_dir`.
pub fn sweep(prefix: &str, pool_dir: &Path) {
    for domain in names("list", prefix) {
        let _ = virsh(&["destroy", &domain]);
        let _ = virsh(&["undefine", &domain, "--nvram"]);
    }
    for net in names("net-list", prefix) {
        let _ = virsh(&["net-destroy", &net]);
        let _ = virsh(&["net-undefine", &net]);
    }
    // The VMs' own disks (the box's volume stays: it is the cache).
    if let Ok(entries) = std::fs::read_dir(pool_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && !name.contains("_vagrant_box_image_") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Where the pool keeps its files under the workspace's `target/`.
pub fn pool_dir(target: &Path) -> PathBuf {
    target.join("vagrant/pool")
}
