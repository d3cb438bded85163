//! Each step a task takes says what it does, how long it took on a fresh machine, and how long
//! it took now, so a newcomer knows what is happening and what to expect.

use std::time::Instant;

use anyhow::Result;

/// How long each step took on a fresh 2-core Debian 12 machine with only a Rust toolchain
/// (measured 2026-12-02; later runs skip what is already done and take seconds).
pub const SETUP: &str = "about 2 min on a fresh machine; seconds once done";
/// See [`SETUP`].
pub const RELEASE: &str = "about 4 min on a fresh machine; seconds when nothing changed";
/// See [`SETUP`].
pub const DEBUG: &str = "about 4 min on a fresh machine; seconds when nothing changed";
/// See [`SETUP`].
pub const TEST: &str = "about 3 min as root on a 2-core machine";
/// See [`SETUP`].
pub const DEMO: &str = "about 1 min";
/// See [`SETUP`].
pub const VM_IMAGE: &str =
    "about 2 min here; once, then again only when scripts/vm-image.sh changes";
/// See [`SETUP`].
pub const KERNELS: &str = "about 9 min under emulation on 2 cores, the image's build aside";
/// See [`SETUP`].
pub const VAGRANT_BOX: &str = "about 20 s; once per VM image";
/// See [`SETUP`].
pub const VAGRANT_UP: &str = "about 3 min under emulation";
/// See [`SETUP`].
pub const VAGRANT_SEED: &str = "about 2 min under emulation";
/// See [`SETUP`].
pub const VM_MOVE: &str = "about 2 min under emulation";

/// Runs `f` as one named step, announcing it with `expected` and reporting the time it took.
pub fn step<T>(name: &str, expected: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("[xtask] {name} ({expected})");
    let started = Instant::now();
    let out = f();
    let secs = started.elapsed().as_secs_f64();
    match &out {
        Ok(_) => eprintln!("[xtask] {name}: done in {secs:.0} s"),
        Err(_) => eprintln!("[xtask] {name}: FAILED after {secs:.0} s"),
    }
    out
}
