//! Where the socket datapath attaches: a cgroup v2 directory, by default the host's cgroup v2
//! root (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one), and
//! the socket programs attached there with their links pinned.

use std::{
    ffi::CString,
    fs::File,
    path::{Path, PathBuf},
};

use ambassador_common::program_names;
use aya::programs::{
    links::{CgroupAttachMode, FdLink},
    CgroupSock, CgroupSockAddr,
};
use tracing::info;

use super::{pin_link, program, sock_link_file, Datapath};
use crate::error::{Error, Result};

/// `statfs` magic of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `statfs` magic of a tmpfs (a hybrid host's /sys/fs/cgroup).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where cgroup v2 may be mounted, in the order they are tried.
const ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs only writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Some(st.f_type as i64)
}

/// Whether `path` is a directory of a cgroup v2 hierarchy.
fn is_cgroup2(path: &Path) -> bool {
    fs_magic(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// The host's cgroup v2 root, if cgroup v2 is mounted where systemd and Docker mount it.
fn default_root() -> Option<PathBuf> {
    ROOTS.iter().map(PathBuf::from).find(|p| is_cgroup2(p))
}

/// The cgroup the socket programs attach to: `requested`, which must be a cgroup v2
/// directory, or else the host's cgroup v2 root.
pub(super) fn resolve(requested: Option<&Path>) -> Result<PathBuf> {
    let Some(path) = requested else {
        return default_root().ok_or_else(|| Error::NotCgroup2 {
            path: PathBuf::from(ROOTS[0]),
            detail: "no cgroup v2 hierarchy is mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified; mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`) or give --cgroup-path".into(),
        });
    };
    if !path.is_dir() {
        return Err(Error::NotCgroup2 {
            path: path.to_owned(),
            detail: "no such directory".into(),
        });
    }
    if is_cgroup2(path) {
        return Ok(path.to_owned());
    }
    let what = match fs_magic(path) {
        Some(TMPFS_MAGIC) => "it is the tmpfs of a cgroup v1 (or hybrid) layout",
        _ => "it is not on a cgroup2 filesystem (a cgroup v1 hierarchy cannot run socket programs)",
    };
    let hint = match default_root() {
        Some(root) => format!("; this host's cgroup v2 root is {}", root.display()),
        None => String::new(),
    };
    Err(Error::NotCgroup2 {
        path: path.to_owned(),
        detail: format!("{what}{hint}"),
    })
}

impl Datapath {
    /// Attaches the socket programs to `cgroup` and pins their links. Links an earlier daemon
    /// pinned stay until [`Self::remove_stale_links`], after these are in place.
    pub(super) fn attach_sock(&mut self, cgroup: PathBuf) -> Result<()> {
        let dir =
            File::open(&cgroup).map_err(Error::io(format!("opening {}", cgroup.display())))?;
        let mut pins = Vec::new();
        // A cgroup link takes no attach flags: links always sit beside other programs and
        // links on the same hook (what BPF_F_ALLOW_MULTI is for the older attach call).
        for (name, hook) in program_names::SOCK_ADDR {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let link = prog
                .attach(&dir, CgroupAttachMode::Single)
                .and_then(|id| prog.take_link(id));
            let id = prog.info().map(|i| i.id()).unwrap_or_default();
            pins.push(self.pin_sock_link(link, name, hook, id, &cgroup)?);
        }
        let (name, hook) = (program_names::SOCK_RELEASE, "release");
        let prog: &mut CgroupSock = program(&mut self.ebpf, name)?;
        let link = prog
            .attach(&dir, CgroupAttachMode::Single)
            .and_then(|id| prog.take_link(id));
        let id = prog.info().map(|i| i.id()).unwrap_or_default();
        pins.push(self.pin_sock_link(link, name, hook, id, &cgroup)?);
        info!(cgroup = %cgroup.display(), "socket datapath attached");
        self.sock = Some((cgroup, pins));
        Ok(())
    }

    /// Pins the cgroup link of socket program `name` (program id `id`) on `hook`, just
    /// attached to `cgroup` (or the error of attaching it); returns the pin's path.
    fn pin_sock_link<L: TryInto<FdLink>>(
        &self,
        link: std::result::Result<L, aya::programs::ProgramError>,
        name: &str,
        hook: &str,
        id: u32,
        cgroup: &Path,
    ) -> Result<PathBuf>
    where
        L::Error: std::fmt::Display,
    {
        let what = || format!("attaching {name} to {} ({hook})", cgroup.display());
        let link = link.map_err(|source| Error::Program {
            what: what(),
            source,
        })?;
        let path = self.links_dir.join(sock_link_file(hook, id));
        pin_link(link.try_into(), &path, &what)?;
        Ok(path)
    }

    /// The cgroup the socket datapath is attached to.
    pub fn sock_cgroup(&self) -> Option<&Path> {
        self.sock.as_ref().map(|(c, _)| c.as_path())
    }
}
