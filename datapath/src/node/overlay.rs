//! The overlay between nodes, user-space side: the underlay device's tc programs
//! (`bpf/bpf_host.c`: Geneve decapsulation on ingress, the node's own traffic to other
//! nodes' pods encapsulated on egress), the VXLAN collect_md device `mb_vxlan` and its
//! tc program (`bpf/bpf_overlay.c`), and the facts about devices the node settings need
//! (ifindex, MTU, MAC; the pods' MTU under an overlay).
//!
//! Both programs are node-wide: loaded once into the node directory with the node's maps,
//! their tcx links pinned under `links/underlay-<ifindex>/` and `links/overlay-<ifindex>/`
//! so an agent restart keeps them. Their drop and trace events go to a node-wide ring
//! buffer pinned under `events/` (not `maps/`, whose every map an endpoint's object takes
//! from the node: an endpoint keeps its own ring).
//!
//! Devices are read and created over rtnetlink (`netlink`). Everything here must run in
//! the node's network namespace (names and ifindexes are resolved there).

use crate::bpffs::PinLayout;
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{SchedClassifier, TcAttachType},
    EbpfLoader,
};

use netlink_packet_route::link::{InfoKind, InfoVxlan};

use super::{endpoint::attach_tcx, netlink, NodeDatapath, Overlay};
use crate::{feature_error, io_err, loader::prog_mut, Error, Result};

/// The VXLAN collect_md device the node creates in vxlan mode.
pub const VXLAN_DEVICE: &str = "mb_vxlan";
/// VXLAN's UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Geneve's UDP port (IANA).
pub const GENEVE_PORT: u16 = 6081;
/// Bytes VXLAN and Geneve (no options) add to a pod's IP packet on an IPv4 underlay:
/// outer IPv4 20 + UDP 8 + VXLAN/Geneve 8 + the inner Ethernet header 14.
pub const ENCAP_OVERHEAD: u16 = 50;

/// tc ingress of the VXLAN device: decapsulated packets to local pods.
pub(crate) const PROG_FROM_OVERLAY: &str = "mb_from_overlay";
/// tc ingress of the underlay device: Geneve decapsulation, everything else passes.
pub(crate) const PROG_FROM_NETDEV: &str = "mb_from_netdev";
/// tc egress of the underlay device: the node's own packets to other nodes' pods into the
/// tunnel, everything else passes.
pub(crate) const PROG_TO_NETDEV: &str = "mb_to_netdev";
/// The event maps of the node-wide programs, pinned under `events/`.
pub(crate) const EVENT_MAPS: [&str; 3] = ["mb_events", "mb_events_lost", "mb_event_rl"];

/// A network device of the node, as the node settings need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// Its ifindex in the node's namespace.
    pub ifindex: u32,
    /// Its MTU.
    pub mtu: u16,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// The MTU pods get under `overlay` on an underlay of `underlay_mtu`: the underlay's
/// minus [`ENCAP_OVERHEAD`] when packets are encapsulated, the underlay's natively.
pub fn pod_mtu(overlay: Overlay, underlay_mtu: u16) -> u16 {
    match overlay {
        Overlay::Native => underlay_mtu,
        Overlay::Vxlan | Overlay::Geneve => underlay_mtu.saturating_sub(ENCAP_OVERHEAD),
    }
}

fn netlink_err<'a>(what: &'static str, dev: &'a str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::Device(format!("{dev}: {what}: {e}"))
}

/// The ifindex, MTU and MAC of the device `ifname`.
pub fn device(ifname: &str) -> Result<Device> {
    let link = netlink::link_by_name(ifname)
        .map_err(netlink_err("read device", ifname))?
        .ok_or_else(|| Error::Device(format!("{ifname}: no such network device")))?;
    let mtu = u16::try_from(link.mtu)
        .map_err(|_| Error::Device(format!("{ifname}: MTU {} does not fit 16 bits", link.mtu)))?;
    let mac: [u8; 6] = link.mac.as_slice().try_into().map_err(|_| {
        Error::Device(format!(
            "{ifname}: address {:02x?} is not an Ethernet MAC",
            link.mac
        ))
    })?;
    Ok(Device {
        ifindex: link.index,
        mtu,
        mac,
    })
}

/// Create (once) the VXLAN collect_md device [`VXLAN_DEVICE`] (`external`, UDP 4789, no
/// learning) with the pods' MTU for `underlay_mtu`, and bring it up; returns its ifindex.
/// A device of that name that is not such a VXLAN device is an error, never replaced.
pub fn ensure_vxlan_device(underlay_mtu: u16) -> Result<u32> {
    let mtu = u32::from(pod_mtu(Overlay::Vxlan, underlay_mtu));
    let dev = VXLAN_DEVICE;
    let link = match netlink::link_by_name(dev).map_err(netlink_err("read device", dev))? {
        Some(link) => link,
        None => {
            netlink::add_vxlan(dev, VXLAN_PORT, mtu)
                .map_err(netlink_err("create VXLAN device", dev))?;
            netlink::link_by_name(dev)
                .map_err(netlink_err("read device", dev))?
                .ok_or_else(|| Error::Device(format!("{dev}: gone right after its creation")))?
        }
    };
    if !is_our_vxlan(&link) {
        return Err(Error::Device(format!(
            "{dev} exists but is not a collect_md (external) VXLAN device on port \
             {VXLAN_PORT}: kind {:?}",
            link.kind
        )));
    }
    netlink::set_up_with_mtu(link.index, mtu).map_err(netlink_err("set MTU and up", dev))?;
    Ok(link.index)
}

impl NodeDatapath {
    fn events_dir(&self) -> PathBuf {
        self.dir.join("events")
    }

    /// Load a node-wide tc object once: the node's maps from `maps/`, its event ring under
    /// `events/`; the program pinned under `progs/`. Returns the program's pin.
    pub(crate) fn load_node_prog(&self, bytes: &[u8], name: &'static str) -> Result<PathBuf> {
        let pin = self.progs_dir().join(name);
        if pin.exists() {
            return Ok(pin);
        }
        let events = self.events_dir();
        fs::create_dir_all(&events).map_err(io_err(&events, "create pin directory"))?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(self.maps_dir());
        for m in EVENT_MAPS {
            loader.map_pin_path(m, events.join(m));
        }
        let mut obj = loader
            .load(bytes)
            .map_err(|e| feature_error("tc programs (BPF_PROG_TYPE_SCHED_CLS)", e))?;
        let p: &mut SchedClassifier = prog_mut(&mut obj, name)?;
        p.load()
            .map_err(|e| feature_error("tc programs (BPF_PROG_TYPE_SCHED_CLS)", e))?;
        p.pin(&pin).map_err(|e| Error::Io {
            path: pin.clone(),
            what: "pin program",
            source: io::Error::other(e.to_string()),
        })?;
        Ok(pin)
    }

    /// Load (once) both node-wide overlay programs, pinned under `progs/`, without
    /// attaching them ([`NodeDatapath::attach_underlay`] and
    /// [`NodeDatapath::setup_overlay`] attach them; tests run them with
    /// `BPF_PROG_TEST_RUN`).
    pub fn load_overlay_programs(&self) -> Result<()> {
        self.load_node_prog(crate::loader::objects::HOST, PROG_FROM_NETDEV)?;
        self.load_node_prog(crate::loader::objects::HOST, PROG_TO_NETDEV)?;
        self.load_node_prog(crate::loader::objects::OVERLAY, PROG_FROM_OVERLAY)?;
        Ok(())
    }

    /// The node-wide programs' event ring (`events/mb_events`): drops and traces of the
    /// underlay and VXLAN devices' programs. One consumer, as an endpoint's ring.
    pub fn events(&self) -> Result<crate::events::EventReader> {
        let name = "mb_events";
        let path = self.events_dir().join(name);
        if !path.exists() {
            return Err(Error::NotAttached(self.events_dir()));
        }
        let map =
            aya::maps::MapData::from_pin(&path).map_err(|source| Error::Map { name, source })?;
        let rb = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(map))
            .map_err(|source| Error::Map { name, source })?;
        Ok(crate::events::EventReader::new(rb))
    }

    /// Attach `prog` to `ifname`'s tc `hook` under `links/<kind>-<ifindex>/`, replacing
    /// the links of an earlier device of that kind (one underlay, one VXLAN device).
    fn attach_node_prog(
        &self,
        prog: &Path,
        name: &'static str,
        kind: &str,
        dev: &str,
        hook: TcAttachType,
    ) -> Result<()> {
        let ifindex = device(dev)?.ifindex;
        let dir = self.links_dir().join(format!("{kind}-{ifindex}"));
        self.remove_links(kind, Some(&dir))?;
        let pin = dir.join(name);
        if pin.exists() {
            return Ok(());
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir, "create link directory"))?;
        attach_tcx(prog, name, dev, hook, &pin)
    }

    /// Unpin (detach) the links of `kind`, but for `keep`.
    pub(crate) fn remove_links(&self, kind: &str, keep: Option<&Path>) -> Result<()> {
        let links = self.links_dir();
        let Ok(entries) = fs::read_dir(&links) else {
            return Ok(());
        };
        let prefix = format!("{kind}-");
        for e in entries.flatten() {
            let path = e.path();
            let ours = e.file_name().to_string_lossy().starts_with(&prefix);
            if ours && Some(path.as_path()) != keep {
                fs::remove_dir_all(&path).map_err(io_err(&path, "unpin links"))?;
            }
        }
        Ok(())
    }

    /// Attach `mb_from_netdev` to the underlay device `ifname`'s tc ingress (Geneve
    /// decapsulation; everything else passes untouched) and `mb_to_netdev` to its tc
    /// egress (the node's own packets to other nodes' pods into the tunnel), and write the
    /// device's ifindex, MTU and MAC into the node settings. Idempotent (an underlay an
    /// older agent attached gets the egress program added); a different underlay
    /// replaces the earlier one.
    pub fn attach_underlay(&self, ifname: &str) -> Result<()> {
        let dev = device(ifname)?;
        let mut s = self.settings()?;
        s.underlay_ifindex = dev.ifindex;
        s.underlay_mtu = dev.mtu;
        s.underlay_mac = dev.mac;
        self.set_settings(&s)?;
        let prog = self.load_node_prog(crate::loader::objects::HOST, PROG_FROM_NETDEV)?;
        self.attach_node_prog(
            &prog,
            PROG_FROM_NETDEV,
            "underlay",
            ifname,
            TcAttachType::Ingress,
        )?;
        let prog = self.load_node_prog(crate::loader::objects::HOST, PROG_TO_NETDEV)?;
        self.attach_node_prog(
            &prog,
            PROG_TO_NETDEV,
            "underlay",
            ifname,
            TcAttachType::Egress,
        )
    }

    /// Detach the underlay device's program (the settings keep naming the device).
    pub fn detach_underlay(&self) -> Result<()> {
        self.remove_links("underlay", None)
    }

    /// Set up what the node settings' overlay mode needs: in vxlan mode the VXLAN
    /// collect_md device (created once, MTU = underlay MTU - 50) with `mb_from_overlay` on
    /// its tc ingress, its ifindex written into the settings; in the other modes, no
    /// VXLAN device (one left from vxlan mode is removed).
    pub fn setup_overlay(&self) -> Result<()> {
        let mut s = self.settings()?;
        if s.overlay != Overlay::Vxlan {
            return self.teardown_overlay();
        }
        let ifindex = ensure_vxlan_device(s.underlay_mtu)?;
        if s.overlay_ifindex != ifindex {
            s.overlay_ifindex = ifindex;
            self.set_settings(&s)?;
        }
        let prog = self.load_node_prog(crate::loader::objects::OVERLAY, PROG_FROM_OVERLAY)?;
        self.attach_node_prog(
            &prog,
            PROG_FROM_OVERLAY,
            "overlay",
            VXLAN_DEVICE,
            TcAttachType::Ingress,
        )
    }

    /// Detach `mb_from_overlay` and delete the VXLAN device, if there is one (a device of
    /// that name that is not a collect_md VXLAN device is not ours and stays).
    pub fn teardown_overlay(&self) -> Result<()> {
        self.remove_links("overlay", None)?;
        let dev = VXLAN_DEVICE;
        if let Some(link) = netlink::link_by_name(dev).map_err(netlink_err("read device", dev))? {
            if is_our_vxlan(&link) {
                netlink::del_link(link.index).map_err(netlink_err("delete VXLAN device", dev))?;
            }
        }
        Ok(())
    }
}

/// A collect_md (external) VXLAN device on [`VXLAN_PORT`]: what [`ensure_vxlan_device`]
/// makes.
fn is_our_vxlan(link: &netlink::Link) -> bool {
    link.kind == Some(InfoKind::Vxlan)
        && link.vxlan.contains(&InfoVxlan::CollectMetadata(true))
        && link.vxlan.contains(&InfoVxlan::Port(VXLAN_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_lose_the_tunnel_headers_from_their_mtu_only_under_an_overlay() {
        assert_eq!(pod_mtu(Overlay::Vxlan, 1500), 1450);
        assert_eq!(pod_mtu(Overlay::Geneve, 9000), 8950);
        assert_eq!(pod_mtu(Overlay::Native, 1500), 1500);
        assert_eq!(pod_mtu(Overlay::Geneve, 40), 0, "never wraps");
    }
}
