//! Tests on other kernels and on hosts of their own, in VMs: an image built from Debian's
//! packages ([`image`]), QEMU ([`qemu`]), the kernel matrix run on it ([`matrix`]), and a
//! container moved between two VMs ([`hosts`]).

pub mod hosts;
pub mod image;
pub mod libvirt;
pub mod matrix;
pub mod qemu;
pub mod rows;
pub mod seed;
pub mod vagrant;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
};

use anyhow::{Context as _, Result};

use crate::{cargo, root, step, tally::Tally};

/// A part of [`kernels`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The kernel matrix.
    Matrix,
    /// The move between two VMs.
    Move,
    /// The Vagrant testbed (`cargo xtask vagrant run`).
    Vagrant,
}

/// Runs the kernel matrix on the binaries already built (`cargo xtask build`), prints its
/// table (also written to `target/vm/kernels.md`), then the move between two VMs, then the
/// Vagrant testbed's seed experiment; fails unless every test passed on every kernel and
/// neither the move nor the experiment lost a request. What libtest reported in the VMs, the
/// move and the experiment are added to `tally`.
pub fn kernels(tally: &mut Tally, only: Option<Part>, sel: &matrix::Selection) -> Result<()> {
    let image = image::Image::ensure(&root())?;
    let accel = qemu::Accel::detect();
    let exes = test_executables()?;
    let parallel = std::thread::available_parallelism().map_or(1, usize::from);
    let chosen: Vec<&str> = sel
        .kernels(image.kernels())?
        .into_iter()
        .map(String::as_str)
        .collect();
    eprintln!(
        "[xtask] kernel matrix: {} on Debian 12, {parallel} VM(s) at a time, under {}",
        chosen.join(", "),
        accel.describe()
    );
    let target = root().join("target");
    let matrix = if only.is_none_or(|p| p == Part::Matrix) {
        let runs = matrix::run(&image, &accel, &target, &exes, parallel, sel)?;
        for r in &runs {
            if let Ok(f) = &r.finished {
                f.output.lines().for_each(|l| tally.line(l));
            }
        }
        let table = matrix::report(&runs, &accel, sel);
        println!("{table}");
        std::fs::write(target.join("vm/kernels.md"), &table)?;
        matrix::check(&runs, sel)
    } else {
        Ok(())
    };
    let moved = if only.is_none_or(|p| p == Part::Move) {
        let m = moved(&image, &accel, &target);
        tally.record(m.is_ok());
        m
    } else {
        Ok(())
    };
    let vagrant = if only.is_none_or(|p| p == Part::Vagrant) {
        // The release binary, as the demo runs: the debug one is ten times the size, and
        // every VM loads it under emulation.
        let v = crate::release()
            .and_then(|()| vagrant_on(&image, &accel, VagrantAction::Run, &crate::release_bin()));
        tally.record(v.is_ok());
        v
    } else {
        Ok(())
    };
    matrix.and(moved).and(vagrant)
}

/// The move between two VMs, its result printed.
fn moved(image: &image::Image, accel: &qemu::Accel, target: &std::path::Path) -> Result<()> {
    let moved = step::step(
        "kernels: a container moved between two VMs while a client fetches every 100 ms",
        step::VM_MOVE,
        || hosts::run(image, accel, target),
    );
    moved.and_then(|m| {
        println!(
            "move between VMs (kernel 6.1, {}): {} fetches from h2's backend, then {} from h1's; {} failed; {:.0} s from boot to end",
            accel.describe(),
            m.ok_h2,
            m.ok_h1,
            m.failed,
            m.took.as_secs_f64()
        );
        anyhow::ensure!(m.failed == 0, "{} fetches failed during the move", m.failed);
        Ok(())
    })
}

/// What `cargo xtask vagrant` does.
#[derive(Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum VagrantAction {
    /// Build the box (from the VM image, built first if need be) and the images the VMs load,
    /// under target/vagrant/; then `VAGRANT_HOME=target/vagrant/home vagrant up` works.
    Box,
    /// Build, bring h1, h2, the NAT router and h4 up, play the seed experiment on them, and
    /// destroy them (also after a failure or an interrupt).
    Run,
}

/// Runs `action` with the release binary `bin`.
pub fn vagrant(action: VagrantAction, bin: &std::path::Path) -> Result<()> {
    let image = image::Image::ensure(&root())?;
    vagrant_on(&image, &qemu::Accel::detect(), action, bin)
}

/// Runs `action` on `image`'s box, the VMs under `accel`.
fn vagrant_on(
    image: &image::Image,
    accel: &qemu::Accel,
    action: VagrantAction,
    bin: &std::path::Path,
) -> Result<()> {
    vagrant::on_interrupt()?;
    let root = root();
    let target = root.join("target");
    let version = step::step(
        "vagrant: the box, from the VM image",
        step::VAGRANT_BOX,
        || vagrant::ensure_box(image, &target),
    )?;
    vagrant::images(bin, &target)?;
    eprintln!(
        "[xtask] box ambassador/debian12 {version} in target/vagrant/home; the images in target/vagrant/images"
    );
    if action == VagrantAction::Box {
        return Ok(());
    }
    eprintln!("[xtask] vagrant: the VMs run under {}", accel.describe());
    let up = step::step(
        "vagrant: up h1, h2, nat, h4 (libvirt)",
        step::VAGRANT_UP,
        || {
            vagrant::Up::new(
                vagrant::Vagrant::new(&root, &target, accel),
                &target,
                &vagrant::HOSTS,
                accel,
            )
        },
    )?;
    let ssh = vagrant::dir(&target).join("ssh");
    std::fs::create_dir_all(&ssh)?;
    up.vagrant()
        .ssh_config(&vagrant::HOSTS, &ssh.join("config"))?;
    let hosts = seed::Hosts::new(&vagrant::HOSTS, &ssh.join("config"), &ssh)?;
    let report = step::step(
        "vagrant: the seed experiment on the VMs (a move h2 -> h4 behind the NAT, a hard failure)",
        step::VAGRANT_SEED,
        || seed::run(&hosts).map_err(|e| e.context(hosts.diagnose())),
    )?;
    let (text, pass) = seed::render(&report, &accel.describe());
    println!("{text}");
    drop(hosts);
    drop(up);
    anyhow::ensure!(
        pass,
        "requests failed during the move, or a host never answered"
    );
    Ok(())
}

/// The test binaries of `ambassador-tests` as built: file name of `tests/tests/` -> path.
fn test_executables() -> Result<BTreeMap<String, PathBuf>> {
    let mut child = cargo()
        .args([
            "test",
            "-p",
            "ambassador-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cargo test --no-run")?;
    let mut exes = BTreeMap::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            exes.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "cargo test --no-run failed: {status}");
    Ok(exes)
}
