//! Loads the datapath, pins its maps and attaches its programs.
//!
//! With TCX (Linux 6.6+) the program links are pinned too, under `<pin dir>/links/`: the
//! datapath stays attached when the daemon stops or dies, and the next daemon adopts each
//! pinned link, swapping its own program in with one atomic `bpf_link_update`. Forwarding
//! never stops across a restart or an upgrade. `ambassador uninstall` removes it all.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::File,
    path::{Path, PathBuf},
};

use ambassador_common::program_names;
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use tracing::{debug, info, warn};

use crate::{
    capacity::{Capacity, Requested},
    error::{Error, Result},
    maps::Maps,
    netlink, EBPF_OBJECT,
};

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where one program is attached.
enum Attachment {
    /// A TCX link pinned at this path: removing the pin detaches it.
    Pinned(PathBuf),
    /// A clsact filter, owned by the loaded object: dropping the object detaches it.
    Filter(&'static str, SchedClassifierLinkId),
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
    /// The kernel's debug records (with `debug`): taken by whoever polls them.
    pub kernel_log: Option<KernelLog>,
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

/// Fails unless `name` is an existing interface.
pub fn check_interface(name: &str) -> Result<()> {
    let c = CString::new(name).map_err(|_| Error::NoSuchInterface { name: name.into() })?;
    // SAFETY: a valid NUL-terminated string.
    if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
        return Err(Error::NoSuchInterface { name: name.into() });
    }
    Ok(())
}

/// Creates `dir` on a bpf filesystem (refusing any other filesystem) and locks it.
fn prepare_pin_dir(dir: &Path) -> Result<File> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent)? {
        return Err(Error::NotBpffs {
            path: parent.to_owned(),
        });
    }
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    lock_pin_dir(dir)
}

/// Takes the pin directory's lock (one daemon per directory; `uninstall` only while none
/// runs); held as long as the returned file is open.
fn lock_pin_dir(dir: &Path) -> Result<File> {
    let lock = File::open(dir).map_err(Error::io(format!("opening {}", dir.display())))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::AlreadyRunning {
            path: dir.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("locking {}", dir.display()))(e))
        }
    }
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::NotBpffs {
        path: path.to_owned(),
    })?;
    // SAFETY: statfs only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(Error::io(format!("statfs {}", path.display()))(e));
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Refuses kernels older than the datapath needs (LRU maps, TC direct packet access,
/// bpf_skb_store_bytes and the checksum helpers with BPF_F_MARK_MANGLED_0 are all in 5.10).
fn check_kernel() -> Result<()> {
    let Ok(v) = KernelVersion::current() else {
        return Ok(()); // Unknown: let the loader be the judge.
    };
    if v < KernelVersion::new(5, 10, 0) {
        return Err(Error::KernelFeature {
            feature: "the TC datapath (LRU hash maps, TC direct packet access, checksum helpers)",
            needed: "5.10",
            detail: format!("this kernel is {v:?}"),
        });
    }
    Ok(())
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
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Resolves `Auto` and refuses `Tcx` where the kernel has none. True means TCX.
fn use_tcx(mode: TcAttach) -> Result<bool> {
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

/// Loads the object with its maps pinned under `pin_dir` (re-using maps already pinned there,
/// so counters, flows and services survive a restart) without attaching anything. Maps are
/// created with the capacity `requested` resolves to (pinned maps keep theirs). `debug` keeps
/// the programs' aya-log statements; without it they are dead code to the verifier.
pub fn load(
    pin_dir: &Path,
    requested: Requested,
    debug: bool,
) -> Result<(Ebpf, Maps, File, Capacity)> {
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoEbpfObject);
    }
    check_kernel()?;
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
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Program {
                what: format!("program {name} is missing from the object"),
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?
            .try_into()
            .map_err(|source| Error::Program {
                what: format!("program {name}"),
                source,
            })?;
        prog.load().map_err(|source| {
            let text = source.to_string();
            if text.contains("Permission denied") || text.contains("Operation not permitted") {
                // Without CAP_PERFMON the verifier treats us as unprivileged and refuses the
                // parser's packet-pointer arithmetic (a Spectre mitigation).
                let why = if text.contains("prohibited for !root") {
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
        })?;
    }
    let maps = Maps::take_from(&mut ebpf)?;
    Ok((ebpf, maps, lock, capacity))
}

/// Loads the datapath and attaches it to every interface in `ifaces`: DNAT on ingress,
/// reverse NAT on egress.
pub fn start(
    pin_dir: &Path,
    ifaces: &[String],
    mode: TcAttach,
    requested: Requested,
    debug: bool,
) -> Result<Datapath> {
    for iface in ifaces {
        check_interface(iface)?;
    }
    let tcx = use_tcx(mode)?;
    // Loading takes the pin directory's lock first: a second daemon on the same directory
    // is told exactly that, before the interfaces are looked at.
    let (mut ebpf, maps, lock, capacity) = load(pin_dir, requested, debug)?;
    let kernel_log = if debug {
        Some(aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing)?)
    } else {
        None
    };
    let links_dir = pin_dir.join("links");
    if tcx {
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
        kernel_log,
    };
    for iface in ifaces {
        dp.attach(iface)?;
        if is_bridge(iface) {
            dp.bridges.push(iface.clone());
        }
    }
    dp.sync_bridge_ports();
    dp.remove_stale_links();
    Ok(dp)
}

/// Program ids behind the links pinned in `links_dir`: attachments of an earlier daemon on
/// this pin directory, which this one adopts.
fn pinned_program_ids(links_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| PinnedLink::from_pin(e.ok()?.path()).ok())
        .filter_map(|p| FdLink::from(p).info().ok())
        .map(|i| i.program_id())
        .collect()
}

/// File name of `iface`'s link for `direction` in the links directory. bpffs refuses names
/// with a dot (EPERM: "reserved for future use"), and interface names may hold one (VLANs:
/// `eth0.100`), so `%` and `.` are percent-encoded.
fn link_file(iface: &str, direction: &str) -> String {
    let name = iface.replace('%', "%25").replace('.', "%2e");
    format!("{name}_{direction}")
}

/// Swaps `prog` into the TCX link pinned at `path` (one atomic `bpf_link_update`).
fn adopt(prog: &mut SchedClassifier, path: &Path) -> std::result::Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    // Only the pin holds the link from here on.
    drop(prog.take_link(id));
    Ok(())
}

/// Whether `iface` is a Linux bridge.
fn is_bridge(iface: &str) -> bool {
    netlink::links().is_ok_and(|links| {
        links
            .iter()
            .any(|l| l.name == iface && l.kind.as_deref() == Some("bridge"))
    })
}

impl Datapath {
    /// Attaches DNAT on `iface`'s ingress and reverse NAT on its egress (adopting links an
    /// earlier daemon pinned).
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        if !self.tcx {
            // Before 6.6, TC programs hang off a clsact qdisc (it may exist already).
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                debug!(%iface, error = %e, "clsact qdisc not added (it may already exist)");
            }
        }
        let mut links = Vec::new();
        let mut adopted = 0;
        for (name, direction, suffix) in [
            (program_names::TC_DNAT, TcAttachType::Ingress, "ingress"),
            (program_names::TC_RNAT, TcAttachType::Egress, "egress"),
        ] {
            let what = || format!("attaching {name} to {iface} ({direction:?})");
            let prog = classifier(&mut self.ebpf, name);
            if !self.tcx {
                let options = TcAttachOptions::Netlink(NlOptions::default());
                let id = prog
                    .attach_with_options(iface, direction, options)
                    .map_err(|source| Error::Program {
                        what: what(),
                        source,
                    })?;
                links.push(Attachment::Filter(name, id));
                continue;
            }
            let path = self.links_dir.join(link_file(iface, suffix));
            if path.exists() {
                match adopt(prog, &path) {
                    Ok(()) => {
                        adopted += 1;
                        links.push(Attachment::Pinned(path));
                        continue;
                    }
                    Err(e) => {
                        // Typically the interface was deleted (and maybe re-created): the
                        // link died with it.
                        debug!(%iface, error = %e, "pinned link not adoptable; attaching anew");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            let id = prog
                .attach_with_options(
                    iface,
                    direction,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| Error::Program {
                    what: what(),
                    source,
                })?;
            let link = prog.take_link(id).map_err(|source| Error::Program {
                what: what(),
                source,
            })?;
            let fd = FdLink::try_from(link).map_err(|e| Error::Program {
                what: format!("{}: {e}", what()),
                source: aya::programs::ProgramError::UnexpectedProgramType,
            })?;
            // The pin keeps the link attached after this descriptor closes.
            fd.pin(&path).map_err(|e| Error::Pin {
                path: path.clone(),
                detail: match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                },
            })?;
            links.push(Attachment::Pinned(path));
        }
        let mode = if self.tcx { "tcx" } else { "clsact" };
        if adopted > 0 {
            info!(%iface, mode, adopted, "datapath adopted (program replaced in the pinned links)");
        } else {
            info!(%iface, mode, "datapath attached");
        }
        self.attached.insert(iface.to_owned(), links);
        Ok(())
    }

    /// Detaches from `iface` (quietly: a deleted interface took its attachments along).
    fn detach(&mut self, iface: &str) {
        for a in self.attached.remove(iface).unwrap_or_default() {
            match a {
                Attachment::Pinned(path) => {
                    let _ = std::fs::remove_file(path);
                }
                Attachment::Filter(name, id) => {
                    let _ = classifier(&mut self.ebpf, name).detach(id);
                }
            }
        }
        debug!(%iface, "datapath detached");
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
            .collect();
        for path in entries.filter_map(|e| Some(e.ok()?.path())) {
            if !ours.contains(&&path) {
                info!(link = %path.display(), "removing a pinned link no interface here needs");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Attaches to ports that joined the `--iface` bridges and forgets ports that left.
    ///
    /// Why the ports: with br_netfilter (which Docker enables), netfilter's conntrack sees a
    /// container's packet while it crosses the bridge, before the bridge device's own TC hook.
    /// Rewritten only there, the flow's conntrack entry would still expect replies from the
    /// VIP, and masqueraded replies would never be translated back. On the port, the rewrite
    /// happens before the bridge, so conntrack records the real backend.
    pub fn sync_bridge_ports(&mut self) {
        let links = match netlink::links() {
            Ok(l) => l,
            Err(e) => {
                warn!("listing interfaces failed: {e}");
                return;
            }
        };
        let bridge_ids: Vec<u32> = links
            .iter()
            .filter(|l| self.bridges.contains(&l.name))
            .map(|l| l.index)
            .collect();
        let ports: Vec<&str> = links
            .iter()
            .filter(|l| l.master.is_some_and(|m| bridge_ids.contains(&m)))
            .map(|l| l.name.as_str())
            .collect();
        for port in &ports {
            if !self.attached.contains_key(*port) {
                if let Err(e) = self.attach(port) {
                    warn!(%port, "attaching to a bridge port failed: {e}");
                }
            }
        }
        let existing: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let gone: Vec<String> = self
            .attached
            .keys()
            .filter(|i| !existing.contains(&i.as_str()))
            .cloned()
            .collect();
        for port in gone {
            self.detach(&port);
        }
    }

    /// Whether some `--iface` is a bridge whose ports need following.
    pub fn has_bridges(&self) -> bool {
        !self.bridges.is_empty()
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .expect("checked by load()")
}

/// Refuses an interface where another instance's programs are attached already (programs
/// behind this pin directory's own links, `ours`, are adopted instead).
fn refuse_foreign_attachments(iface: &str, ours: &[u32]) -> Result<()> {
    for (direction, program) in [
        (TcAttachType::Ingress, program_names::TC_DNAT),
        (TcAttachType::Egress, program_names::TC_RNAT),
    ] {
        let Ok((_, progs)) = SchedClassifier::query_tcx(iface, direction) else {
            continue;
        };
        if let Some(p) = progs
            .iter()
            .find(|p| p.name_as_str() == Some(program) && !ours.contains(&p.id()))
        {
            return Err(Error::AlreadyAttached {
                iface: iface.into(),
                program,
                id: p.id(),
            });
        }
    }
    Ok(())
}

/// What `uninstall` removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Pinned program links (each one detached a program from an interface).
    pub links: Vec<String>,
    /// Pinned maps.
    pub maps: usize,
}

/// Removes everything a daemon left pinned under `pin_dir`: its program links (which
/// detaches the datapath) and its maps, then the directory. Refuses while a daemon runs there.
pub fn uninstall(pin_dir: &Path) -> Result<Removed> {
    let mut removed = Removed::default();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    let _lock = lock_pin_dir(pin_dir)?;
    let rm = |path: &Path| {
        std::fs::remove_file(path).map_err(Error::io(format!("removing {}", path.display())))
    };
    let links_dir = pin_dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links_dir) {
        for path in entries.filter_map(|e| Some(e.ok()?.path())) {
            rm(&path)?;
            removed.links.push(
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        std::fs::remove_dir(&links_dir)
            .map_err(Error::io(format!("removing {}", links_dir.display())))?;
    }
    let entries =
        std::fs::read_dir(pin_dir).map_err(Error::io(format!("reading {}", pin_dir.display())))?;
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        if path.is_dir() {
            return Err(Error::Usage(format!(
                "{} holds a directory ({}) that ambassador did not make; remove it by hand",
                pin_dir.display(),
                path.display()
            )));
        }
        rm(&path)?;
        removed.maps += 1;
    }
    std::fs::remove_dir(pin_dir).map_err(Error::io(format!("removing {}", pin_dir.display())))?;
    removed.links.sort();
    Ok(removed)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it (harmless later).
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain syscall on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; fine on Linux 5.11+");
    }
}

/// The default pin directory (`--pin-path`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ambassador";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_files_have_no_dots_and_stay_distinct() {
        assert_eq!(link_file("c0", "ingress"), "c0_ingress");
        assert_eq!(link_file("eth0.100", "egress"), "eth0%2e100_egress");
        assert_ne!(link_file("a%2eb", "egress"), link_file("a.b", "egress"));
        assert!(!link_file("a.b.c", "ingress").contains('.'));
    }
}
