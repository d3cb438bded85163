//! Builds the eBPF crate for bpfel-unknown-none and leaves the object in OUT_DIR, where
//! `loader.rs` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (for clippy or docs on a machine without bpf-linker) an empty stub is
//! written instead; the daemon then refuses to start with a message saying so.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, Context as _};
use cargo_metadata::MetadataCommand;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let stub = out_dir.join("ambassador");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        fs::write(&stub, []).context("writing the eBPF stub")?;
        return Ok(());
    }
    let metadata = MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "ambassador-ebpf")
        .ok_or_else(|| anyhow!("ambassador-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("ambassador-ebpf manifest has no parent directory"))?;
    // aya-build watches the eBPF crate; the object also compiles ambassador-common (map keys,
    // values and names), so a change there must rebuild it too.
    let common = root_dir
        .parent()
        .ok_or_else(|| anyhow!("ambassador-ebpf has no parent directory"))?
        .join("ambassador-common");
    println!("cargo:rerun-if-changed={common}");
    let channel = pinned_toolchain(root_dir.as_std_path(), &out_dir)?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
    .context(
        "building the eBPF object (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}

/// The eBPF toolchain pinned in `ambassador-ebpf/rust-toolchain.toml`, once it is known to be
/// installed and to share its LLVM major with bpf-linker's (bitcode from a newer LLVM than the
/// linker's fails to link with an error that names neither).
fn pinned_toolchain(ebpf_dir: &Path, out_dir: &Path) -> anyhow::Result<String> {
    let file = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", file.display());
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", file.display()))?;
    let channel = table
        .get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| anyhow!("{} has no [toolchain] channel", file.display()))?
        .to_owned();
    let out = Command::new("rustup")
        .args(["run", &channel, "rustc", "-vV"])
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(anyhow!(
            "the eBPF toolchain {channel} (pinned in {}) is not usable ({}): run `cargo xtask setup`, or `rustup toolchain install {channel} --profile minimal --component rust-src`",
            file.display(),
            why.lines().find(|l| !l.trim().is_empty()).unwrap_or("no reason given").trim()
        ));
    }
    let rustc = rustc_version::version_meta_for(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading `rustc -vV` of {channel}"))?;
    let rustc_llvm = rustc
        .llvm_version
        .map(|v| v.major)
        .ok_or_else(|| anyhow!("{channel}'s rustc does not say its LLVM version"))?;
    match linker_llvm_major(out_dir)? {
        Some(linker) if linker != rustc_llvm => Err(anyhow!(
            "{channel} (pinned in {}) emits LLVM {rustc_llvm} bitcode, and bpf-linker is built against LLVM {linker}: rebuild bpf-linker against LLVM {rustc_llvm} (scripts/setup.sh's LLVM_PREFIX and llvm-N feature), or pin a nightly whose `rustc -vV` says LLVM {linker} (README, \"The toolchains\")",
            file.display()
        )),
        Some(_) => Ok(channel),
        None => {
            println!("cargo:warning=could not tell which LLVM bpf-linker is built against; building with {channel} (LLVM {rustc_llvm})");
            Ok(channel)
        }
    }
}

/// The LLVM major version bpf-linker is built against, from LLVM itself: its option parser
/// answers `--version` before any input is read (the empty input, in `out_dir`, is never
/// opened).
fn linker_llvm_major(out_dir: &Path) -> anyhow::Result<Option<u64>> {
    let linker = which::which("bpf-linker")
        .map_err(|e| anyhow!("bpf-linker not found ({e}): run `cargo xtask setup`"))?;
    let empty = out_dir.join("llvm-version.bc");
    fs::write(&empty, []).context("writing an empty input for bpf-linker")?;
    let out = Command::new(&linker)
        .arg("--llvm-args=--version")
        .arg("-o")
        .arg(out_dir.join("llvm-version.o"))
        .arg(&empty)
        .output()
        .with_context(|| format!("running {}", linker.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split("LLVM version ")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok()))
}
