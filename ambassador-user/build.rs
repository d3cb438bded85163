//! Builds the eBPF crate for bpfel-unknown-none and leaves the object in OUT_DIR, where
//! `loader.rs` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (for clippy or docs on a machine without bpf-linker) an empty stub is
//! written instead; the daemon then refuses to start with a message saying so.
use std::{env, fs, path::PathBuf};

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
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF object (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}
