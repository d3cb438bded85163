//! `cargo xtask <task>`: the project's developer tasks. Each installs what it needs first.
//!
//! This crate builds with nothing but a Rust toolchain: everything that needs the packages
//! setup installs (`ambassador-user` and `etcd-client` want `protoc`, the eBPF build wants
//! the pinned nightly with rust-src, and bpf-linker) is built by `cargo` after setup has run and used
//! through a process: the `ambassador` binary, the `ambassador-bench` binary. Its own
//! dependencies are clap, anyhow, libc and the test harness (std, libc, serde_json, tempfile);
//! `tests/tests/front_door.rs` builds a fresh clone's xtask with protoc, bpf-linker and LLVM
//! hidden to keep it so.

mod demo;
mod fuzz;
mod step;
mod tally;
mod vm;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use ambassador_tests::{NO_SKIP_ENV, SKIP_LOG_ENV};
use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use step::step;
use tally::{recorded_skips, Tally, Totals};

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
    /// Set up, build, then run every test (a test that cannot run here, e.g. without root, is
    /// reported as skipped with its reason), then the kernel matrix in VMs (`kernels`).
    Test {
        /// Fail when any test cannot run here instead of reporting it as skipped (implied when
        /// the CI environment variable is set: CI runs as root with everything installed).
        #[arg(long)]
        no_skip: bool,
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
    /// Set up, build, then run the kernel matrix: each datapath's tests inside VMs (QEMU) on
    /// every kernel the README supports (Debian's 5.10, 6.1, 6.12), the image built from
    /// Debian's packages under target/vm/ (the table: target/vm/kernels.md); then a container
    /// moved between two VMs.
    Kernels {
        /// Run only this part.
        #[arg(long, value_enum)]
        only: Option<vm::Part>,
        /// Which kernels and tests of the matrix, and how many times.
        #[command(flatten)]
        select: vm::matrix::Selection,
    },
    /// The Vagrantfile's testbed on VMs with libvirt (KVM where the host has a usable one,
    /// QEMU's emulation otherwise): the box, built here from Debian's packages, and the seed
    /// experiment on h1, h2, the NAT router and h4.
    Vagrant {
        #[command(subcommand)]
        action: vm::VagrantAction,
    },
    /// The multi-host testbed (network namespaces; see tests/src/testbed.rs).
    Testbed {
        #[command(subcommand)]
        action: TestbedAction,
    },
    /// Build the project's container image offline: the root filesystem (target/image/rootfs),
    /// then `docker build` of the Dockerfile into the Docker engine given.
    Image {
        /// Docker engine to import into, e.g. unix:///var/run/docker.sock.
        #[arg(long)]
        docker: Option<String>,
        /// Also build the testbed's images (etcd, redis, busybox), as the Vagrantfile needs.
        #[arg(long)]
        testbed: bool,
    },
    /// Set up, build, then measure (results in target/bench/, the run's record in
    /// target/bench/run.json). The arguments go to `ambassador-bench`: `--quick` (a smoke run),
    /// `--only GROUP`, or `--report` (measure nothing: make BENCHMARKS.md's tables, verdicts and
    /// charts and the README's summary from the records in bench/results/; `--check` only
    /// compares). `cargo xtask bench -- --help` lists them.
    Bench {
        /// Arguments for ambassador-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the cargo-fuzz targets in fuzz/ (etcd keys and values, the TOML configuration,
    /// Docker labels, DNS queries) and run each for a while; a failure leaves its input under
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

/// What a whole `cargo xtask run` and `cargo xtask test` added to the disk on a fresh clone
/// here (builds, images, VMs, the box; 2026-12-05), with some room.
const DISK_NEEDED_GIB: f64 = 12.0;

/// Says how much disk is free where target/ lives, and warns when it is less than a whole run
/// needs: a full disk otherwise shows up much later as an odd failure (a docker import, an apt
/// install in the VM image's chroot).
fn disk_check() {
    let target = root().join("target");
    let _ = std::fs::create_dir_all(&target);
    let Ok(path) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: statvfs only writes the struct it is given; `path` is a valid C string.
    let free = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut st) == 0)
            .then(|| st.f_bavail as f64 * st.f_frsize as f64 / f64::from(1u32 << 30))
    };
    match free {
        Some(gib) if gib < DISK_NEEDED_GIB => eprintln!(
            "!!! disk: {gib:.1} GiB free for target/; a whole `cargo xtask run` and `cargo xtask test` need about {DISK_NEEDED_GIB:.0} GiB: expect \"no space left on device\" !!!"
        ),
        Some(gib) => println!("[xtask] disk: {gib:.1} GiB free for target/ (a whole run and test need about {DISK_NEEDED_GIB:.0} GiB)"),
        None => {}
    }
}

fn setup() -> Result<()> {
    disk_check();
    step(
        "setup: apt packages, the pinned nightly with rust-src, bpf-linker, bpffs (scripts/setup.sh)",
        step::SETUP,
        || run(Command::new("bash").arg(root().join("scripts/setup.sh"))),
    )
}

/// Set up, then build the release `ambassador` and `ambassador-bench`. Always both, in one
/// cargo invocation: features are unified over what one invocation builds, so building them
/// apart would build the shared crates twice (and `run`, `image` and `bench` would each
/// rebuild after the other).
fn release() -> Result<()> {
    setup()?;
    step(
        "build: the release binaries (the eBPF object embedded)",
        step::RELEASE,
        || {
            run(cargo()
                .args(["build", "--release"])
                .args(["-p", "ambassador-user", "--bin", "ambassador"])
                .args(["-p", "ambassador-bench", "--bin", "ambassador-bench"]))
        },
    )
}

fn release_bin() -> PathBuf {
    root().join("target/release/ambassador")
}

fn build() -> Result<()> {
    setup()?;
    step("build: every binary and test (debug)", step::DEBUG, || {
        run(cargo().args(["build", "--bins", "--tests"]))
    })
}

/// True when the CI environment variable says this is a CI run.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Runs `cargo test`, echoing its output, and ends with one total line over all test binaries
/// (see `tally`).
fn test(args: &[String], no_skip: bool) -> Result<()> {
    let no_skip = no_skip || in_ci();
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        eprintln!(
            "!!! not root: the privileged tests (kernel datapath, namespaces) will be SKIPPED !!!"
        );
    }
    let skip_log = root().join("target/test-skips.tsv");
    std::fs::create_dir_all(root().join("target"))?;
    std::fs::write(&skip_log, "").context("emptying target/test-skips.tsv")?;
    let mut cmd = cargo();
    cmd.arg("test")
        .args(args)
        .env(SKIP_LOG_ENV, &skip_log)
        .stdout(Stdio::piped());
    if no_skip {
        cmd.env(NO_SKIP_ENV, "1");
    }
    let mut child = cmd.spawn().context("starting cargo test")?;
    let mut tally = Tally::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        tally.line(&line);
    }
    let status = child.wait()?;
    // The kernel matrix, on a whole run only (arguments select tests of this machine's kernel).
    let mut matrix_skipped = None;
    let matrix = if !args.is_empty() {
        println!(
            "kernel matrix not run: cargo test was given arguments (`cargo xtask kernels` runs it)"
        );
        Ok(())
    } else if !is_root {
        matrix_skipped = Some("needs root (the VM image is built in a chroot)");
        Ok(())
    } else {
        step("test: the kernel matrix in VMs", step::KERNELS, || {
            vm::kernels(&mut tally, None, &vm::matrix::Selection::default())
        })
    };
    let skips = recorded_skips(
        &std::fs::read_to_string(&skip_log).context("reading target/test-skips.tsv")?,
    );
    for (t, reason) in &skips {
        println!("skipped: {t}: {reason}");
    }
    let Totals {
        passed,
        failed,
        mut skipped,
    } = tally.totals(skips.len());
    if let Some(reason) = matrix_skipped {
        // Not a libtest test, so not among those counted as passed.
        println!("skipped: kernel matrix and the move between VMs: {reason}");
        skipped += 1;
    }
    println!("total: {passed} passed, {failed} failed, {skipped} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    matrix?;
    if no_skip && skipped > 0 {
        bail!("{skipped} tests skipped, and skipping is not allowed here (--no-skip or CI)");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Test { args, no_skip } => {
            build()?;
            step("test: cargo test, every package", step::TEST, || {
                test(&args, no_skip)
            })
        }
        Task::Kernels { only, select } => {
            build()?;
            let mut tally = Tally::default();
            step("kernels: the kernel matrix in VMs", step::KERNELS, || {
                vm::kernels(&mut tally, only, &select)
            })
        }
        Task::Run { keep } => {
            release()?;
            step(
                "run: the seed experiment on the four-host testbed",
                step::DEMO,
                || demo::run(&release_bin(), TESTBED, keep),
            )
        }
        Task::Vagrant { action } => {
            release()?;
            vm::vagrant(action, &release_bin())
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
            let mut images = vec![image::ambassador(&release_bin(), &root())];
            println!(
                "root filesystem of {}: {}",
                image::AMBASSADOR,
                root().join(image::ROOTFS_IN_CONTEXT).display()
            );
            if testbed {
                images.extend([image::etcd(&dir), image::redis(&dir), image::busybox(&dir)]);
            }
            let Some(socket) = docker else {
                println!(
                    "no --docker given: load them with `docker build -t {} .` (the Dockerfile) and `docker import`",
                    image::AMBASSADOR
                );
                return Ok(());
            };
            for img in &images {
                img.import(&socket);
                println!(
                    "{} loaded into {socket} (from {})",
                    img.tag,
                    img.path().display()
                );
            }
            let size = Command::new("/usr/bin/docker")
                .args([
                    "-H",
                    &socket,
                    "image",
                    "inspect",
                    "-f",
                    "{{.Size}}",
                    image::AMBASSADOR,
                ])
                .output()
                .context("docker image inspect")?;
            let bytes: u64 = String::from_utf8_lossy(&size.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            println!("{}: {:.1} MB", image::AMBASSADOR, bytes as f64 / 1e6);
            Ok(())
        }
        Task::Bench { args } => {
            release()?;
            run(Command::new(root().join("target/release/ambassador-bench"))
                .arg("--bin")
                .arg(release_bin())
                .args(args))
        }
        Task::Fuzz { seconds, target } => {
            setup()?;
            fuzz::run_all(seconds, target.as_deref())
        }
    }
}
