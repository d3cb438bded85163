//! The programs' TCX links: pinned per interface and direction, adopted by the next daemon,
//! and never shared with another instance.

use std::path::Path;

use ambassador_common::program_names;
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf,
};

use crate::{
    datapath::netlink,
    error::{Error, Result},
};

/// Program ids behind the links pinned in `links_dir`: attachments of an earlier daemon on
/// this pin directory, which this one adopts.
pub(super) fn pinned_program_ids(links_dir: &Path) -> Vec<u32> {
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
pub(super) fn link_file(iface: &str, direction: &str) -> String {
    let name = iface.replace('%', "%25").replace('.', "%2e");
    format!("{name}_{direction}")
}
/// File name of a socket program's cgroup link for `hook`: the program id keeps a new
/// daemon's links apart from the ones it replaces.
pub(super) fn sock_link_file(hook: &str, program_id: u32) -> String {
    format!("{SOCK_LINK_PREFIX}{hook}_{program_id}")
}
const SOCK_LINK_PREFIX: &str = "sock_";
/// The direction part of an XDP link's file name (`<iface>_xdp`).
pub(super) const XDP_SUFFIX: &str = "xdp";
/// What the links pinned in `links_dir` attach, from their file names: `tc <iface>` per
/// interface, `sock` for the socket datapath.
pub(super) fn describe(links_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let decode = |iface: &str| iface.replace("%2e", ".").replace("%25", "%");
            if let Some(iface) = name.strip_suffix("_ingress") {
                Some(format!("tc {}", decode(iface)))
            } else if let Some(iface) = name.strip_suffix(&format!("_{XDP_SUFFIX}")) {
                Some(format!("xdp {}", decode(iface)))
            } else {
                name.strip_prefix(SOCK_LINK_PREFIX)
                    .is_some_and(|hook| hook.starts_with("connect4_"))
                    .then(|| "sock".to_owned())
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
/// Swaps `prog` into the TCX link pinned at `path` (one atomic `bpf_link_update`).
pub(super) fn adopt(prog: &mut SchedClassifier, path: &Path) -> std::result::Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    // Only the pin holds the link from here on.
    drop(prog.take_link(id));
    Ok(())
}
/// The interfaces whose XDP links are pinned in `links_dir`.
pub(super) fn pinned_xdp_ifaces(links_dir: &Path) -> Vec<String> {
    describe(links_dir)
        .into_iter()
        .filter_map(|d| d.strip_prefix("xdp ").map(str::to_owned))
        .collect()
}

/// Swaps `prog` into the XDP link pinned at `path`, as [`adopt`] does for TC.
pub(super) fn adopt_xdp(prog: &mut Xdp, path: &Path) -> std::result::Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    drop(prog.take_link(id));
    Ok(())
}

/// Whether `iface` is a Linux bridge.
pub(super) fn is_bridge(iface: &str) -> bool {
    netlink::links().is_ok_and(|links| {
        links
            .iter()
            .any(|l| l.name == iface && l.kind.as_deref() == Some("bridge"))
    })
}
pub(super) fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .expect("checked by load()")
}
/// Refuses an interface where another instance's programs are attached already (programs
/// behind this pin directory's own links, `ours`, are adopted instead).
pub(super) fn refuse_foreign_attachments(iface: &str, ours: &[u32]) -> Result<()> {
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_links_say_what_they_attach() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            link_file("eth0.100", "ingress"),
            link_file("eth0.100", "egress"),
            link_file("c0", "ingress"),
            sock_link_file("connect4", 7),
            sock_link_file("recvmsg4", 8),
        ] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        assert_eq!(describe(dir.path()), ["sock", "tc c0", "tc eth0.100"]);
        std::fs::write(dir.path().join(link_file("uplink.7", XDP_SUFFIX)), "").unwrap();
        assert_eq!(
            describe(dir.path()),
            ["sock", "tc c0", "tc eth0.100", "xdp uplink.7"]
        );
    }

    #[test]
    fn link_files_have_no_dots_and_stay_distinct() {
        assert_eq!(link_file("c0", "ingress"), "c0_ingress");
        assert_eq!(link_file("eth0.100", "egress"), "eth0%2e100_egress");
        assert_ne!(link_file("a%2eb", "egress"), link_file("a.b", "egress"));
        assert!(!link_file("a.b.c", "ingress").contains('.'));
    }
}
