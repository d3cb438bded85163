//! What the kernel offers: its version's features, how TC programs attach, interfaces, and the
//! memory limit older kernels charge maps to.

use std::ffi::CString;

use aya::util::KernelVersion;
use tracing::debug;

use crate::error::{Error, Result};

/// Fails unless `name` is an existing interface.
pub fn check_interface(name: &str) -> Result<()> {
    let c = CString::new(name).map_err(|_| Error::NoSuchInterface { name: name.into() })?;
    // SAFETY: a valid NUL-terminated string.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(Error::NoSuchInterface { name: name.into() });
    }
    Ok(())
}
/// Refuses kernels older than the datapath needs (LRU maps, TC direct packet access,
/// bpf_skb_store_bytes and the checksum helpers with BPF_F_MARK_MANGLED_0 are all in 5.10).
pub(super) fn check_kernel() -> Result<()> {
    let Ok(v) = KernelVersion::current() else {
        return Ok(()); // Unknown: let the loader be the judge.
    };
    if v < KernelVersion::new(5, 10, 0) {
        return Err(Error::KernelFeature {
            feature: "the TC datapath (LRU hash maps, TC direct packet access, checksum helpers)",
            needed: "5.10",
            detail: format!("this kernel is {v}"),
        });
    }
    Ok(())
}
/// Refuses kernels older than the socket datapath needs: cgroup `getpeername4` hooks (5.8),
/// `sock_release` (5.9) and `bpf_set_retval`, which makes a `connect()` to a frontend without
/// backends fail with ECONNREFUSED (5.18).
pub fn check_sock_kernel() -> Result<()> {
    let Ok(v) = KernelVersion::current() else {
        return Ok(());
    };
    if v < KernelVersion::new(5, 18, 0) {
        return Err(Error::KernelFeature {
            feature:
                "the socket datapath (cgroup getpeername4 and sock_release hooks, bpf_set_retval)",
            needed: "5.18",
            detail: format!("this kernel is {v}; use --datapath tc"),
        });
    }
    Ok(())
}
/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (in the driver) where the driver supports it, generic (in the stack) otherwise.
    #[default]
    Auto,
    /// Native only: an interface whose driver has no XDP support is refused.
    Native,
    /// Generic only (any interface; most of XDP's gain is lost).
    Generic,
}

/// How TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// TCX links on Linux 6.6+, a clsact qdisc before.
    #[default]
    Auto,
    /// TCX links (Linux 6.6+).
    Tcx,
    /// Filters on a clsact qdisc (any kernel; the only way before 6.6).
    Clsact,
}
/// Whether the kernel attaches TC programs through TCX links (Linux 6.6+).
pub(super) fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}
/// Resolves `Auto` and refuses `Tcx` where the kernel has none. True means TCX.
pub(super) fn use_tcx(mode: TcAttach) -> Result<bool> {
    match mode {
        TcAttach::Auto => Ok(has_tcx()),
        TcAttach::Clsact => Ok(false),
        TcAttach::Tcx if has_tcx() => Ok(true),
        TcAttach::Tcx => Err(Error::KernelFeature {
            feature: "TCX attachment (--tc-attach tcx)",
            needed: "6.6",
            detail: "use --tc-attach clsact or auto".into(),
        }),
    }
}
/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it (harmless later).
pub(super) fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; fine on Linux 5.11+");
    }
}
