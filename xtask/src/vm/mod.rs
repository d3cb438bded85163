//! Tests on other kernels, in VMs: an image built from Debian's packages ([`image`]), QEMU
//! ([`qemu`]), and the kernel matrix run on it ([`matrix`]).

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

use crate::{cargo, root, tally::Tally};

/// Runs the kernel matrix on the binaries already built (`cargo xtask build`), prints its
/// table (also written to `target/vm/kernels.md`) and fails unless every test passed on every
/// kernel. What libtest reported in the VMs is added to `tally`.
pub fn kernels(tally: &mut Tally) -> Result<()> {
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
