//! The VMs' image: built by `scripts/vm-image.sh` from Debian's packages only (mmdebstrap),
//! kept under `target/vm/image/`, and rebuilt only when the script that makes it changes (a
//! copy of the script it was built from is kept beside it and compared).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::step;

/// Where the image is kept, under the workspace's `target/`.
const DIR: &str = "target/vm/image";
/// The copy of the script the image was built from.
const BUILT_FROM: &str = "built-from.sh";
/// The kernel command line the image boots with (its disk has no boot loader). A test runner
/// adds `ambassador.job`; without it the image is a Vagrant box's host.
pub const CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0";

/// A built image: a raw ext4 disk, and the kernels (each with its initrd) it can boot.
pub struct Image {
    dir: PathBuf,
    kernels: Vec<String>,
}

impl Image {
    /// The image, built first when there is none or its script changed.
    pub fn ensure(root: &Path) -> Result<Self> {
        let script = root.join("scripts/vm-image.sh");
        let wanted = std::fs::read(&script).with_context(|| format!("reading {script:?}"))?;
        let dir = root.join(DIR);
        let built = std::fs::read(dir.join(BUILT_FROM)).ok();
        if built.as_deref() != Some(&wanted[..]) {
            let why = if built.is_some() {
                "scripts/vm-image.sh changed"
            } else {
                "none built yet"
            };
            step::step(
                &format!("vm image: Debian 12 with kernels 5.10, 6.1 and 6.12, from Debian's packages ({why})"),
                step::VM_IMAGE,
                || build(&script, &dir, &wanted),
            )?;
        }
        let kernels = std::fs::read_to_string(dir.join("kernels"))
            .context("reading the image's kernel list")?
            .lines()
            .map(str::to_owned)
            .collect();
        Ok(Self { dir, kernels })
    }

    /// The kernels it boots (Debian's versions, e.g. `5.10.0-32-amd64`), oldest first.
    pub fn kernels(&self) -> &[String] {
        &self.kernels
    }

    /// The disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("rootfs.img")
    }

    /// `kernel`'s image.
    pub fn kernel(&self, kernel: &str) -> PathBuf {
        self.dir.join(format!("boot/vmlinuz-{kernel}"))
    }

    /// `kernel`'s initrd.
    pub fn initrd(&self, kernel: &str) -> PathBuf {
        self.dir.join(format!("boot/initrd.img-{kernel}"))
    }
}

/// Builds into a fresh folder beside `dir`, then puts it in place, so an interrupted build
/// never leaves a half image that looks whole.
fn build(script: &Path, dir: &Path, contents: &[u8]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("building the VM image needs root (mmdebstrap installs packages into a chroot)");
    }
    let fresh = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&fresh);
    crate::run(Command::new("bash").arg(script).arg(&fresh))?;
    std::fs::write(fresh.join(BUILT_FROM), contents)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&fresh, dir).with_context(|| format!("moving {fresh:?} to {dir:?}"))?;
    Ok(())
}
