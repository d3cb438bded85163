//! Loads the datapath, pins its maps and attaches its programs.
//!
//! With TCX (Linux 6.6+) the program links are pinned too, under `<pin dir>/links/`: the
//! datapath stays attached when the daemon stops or dies, and the next daemon adopts each
//! pinned link, swapping its own program in with one atomic `bpf_link_update`. The socket
//! datapath's cgroup links are pinned there as well; the next daemon attaches its own programs
//! beside them first and only then removes them (both translate the same way from the same
//! maps, and a socket already translated is never translated again). The XDP datapath's links
//! are pinned and adopted like the TC ones. Forwarding never stops across a restart or an
//! upgrade. `ambassador uninstall` removes it all.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

use ambassador_common::{map_names, program_names};
use aya::{
    programs::{
        links::FdLink, tc::SchedClassifierLinkId, CgroupSock, CgroupSockAddr, SchedClassifier, Xdp,
    },
    Ebpf, EbpfLoader,
};
use tracing::{info, warn};

mod cgroup;
mod ifaces;
mod kernel;
mod links;
mod pin;
mod xdp;

pub use kernel::{check_interface, check_sock_kernel, TcAttach, XdpAttach};
use kernel::{check_kernel, has_tcx, raise_memlock, use_tcx};
use links::{
    adopt, adopt_xdp, classifier, describe, is_bridge, link_file, pinned_program_ids,
    pinned_xdp_ifaces, refuse_foreign_attachments, sock_link_file, XDP_SUFFIX,
};
use pin::prepare_pin_dir;
pub use pin::{uninstall, Removed, DEFAULT_PIN_DIR};

use crate::{
    core::capacity::{Capacity, Requested},
    datapath::{maps::Maps, netlink},
    error::{Error, Result},
    EBPF_OBJECT,
};

/// Where one program is attached.
enum Attachment {
    /// A TCX link pinned at this path: removing the pin detaches it.
    Pinned(PathBuf),
    /// A clsact filter, owned by the loaded object: dropping the object detaches it.
    Filter(&'static str, SchedClassifierLinkId),
}

/// What the links pinned under `pin_dir` attach: `tc <iface>` per interface, `xdp <iface>
/// (native|generic)` per XDP interface, `sock` for the socket datapath (for `status`).
pub fn attached_datapaths(pin_dir: &Path) -> Vec<String> {
    let links = netlink::links().unwrap_or_default();
    describe(&pin_dir.join("links"))
        .into_iter()
        .map(|d| match d.strip_prefix("xdp ") {
            Some(iface) => {
                let mode = links
                    .iter()
                    .find(|l| l.name == iface)
                    .and_then(|l| l.xdp)
                    .unwrap_or("not attached");
                format!("{d} ({mode})")
            }
            None => d,
        })
        .collect()
}

/// The interfaces the XDP links pinned under `pin_dir` attach to (for `status`).
pub fn xdp_interfaces(pin_dir: &Path) -> Vec<String> {
    pinned_xdp_ifaces(&pin_dir.join("links"))
}

/// Where `run` attaches its datapaths.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// The `tc` datapath: client-facing interfaces (empty: no `tc`).
    pub ifaces: Vec<String>,
    /// How the TC programs attach.
    pub tc_attach: TcAttach,
    /// The `sock` datapath: `Some` to attach it, to this cgroup v2 directory (`None` inside:
    /// the host's cgroup v2 root).
    pub sock: Option<Option<PathBuf>>,
    /// The `xdp` datapath: client-facing interfaces (empty: no `xdp`); the interfaces towards
    /// the backends are found from the routes to them.
    pub xdp_ifaces: Vec<String>,
    /// How the XDP program attaches.
    pub xdp_attach: XdpAttach,
}

/// A loaded, attached datapath. With TCX the links are pinned and outlive it; with clsact,
/// dropping it detaches the programs. The pinned maps always stay.
pub struct Datapath {
    /// The maps, pinned under the pin directory.
    pub maps: Maps,
    /// Their capacity.
    pub capacity: Capacity,
    /// The programs and their links: dropping it detaches them.
    pub ebpf: Ebpf,
    /// The pin directory's lock, held for the daemon's lifetime (one daemon per directory).
    pub lock: File,
    /// TCX (true) or clsact.
    tcx: bool,
    /// Where TCX links are pinned.
    links_dir: PathBuf,
    /// Interface -> its two attachments.
    attached: BTreeMap<String, Vec<Attachment>>,
    /// The `--iface` interfaces that are bridges.
    bridges: Vec<String>,
    /// The socket datapath's cgroup and its pinned links.
    sock: Option<(PathBuf, Vec<PathBuf>)>,
    /// The XDP datapath (when attached): how it attaches, and interface -> its pinned link.
    xdp: Option<(XdpAttach, BTreeMap<String, xdp::XdpIface>)>,
    /// The kernel's debug records (with `debug`): taken by whoever polls them.
    pub kernel_log: Option<KernelLog>,
    /// Backend health transitions the datapath reports: taken by whoever polls them.
    pub health_events: Option<HealthEvents>,
    /// Flow events for `ambassador monitor`: taken by whoever polls them.
    pub flow_events: Option<FlowEvents>,
}

/// One of the datapath's ring buffers.
pub type Ring = aya::maps::RingBuf<aya::maps::MapData>;

/// The ring buffer of backend health transitions (`ambassador_common::HealthEvent`).
pub type HealthEvents = Ring;

/// The ring buffer of flow events (`ambassador_common::monitor::FlowEvent`).
pub type FlowEvents = Ring;

/// One record of a ring buffer as the `T` the datapath wrote there; `None` if it is too short
/// to be one.
pub fn ring_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= std::mem::size_of::<T>())
        // SAFETY: long enough, and any bit pattern is a valid `T` (`Pod`).
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Reads the datapath's aya-log ring buffer (`ambassador run --debug-datapath`).
pub type KernelLog = aya_log::EbpfLogger<ToTracing>;

/// Hands the datapath's records to `tracing` (target `ambassador::datapath`, level INFO: the
/// switch that turned them on is the filter).
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "ambassador::datapath", "{}", record.args());
    }

    fn flush(&self) {}
}

/// Loads the object with its maps pinned under `pin_dir` (re-using maps already pinned there,
/// so counters, flows and services survive a restart) without attaching anything. Maps are
/// created with the capacity `requested` resolves to (pinned maps keep theirs). `debug` keeps
/// the programs' aya-log statements; without it they are dead code to the verifier. The
/// socket programs are loaded only with `sock` (they need a newer kernel), the XDP program
/// only with `xdp`.
pub fn load(
    pin_dir: &Path,
    requested: Requested,
    debug: bool,
    sock: bool,
    xdp: bool,
) -> Result<(Ebpf, Maps, File, Capacity)> {
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoEbpfObject);
    }
    check_kernel()?;
    if sock {
        check_sock_kernel()?;
    }
    let lock = prepare_pin_dir(pin_dir)?;
    let capacity = Capacity::resolve(requested, Capacity::pinned(pin_dir)?, pin_dir)?;
    raise_memlock();
    let log_level = if debug {
        aya_log::Level::Debug as u8
    } else {
        0 // off
    };
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(pin_dir)
        .override_global(aya_log::LEVEL, &log_level, true);
    for (name, size) in capacity.map_sizes() {
        loader.map_max_entries(name, size);
    }
    let sock_size = sock_map_size(pin_dir, capacity.flows, sock)?;
    for name in map_names::SOCK {
        loader.map_max_entries(name, sock_size);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { ref io_error, .. })
            if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Error::Permission {
                what: "creating BPF maps".into(),
            }
        }
        e => Error::Load(e),
    })?;
    for name in [program_names::TC_DNAT, program_names::TC_RNAT] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load().map_err(load_error(name))?;
    }
    if sock {
        for (name, _) in program_names::SOCK_ADDR {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(load_error(name))?;
        }
        let name = program_names::SOCK_RELEASE;
        let prog: &mut CgroupSock = program(&mut ebpf, name)?;
        prog.load().map_err(load_error(name))?;
    }
    if xdp {
        let name = program_names::XDP;
        let prog: &mut Xdp = program(&mut ebpf, name)?;
        prog.load().map_err(load_error(name))?;
    }
    let maps = Maps::take_from(&mut ebpf)?;
    Ok((ebpf, maps, lock, capacity))
}

/// The program `name` of the object, as type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Program {
            what: format!("program {name} is missing from the object"),
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| Error::Program {
            what: format!("program {name}"),
            source,
        })
}

/// Entries of each of the socket datapath's maps (IPv4 and IPv6, forward and reverse). They
/// cost memory (32 MiB at the default --max-flows) only where `sock` runs: `--max-flows`
/// entries with it, one without. Maps an earlier daemon made keep their size without `sock`
/// (its links may still be attached until this daemon removes them); one-entry maps are
/// replaced when `sock` starts (they never held a translation).
fn sock_map_size(pin_dir: &Path, flows: u32, sock: bool) -> Result<u32> {
    let pinned = |name: &'static str| -> Result<Option<u32>> {
        let path = pin_dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        aya::maps::MapInfo::from_pin(&path)
            .map(|i| Some(i.max_entries()))
            .map_err(|source| Error::Map {
                name,
                what: "reading the pinned map's size".into(),
                source,
            })
    };
    let mut smallest: Option<u32> = None;
    for name in map_names::SOCK {
        if let Some(n) = pinned(name)? {
            smallest = Some(smallest.map_or(n, |s| s.min(n)));
        }
    }
    Ok(match (sock, smallest) {
        (true, Some(n)) if n < flows => {
            for name in map_names::SOCK {
                let path = pin_dir.join(name);
                if path.exists() {
                    std::fs::remove_file(&path)
                        .map_err(Error::io(format!("removing {}", path.display())))?;
                }
            }
            flows
        }
        (true, _) => flows,
        (false, Some(n)) => n,
        (false, None) => 1,
    })
}

/// Pins a new link at `path`: the pin keeps it attached after the daemon's descriptor closes.
fn pin_link<E: std::fmt::Display>(
    link: std::result::Result<FdLink, E>,
    path: &Path,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let fd = link.map_err(|e| Error::Program {
        what: format!("{}: {e}", what()),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    fd.pin(path).map_err(|e| Error::Pin {
        path: path.to_owned(),
        detail: match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    })?;
    Ok(())
}

/// What a failed program load means, said plainly.
fn load_error(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> Error + '_ {
    move |source| {
        let text = source.to_string();
        let denied = text.contains("Permission denied") || text.contains("Operation not permitted");
        // Without CAP_PERFMON the verifier treats us as unprivileged and refuses the parser's
        // packet-pointer arithmetic (a Spectre mitigation).
        let no_perfmon =
            text.contains("prohibited for !root") || text.contains("pointer -= pointer prohibited");
        // EACCES is also the verifier's plain refusal of a program: with every capability
        // (root's bounding set), that is what it means, and its log says why.
        let all_caps = caps_all();
        if denied && (no_perfmon || !all_caps || !text.contains("Verifier output")) {
            let why = if no_perfmon {
                " (the verifier refuses its pointer arithmetic without CAP_PERFMON)"
            } else {
                ""
            };
            Error::Permission {
                what: format!("loading {name}{why}"),
            }
        } else {
            Error::Program {
                what: format!("loading {name} (the verifier's log follows)"),
                source,
            }
        }
    }
}

/// Whether this process holds CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (effective set, from
/// /proc/self/status).
fn caps_all() -> bool {
    const NEEDED: u64 = (1 << 39) | (1 << 12) | (1 << 38); // CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & NEEDED == NEEDED)
}

/// Loads the datapath and attaches it where `targets` says: on each interface DNAT on
/// ingress and reverse NAT on egress; on the cgroup the socket programs.
pub fn start(
    pin_dir: &Path,
    targets: &Targets,
    requested: Requested,
    debug: bool,
) -> Result<Datapath> {
    let ifaces = &targets.ifaces;
    for iface in ifaces.iter().chain(&targets.xdp_ifaces) {
        check_interface(iface)?;
    }
    let xdp = !targets.xdp_ifaces.is_empty();
    let cgroup = match &targets.sock {
        Some(requested) => Some(cgroup::resolve(requested.as_deref())?),
        None => None,
    };
    let tcx = use_tcx(targets.tc_attach)?;
    // Loading takes the pin directory's lock first: a second daemon on the same directory
    // is told exactly that, before the interfaces are looked at.
    let (mut ebpf, maps, lock, capacity) = load(pin_dir, requested, debug, cgroup.is_some(), xdp)?;
    let kernel_log = if debug {
        Some(aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing)?)
    } else {
        None
    };
    let health_events = take_ring(&mut ebpf, map_names::HEALTH_EVENTS)?;
    let flow_events = take_ring(&mut ebpf, map_names::EVENTS)?;
    let links_dir = pin_dir.join("links");
    if tcx || cgroup.is_some() || xdp {
        std::fs::create_dir_all(&links_dir)
            .map_err(Error::io(format!("creating {}", links_dir.display())))?;
    }
    if has_tcx() {
        let ours = pinned_program_ids(&links_dir);
        for iface in ifaces {
            refuse_foreign_attachments(iface, &ours)?;
        }
    }
    let mut dp = Datapath {
        maps,
        capacity,
        ebpf,
        lock,
        tcx,
        links_dir,
        attached: BTreeMap::new(),
        bridges: Vec::new(),
        sock: None,
        xdp: xdp.then(|| (targets.xdp_attach, BTreeMap::new())),
        kernel_log,
        health_events,
        flow_events,
    };
    for iface in ifaces {
        dp.attach(iface)?;
        if is_bridge(iface) {
            dp.bridges.push(iface.clone());
        }
    }
    if let Some(cgroup) = cgroup {
        dp.attach_sock(cgroup)?;
    }
    for iface in &targets.xdp_ifaces {
        dp.attach_xdp(iface, true)?;
    }
    if xdp {
        dp.adopt_xdp_links();
        // Until this table is written, translated frames go through the stack.
        dp.sync_xdp_targets();
    }
    dp.sync_bridge_ports();
    dp.remove_stale_links();
    Ok(dp)
}

/// The ring buffer `name`, when the object has one.
fn take_ring(ebpf: &mut Ebpf, name: &'static str) -> Result<Option<Ring>> {
    let Some(map) = ebpf.take_map(name) else {
        return Ok(None);
    };
    let ring = Ring::try_from(map).map_err(|source| Error::Map {
        name,
        what: "unexpected map type".into(),
        source,
    })?;
    Ok(Some(ring))
}

impl Datapath {
    /// The interfaces towards the backends an earlier daemon attached to: adopted at start, so
    /// replies never meet an interface without the program while this daemon reads its source
    /// (the first apply then follows the routes, and leaves what is not needed).
    fn adopt_xdp_links(&mut self) {
        let existing = netlink::links().unwrap_or_default();
        for iface in pinned_xdp_ifaces(&self.links_dir) {
            if existing.iter().any(|l| l.name == iface) {
                if let Err(e) = self.attach_xdp(&iface, false) {
                    warn!(%iface, "adopting the XDP link towards backends failed: {e}");
                }
            }
        }
    }

    /// Removes pinned links this daemon did not adopt: interfaces it no longer serves (no
    /// longer in `--iface`, or bridge ports that left while no daemon ran).
    fn remove_stale_links(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.links_dir) else {
            return;
        };
        let ours: Vec<&PathBuf> = self
            .attached
            .values()
            .flatten()
            .filter_map(|a| match a {
                Attachment::Pinned(p) => Some(p),
                Attachment::Filter(..) => None,
            })
            .chain(self.sock.iter().flat_map(|(_, pins)| pins))
            .chain(
                self.xdp
                    .iter()
                    .flat_map(|(_, ifaces)| ifaces.values().map(|i| &i.path)),
            )
            .collect();
        for path in entries.filter_map(|e| Some(e.ok()?.path())) {
            if !ours.contains(&&path) {
                info!(link = %path.display(), "removing a pinned link no interface here needs");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
