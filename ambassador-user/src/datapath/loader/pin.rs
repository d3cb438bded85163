//! The pin directory: on a bpf filesystem, locked by one daemon at a time, and removed whole by
//! `ambassador uninstall`.

use std::{ffi::CString, fs::File, path::Path};

use crate::error::{Error, Result};

/// The default pin directory (`--pin-path`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ambassador";

/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Creates `dir` on a bpf filesystem (refusing any other filesystem) and locks it.
pub(super) fn prepare_pin_dir(dir: &Path) -> Result<File> {
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
pub(super) fn lock_pin_dir(dir: &Path) -> Result<File> {
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
pub(super) fn is_bpffs(path: &Path) -> Result<bool> {
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
