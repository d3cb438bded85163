//! `cargo xtask <task>`: the project's developer tasks. Each sets up what it needs first.

mod bench;
mod bench_datapath;
mod bench_scale;
mod chart;
mod demo;
mod fuzz;
mod stats;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, rust-src, bpf-linker, bpffs).
    Setup,
    /// Set up, then build every binary (the eBPF object is embedded in `ambassador`).
    Build,
    /// Set up, build, then run every test (privileged ones need root and say so otherwise).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, then play the seed experiment on the multi-host testbed.
    Run {
        /// Leave the testbed up afterwards (remove it with `cargo xtask testbed down`).
        #[arg(long)]
        keep: bool,
    },
    /// The multi-host testbed (network namespaces; see tests/src/testbed.rs).
    Testbed {
        #[command(subcommand)]
        action: TestbedAction,
    },
    /// Build the project's container image offline (target/image/ambassador.tar), and import it
    /// into a Docker engine when one is given.
    Image {
        /// Docker engine to import into, e.g. unix:///var/run/docker.sock.
        #[arg(long)]
        docker: Option<String>,
        /// Also build the testbed's images (etcd, redis, busybox), as the Vagrantfile needs.
        #[arg(long)]
        testbed: bool,
    },
    /// Set up, build, then measure (results in target/bench/).
    Bench {
        /// Fewer repetitions: a smoke run of every measurement.
        #[arg(long)]
        quick: bool,
        /// Run only one group.
        #[arg(long, value_enum)]
        only: Option<bench::Only>,
    },
    /// Build the cargo-fuzz targets in fuzz/ (etcd keys and values, the TOML configuration,
    /// Docker labels) and run each for a while; a failure leaves its input under
    /// target/fuzz/artifacts/.
    Fuzz {
        /// How long to run each target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
        seconds: u32,
        /// Run only this target.
        #[arg(long)]
        target: Option<String>,
    },
}

#[derive(Subcommand)]
enum TestbedAction {
    /// Build it (removing any leftover first) and leave it running.
    Up {
        /// Registers' lease TTL in seconds.
        #[arg(long, default_value_t = 3)]
        ttl: u32,
    },
    /// Remove everything it made (works after a crash too).
    Down,
    /// Show the hosts and their containers.
    Status,
}

/// Name prefix of the testbed that `cargo xtask testbed` and `cargo xtask run` manage.
const TESTBED: &str = "ambtb";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

/// Set up, then build the release binaries.
fn release() -> Result<()> {
    setup()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "ambassador-user",
        "--bin",
        "ambassador",
    ]))
}

fn release_bin() -> PathBuf {
    root().join("target/release/ambassador")
}

fn build() -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--bins"]))
}

/// Runs `cargo test`, echoing its output, and ends with one total line over all test binaries.
fn test(args: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("!!! not root: the privileged tests (kernel datapath, namespaces) will SKIP !!!");
    }
    let mut child = cargo()
        .arg("test")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .split_whitespace()
                            .last()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("total: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Test { args } => {
            build()?;
            test(&args)
        }
        Task::Run { keep } => {
            release()?;
            demo::run(&release_bin(), TESTBED, keep)
        }
        Task::Testbed { action } => match action {
            TestbedAction::Up { ttl } => {
                release()?;
                ambassador_tests::testbed::up(TESTBED, &release_bin(), ttl, &|m| println!("  {m}"));
                print!("{}", ambassador_tests::testbed::status(TESTBED));
                println!("explore: ip netns exec {TESTBED}-h1 target/release/ambassador status --pin-path /sys/fs/bpf/{TESTBED}-h1");
                Ok(())
            }
            TestbedAction::Down => {
                ambassador_tests::testbed::down(TESTBED);
                println!("testbed {TESTBED} removed");
                Ok(())
            }
            TestbedAction::Status => {
                print!("{}", ambassador_tests::testbed::status(TESTBED));
                Ok(())
            }
        },
        Task::Image { docker, testbed } => {
            use ambassador_tests::image;
            release()?;
            let dir = root().join("target/image");
            let mut images = vec![image::ambassador(&release_bin(), &dir)];
            if testbed {
                images.extend([image::etcd(&dir), image::redis(&dir), image::busybox(&dir)]);
            }
            for img in &images {
                println!("built {} ({})", img.tag, img.tar.display());
                if let Some(socket) = &docker {
                    img.import(socket);
                    println!("  imported into {socket}");
                }
            }
            Ok(())
        }
        Task::Bench { quick, only } => {
            release()?;
            bench::run(&release_bin(), quick, only)
        }
        Task::Fuzz { seconds, target } => fuzz::run_all(seconds, target.as_deref()),
    }
}
