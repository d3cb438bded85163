//! Every error the daemon and the status reader report. Each says what went wrong and, where
//! there is one, what to do about it: they are printed as one line before a non-zero exit.

use std::{io, path::PathBuf};

use crate::core::config::ConfigError;

/// An error of ambassador's user space.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unusable.
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    /// An `--iface` does not exist.
    #[error("interface {name:?} does not exist (check `ip link`, and that ambassador runs in the right network namespace)")]
    NoSuchInterface {
        /// The interface name.
        name: String,
    },
    /// The pin directory is not on a BPF filesystem.
    /// `--cgroup-path` (or the default) is not a cgroup v2 directory.
    #[error("{path} is not a cgroup v2 directory ({detail}). The socket datapath attaches to one: give --cgroup-path, and run as a container, share the host's cgroup namespace and hierarchy (--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup)", path = path.display())]
    NotCgroup2 { path: PathBuf, detail: String },
    #[error("{path} is not on a bpf filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` (in a container: -v /sys/fs/bpf:/sys/fs/bpf)")]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// Another daemon holds the pin directory.
    #[error("another `ambassador run` is using {path}: stop it first, or give this one its own --pin-path")]
    AlreadyRunning {
        /// The pin directory.
        path: PathBuf,
    },
    /// An interface already carries ambassador's programs from another instance.
    #[error("interface {iface:?} already has ambassador's {program} attached (program id {id}) by another instance; stop that instance or detach it (`bpftool net`/`bpftool prog show name {program}`)")]
    AlreadyAttached {
        /// The interface.
        iface: String,
        /// The program name.
        program: &'static str,
        /// The kernel's id of the attached program.
        id: u32,
    },
    /// A link could not be pinned.
    #[error("pinning the program link at {path}: {detail}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// What the kernel said.
        detail: String,
    },
    /// The binary carries no eBPF object.
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild with `cargo build`")]
    NoEbpfObject,
    /// The kernel lacks a feature.
    #[error("the kernel lacks {feature}, which needs Linux {needed} or later ({detail})")]
    KernelFeature {
        /// What is missing.
        feature: &'static str,
        /// The first kernel version that has it.
        needed: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// Not privileged enough.
    #[error("{what}: permission denied: ambassador needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Permission {
        /// What was attempted.
        what: String,
    },
    /// Loading the eBPF object failed.
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// Loading or attaching a program failed.
    #[error("{what}: {source}")]
    Program {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Reading the kernel's debug records failed.
    #[error("reading the datapath's debug output (--debug-datapath): {0}")]
    KernelLog(#[from] aya_log::Error),
    /// A map operation failed.
    #[error("map {name}: {what}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: aya::maps::MapError,
    },
    /// A map is full (the kernel said E2BIG).
    #[error("map {name} is full: {what} (terminating backends count until drained; `ambassador status` shows use against capacity; raise {flag}, after `ambassador uninstall`, since a map's size is fixed when it is created)")]
    MapFull {
        /// The map.
        name: &'static str,
        /// The setting that sizes it.
        flag: &'static str,
        /// What was attempted.
        what: String,
    },
    /// A capacity asked for differs from the maps already pinned.
    #[error("the maps pinned under {path} were created with {flag} {pinned}, not {requested}: a map's size is fixed when it is created. Start with {flag} {pinned} (or without it), or run `ambassador uninstall --pin-path {path}` first (that stops forwarding and forgets every flow)", path = path.display())]
    CapacityMismatch {
        /// The pin directory.
        path: PathBuf,
        /// The setting.
        flag: &'static str,
        /// The pinned maps' size.
        pinned: u32,
        /// What was asked for.
        requested: u32,
    },
    /// The pinned maps are missing.
    #[error(
        "no ambassador maps pinned under {path}: is `ambassador run` running with this --pin-path?"
    )]
    NotRunning {
        /// The pin directory.
        path: PathBuf,
    },
    /// The desired state cannot be installed.
    #[error(transparent)]
    Plan(#[from] crate::core::reconcile::PlanError),
    /// An etcd request failed.
    #[error("etcd: {what}: {source}")]
    Etcd {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: etcd_client::Error,
    },
    /// etcd refused a request for the credential in use (RBAC or authentication).
    #[error("etcd refused {what}: {detail} (as {identity})")]
    EtcdDenied {
        /// What was attempted (names the key).
        what: String,
        /// What etcd said.
        detail: String,
        /// Who asked: the user, the client certificate, or no credential.
        identity: String,
    },
    /// An etcd request took too long.
    #[error("etcd: {what}: no answer within the timeout (is etcd running and reachable?)")]
    EtcdTimeout {
        /// What was attempted.
        what: String,
    },
    /// A Docker engine request failed.
    #[error("docker: {what}: {source}")]
    Docker {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: bollard::errors::Error,
    },
    /// A command was used wrongly (beyond what the argument parser can see).
    #[error("{0}")]
    Usage(String),
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Some other I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                Error::Permission { what }
            } else {
                Error::Io { what, source }
            }
        }
    }

    /// Process exit code (sysexits.h): 64 usage/config, 69 unavailable, 71 OS error,
    /// 75 temporary (another instance), 77 permission.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::Plan(_)
            | Error::NoSuchInterface { .. }
            | Error::NotCgroup2 { .. }
            | Error::Usage(_)
            | Error::CapacityMismatch { .. } => 64,
            Error::NotRunning { .. }
            | Error::NoEbpfObject
            | Error::KernelFeature { .. }
            | Error::Etcd { .. }
            | Error::EtcdTimeout { .. }
            | Error::Docker { .. }
            | Error::NotFound(_) => 69,
            Error::AlreadyRunning { .. } | Error::AlreadyAttached { .. } => 75,
            Error::Permission { .. } | Error::EtcdDenied { .. } => 77,
            _ => 71,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
