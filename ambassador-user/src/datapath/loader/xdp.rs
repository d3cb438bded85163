//! The `xdp` datapath's interfaces: the client-facing ones (`--iface`), the ones towards the
//! backends (followed from the routes), and which of them can take redirected frames.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Once,
};

use ambassador_common::{program_names, xdp::target};
use aya::programs::{links::FdLink, Xdp, XdpMode};
use tracing::{debug, info, warn};

use super::{adopt_xdp, link_file, pin_link, program, Datapath, XdpAttach, XDP_SUFFIX};
use crate::{
    datapath::{netdev, netlink},
    error::{Error, Result},
};

/// An interface the XDP program is attached to.
pub(super) struct XdpIface {
    /// Its pinned link.
    pub(super) path: PathBuf,
    /// A `--iface` (client-facing) interface, rather than one found from the routes to the
    /// backends (which goes when no backend is behind it any more).
    clients: bool,
    /// Whether it took redirected frames when last looked at (`None`: not looked at yet).
    takes_redirects: Option<bool>,
}

impl XdpIface {
    fn new(path: PathBuf, clients: bool) -> Self {
        Self {
            path,
            clients,
            takes_redirects: None,
        }
    }
}

impl Datapath {
    /// Whether the XDP datapath runs (its backend-facing interfaces need following).
    pub fn has_xdp(&self) -> bool {
        self.xdp.is_some()
    }

    /// Attaches the XDP program to `iface` (a `--iface` one when `clients`), adopting the
    /// link an earlier daemon pinned there; native mode where the driver has it, unless
    /// `--xdp-attach` says otherwise.
    pub(super) fn attach_xdp(&mut self, iface: &str, clients: bool) -> Result<()> {
        let Some((how, attached)) = &mut self.xdp else {
            return Ok(());
        };
        if let Some(a) = attached.get_mut(iface) {
            a.clients |= clients;
            return Ok(());
        }
        let name = program_names::XDP;
        let what = || format!("attaching {name} to {iface} (XDP)");
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        let path = self.links_dir.join(link_file(iface, XDP_SUFFIX));
        if path.exists() {
            match adopt_xdp(prog, &path) {
                Ok(()) => {
                    info!(%iface, clients, "XDP datapath adopted (program replaced in the pinned link)");
                    attached.insert(iface.to_owned(), XdpIface::new(path, clients));
                    return Ok(());
                }
                Err(e) => {
                    debug!(%iface, error = %e, "pinned XDP link not adoptable; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let modes: &[(XdpMode, &str)] = match how {
            XdpAttach::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
            XdpAttach::Native => &[(XdpMode::Driver, "native")],
            XdpAttach::Generic => &[(XdpMode::Skb, "generic")],
        };
        let mut failure = None;
        for (mode, mode_name) in modes {
            match prog.attach(iface, *mode) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(|source| Error::Program {
                        what: what(),
                        source,
                    })?;
                    pin_link(FdLink::try_from(link), &path, &what)?;
                    info!(%iface, mode = mode_name, clients, "XDP datapath attached");
                    attached.insert(iface.to_owned(), XdpIface::new(path, clients));
                    return Ok(());
                }
                Err(e) => {
                    debug!(%iface, mode = mode_name, error = %e, "XDP attach refused");
                    failure = Some(e);
                }
            }
        }
        Err(Error::Program {
            what: what(),
            source: failure.expect("at least one mode tried"),
        })
    }

    /// Follows the interfaces towards the backends (`backends`: their addresses): the XDP
    /// program is attached to every interface a route to one of them leaves through, so their
    /// replies are translated back before the stack, and leaves the ones no backend is behind
    /// any more. Loopback is never one (a backend on this host is the stack's to reach).
    pub fn sync_xdp_backends(&mut self, backends: impl IntoIterator<Item = IpAddr>) {
        if self.xdp.is_none() {
            return;
        }
        let links = match netlink::links() {
            Ok(l) => l,
            Err(e) => {
                warn!("listing interfaces failed: {e}");
                return;
            }
        };
        let mut want = BTreeSet::new();
        for ip in backends.into_iter().collect::<BTreeSet<_>>() {
            match netlink::route_oif(ip) {
                Ok(Some(index)) => {
                    if let Some(l) = links.iter().find(|l| l.index == index && l.name != "lo") {
                        want.insert(l.name.clone());
                    }
                }
                Ok(None) => debug!(%ip, "no route to a backend"),
                Err(e) => warn!(%ip, "looking up the route to a backend failed: {e}"),
            }
        }
        let mut attached_now = false;
        for iface in &want {
            let new = !self
                .xdp
                .as_ref()
                .is_some_and(|(_, a)| a.contains_key(iface));
            match self.attach_xdp(iface, false) {
                Ok(()) => attached_now |= new,
                Err(e) => warn!(%iface, "attaching XDP towards backends failed: {e}"),
            }
        }
        // A new attachment may run in generic mode, which changes how its frames are sent.
        if attached_now {
            self.sync_xdp_targets();
        }
        let Some((_, attached)) = &mut self.xdp else {
            return;
        };
        let existing: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let gone: Vec<String> = attached
            .iter()
            .filter(|(iface, a)| {
                (!a.clients && !want.contains(*iface)) || !existing.contains(&iface.as_str())
            })
            .map(|(iface, _)| iface.clone())
            .collect();
        for iface in gone {
            if let Some(a) = attached.remove(&iface) {
                let _ = std::fs::remove_file(&a.path);
                info!(%iface, "XDP datapath detached (no backend behind it any more)");
            }
        }
    }

    /// Writes the table of redirect targets the XDP program reads: which of this namespace's
    /// interfaces take redirected frames now. Cheap (two netlink dumps): the daemon runs it
    /// every second, as GRO or a peer's XDP program can come and go at any time.
    pub fn sync_xdp_targets(&mut self) {
        if let Some(table) = self.xdp_targets() {
            if let Err(e) = self.maps.set_xdp_targets(&table) {
                warn!("writing the XDP redirect targets failed: {e}");
            }
        }
    }

    /// The table of redirect targets (interface index -> `ambassador_common::xdp::target`
    /// flags) for this namespace's interfaces as they are now; `None` when the XDP datapath
    /// does not run. Says in the log, for each interface the program runs on, whenever it
    /// starts or stops taking redirected frames, and how to make it take them.
    fn xdp_targets(&mut self) -> Option<BTreeMap<u32, u32>> {
        let (_, attached) = self.xdp.as_mut()?;
        let links = match netlink::links() {
            Ok(l) => l,
            Err(e) => {
                warn!("listing interfaces failed: {e}");
                return None;
            }
        };
        let features = match netdev::xdp_features() {
            Ok(f) => f,
            Err(e) => {
                warn!("reading the interfaces' XDP features (netdev netlink family) failed: {e}");
                return None;
            }
        };
        static UNREPORTED: Once = Once::new();
        if features.is_none() {
            UNREPORTED.call_once(|| {
                warn!("this kernel does not report which interfaces take redirected XDP frames (the netdev netlink family, Linux 6.3): the XDP datapath redirects to every interface but veths, whose frames go through the stack, translated (a veth would drop them unless its peer has an XDP program, or GRO on Linux 5.13+, which cannot be seen from here)");
            });
        }
        let mut table = BTreeMap::new();
        for link in &links {
            // Unreported (before 6.3): a driver with native XDP transmits redirected frames,
            // but a veth only under conditions on its peer: never a silent drop, so not veths.
            let xmit = match &features {
                Some(f) => f
                    .get(&link.index)
                    .is_some_and(|bits| bits & netdev::XDP_ACT_NDO_XMIT != 0),
                None => link.kind.as_deref() != Some("veth"),
            };
            let mut flags = 0;
            if xmit {
                flags |= target::NDO_XMIT;
            }
            if link.xdp == Some("generic") {
                flags |= target::GENERIC;
            }
            if flags != 0 {
                table.insert(link.index, flags);
            }
            if let Some(a) = attached.get_mut(&link.name) {
                if a.takes_redirects != Some(xmit) {
                    a.takes_redirects = Some(xmit);
                    say_redirects(link, xmit, features.is_some());
                }
            }
        }
        Some(table)
    }
}

/// Logs whether `link`, one the XDP program runs on, takes redirected frames, and if not, how
/// to make it (`reported`: whether the kernel says which interfaces do).
fn say_redirects(link: &netlink::Link, xmit: bool, reported: bool) {
    let iface = &link.name;
    if xmit {
        info!(%iface, "XDP: frames for this interface are redirected to it");
        return;
    }
    let fix = netdev::redirect_fix(link.kind.as_deref(), reported);
    warn!(%iface, "XDP: this interface cannot take redirected frames, so frames for it go through the stack, translated (slower, nothing lost); fix: {fix}");
}
