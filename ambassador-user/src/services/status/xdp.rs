//! The `xdp` datapath's part of the status: what became of the frames it translated, and
//! which of its interfaces take redirected frames.

use std::{fmt::Write as _, path::Path};

use ambassador_common::xdp::target;
use serde::Serialize;

use crate::{
    datapath::{loader, maps::Maps, netdev, netlink},
    error::Result,
    services::metrics::{Kind, Page},
};

/// The `xdp` datapath's forwarding.
#[derive(Debug, Serialize)]
pub struct XdpStatus {
    /// Translated frames by what became of them (`redirected`, `sent_back`; the others went
    /// to the stack, translated, and say why).
    pub forward: std::collections::BTreeMap<&'static str, u64>,
    /// The interfaces the program runs on.
    pub interfaces: Vec<XdpInterface>,
}

/// One interface the XDP program runs on.
#[derive(Debug, Serialize)]
pub struct XdpInterface {
    /// Its name.
    pub name: String,
    /// Whether frames for it are redirected to it; when not, they go through the stack.
    pub takes_redirects: bool,
    /// How to make it take them, when it does not.
    pub fix: Option<&'static str>,
}

/// Reads it, when the links pinned under `pin_dir` include XDP ones (`None` otherwise).
pub(super) fn read(maps: &Maps, pin_dir: &Path) -> Result<Option<XdpStatus>> {
    let names = loader::xdp_interfaces(pin_dir);
    if names.is_empty() {
        return Ok(None);
    }
    let targets = maps.xdp_targets()?;
    let links = netlink::links().unwrap_or_default();
    // Whether the kernel says which interfaces take redirects (the daemon's rule otherwise).
    let reported = netdev::xdp_features().is_ok_and(|f| f.is_some());
    let interfaces = names
        .into_iter()
        .map(|name| {
            let link = links.iter().find(|l| l.name == *name);
            let takes = link.is_some_and(|l| {
                targets
                    .get(&l.index)
                    .is_some_and(|f| f & target::NDO_XMIT != 0)
            });
            XdpInterface {
                takes_redirects: takes,
                fix: (!takes)
                    .then(|| netdev::redirect_fix(link.and_then(|l| l.kind.as_deref()), reported)),
                name,
            }
        })
        .collect();
    Ok(Some(XdpStatus {
        forward: maps.xdp_forward()?,
        interfaces,
    }))
}

/// Two lines of the report.
pub(super) fn render(x: &XdpStatus, out: &mut String) {
    let counts: Vec<String> = x.forward.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "xdp forwarding: {}", counts.join(" "));
    let ifaces: Vec<String> = x
        .interfaces
        .iter()
        .map(|i| match i.fix {
            None => format!("{} takes redirects", i.name),
            Some(fix) => format!("{} does not (frames through the stack; fix: {fix})", i.name),
        })
        .collect();
    let _ = writeln!(out, "xdp interfaces: {}", ifaces.join("; "));
}

/// Its metrics.
pub(super) fn write_metrics(x: &XdpStatus, page: &mut Page) {
    page.family(
        "ambassador_xdp_forward_total",
        Kind::Counter,
        "Frames the xdp datapath translated, by what became of them: redirected or sent_back at XDP; the others went to the stack, translated (target_cannot_xmit: the next hop's interface cannot take redirected frames).",
    );
    for (outcome, n) in &x.forward {
        page.sample(
            "ambassador_xdp_forward_total",
            &[("outcome", outcome)],
            *n as f64,
        );
    }
    page.family(
        "ambassador_xdp_takes_redirects",
        Kind::Gauge,
        "Whether an interface the xdp datapath runs on takes redirected frames (0: frames for it go through the stack).",
    );
    for i in &x.interfaces {
        page.sample(
            "ambassador_xdp_takes_redirects",
            &[("iface", &i.name)],
            if i.takes_redirects { 1.0 } else { 0.0 },
        );
    }
}
