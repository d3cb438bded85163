//! One VM under QEMU, as a test runner: it boots one of the image's kernels, runs the job the
//! host shares with it (`run.sh` in a 9p folder; the image's `ambassador-job` unit runs it and
//! writes `output` and `rc` beside it), and powers off. It has no network card at all, so
//! nothing in it reaches anything outside this machine. Dropping a [`Vm`] ends its QEMU (by
//! PID), so a failed or interrupted run leaves nothing running.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::image::Image;

/// How the VMs' CPUs are provided.
#[derive(Clone, Debug)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's own emulation (TCG), with the reason KVM is not used.
    Tcg(String),
}

impl Accel {
    /// KVM where the host has a usable one, TCG otherwise. `AMBASSADOR_VM_ACCEL=kvm|tcg`
    /// overrides the choice.
    pub fn detect() -> Self {
        match std::env::var("AMBASSADOR_VM_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg("AMBASSADOR_VM_ACCEL=tcg".into()),
            _ => {}
        }
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return Accel::Tcg("no usable /dev/kvm".into());
        }
        // A nested PVM (the kvm_pvm module) runs only guest kernels built for it: a Debian
        // kernel hangs right after the boot loader.
        if Path::new("/sys/module/kvm_pvm").exists() {
            return Accel::Tcg(
                "/dev/kvm is a nested PVM, which runs only guest kernels built for it".into(),
            );
        }
        Accel::Kvm
    }

    /// How the choice is said.
    pub fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM".into(),
            Accel::Tcg(why) => format!("QEMU's emulation (TCG; {why})"),
        }
    }

    fn args(&self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg(_) => &["-accel", "tcg"],
        }
    }
}

/// A folder of this machine shared with the VM (9p).
pub struct Share {
    /// The mount tag the guest mounts it by.
    pub tag: &'static str,
    /// The folder here.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

impl Share {
    /// The build (`target/`), shared read-only and mounted by the job at the same path, so the
    /// test binaries' compiled-in paths hold in the VM.
    pub fn build(target: &Path) -> Self {
        Self {
            tag: "target",
            path: target.to_owned(),
            read_only: true,
        }
    }

    /// The guest's command that mounts it at its path here (exit 90 when it cannot).
    pub fn mount_command(&self) -> String {
        let at = self.path.display();
        let ro = if self.read_only { ",ro" } else { "" };
        format!(
            "mkdir -p '{at}' && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000{ro} {} '{at}' || exit 90",
            self.tag
        )
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running VM.
pub struct Vm {
    child: Child,
    job: PathBuf,
    started: Instant,
}

impl Vm {
    /// Boots `kernel` (a version from [`Image::kernels`]) as a test runner (`ambassador.job`
    /// on its command line) on a throwaway copy of the image's disk (writes never reach the
    /// image), with `job` shared as `job` and `shares` beside it,
    /// and QEMU's `extra` arguments (network devices: it has none otherwise; the first is
    /// `eth0`). The guest's console goes to `job/console.log`.
    pub fn boot(
        image: &Image,
        kernel: &str,
        accel: &Accel,
        job: &Path,
        shares: &[Share],
        extra: &[String],
    ) -> Result<Self> {
        for stale in ["rc", "output", "console.log"] {
            let _ = std::fs::remove_file(job.join(stale));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35", "-m", "2048", "-smp", "1"])
            .args(accel.args())
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-nic", "none"])
            .arg("-serial")
            .arg(format!("file:{}", job.join("console.log").display()))
            .arg("-kernel")
            .arg(image.kernel(kernel))
            .arg("-initrd")
            .arg(image.initrd(kernel))
            .arg("-append")
            .arg(format!("{} quiet ambassador.job", super::image::CMDLINE))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,snapshot=on",
                image.disk().display()
            ));
        let job_share = Share {
            tag: "job",
            path: job.to_owned(),
            read_only: false,
        };
        for s in std::iter::once(&job_share).chain(shares) {
            cmd.arg("-virtfs").arg(format!(
                "local,path={},mount_tag={},security_model=none{}",
                s.path.display(),
                s.tag,
                if s.read_only { ",readonly=on" } else { "" }
            ));
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64 (Debian's qemu-system-x86; scripts/setup.sh installs it)")?;
        Ok(Self {
            child,
            job: job.to_owned(),
            started: Instant::now(),
        })
    }

    /// Waits until the job has run and the VM has powered off; the job's exit code and output.
    pub fn wait(mut self, timeout: Duration) -> Result<Finished> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let rc = std::fs::read_to_string(self.job.join("rc")).ok();
                let output = std::fs::read_to_string(self.job.join("output")).unwrap_or_default();
                let Some(rc) = rc.and_then(|s| s.trim().parse().ok()) else {
                    let console = self.job.join("console.log");
                    let text = std::fs::read_to_string(&console).unwrap_or_default();
                    bail!(
                        "the VM stopped ({status}) before its job ended{}; the console ({}) ends: {}",
                        if err.trim().is_empty() { String::new() } else { format!(": {}", err.trim()) },
                        console.display(),
                        tail(&text, 5).replace('\n', " / ")
                    );
                };
                return Ok(Finished {
                    rc,
                    output,
                    took: self.started.elapsed(),
                });
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "the VM did not finish within {} s; console: {}, output so far: {}",
                    timeout.as_secs(),
                    self.job.join("console.log").display(),
                    self.job.join("output").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A job that ran to its end.
pub struct Finished {
    /// `run.sh`'s exit code.
    pub rc: i32,
    /// What it printed.
    pub output: String,
    /// From boot to power-off.
    pub took: Duration,
}
