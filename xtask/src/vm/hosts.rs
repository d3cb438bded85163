//! Two hosts in VMs: a client on one reaches a container on the other through a frontend, and
//! the container moves between them while the client fetches every 100 ms: 0 failed fetches.
//! Each VM has a kernel, a bpffs, a Docker engine and sysctls of its own, unlike the namespace
//! testbed. The hosts' link is a QEMU socket link between the two VMs over this machine's
//! loopback: nothing reaches any other network. What each host does is `scripts/vm-move.sh`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use ambassador_tests::image::Rootfs;
use anyhow::{bail, Context as _, Result};

use super::{
    image::Image,
    qemu::{tail, Accel, Finished, Share, Vm},
};

/// The kernel the hosts boot: Debian 12's own.
const KERNEL_PREFIX: &str = "6.1.";
/// Longest the whole test may take under emulation.
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The backend's and the client's image: busybox with a page naming its host, served by
/// httpd, which drains for 1 s after the stop signal (the register removes the endpoint at
/// the signal, so requests already on their way still get an answer).
const WEB: &str = r#"#!/bin/sh
mkdir -p /www
echo "$HOST" > /www/index.html
httpd -f -p 80 -h /www &
pid=$!
trap 'sleep 1; kill $pid' TERM
wait $pid
wait $pid
"#;

/// What the client saw.
#[derive(Debug, PartialEq, Eq)]
pub struct Moved {
    /// Fetches answered by h1's backend (after the move).
    pub ok_h1: u64,
    /// Fetches answered by h2's backend (before it).
    pub ok_h2: u64,
    /// Fetches that failed.
    pub failed: u64,
    /// From the first boot to the end.
    pub took: Duration,
}

/// Boots h1 and h2, runs the move, and returns what the client saw; fails if a host's script
/// failed or the client saw nothing of either backend.
pub fn run(image: &Image, accel: &Accel, target: &Path) -> Result<Moved> {
    let kernel = image
        .kernels()
        .iter()
        .find(|k| k.starts_with(KERNEL_PREFIX))
        .context("the image has no 6.1 kernel")?;
    let dir = target.join("vm/move");
    let web_tar = dir.join("web.tar");
    std::fs::create_dir_all(&dir)?;
    Rootfs::new()
        .busybox(&[
            "sh", "httpd", "nc", "tail", "sleep", "mkdir", "echo", "kill",
        ])
        .file("/bin/web", WEB, 0o755)
        .tar(&web_tar);
    // A free port of this machine's loopback for the link: h1 listens, h2 connects.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let amb = target.join("debug/ambassador");
    let script = std::fs::read_to_string(crate::root().join("scripts/vm-move.sh"))?;
    let mut vms = Vec::new();
    for (n, role) in ["h1", "h2"].into_iter().enumerate() {
        let job = dir.join(role);
        std::fs::create_dir_all(&job)?;
        std::fs::write(job.join("vm-move.sh"), &script)?;
        std::fs::copy(&web_tar, job.join("web.tar"))?;
        std::fs::write(
            job.join("run.sh"),
            format!(
                "{}\nsh ./vm-move.sh {role} '{}' /job/web.tar\n",
                Share::build(target).mount_command(),
                amb.display()
            ),
        )?;
        let side = if n == 0 { "listen" } else { "connect" };
        let nic = [
            "-netdev".to_owned(),
            format!("socket,id=lan,{side}=127.0.0.1:{port}"),
            "-device".to_owned(),
            format!("virtio-net-pci,netdev=lan,mac=52:54:00:21:00:0{}", n + 1),
        ];
        eprintln!("[xtask] move between VMs: booting {role} (kernel {kernel})");
        vms.push((
            role,
            job.clone(),
            Vm::boot(image, kernel, accel, &job, &[Share::build(target)], &nic)?,
        ));
        // h1 listens before h2 connects.
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut finished: Vec<(&str, PathBuf, Finished)> = Vec::new();
    for (role, job, vm) in vms {
        let f = vm.wait(TIMEOUT).with_context(|| format!("host {role}"))?;
        finished.push((role, job, f));
    }
    for (role, job, f) in &finished {
        if f.rc != 0 {
            bail!(
                "host {role}'s part failed (exit {}): its output is {}:\n{}",
                f.rc,
                job.join("output").display(),
                tail(&f.output, 40)
            );
        }
    }
    let (_, _, h1) = &finished[0];
    let moved = parse(&h1.output, h1.took)
        .with_context(|| format!("no RESULT line from h1:\n{}", tail(&h1.output, 40)))?;
    if moved.ok_h1 == 0 || moved.ok_h2 == 0 {
        bail!(
            "the client did not reach both backends ({moved:?}):\n{}",
            tail(&h1.output, 40)
        );
    }
    Ok(moved)
}

/// h1's `RESULT ok_h1=N ok_h2=N failed=N` line.
fn parse(output: &str, took: Duration) -> Option<Moved> {
    let line = output.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(Moved {
        ok_h1: field("ok_h1")?,
        ok_h2: field("ok_h2")?,
        failed: field("failed")?,
        took,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_is_read_whole_or_not_at_all() {
        let out = "[h1 3.2 s] link up\nRESULT ok_h1=120 ok_h2=95 failed=0\n";
        let m = parse(out, Duration::ZERO).unwrap();
        assert_eq!((m.ok_h1, m.ok_h2, m.failed), (120, 95, 0));
        assert_eq!(parse("RESULT ok_h1=1 failed=0", Duration::ZERO), None);
        assert_eq!(parse("no result", Duration::ZERO), None);
    }
}
