//! The `xdp` datapath's own maps: which interfaces it may redirect to (kept by the daemon) and
//! what it did with the frames it translated.

use std::collections::BTreeMap;

use ambassador_common::{map_names as names, xdp::Forward};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};

use super::{ignore_missing, map_err, summed, typed, Maps};
use crate::error::Result;

/// The two maps.
pub(super) struct XdpMaps {
    targets: HashMap<MapData, u32, u32>,
    forward: PerCpuArray<MapData, u64>,
}

impl XdpMaps {
    pub(super) fn build(take: &mut impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            targets: typed(names::XDP_TARGETS, take)?,
            forward: typed(names::XDP_FORWARD, take)?,
        })
    }
}

impl Maps {
    /// Frames per forwarding outcome, summed over CPUs (empty for a daemon of a version
    /// before these counters).
    pub fn xdp_forward(&self) -> Result<BTreeMap<&'static str, u64>> {
        let Some(xdp) = &self.xdp else {
            return Ok(BTreeMap::new());
        };
        summed(
            &xdp.forward,
            names::XDP_FORWARD,
            Forward::ALL.map(|f| (f as u32, f.name())),
        )
    }

    /// Interface index -> `ambassador_common::xdp::target` flags, as the datapath reads them.
    pub fn xdp_targets(&self) -> Result<BTreeMap<u32, u32>> {
        let Some(xdp) = &self.xdp else {
            return Ok(BTreeMap::new());
        };
        xdp.targets
            .iter()
            .map(|r| r.map_err(map_err(names::XDP_TARGETS, "listing")))
            .collect()
    }

    /// Makes the table of redirect targets `want`: changed entries written, gone ones removed.
    pub fn set_xdp_targets(&mut self, want: &BTreeMap<u32, u32>) -> Result<()> {
        let have = self.xdp_targets()?;
        let Some(xdp) = &mut self.xdp else {
            return Ok(());
        };
        for (index, flags) in want {
            if have.get(index) != Some(flags) {
                xdp.targets.insert(index, flags, 0).map_err(map_err(
                    names::XDP_TARGETS,
                    format!("writing interface {index}"),
                ))?;
            }
        }
        for index in have.keys().filter(|i| !want.contains_key(i)) {
            ignore_missing(xdp.targets.remove(index)).map_err(map_err(
                names::XDP_TARGETS,
                format!("removing interface {index}"),
            ))?;
        }
        Ok(())
    }
}
