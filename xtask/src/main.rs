//! `cargo xtask <task>`: the project's developer tasks. Each sets up what it needs first.

mod demo;

use std::{path::PathBuf, process::Command};

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
    /// Set up, build, then play the demo: clients reach moving backends through a VIP.
    Run,
}

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

fn build() -> Result<()> {
    setup()?;
    run(cargo().args(["build", "--bins"]))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Test { args } => {
            build()?;
            run(cargo().arg("test").args(&args))
        }
        Task::Run => {
            build()?;
            demo::run(&root().join("target/debug/ambassador"))
        }
    }
}
