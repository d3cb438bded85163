//! The README's commands start with `cargo xtask`, which installs what the rest needs: so
//! `xtask` itself must build on a machine that has nothing but a Rust toolchain. This builds a
//! copy of the working tree's `xtask`, from scratch, in a mount namespace where `protoc`,
//! `bpf-linker`, LLVM and the nightly toolchain are hidden. (Before the fix it failed at once:
//! `etcd-client`'s build script needs `protoc`.) And what setup installs must resolve in
//! apt's solver on a bare machine of the project's kind, whose qemu-utils is newer than
//! Debian 12's emulator accepts.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use ambassador_tests::{require_root, skip, temp_dir};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// What setup installs and `xtask` must build without; each hidden in the test's namespace.
fn hidden_paths() -> Vec<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let cargo_home = std::env::var_os("CARGO_HOME").map_or(home.join(".cargo"), PathBuf::from);
    let rustup_home = std::env::var_os("RUSTUP_HOME").map_or(home.join(".rustup"), PathBuf::from);
    let mut paths: Vec<PathBuf> = [
        "/usr/bin/protoc",
        "/usr/include/google/protobuf",
        "/usr/bin/llvm-config",
        "/usr/lib/llvm-22",
        "/usr/lib/llvm-14",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    paths.push(cargo_home.join("bin/bpf-linker"));
    if let Ok(dir) = std::fs::read_dir(rustup_home.join("toolchains")) {
        paths.extend(dir.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("nightly"))
        }));
    }
    paths.into_iter().filter(|p| p.exists()).collect()
}

/// The tracked and untracked-but-not-ignored files of the working tree: what a clone of this
/// change would hold.
fn copy_tree(to: &Path) {
    let root = repo_root();
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    for rel in out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let src = root.join(rel);
        if !src.is_file() {
            continue; // deleted in the working tree
        }
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
    }
}

#[test]
fn xtask_builds_with_only_a_rust_toolchain() {
    if !require_root("xtask_builds_with_only_a_rust_toolchain") {
        return;
    }
    if Command::new("git").arg("--version").output().is_err() {
        skip(
            "xtask_builds_with_only_a_rust_toolchain",
            "needs git to list the working tree",
        );
        return;
    }
    let hidden = hidden_paths();
    assert!(
        hidden.iter().any(|p| p.ends_with("protoc")),
        "protoc is not installed, so hiding it proves nothing: run `cargo xtask setup` first"
    );
    let work = temp_dir("front-door");
    let tree = work.path().join("tree");
    copy_tree(&tree);
    let empty_dir = work.path().join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();

    // Inside a private mount namespace: hide each path (an empty directory over a directory,
    // /dev/null over a file), prove the tools are gone, then build xtask from scratch.
    let mut script = String::from("set -eu\n");
    for p in &hidden {
        let over = if p.is_dir() {
            empty_dir.to_str().unwrap()
        } else {
            "/dev/null"
        };
        script += &format!("mount --bind {over} '{}'\n", p.display());
    }
    script += "if protoc --version >/dev/null 2>&1; then echo 'protoc still usable'; exit 90; fi\n";
    script += "if bpf-linker --version >/dev/null 2>&1; then echo 'bpf-linker still usable'; exit 90; fi\n";
    script += "if cargo +nightly --version >/dev/null 2>&1; then echo 'nightly still usable'; exit 90; fi\n";
    script += "cargo build --locked -p xtask --target-dir \"$TARGET\"\n";
    script += "\"$TARGET/debug/xtask\" --help\n";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .current_dir(&tree)
        .env("TARGET", work.path().join("target"))
        .env_remove("PROTOC")
        .env_remove("LLVM_PREFIX")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(90),
        "hiding failed, the test proves nothing: {text}"
    );
    assert!(
        out.status.success(),
        "xtask does not build with only a Rust toolchain (hidden: {hidden:?}):\n{text}"
    );
    assert!(
        text.contains("cargo xtask") && text.contains("setup"),
        "the built xtask did not print its help:\n{text}"
    );
}

fn version(v: &str) -> (u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The declared `rust-version` is inherited by every member and is no older than what the
/// dependency closure declares it needs (our own code is checked against it by clippy's
/// incompatible_msrv, which only looks at crates that declare one).
#[test]
fn the_declared_rust_version_is_inherited_and_true() {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("workspace.package.rust-version")
        .trim_matches('"');
    let mut needed = ("none".to_owned(), (0, 0));
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let rv = p["rust_version"].as_str();
        if members.contains(&p["id"].as_str().unwrap()) {
            assert_eq!(
                rv,
                Some(declared),
                "{name} does not inherit rust-version (add `rust-version.workspace = true`)"
            );
        } else if let Some(rv) = rv {
            if version(rv) > needed.1 {
                needed = (format!("{name} {}", p["version"]), version(rv));
            }
        }
    }
    assert!(
        version(declared) >= needed.1,
        "rust-version {declared} is older than {} needs ({}.{})",
        needed.0,
        needed.1 .0,
        needed.1 .1
    );
}

/// Runs this test binary's `xtask_builds_with_only_a_rust_toolchain` (which needs root) as an
/// unprivileged user, with `env`; returns whether it exited 0 and what it printed.
fn run_unprivileged(env: &[(&str, &str)]) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "xtask_builds_with_only_a_rust_toolchain",
            "--nocapture",
        ])
        .env_remove(ambassador_tests::NO_SKIP_ENV)
        .env_remove(ambassador_tests::SKIP_LOG_ENV)
        .envs(env.iter().copied())
        .output()
        .expect("setpriv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A privileged test run without root is recorded as skipped, with its reason, for `cargo
/// xtask test` to count as skipped rather than passed; where skipping is forbidden (CI), the
/// same test fails.
#[test]
fn a_test_that_cannot_run_is_recorded_as_skipped_or_fails_where_skips_are_forbidden() {
    if !require_root(
        "a_test_that_cannot_run_is_recorded_as_skipped_or_fails_where_skips_are_forbidden",
    ) {
        return;
    }
    let dir = temp_dir("skips");
    let log = dir.path().join("skips.tsv");
    std::fs::write(&log, "").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    for p in [dir.path(), log.as_path()] {
        let mode = if p.is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let (ok, text) = run_unprivileged(&[(ambassador_tests::SKIP_LOG_ENV, log.to_str().unwrap())]);
    assert!(ok, "without root the test returns early: {text}");
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        recorded.lines().collect::<Vec<_>>(),
        ["xtask_builds_with_only_a_rust_toolchain\tneeds root (network namespaces, bpffs, TC attach); run as root"],
        "{text}"
    );

    let (ok, text) = run_unprivileged(&[(ambassador_tests::NO_SKIP_ENV, "1")]);
    assert!(!ok, "a skip must fail where skipping is forbidden: {text}");
    assert!(text.contains("forbids skipping"), "{text}");
}

/// The eBPF toolchain is a dated nightly, read from one file by rustup, the build script and
/// setup; nothing installs or names the moving `nightly` channel.
#[test]
fn the_ebpf_toolchain_is_pinned_to_a_dated_nightly() {
    let root = repo_root();
    let file = std::fs::read_to_string(root.join("ambassador-ebpf/rust-toolchain.toml")).unwrap();
    let channel = file
        .lines()
        .find_map(|l| l.strip_prefix("channel = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a channel line");
    let date = channel.strip_prefix("nightly-").expect("a nightly");
    let parts: Vec<&str> = date.split('-').collect();
    assert!(
        parts.len() == 3
            && [4, 2, 2]
                .iter()
                .zip(&parts)
                .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit())),
        "{channel} is not nightly-YYYY-MM-DD"
    );
    let setup = std::fs::read_to_string(root.join("scripts/setup.sh")).unwrap();
    assert!(setup.contains("ambassador-ebpf/rust-toolchain.toml"));
    assert!(
        !setup.contains("toolchain install nightly") && !setup.contains("--toolchain nightly"),
        "setup.sh installs the moving nightly"
    );
    let build = std::fs::read_to_string(root.join("ambassador-user/build.rs")).unwrap();
    assert!(build.contains("Toolchain::Custom") && !build.contains("Toolchain::default()"));
}

/// The qemu-utils that this project's machines carry before setup (bookworm-backports' 10.0,
/// as qemu-img), as dpkg records it: it Breaks Debian 12's qemu-system-common.
const BACKPORTED_QEMU_UTILS: &str = "Package: qemu-utils
Status: install ok installed
Priority: optional
Section: otherosfs
Installed-Size: 10000
Maintainer: Debian QEMU Team <pkg-qemu-devel@lists.alioth.debian.org>
Architecture: amd64
Source: qemu
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)
Description: QEMU utilities
";

/// This machine's dpkg database as a bare machine of the project's kind has it: no QEMU
/// emulator, and the backported qemu-utils in place of whatever is installed.
fn bare_machine_dpkg(dir: &Path) {
    let status = std::fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let mut stanzas: Vec<&str> = status
        .split("\n\n")
        .filter(|s| {
            let name = s
                .lines()
                .find_map(|l| l.strip_prefix("Package: "))
                .unwrap_or("");
            !s.trim().is_empty() && !name.starts_with("qemu-system") && name != "qemu-utils"
        })
        .collect();
    stanzas.push(BACKPORTED_QEMU_UTILS);
    std::fs::create_dir_all(dir.join("updates")).unwrap();
    std::fs::create_dir_all(dir.join("info")).unwrap();
    std::fs::write(dir.join("status"), stanzas.join("\n\n")).unwrap();
}

/// The README's first command installs every package in one `apt-get install`; on a machine
/// of this project's kind that failed outright ("generated breaks"): its preinstalled
/// qemu-utils is newer than Debian 12's emulator accepts. The install's whole plan goes
/// through apt's solver (simulated, nothing installed) against this machine's packages and
/// against a bare machine's, where a plain install is shown to fail first.
#[test]
fn setup_packages_resolve_on_this_machine_and_on_a_bare_one() {
    let test = "setup_packages_resolve_on_this_machine_and_on_a_bare_one";
    let has_lists = Command::new("apt-cache")
        .args(["policy", "qemu-system-x86"])
        .output()
        .is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success() && text.contains("Candidate:") && !text.contains("(none)")
        });
    if !has_lists {
        skip(
            test,
            "no apt package lists that offer qemu-system-x86 (not Debian, or `apt-get update` never ran)",
        );
        return;
    }
    let setup = repo_root().join("scripts/setup.sh");
    let simulate = |dir: Option<&Path>| {
        let mut cmd = Command::new("bash");
        cmd.arg(&setup).arg("--simulate-apt");
        if let Some(d) = dir {
            cmd.arg(d);
        }
        let out = cmd.output().expect("bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = simulate(None);
    assert!(ok, "this machine: {text}");

    let dir = temp_dir("amb-bare-dpkg");
    bare_machine_dpkg(dir.path());
    let plain = Command::new("apt-get")
        .args(["install", "-s", "-y", "-q", "--no-install-recommends"])
        .arg(format!(
            "-o=Dir::State::status={}",
            dir.path().join("status").display()
        ))
        .args(["qemu-system-x86", "qemu-utils"])
        .output()
        .expect("apt-get");
    assert!(
        !plain.status.success(),
        "the bare machine's qemu-utils no longer conflicts: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let (ok, text) = simulate(Some(dir.path()));
    assert!(ok, "a bare machine: {text}");
    assert!(text.contains("installing qemu-utils"), "{text}");
}
