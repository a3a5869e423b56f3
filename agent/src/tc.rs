//! The node's packet path as the daemon runs it: the flags, the node pin directory
//! (`<bpffs>/node`) loaded at start with the overlay and the underlay attached, each
//! registered endpoint's tc programs on its host veth, and the node-wide maps (node
//! ipcache, services) and native routes kept equal to the control plane's resources.
//! What to write is computed by [`crate::packet`]; this room talks to the kernel.
//!
//! Like the socket hooks, everything is a diff against what the pins hold: an agent that
//! restarts finds the node directory, the tc links and the routes in place and writes
//! nothing the control plane did not change (no detach, no re-attach, no flush).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use membrane_datapath::node::{
    LbAlgorithm, LocalEndpoint, NodeDatapath, NodeSettings, Overlay, XdpAttachMode,
};
use serde::Serialize;

/// Cilium's reserved identity `init`: an endpoint the control plane has not described
/// yet. Its policy map has no allow entry, so its packets are dropped until it is.
pub const INIT_IDENTITY: u32 = 5;

/// What setting up the packet path failed at.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The flags do not fit together.
    #[error("{0}")]
    Flags(String),
    /// A network device could not be used.
    #[error("device {name:?}: {why}")]
    Device {
        /// The interface name.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// A datapath operation failed.
    #[error("{what}: {source}")]
    Datapath {
        /// The step.
        what: String,
        /// The cause (boxed: the datapath's error is large).
        #[source]
        source: Box<membrane_datapath::Error>,
    },
    /// A route could not be listed, added or removed.
    #[error("native routing: {0}")]
    Route(String),
}

type Result<T> = std::result::Result<T, TcError>;

fn dp_err(what: impl Into<String>) -> impl FnOnce(membrane_datapath::Error) -> TcError {
    let what = what.into();
    move |source| TcError::Datapath {
        what,
        source: Box::new(source),
    }
}

/// The packet path's flags on `membrane-agent run --xds-address`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct PacketArgs {
    /// How packets reach pods on other nodes: `vxlan` (the kernel's VXLAN device in
    /// collect_md mode), `geneve` (encapsulated in BPF on the underlay device) or
    /// `native` (no encapsulation: the agent routes each other node's pod CIDRs via its
    /// address). The overlays carry the source identity in the VNI.
    #[arg(long, env = "MEMBRANE_OVERLAY", default_value = "vxlan")]
    pub overlay: Overlay,
    /// The node's underlay device (required for vxlan and geneve): the overlay's outer
    /// packets and NodePort traffic use it; its first IPv4 address is the node's IP
    /// unless --node-ip is given.
    #[arg(long, env = "MEMBRANE_UNDERLAY_DEVICE")]
    pub underlay_device: Option<String>,
    /// This node's underlay IPv4 address (default: the underlay device's first).
    #[arg(long, env = "MEMBRANE_NODE_IP")]
    pub node_ip: Option<Ipv4Addr>,
    /// How the tc load balancer picks a service backend for a new flow: `random` or
    /// `maglev` (the same flow gets the same backend on every node).
    #[arg(long, env = "MEMBRANE_LB_ALGORITHM", default_value = "random")]
    pub lb_algorithm: LbAlgorithm,
    /// Enforce endpoints' L3/L4 policy on packets in tc too (on by default; `false`
    /// leaves it to the socket hooks alone, which see only local sockets' connections).
    #[arg(long, env = "MEMBRANE_TC_POLICY", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub tc_policy: bool,
    /// Where the XDP prefilter on the underlay device runs: `auto` (in the driver where
    /// it supports XDP, as veth and most NICs do, else in the stack), `native` (refuse to
    /// start on a driver without XDP) or `generic`.
    #[arg(long, env = "MEMBRANE_XDP_MODE", default_value = "auto")]
    pub xdp_mode: XdpAttachMode,
}

impl PacketArgs {
    /// The flags checked together: an overlay needs the underlay device.
    pub fn check(&self) -> Result<()> {
        if self.overlay != Overlay::Native && self.underlay_device.is_none() {
            return Err(TcError::Flags(format!(
                "--overlay {} needs --underlay-device (the device its outer packets leave by)",
                self.overlay
            )));
        }
        if let Some(d) = &self.underlay_device {
            if d.is_empty() || d.contains('/') || d.len() > 15 {
                return Err(TcError::Flags(format!(
                    "--underlay-device {d:?} is not an interface name"
                )));
            }
        }
        Ok(())
    }
}

/// A network device of the agent's network namespace, as `ip -d addr` (netlink) gives it.
/// Asked of `ip` rather than sysfs: `/sys/class/net` shows the namespace sysfs was mounted
/// in, which is not the agent's when it was entered with `nsenter --net` (as the demo and
/// the tests run it, keeping the host's bpffs and cgroup mounts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Its name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// Its MTU.
    pub mtu: u32,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its link kind (`veth`, `bridge`, `vxlan`, ...; None for a physical device).
    pub kind: Option<String>,
    /// Its first IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

impl Device {
    /// The device `name` in the agent's network namespace.
    pub fn lookup(name: &str) -> Result<Device> {
        let fail = |why: String| TcError::Device {
            name: name.to_owned(),
            why,
        };
        let o = std::process::Command::new("ip")
            .args(["-j", "-d", "addr", "show", "dev", name])
            .output()
            .map_err(|e| fail(format!("run ip: {e}")))?;
        if !o.status.success() {
            return Err(fail(format!(
                "no such device in the agent's network namespace ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).map_err(|e| fail(format!("ip's answer: {e}")))?;
        Device::from_ip_json(name, &v[0]).ok_or_else(|| fail(format!("ip's answer: {v}")))
    }

    /// The device in one element of `ip -j -d addr show`.
    pub fn from_ip_json(name: &str, v: &serde_json::Value) -> Option<Device> {
        let num = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
        Some(Device {
            name: name.to_owned(),
            ifindex: num("ifindex")?,
            mtu: num("mtu")?,
            mac: v["address"].as_str().and_then(parse_mac).unwrap_or([0; 6]),
            kind: v["linkinfo"]["info_kind"].as_str().map(str::to_owned),
            ipv4: v["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .find_map(|a| a["local"].as_str()?.parse().ok()),
        })
    }
}

/// The packet path of a running daemon.
#[derive(Debug)]
pub struct PacketPath {
    /// The node pin directory.
    pub dp: NodeDatapath,
    /// The flags it runs with.
    pub args: PacketArgs,
    /// The settings written at start.
    pub settings: NodeSettings,
    /// The underlay device, when there is one.
    pub underlay: Option<Device>,
    /// The mode the XDP prefilter runs in on the underlay device (none without one).
    pub prefilter: Option<XdpAttachMode>,
}

impl PacketPath {
    /// Loads (or adopts) the node pin directory `<bpffs>/node` and writes the settings
    /// when they differ from the pinned row.
    pub fn start(args: &PacketArgs, bpffs: &Path) -> Result<PacketPath> {
        args.check()?;
        let underlay = args
            .underlay_device
            .as_deref()
            .map(Device::lookup)
            .transpose()?;
        let node_ip4 = match (args.node_ip, &underlay) {
            (Some(ip), _) => ip,
            (None, Some(d)) => d.ipv4.ok_or_else(|| TcError::Device {
                name: d.name.clone(),
                why: "has no IPv4 address (give --node-ip)".into(),
            })?,
            (None, None) => Ipv4Addr::UNSPECIFIED,
        };
        let settings = NodeSettings {
            node_ip4,
            underlay_ifindex: underlay.as_ref().map_or(0, |d| d.ifindex),
            overlay_ifindex: 0,
            underlay_mtu: underlay
                .as_ref()
                .map_or(1500, |d| u16::try_from(d.mtu).unwrap_or(u16::MAX)),
            underlay_mac: underlay.as_ref().map_or([0; 6], |d| d.mac),
            overlay: args.overlay,
            lb_algorithm: args.lb_algorithm,
            policy: args.tc_policy,
            trace: false,
        };
        let mut settings = settings;
        if args.overlay == Overlay::Vxlan {
            // The settings name the VXLAN device, so it exists before they are written
            // (kept as it is when an earlier agent made it).
            settings.overlay_ifindex =
                membrane_datapath::node::ensure_vxlan_device(settings.underlay_mtu)
                    .map_err(dp_err("create the VXLAN device"))?;
        }
        let dir = node_dir(bpffs);
        let dp = match NodeDatapath::open(&dir) {
            Ok(dp) => dp,
            Err(_) => NodeDatapath::load(&dir, &settings).map_err(dp_err(format!(
                "load the node datapath under {}",
                dir.display()
            )))?,
        };
        if dp.settings().ok().as_ref() != Some(&settings) {
            dp.set_settings(&settings)
                .map_err(dp_err("write the node settings"))?;
        }
        // The device programs, idempotently: pinned links an earlier agent left stay.
        if let Some(d) = &underlay {
            dp.attach_underlay(&d.name)
                .map_err(dp_err(format!("attach to the underlay device {}", d.name)))?;
        }
        dp.setup_overlay()
            .map_err(dp_err(format!("set up the {} overlay", args.overlay)))?;
        // The prefilter, idempotently as well (its deny maps are synced by the node).
        let prefilter = match &underlay {
            Some(d) => Some(dp.attach_prefilter(&d.name, args.xdp_mode).map_err(dp_err(
                format!("attach the XDP prefilter to {} ({})", d.name, args.xdp_mode),
            ))?),
            None => None,
        };
        let settings = dp.settings().map_err(dp_err("read the node settings"))?;
        Ok(PacketPath {
            dp,
            args: args.clone(),
            settings,
            underlay,
            prefilter,
        })
    }

    /// The pod's tc programs on its host veth `host_ifname` as `ep`, attached only when
    /// the pins or the endpoints map differ from it (returns whether it wrote).
    pub fn attach(
        &self,
        endpoint: &membrane_datapath::Datapath,
        ep: &LocalEndpoint,
    ) -> Result<bool> {
        let held = self
            .dp
            .endpoints()
            .map_err(dp_err("read the endpoints map"))?
            .into_iter()
            .find(|e| e.id == ep.id);
        let mut want = ep.clone();
        want.ips.sort_unstable();
        let linked = ["ingress", "egress"]
            .iter()
            .all(|d| tc_links(endpoint.dir(), ep.ifindex).join(d).exists());
        if linked && held.as_ref() == Some(&want) {
            return Ok(false);
        }
        self.dp
            .attach_endpoint(endpoint, &want)
            .map_err(dp_err(format!("attach tc to ifindex {}", ep.ifindex)))?;
        Ok(true)
    }

    /// The endpoint id of a pod on host veth `ifindex`: the one the endpoints map gives
    /// it already (an adopted pod keeps its number), else the lowest one free.
    pub fn endpoint_id(&self, ifindex: u32) -> Result<u16> {
        let held = self
            .dp
            .endpoints()
            .map_err(dp_err("read the endpoints map"))?;
        if let Some(e) = held.iter().find(|e| e.ifindex == ifindex) {
            return Ok(e.id);
        }
        (1..=u16::MAX)
            .find(|id| !held.iter().any(|e| e.id == *id))
            .ok_or_else(|| TcError::Flags("no endpoint id left on this node".into()))
    }
}

/// The node pin directory under the agent's bpffs root.
pub fn node_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("node")
}

/// Where the datapath pins an endpoint's tc links for host veth `ifindex`.
fn tc_links(endpoint_dir: &Path, ifindex: u32) -> PathBuf {
    endpoint_dir.join("links").join(format!("tc-{ifindex}"))
}

/// The pod's host veth `name` in the agent's namespace, checked to be a veth: the packet
/// path never attaches to the node's own devices, whatever a registration says.
pub fn host_veth(name: &str, underlay: Option<&Device>) -> Result<Device> {
    let d = Device::lookup(name)?;
    if d.kind.as_deref() != Some("veth") {
        return Err(TcError::Device {
            name: name.to_owned(),
            why: format!(
                "is a {} device, not a veth: not a pod's host-side interface",
                d.kind.as_deref().unwrap_or("physical")
            ),
        });
    }
    if underlay.is_some_and(|u| u.ifindex == d.ifindex) {
        return Err(TcError::Device {
            name: name.to_owned(),
            why: "is the underlay device".into(),
        });
    }
    Ok(d)
}

/// A pod's packet-path row from its registration and its control-plane identity.
pub fn local_endpoint(
    id: u16,
    veth: &Device,
    ips: &[IpAddr],
    identity: Option<u32>,
    mac: Option<&str>,
) -> LocalEndpoint {
    let mut ips = ips.to_vec();
    ips.sort_unstable();
    ips.dedup();
    LocalEndpoint {
        id,
        ifindex: veth.ifindex,
        ips,
        identity: identity.filter(|i| *i != 0).unwrap_or(INIT_IDENTITY),
        mac: mac.and_then(parse_mac).unwrap_or([0; 6]),
        node_mac: veth.mac,
    }
}

/// Routes installed by the agent carry this routing protocol number, so the agent finds
/// its own routes again (after a restart too) and never touches anyone else's.
pub const ROUTE_PROTO: u8 = 0x4d;

/// A route the agent keeps: a prefix via a gateway, with an MTU when the path has less
/// room than the device (the tunnel's headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The gateway (another node's address).
    pub via: IpAddr,
    /// The route's MTU, None for the device's.
    pub mtu: Option<u16>,
}

/// The routes this agent installed (protocol [`ROUTE_PROTO`]): prefix → gateway and MTU.
pub fn installed_routes() -> Result<BTreeMap<ipnet::IpNet, Route>> {
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        let o = std::process::Command::new("ip")
            .args([
                family,
                "-j",
                "route",
                "show",
                "proto",
                &ROUTE_PROTO.to_string(),
            ])
            .output()
            .map_err(|e| TcError::Route(format!("run ip: {e}")))?;
        if !o.status.success() {
            return Err(TcError::Route(format!(
                "ip route show: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        for r in v.as_array().into_iter().flatten() {
            let (Some(dst), Some(gw)) = (r["dst"].as_str(), r["gateway"].as_str()) else {
                continue;
            };
            let mtu = r["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|m| m["mtu"].as_u64())
                .and_then(|m| u16::try_from(m).ok());
            if let (Ok(dst), Ok(via)) = (dst.parse::<ipnet::IpNet>(), gw.parse::<IpAddr>()) {
                out.insert(dst, Route { via, mtu });
            }
        }
    }
    Ok(out)
}

/// Makes the agent's routes equal `want` (prefix via gateway, each with `mtu` when
/// given): add or replace what differs, delete what it installed and no longer wants.
/// Returns the number of changes.
pub fn sync_routes(want: &[(ipnet::IpNet, IpAddr)], mtu: Option<u16>) -> Result<usize> {
    let have = installed_routes()?;
    let want: BTreeMap<ipnet::IpNet, Route> = want
        .iter()
        .map(|(dst, via)| (*dst, Route { via: *via, mtu }))
        .collect();
    let ip = |args: &[String]| -> Result<()> {
        let o = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| TcError::Route(format!("run ip: {e}")))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(TcError::Route(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )))
        }
    };
    let mut n = 0;
    for (dst, route) in &want {
        if have.get(dst) != Some(route) {
            let mut args: Vec<String> = ["route", "replace", &dst.to_string(), "via"]
                .map(str::to_owned)
                .to_vec();
            args.push(route.via.to_string());
            if let Some(mtu) = route.mtu {
                args.extend(["mtu".to_owned(), mtu.to_string()]);
            }
            args.extend(["proto".to_owned(), ROUTE_PROTO.to_string()]);
            ip(&args)?;
            n += 1;
        }
    }
    for dst in have.keys().filter(|d| !want.contains_key(d)) {
        ip(&[
            "route".into(),
            "del".into(),
            dst.to_string(),
            "proto".into(),
            ROUTE_PROTO.to_string(),
        ])?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        p: PacketArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<PacketArgs, String> {
        let f = Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        f.p.check().map_err(|e| e.to_string())?;
        Ok(f.p)
    }

    #[test]
    fn flags_default_to_vxlan_random_and_tc_policy_on() {
        let p = parse(&["--underlay-device", "eth1"]).unwrap();
        assert_eq!(
            (p.overlay, p.lb_algorithm, p.tc_policy, p.node_ip),
            (Overlay::Vxlan, LbAlgorithm::Random, true, None)
        );
        let p = parse(&[
            "--overlay",
            "geneve",
            "--underlay-device",
            "eth1",
            "--node-ip",
            "192.168.0.1",
            "--lb-algorithm",
            "maglev",
            "--tc-policy",
            "false",
        ])
        .unwrap();
        assert_eq!(
            (p.overlay, p.lb_algorithm, p.tc_policy),
            (Overlay::Geneve, LbAlgorithm::Maglev, false)
        );
        assert_eq!(p.node_ip, Some("192.168.0.1".parse().unwrap()));
        // Native routing needs no underlay device.
        assert_eq!(
            parse(&["--overlay", "native"]).unwrap().overlay,
            Overlay::Native
        );
    }

    #[test]
    fn flags_that_do_not_fit_are_refused_naming_them() {
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("--overlay vxlan needs --underlay-device"), "{e}");
        let e = parse(&["--overlay", "geneve"]).unwrap_err();
        assert!(
            e.contains("--overlay geneve needs --underlay-device"),
            "{e}"
        );
        let e = parse(&["--overlay", "gre", "--underlay-device", "eth1"]).unwrap_err();
        assert!(e.contains("gre"), "{e}");
        let e = parse(&["--lb-algorithm", "hash", "--overlay", "native"]).unwrap_err();
        assert!(e.contains("hash"), "{e}");
        let e = parse(&["--underlay-device", "../eth0"]).unwrap_err();
        assert!(e.contains("not an interface name"), "{e}");
        let e = parse(&["--overlay", "native", "--node-ip", "fd00::1"]).unwrap_err();
        assert!(e.contains("fd00::1"), "{e}");
    }

    #[test]
    fn macs_and_endpoint_rows() {
        assert_eq!(
            parse_mac("02:0a:ff:00:01:9c"),
            Some([2, 10, 255, 0, 1, 156])
        );
        for bad in [
            "",
            "02:0a:ff:00:01",
            "02:0a:ff:00:01:9c:00",
            "2:0a:ff:00:01:9c",
            "zz:0a:ff:00:01:9c",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        let v = serde_json::json!({
            "ifindex": 7, "ifname": "lxc1", "mtu": 1450, "address": "02:00:00:00:00:07",
            "linkinfo": {"info_kind": "veth"},
            "addr_info": [{"family": "inet6", "local": "fe80::1"},
                          {"family": "inet", "local": "10.0.1.254"}],
        });
        let veth = Device::from_ip_json("lxc1", &v).unwrap();
        assert_eq!(
            (veth.kind.as_deref(), veth.ipv4, veth.mtu),
            (Some("veth"), Some("10.0.1.254".parse().unwrap()), 1450)
        );
        assert_eq!(
            Device::from_ip_json("x", &serde_json::json!({"mtu": 1})),
            None
        );
        let ips: Vec<IpAddr> = vec!["10.0.1.5".parse().unwrap(), "10.0.1.5".parse().unwrap()];
        let ep = local_endpoint(3, &veth, &ips, None, Some("02:00:00:00:00:05"));
        assert_eq!(ep.identity, INIT_IDENTITY, "undescribed pods are init");
        assert_eq!((ep.id, ep.ifindex, ep.ips.len()), (3, 7, 1));
        assert_eq!(
            (ep.mac, ep.node_mac),
            ([2, 0, 0, 0, 0, 5], [2, 0, 0, 0, 0, 7])
        );
        assert_eq!(
            local_endpoint(3, &veth, &ips, Some(300), None).identity,
            300
        );
    }
}
