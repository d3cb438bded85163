//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a while.
//!
//! The targets are ordinary cargo-fuzz targets (`cargo fuzz run etcd_contract` works, with
//! AddressSanitizer, for long local runs). This task builds them itself with the coverage
//! instrumentation cargo-fuzz uses (`cargo fuzz build --dev --sanitizer none`), so neither CI
//! nor a fresh machine has to build cargo-fuzz first (about 3 minutes on 2 cores): the
//! targets parse with safe Rust, where a sanitizer adds little, and what is hunted is panics
//! and broken invariants.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, root, run};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 5] = [
    "etcd_contract",
    "config_toml",
    "docker_labels",
    "dns_query",
    "socks_handshake",
];

/// The instrumentation `cargo fuzz build` adds (cargo-fuzz 0.13, project.rs), minus a
/// sanitizer.
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Builds every target, then runs each for `seconds` (or only `only`).
pub fn run_all(seconds: u32, only: Option<&str>) -> Result<()> {
    if let Some(t) = only {
        if !TARGETS.contains(&t) {
            bail!(
                "no fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let target_dir = root().join("target/fuzz");
    println!("fuzz: building the targets with coverage instrumentation");
    // --target keeps RUSTFLAGS away from build scripts and proc macros, as cargo-fuzz does;
    // AYA_BUILD_SKIP: the parsers do not need the eBPF object.
    run(cargo()
        .args(["build", "--manifest-path", "fuzz/Cargo.toml", "--bins"])
        .args(["--target", TRIPLE])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("AYA_BUILD_SKIP", "1"))?;

    let mut failed = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus = target_dir.join("corpus").join(target);
        let artifacts = target_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus).context("creating the corpus directory")?;
        std::fs::create_dir_all(&artifacts).context("creating the artifacts directory")?;
        let seeds = root().join("fuzz/seeds").join(target);
        println!("fuzz: {target} for {seconds} s");
        let bin = target_dir.join(TRIPLE).join("debug").join(target);
        let status = Command::new(&bin)
            .arg(&corpus)
            .arg(&seeds)
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .status()
            .with_context(|| format!("starting {}", bin.display()))?;
        if !status.success() {
            failed.push(format!(
                "{target}: {status}; the input is in {} (reproduce: {} <file>)",
                artifacts.display(),
                bin.display()
            ));
        }
    }
    if !failed.is_empty() {
        bail!("fuzzing found failures:\n  {}", failed.join("\n  "));
    }
    println!("fuzz: no failure");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_declared_has_a_source_and_seeds() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} not in fuzz/Cargo.toml"
            );
            assert!(root().join(format!("fuzz/fuzz_targets/{t}.rs")).is_file());
            let seeds = std::fs::read_dir(root().join("fuzz/seeds").join(t));
            assert!(
                seeds.is_ok_and(|mut d| d.next().is_some()),
                "{t} has no seeds"
            );
        }
    }
}
