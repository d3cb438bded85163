//! Tests on other kernels and on hosts of their own, in VMs: an image built from Debian's
//! packages ([`image`]), QEMU ([`qemu`]), the kernel matrix run on it ([`matrix`]), and a
//! container moved between two VMs ([`hosts`]).

pub mod hosts;
pub mod image;
pub mod matrix;
pub mod qemu;

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
}

/// Runs the kernel matrix on the binaries already built (`cargo xtask build`), prints its
/// table (also written to `target/vm/kernels.md`), then the move between two VMs; fails unless
/// every test passed on every kernel and the move lost no request. What libtest reported in
/// the VMs, and the move, are added to `tally`.
pub fn kernels(tally: &mut Tally, only: Option<Part>) -> Result<()> {
    let image = image::Image::ensure(&root())?;
    let accel = qemu::Accel::detect();
    let exes = test_executables()?;
    let parallel = std::thread::available_parallelism().map_or(1, usize::from);
    eprintln!(
        "[xtask] kernel matrix: {} on Debian 12, {parallel} VM(s) at a time, under {}",
        image.kernels().join(", "),
        accel.describe()
    );
    let target = root().join("target");
    let matrix = if only.is_none_or(|p| p == Part::Matrix) {
        let runs = matrix::run(&image, &accel, &target, &exes, parallel)?;
        for r in &runs {
            if let Ok(f) = &r.finished {
                f.output.lines().for_each(|l| tally.line(l));
            }
        }
        let table = matrix::report(&runs, &accel);
        println!("{table}");
        std::fs::write(target.join("vm/kernels.md"), &table)?;
        matrix::check(&runs)
    } else {
        Ok(())
    };
    if only == Some(Part::Matrix) {
        return matrix;
    }
    let moved = step::step(
        "kernels: a container moved between two VMs while a client fetches every 100 ms",
        step::VM_MOVE,
        || hosts::run(&image, &accel, &target),
    );
    let moved = moved.and_then(|m| {
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
    });
    tally.record(moved.is_ok());
    matrix.and(moved)
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
