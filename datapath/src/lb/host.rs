//! The node's own traffic to ClusterIPs: `bpf_svc.c` on the tc egress of a
//! device the agent routes the service range to (without ARP, e.g. a dummy
//! device, with the node's address as the route's source). Loaded as the other node-wide
//! programs are (the node's maps, the node's event ring), its link
//! pinned under the node's `links/svc-<ifindex>`, so an agent restart keeps
//! it.

use crate::bpffs::PinLayout;
use std::fs;

use aya::programs::TcAttachType;

use crate::{io_err, node::endpoint::attach_tcx, Error, NodeDatapath, Result};

/// The service device's program (`bpf_svc.c`).
pub(crate) const PROG_TO_SERVICE: &str = "mb_to_service";

impl NodeDatapath {
    /// Translate what the node's own processes send to ClusterIPs: attach
    /// `mb_to_service` to the tc egress of device `ifindex` (in this
    /// thread's network namespace), the device the service range is routed
    /// to. Loads the program the first time; idempotent per device.
    pub fn attach_service_device(&self, ifindex: u32) -> Result<()> {
        let ifname = nix::net::if_::if_indextoname(ifindex).map_err(|e| {
            Error::Invalid(format!(
                "service device: ifindex {ifindex}: no such device in this network namespace ({e})"
            ))
        })?;
        let ifname = ifname.to_string_lossy().into_owned();
        let prog_pin = self.load_node_prog(crate::loader::objects::SVC, PROG_TO_SERVICE)?;
        let link = self.links_dir().join(format!("svc-{ifindex}"));
        if link.exists() {
            return Ok(());
        }
        attach_tcx(
            &prog_pin,
            PROG_TO_SERVICE,
            &ifname,
            TcAttachType::Egress,
            &link,
        )
    }

    /// Stop translating on device `ifindex` (unpin its link). Not attached
    /// is not an error.
    pub fn detach_service_device(&self, ifindex: u32) -> Result<()> {
        let link = self.links_dir().join(format!("svc-{ifindex}"));
        match fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(&link, "unpin service device link")(e))
            }
            _ => Ok(()),
        }
    }
}
