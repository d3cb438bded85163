//! The Vagrantfile's testbed on libvirt: a box made here from the VM image (no download), the
//! project's images from this machine's build, `vagrant up`, and `vagrant destroy` however
//! the run ends. Everything Vagrant keeps goes under `target/vagrant/` (its home, the machines'
//! state, libvirt's pool), and every libvirt name starts with [`PREFIX`].

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{ensure, Context as _, Result};

use super::{
    image::Image,
    libvirt::{self, Daemon, Pool},
    qemu::Accel,
};

/// The box's name in the Vagrantfile.
const BOX: &str = "ambassador/debian12";
/// The kernel the box boots: Debian 12's own.
const KERNEL_PREFIX: &str = "6.1.";
/// Names of the run's libvirt domains, networks and pool start with it.
pub const PREFIX: &str = "ambassador-vt";
/// The VMs `cargo xtask vagrant run` brings up: the smallest topology that still shows a move
/// between hosts and into the NAT'd cloud (h3 is a second LAN host like h2; five emulated VMs
/// on two cores are slower, and no more telling).
pub const HOSTS: [&str; 4] = ["h1", "h2", "nat", "h4"];

/// Set by SIGINT or SIGTERM once [`on_interrupt`] ran.
static INTERRUPTED: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// From now on SIGINT and SIGTERM do not end this process but set a flag that
/// [`interrupted`] reports, so the run stops at its next step and destroys the VMs on the way
/// out. Commands it runs get the signal from the terminal as usual (a handler is not
/// inherited across exec).
pub fn on_interrupt() -> Result<()> {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag))?;
    }
    Ok(())
}

/// Fails once the run was interrupted.
pub fn interrupted() -> Result<()> {
    let hit = INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed));
    ensure!(!hit, "interrupted: the VMs are being destroyed");
    Ok(())
}

/// Where it all goes.
pub fn dir(target: &Path) -> PathBuf {
    target.join("vagrant")
}

/// Builds the box from `image` unless the one there was built from it: a directory in
/// Vagrant's layout under `target/vagrant/home/boxes/` (so no `vagrant box add` copy), holding
/// the disk as compressed qcow2, the 6.1 kernel and initrd it boots directly, and a
/// Vagrantfile that says so. Its version is the image's build time, so libvirt's cached volume
/// of an older box is never taken for it.
pub fn ensure_box(image: &Image, target: &Path) -> Result<String> {
    let disk = image.disk();
    let built = std::fs::metadata(&disk)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let version = format!("1.{built}");
    let boxes = dir(target)
        .join("home/boxes")
        .join(BOX.replace('/', "-VAGRANTSLASH-"));
    let at = boxes.join(&version).join("libvirt");
    if at.join("metadata.json").exists() {
        return Ok(version);
    }
    let kernel = image
        .kernels()
        .iter()
        .find(|k| k.starts_with(KERNEL_PREFIX))
        .context("the image has no 6.1 kernel")?;
    let _ = std::fs::remove_dir_all(&boxes);
    std::fs::create_dir_all(&at)?;
    // Compressed (zstd: 1.6 GiB to about 0.6, in about 7 s here), since libvirt's pool keeps a
    // second copy; QEMU reads compressed clusters as they are and writes the VMs' own changes
    // to their overlays.
    crate::run(
        Command::new("qemu-img")
            .args([
                "convert",
                "-c",
                "-o",
                "compression_type=zstd",
                "-f",
                "raw",
                "-O",
                "qcow2",
            ])
            .arg(&disk)
            .arg(at.join("box.img")),
    )
    .context("qemu-img (Debian's qemu-utils; scripts/setup.sh installs it)")?;
    std::fs::copy(image.kernel(kernel), at.join("vmlinuz"))?;
    std::fs::copy(image.initrd(kernel), at.join("initrd.img"))?;
    std::fs::write(
        at.join("Vagrantfile"),
        format!(
            r#"# The box's own settings: it boots its kernel directly (the disk has no boot loader).
Vagrant.configure("2") do |config|
  config.vm.provider "libvirt" do |lv|
    lv.kernel = "{dir}/vmlinuz"
    lv.initrd = "{dir}/initrd.img"
    lv.cmd_line = "{cmdline}"
  end
end
"#,
            dir = at.display(),
            cmdline = super::image::CMDLINE,
        ),
    )?;
    // Last: its presence says the box is whole.
    let size_gb = std::fs::metadata(&disk)?.len().div_ceil(1 << 30);
    std::fs::write(
        at.join("metadata.json"),
        format!(r#"{{"provider": "libvirt", "format": "qcow2", "virtual_size": {size_gb}}}"#),
    )?;
    Ok(version)
}

/// Builds the images the VMs load (`load.sh` beside them, which the Vagrantfile runs): the
/// project's from `bin`, and the testbed's, as the namespace testbed makes them.
pub fn images(bin: &Path, target: &Path) -> Result<()> {
    use ambassador_tests::image;
    let out = dir(target).join("images");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("ambassador"))?;
    let all = [
        image::ambassador(bin, &out.join("ambassador")),
        image::etcd(&out),
        image::redis(&out),
        image::busybox(&out),
    ];
    let root = crate::root();
    let mut script = String::from("#!/bin/sh\n# Written by `cargo xtask vagrant`: loads the images into this VM's engine.\nset -eu\n");
    for i in &all {
        script.push_str(&i.load_command(&root, Path::new("/vagrant")));
        script.push('\n');
    }
    std::fs::write(out.join("load.sh"), script)?;
    Ok(())
}

/// `vagrant` with the testbed's environment.
pub struct Vagrant {
    root: PathBuf,
    state: PathBuf,
    accel: &'static str,
}

impl Vagrant {
    /// For the Vagrantfile at `root`, its state under `target`.
    pub fn new(root: &Path, target: &Path, accel: &Accel) -> Self {
        Self {
            root: root.to_owned(),
            state: dir(target),
            accel: match accel {
                Accel::Kvm => "kvm",
                Accel::Tcg(_) => "tcg",
            },
        }
    }

    /// The command, ready for arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("vagrant");
        cmd.current_dir(&self.root)
            .env("VAGRANT_HOME", self.state.join("home"))
            .env("VAGRANT_DOTFILE_PATH", self.state.join("machines"))
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
            .env("AMBASSADOR_VM_ACCEL", self.accel)
            .env("AMBASSADOR_VAGRANT_PREFIX", PREFIX)
            .env("AMBASSADOR_VAGRANT_POOL", PREFIX)
            .stdin(Stdio::null());
        cmd
    }

    /// `vagrant ARGS`, its output going to `log` (appended); fails with the log's end.
    pub fn run(&self, args: &[&str], log: &Path) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let status = self
            .command()
            .args(args)
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("running vagrant (Debian's vagrant and vagrant-libvirt; scripts/setup.sh installs them)")?;
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!(
                "vagrant {} failed ({status}); {} ends:\n{}",
                args.join(" "),
                log.display(),
                super::qemu::tail(&text, 25)
            );
        }
        Ok(())
    }

    /// `vagrant ssh-config` of `hosts`, written to `path` for plain `ssh -F`.
    pub fn ssh_config(&self, hosts: &[&str], path: &Path) -> Result<()> {
        let out = self
            .command()
            .arg("ssh-config")
            .args(hosts)
            .stderr(Stdio::inherit())
            .output()?;
        ensure!(out.status.success(), "vagrant ssh-config failed");
        std::fs::write(path, out.stdout)?;
        Ok(())
    }
}

/// The testbed while it is up: dropping it destroys the VMs and removes what libvirt kept of
/// them, then undefines the pool and stops a libvirt daemon this run started.
pub struct Up {
    vagrant: Vagrant,
    log: PathBuf,
    pool_dir: PathBuf,
    // Dropped after the VMs are gone, in this order.
    _pool: Pool,
    _daemon: Daemon,
}

impl Up {
    /// Starts libvirt (if need be), removes leftovers of an earlier run, and brings `hosts` up.
    pub fn new(vagrant: Vagrant, target: &Path, hosts: &[&str], accel: &Accel) -> Result<Self> {
        let state = dir(target);
        std::fs::create_dir_all(&state)?;
        let daemon = Daemon::ensure(&state.join("libvirtd.log"), accel)?;
        let pool_dir = libvirt::pool_dir(target);
        libvirt::sweep(PREFIX, &pool_dir);
        let _ = std::fs::remove_dir_all(state.join("machines"));
        let pool = Pool::new(PREFIX, &pool_dir)?;
        let log = state.join("vagrant.log");
        let _ = std::fs::remove_file(&log);
        let up = Self {
            vagrant,
            log,
            pool_dir,
            _pool: pool,
            _daemon: daemon,
        };
        let mut args = vec!["up", "--provider", "libvirt"];
        args.extend_from_slice(hosts);
        up.vagrant.run(&args, &up.log)?;
        interrupted()?;
        Ok(up)
    }

    /// Vagrant, for more commands.
    pub fn vagrant(&self) -> &Vagrant {
        &self.vagrant
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Err(e) = self.vagrant.run(&["destroy", "-f"], &self.log) {
            eprintln!("[xtask] vagrant destroy: {e}");
        }
        libvirt::sweep(PREFIX, &self.pool_dir);
    }
}
