//! The `tc` datapath's interfaces: DNAT on each `--iface` interface's ingress, reverse NAT on
//! its egress (TCX links pinned and adopted, or clsact filters before Linux 6.6), and the
//! ports of `--iface` bridges followed as containers come and go.

use ambassador_common::program_names;
use aya::programs::{
    links::FdLink,
    tc::{self, NlOptions, TcAttachOptions},
    LinkOrder, TcAttachType,
};
use tracing::{debug, info, warn};

use super::{adopt, classifier, link_file, pin_link, Attachment, Datapath};
use crate::{
    datapath::netlink,
    error::{Error, Result},
};

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
            pin_link(FdLink::try_from(link), &path, &what)?;
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
