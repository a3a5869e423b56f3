//! The node datapath's service calls: [`NodeDatapath::sync_services`] and
//! [`NodeDatapath::lb_services`] on the node's pinned service maps.

use super::{sync, LbService};
use crate::bpffs::PinLayout;
use crate::{node::LbAlgorithm, policy_map::SyncReport, NodeDatapath, Result};

impl NodeDatapath {
    /// Make the node's service maps hold exactly `services` (the whole
    /// desired state): only what differs is written, in an order where a
    /// packet never sees a frontend without its backends or a half-written
    /// slot set; invalid input is refused whole with an error naming the
    /// service, and nothing is written. The node's LB algorithm
    /// (`NodeSettings::lb_algorithm`) decides whether Maglev tables are
    /// written: after changing it, sync again. NodePorts with external
    /// traffic local get the backends among this node's endpoints at the
    /// time of the call: sync again after attaching or detaching one.
    pub fn sync_services(&self, services: &[LbService]) -> Result<SyncReport> {
        let maglev = self.settings()?.lb_algorithm == LbAlgorithm::Maglev;
        Ok(sync::sync_services(&self.maps_dir(), services, maglev)?)
    }

    /// The services the node's maps hold, sorted by frontend.
    pub fn lb_services(&self) -> Result<Vec<LbService>> {
        Ok(sync::read_services(&self.maps_dir())?)
    }
}
