//! The node's packet path: the node-wide pin directory (`<root>/node/{maps,progs,links}`)
//! that every tc program on the node shares, and each pod's tc programs on its host veth.
//!
//! [`NodeDatapath::load`] creates and pins the node-wide maps (`mb_node_config`,
//! `mb_ipcache`, `mb_endpoints`, `mb_ct`, `mb_tc_stats`, and whatever node-wide maps other
//! features add to `bpf/bpf_node.c`) and writes [`NodeSettings`]. Per pod,
//! [`NodeDatapath::attach_endpoint`] loads `bpf/bpf_lxc.c` once into the endpoint's own pin
//! directory (with its `mb_policy`, `mb_config`, `mb_events`: the socket hooks and the
//! packet path read one policy) wired to the node's maps, and attaches it with tcx links
//! pinned under the endpoint's `links/tc-<ifindex>/`, so an agent restart keeps them and
//! the endpoint's teardown detaches them.
//!
//! It must never attach to a device other than the endpoint's host veth, nor write a map
//! before the whole input was validated (the last good state stays in force).
//!
//! Rooms: this file (types, the node directory, settings), `endpoint` (attach, detach,
//! the endpoints map), `ipcache` (the node ipcache), `conntrack` (read-back, GC and the
//! packet counters), `prefilter` (the XDP prefilter on the underlay device).

mod conntrack;
pub(crate) mod endpoint;
mod ipcache;
mod netlink;
mod overlay;
mod prefilter;

pub use conntrack::{CtEntry, CtState, TcStat};
pub use overlay::{
    device, ensure_vxlan_device, pod_mtu, Device, ENCAP_OVERHEAD, GENEVE_PORT, VXLAN_DEVICE,
    VXLAN_PORT,
};
pub use prefilter::{
    parse_prefixes, PrefilterChanges, PrefilterError, PrefilterStats, XdpAttachMode, PREFILTER_MAX,
};

use std::{
    fmt, fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    maps::{Array, MapData},
    EbpfLoader,
};

use crate::{
    abi::{self, MbNodeConfig},
    bpffs::{check_bpffs, PinLayout},
    feature_error, io_err, Error, Result,
};

/// The node map every node directory has: its presence says "loaded".
const NODE_CONFIG: &str = "mb_node_config";

/// How packets to another node's pods travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlay {
    /// No encapsulation: the underlay routes pod CIDRs.
    #[default]
    Native,
    /// Kernel VXLAN device in collect_md mode, VNI = source identity.
    Vxlan,
    /// Geneve built and parsed in BPF, VNI = source identity.
    Geneve,
}

impl fmt::Display for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overlay::Native => "native",
            Overlay::Vxlan => "vxlan",
            Overlay::Geneve => "geneve",
        })
    }
}

impl FromStr for Overlay {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(Overlay::Native),
            "vxlan" => Ok(Overlay::Vxlan),
            "geneve" => Ok(Overlay::Geneve),
            other => Err(Error::Invalid(format!(
                "overlay {other:?}: expected native, vxlan or geneve"
            ))),
        }
    }
}

/// How a service's backend is chosen in tc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbAlgorithm {
    /// A random backend per new flow.
    #[default]
    Random,
    /// Maglev consistent hashing.
    Maglev,
}

impl fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        })
    }
}

impl FromStr for LbAlgorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(LbAlgorithm::Random),
            "maglev" => Ok(LbAlgorithm::Maglev),
            other => Err(Error::Invalid(format!(
                "lb algorithm {other:?}: expected random or maglev"
            ))),
        }
    }
}

/// The node's settings, as `mb_node_config` holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's underlay IPv4.
    pub node_ip4: Ipv4Addr,
    /// The underlay device (Geneve and NodePort), 0 = none.
    pub underlay_ifindex: u32,
    /// The VXLAN collect_md device (vxlan mode), else 0.
    pub overlay_ifindex: u32,
    /// MTU of the underlay device.
    pub underlay_mtu: u16,
    /// The underlay device's MAC.
    pub underlay_mac: [u8; 6],
    /// How packets reach other nodes' pods.
    pub overlay: Overlay,
    /// How tc picks a service backend.
    pub lb_algorithm: LbAlgorithm,
    /// Enforce endpoints' L3/L4 policy on packets (`MB_NODE_F_POLICY`); an endpoint's
    /// own `DatapathSettings::enforce_policy` must be on as well.
    pub policy: bool,
    /// A trace event per packet at each observation point (`MB_NODE_F_TRACE`; debug).
    pub trace: bool,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            node_ip4: Ipv4Addr::UNSPECIFIED,
            underlay_ifindex: 0,
            overlay_ifindex: 0,
            underlay_mtu: 1500,
            underlay_mac: [0; 6],
            overlay: Overlay::Native,
            lb_algorithm: LbAlgorithm::Random,
            policy: false,
            trace: false,
        }
    }
}

impl NodeSettings {
    /// Settings the kernel side cannot work with are refused before anything is written.
    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("node settings: {what}")));
        match self.overlay {
            Overlay::Vxlan if self.overlay_ifindex == 0 => {
                return bad("overlay vxlan needs overlay_ifindex (the VXLAN device), got 0".into())
            }
            Overlay::Geneve if self.underlay_ifindex == 0 || self.node_ip4.is_unspecified() => {
                return bad(format!(
                    "overlay geneve needs underlay_ifindex and node_ip4, got {} and {}",
                    self.underlay_ifindex, self.node_ip4
                ))
            }
            _ => {}
        }
        if self.underlay_mtu != 0 && self.underlay_mtu < 1280 {
            return bad(format!(
                "underlay_mtu {} is below 1280 (the IPv6 minimum)",
                self.underlay_mtu
            ));
        }
        Ok(())
    }

    fn to_abi(&self) -> MbNodeConfig {
        let mut flags = 0;
        if self.policy {
            flags |= abi::NODE_F_POLICY;
        }
        if self.trace {
            flags |= abi::NODE_F_TRACE;
        }
        MbNodeConfig {
            flags,
            node_ip4: u32::from_ne_bytes(self.node_ip4.octets()),
            underlay_ifindex: self.underlay_ifindex,
            overlay_ifindex: self.overlay_ifindex,
            underlay_mtu: self.underlay_mtu,
            overlay: match self.overlay {
                Overlay::Native => abi::OVERLAY_NATIVE,
                Overlay::Vxlan => abi::OVERLAY_VXLAN,
                Overlay::Geneve => abi::OVERLAY_GENEVE,
            },
            lb_algorithm: match self.lb_algorithm {
                LbAlgorithm::Random => abi::LB_RANDOM,
                LbAlgorithm::Maglev => abi::LB_MAGLEV,
            },
            underlay_mac: self.underlay_mac,
            pad: [0; 2],
        }
    }

    fn from_abi(c: &MbNodeConfig) -> Result<Self> {
        Ok(Self {
            node_ip4: Ipv4Addr::from(c.node_ip4.to_ne_bytes()),
            underlay_ifindex: c.underlay_ifindex,
            overlay_ifindex: c.overlay_ifindex,
            underlay_mtu: c.underlay_mtu,
            underlay_mac: c.underlay_mac,
            overlay: match c.overlay {
                abi::OVERLAY_NATIVE => Overlay::Native,
                abi::OVERLAY_VXLAN => Overlay::Vxlan,
                abi::OVERLAY_GENEVE => Overlay::Geneve,
                other => return Err(Error::Invalid(format!("mb_node_config: overlay {other}"))),
            },
            lb_algorithm: match c.lb_algorithm {
                abi::LB_RANDOM => LbAlgorithm::Random,
                abi::LB_MAGLEV => LbAlgorithm::Maglev,
                other => {
                    return Err(Error::Invalid(format!(
                        "mb_node_config: lb_algorithm {other}"
                    )))
                }
            },
            policy: c.flags & abi::NODE_F_POLICY != 0,
            trace: c.flags & abi::NODE_F_TRACE != 0,
        })
    }
}

/// A pod of this node, as its tc programs and `mb_endpoints` know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The agent's number for the endpoint, unique on the node, not 0.
    pub id: u16,
    /// The host-side veth, in the node's network namespace.
    pub ifindex: u32,
    /// The pod's addresses (the only sources its packets may carry).
    pub ips: Vec<IpAddr>,
    /// The pod's security identity.
    pub identity: u32,
    /// The pod's interface MAC.
    pub mac: [u8; 6],
    /// The host-side veth's MAC.
    pub node_mac: [u8; 6],
}

/// One prefix of the node ipcache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpcacheEntry {
    /// The prefix (v4-mapped IPv6 is stored as IPv4; host bits are cleared).
    pub prefix: ipnet::IpNet,
    /// Its security identity (not 0).
    pub identity: u32,
    /// The remote node whose pod CIDR holds it; `None` = route natively.
    pub tunnel: Option<Ipv4Addr>,
}

/// The node-wide packet path pinned under a directory (`<root>/node`). Cheap to open;
/// every method works on the pins, so a restarted agent sees what an earlier one did.
#[derive(Clone, Debug)]
pub struct NodeDatapath {
    dir: PathBuf,
}

impl NodeDatapath {
    /// Create (first time) or reuse the node's pinned maps under `dir/maps` and write
    /// `settings`. Idempotent: loading again keeps every map and its contents, and adds
    /// node-wide maps a newer build knows.
    pub fn load(dir: impl Into<PathBuf>, settings: &NodeSettings) -> Result<Self> {
        let node = Self { dir: dir.into() };
        settings.validate()?;
        for d in [
            node.dir.clone(),
            node.maps_dir(),
            node.progs_dir(),
            node.links_dir(),
        ] {
            fs::create_dir_all(&d).map_err(io_err(&d, "create pin directory"))?;
        }
        check_bpffs(&node.dir)?;
        EbpfLoader::new()
            .default_map_pin_directory(node.maps_dir())
            .load(crate::loader::objects::NODE)
            .map_err(|e| feature_error("the packet path's node maps (LRU hash, LPM trie)", e))?;
        node.set_settings(settings)?;
        Ok(node)
    }

    /// Open the node directory an earlier [`NodeDatapath::load`] pinned.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let node = Self { dir: dir.into() };
        if !node.maps_dir().join(NODE_CONFIG).exists() {
            return Err(Error::NotAttached(node.dir));
        }
        Ok(node)
    }

    /// The node pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn config_map(&self) -> Result<Array<MapData, MbNodeConfig>> {
        Array::try_from(aya::maps::Map::Array(self.map(NODE_CONFIG)?)).map_err(|source| {
            Error::Map {
                name: NODE_CONFIG,
                source,
            }
        })
    }

    /// The settings `mb_node_config` holds.
    pub fn settings(&self) -> Result<NodeSettings> {
        let m = self.config_map()?;
        let c = m.get(&0, 0).map_err(|source| Error::Map {
            name: NODE_CONFIG,
            source,
        })?;
        NodeSettings::from_abi(&c)
    }

    /// Validate and write the settings (one map row, replaced whole).
    pub fn set_settings(&self, s: &NodeSettings) -> Result<()> {
        s.validate()?;
        let mut m = self.config_map()?;
        m.set(0, s.to_abi(), 0).map_err(|source| Error::Map {
            name: NODE_CONFIG,
            source,
        })
    }

    /// Unpin the node directory (links, programs, maps). Endpoints' tc programs still
    /// attached keep the maps they hold alive, so detach the endpoints first.
    pub fn teardown(&self) -> Result<()> {
        // events/: the overlay programs' ring (node/overlay.rs).
        let events = self.dir.join("events");
        for d in [self.links_dir(), self.progs_dir(), self.maps_dir(), events] {
            if d.exists() {
                fs::remove_dir_all(&d).map_err(io_err(&d, "unpin"))?;
            }
        }
        if self.dir.exists() {
            fs::remove_dir(&self.dir).map_err(io_err(&self.dir, "remove pin directory"))?;
        }
        Ok(())
    }

    /// The names of the maps pinned under `maps/`: what an endpoint's object takes from
    /// the node rather than from its own directory.
    fn node_map_names(&self) -> Result<Vec<String>> {
        let dir = self.maps_dir();
        let mut out: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(&dir, "list node maps"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }
}

impl PinLayout for NodeDatapath {
    fn pin_root(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for o in [Overlay::Native, Overlay::Vxlan, Overlay::Geneve] {
            assert_eq!(o.to_string().parse::<Overlay>().unwrap(), o);
        }
        for a in [LbAlgorithm::Random, LbAlgorithm::Maglev] {
            assert_eq!(a.to_string().parse::<LbAlgorithm>().unwrap(), a);
        }
        let err = "ipip".parse::<Overlay>().unwrap_err().to_string();
        assert!(
            err.contains("\"ipip\": expected native, vxlan or geneve"),
            "{err}"
        );
        let err = "rr".parse::<LbAlgorithm>().unwrap_err().to_string();
        assert!(err.contains("\"rr\": expected random or maglev"), "{err}");
    }

    #[test]
    fn settings_survive_the_kernel_encoding() {
        let s = NodeSettings {
            node_ip4: "192.0.2.7".parse().unwrap(),
            underlay_ifindex: 3,
            overlay_ifindex: 9,
            underlay_mtu: 1450,
            underlay_mac: [2, 0, 0, 0, 0, 7],
            overlay: Overlay::Vxlan,
            lb_algorithm: LbAlgorithm::Maglev,
            policy: true,
            trace: false,
        };
        let c = s.to_abi();
        assert_eq!(c.flags, abi::NODE_F_POLICY);
        assert_eq!(c.node_ip4.to_ne_bytes(), [192, 0, 2, 7]);
        assert_eq!(NodeSettings::from_abi(&c).unwrap(), s);
        assert!(NodeSettings::default().validate().is_ok());
    }
}
