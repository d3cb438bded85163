//! The monitor's maps: the switch that turns the datapath's flow events on while a monitor
//! listens, and the count of events a full ring lost.

use ambassador_common::map_names as names;
use aya::maps::{Array, Map, MapData, PerCpuArray};

use super::{map_err, typed, Maps};
use crate::error::Result;

/// The two maps.
pub(super) struct MonitorMaps {
    switch: Array<MapData, u32>,
    lost: PerCpuArray<MapData, u64>,
}

impl MonitorMaps {
    pub(super) fn build(take: &mut impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            switch: typed(names::MONITOR, take)?,
            lost: typed(names::EVENTS_LOST, take)?,
        })
    }
}

impl Maps {
    /// Turns the datapath's flow events on or off (nothing to do for pins from before them).
    pub fn set_monitor(&mut self, on: bool) -> Result<()> {
        match &mut self.monitor {
            Some(m) => m
                .switch
                .set(0, u32::from(on), 0)
                .map_err(map_err(names::MONITOR, "writing")),
            None => Ok(()),
        }
    }

    /// Flow events lost because the ring was full, summed over CPUs.
    pub fn events_lost(&self) -> Result<u64> {
        match &self.monitor {
            Some(m) => Ok(m
                .lost
                .get(&0, 0)
                .map_err(map_err(names::EVENTS_LOST, "reading"))?
                .iter()
                .sum()),
            None => Ok(0),
        }
    }
}
