//! Loads the datapath, pins its maps and attaches its programs.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use ambassador_common::program_names;
use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    maps::Maps,
    netlink, EBPF_OBJECT,
};

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A loaded, attached datapath. Dropping it detaches the programs; the pinned maps stay.
pub struct Datapath {
    /// The maps, pinned under the pin directory.
    pub maps: Maps,
    /// The programs and their links: dropping it detaches them.
    pub ebpf: Ebpf,
    /// The pin directory's lock, held for the daemon's lifetime (one daemon per directory).
    pub lock: File,
    /// TCX (true) or clsact.
    tcx: bool,
    /// Interface -> its two links.
    attached: BTreeMap<String, Vec<(&'static str, SchedClassifierLinkId)>>,
    /// The `--iface` interfaces that are bridges.
    bridges: Vec<String>,
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
    let lock = File::open(dir).map_err(Error::io(format!("opening {}", dir.display())))?;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::AlreadyRunning {
            path: dir.to_owned(),
        });
    }
    Ok(lock)
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
/// so counters, flows and services survive a restart) without attaching anything.
pub fn load(pin_dir: &Path) -> Result<(Ebpf, Maps, File)> {
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoEbpfObject);
    }
    check_kernel()?;
    let lock = prepare_pin_dir(pin_dir)?;
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(EBPF_OBJECT)
        .map_err(|e| match e {
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
        prog.load().map_err(|source| Error::Program {
            what: format!("loading {name} (the verifier's log follows)"),
            source,
        })?;
    }
    let maps = Maps::take_from(&mut ebpf)?;
    Ok((ebpf, maps, lock))
}

/// Loads the datapath and attaches it to every interface in `ifaces`: DNAT on ingress,
/// reverse NAT on egress.
pub fn start(pin_dir: &Path, ifaces: &[String], mode: TcAttach) -> Result<Datapath> {
    for iface in ifaces {
        check_interface(iface)?;
    }
    let tcx = use_tcx(mode)?;
    // Loading takes the pin directory's lock first: a second daemon on the same directory
    // is told exactly that, before the interfaces are looked at.
    let (ebpf, maps, lock) = load(pin_dir)?;
    if has_tcx() {
        for iface in ifaces {
            refuse_foreign_attachments(iface)?;
        }
    }
    let mut dp = Datapath {
        maps,
        ebpf,
        lock,
        tcx,
        attached: BTreeMap::new(),
        bridges: Vec::new(),
    };
    for iface in ifaces {
        dp.attach(iface)?;
        if is_bridge(iface) {
            dp.bridges.push(iface.clone());
        }
    }
    dp.sync_bridge_ports();
    Ok(dp)
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
    /// Attaches DNAT on `iface`'s ingress and reverse NAT on its egress.
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        if !self.tcx {
            // Before 6.6, TC programs hang off a clsact qdisc (it may exist already).
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                debug!(%iface, error = %e, "clsact qdisc not added (it may already exist)");
            }
        }
        let mut links = Vec::new();
        for (name, direction) in [
            (program_names::TC_DNAT, TcAttachType::Ingress),
            (program_names::TC_RNAT, TcAttachType::Egress),
        ] {
            let prog = classifier(&mut self.ebpf, name);
            let options = if self.tcx {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            let id = prog
                .attach_with_options(iface, direction, options)
                .map_err(|source| Error::Program {
                    what: format!("attaching {name} to {iface} ({direction:?})"),
                    source,
                })?;
            links.push((name, id));
        }
        info!(%iface, mode = if self.tcx { "tcx" } else { "clsact" }, "datapath attached");
        self.attached.insert(iface.to_owned(), links);
        Ok(())
    }

    /// Detaches from `iface` (quietly: a deleted interface took its attachments along).
    fn detach(&mut self, iface: &str) {
        for (name, id) in self.attached.remove(iface).unwrap_or_default() {
            let _ = classifier(&mut self.ebpf, name).detach(id);
        }
        debug!(%iface, "datapath detached");
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

/// Refuses an interface where another instance's programs are attached already.
fn refuse_foreign_attachments(iface: &str) -> Result<()> {
    for (direction, program) in [
        (TcAttachType::Ingress, program_names::TC_DNAT),
        (TcAttachType::Egress, program_names::TC_RNAT),
    ] {
        let Ok((_, progs)) = SchedClassifier::query_tcx(iface, direction) else {
            continue;
        };
        if let Some(p) = progs.iter().find(|p| p.name_as_str() == Some(program)) {
            return Err(Error::AlreadyAttached {
                iface: iface.into(),
                program,
                id: p.id(),
            });
        }
    }
    Ok(())
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

/// The default pin directory.
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/ambassador")
}
