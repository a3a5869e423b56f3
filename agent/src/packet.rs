//! What the packet path (the node-wide tc datapath, `membrane_datapath::node`) is fed,
//! computed from the control plane's resources. Pure functions: no I/O, no kernel here;
//! [`crate::node`] writes what they return.
//!
//! The node ipcache is NPHDS's identities joined with the node registry (Cilium's
//! ipcache + tunnel map in one): an address inside another node's pod CIDR carries that
//! node's tunnel endpoint (its first IPv4 InternalIP; the longest pod CIDR holding the
//! prefix decides), so from-container knows where to encapsulate to; another node's pod
//! CIDR itself is an entry (identity world, as Cilium lists it) so a pod the control plane
//! has not named yet is still reached through its node; node addresses carry Cilium's
//! reserved identities, this node's own `host` (1) and the others' `remote-node` (6),
//! whatever NPHDS says of them (which node an address belongs to is node-local
//! knowledge: the control plane's NPHDS is the same for every node).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use membrane_datapath::node::{pod_mtu, Overlay};
use membrane_datapath::LbService;

use crate::resources::{NodeSpec, ServiceSpec};

/// Cilium's reserved identity `host`: this node.
pub const HOST: u32 = 1;
/// Cilium's reserved identity `world`: outside the cluster (and an ipcache miss).
pub const WORLD: u32 = 2;
/// Cilium's reserved identity `remote-node`: another node of the cluster.
pub const REMOTE_NODE: u32 = 6;

/// One entry of the node ipcache: a prefix's identity and, for an address on another
/// node, that node's underlay address to encapsulate to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpcacheEntry {
    /// The prefix (host routes for pods and nodes).
    pub prefix: IpNet,
    /// Its security identity.
    pub identity: u32,
    /// The tunnel endpoint: None routes natively (this node's pods, node addresses,
    /// addresses outside every pod CIDR).
    pub tunnel: Option<Ipv4Addr>,
}

/// A node's tunnel endpoint: its first IPv4 InternalIP (the outer header is IPv4).
pub fn tunnel_endpoint(node: &NodeSpec) -> Option<Ipv4Addr> {
    node.addresses.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// The node that owns `prefix`: the longest pod CIDR holding it decides (ties: the node
/// named first).
fn owner<'a>(prefix: &IpNet, nodes: &'a BTreeMap<String, NodeSpec>) -> Option<&'a str> {
    nodes
        .iter()
        .flat_map(|(name, n)| n.pod_cidrs.iter().map(move |c| (c, name.as_str())))
        .filter(|(c, _)| c.contains(prefix))
        .max_by(|(a, an), (b, bn)| a.prefix_len().cmp(&b.prefix_len()).then(bn.cmp(an)))
        .map(|(_, name)| name)
}

/// The tunnel endpoint for `prefix` seen from node `me`: None when the prefix is in no pod
/// CIDR, in one of `me`'s, or its node has no IPv4 address.
pub fn tunnel_for(
    prefix: &IpNet,
    nodes: &BTreeMap<String, NodeSpec>,
    me: &str,
) -> Option<Ipv4Addr> {
    let name = owner(prefix, nodes)?;
    if name == me {
        return None;
    }
    tunnel_endpoint(&nodes[name])
}

/// The node ipcache of node `me` (see the module docs): `identities` (NPHDS, checked: one
/// identity per prefix), `nodes` (the node registry) and `own` (this node's addresses
/// besides those its Node resource lists, e.g. `--node-ip`). Without `tunnels` (native
/// routing: the underlay routes pod CIDRs) no entry has a tunnel endpoint and the other
/// nodes' pod CIDRs are no entries of their own. Sorted by prefix.
pub fn node_ipcache(
    identities: &[(IpNet, u32)],
    nodes: &BTreeMap<String, NodeSpec>,
    me: &str,
    own: &[IpAddr],
    tunnels: bool,
) -> Vec<IpcacheEntry> {
    let mut out: BTreeMap<IpNet, (u32, Option<Ipv4Addr>)> = BTreeMap::new();
    let others = nodes.iter().filter(|(n, _)| n.as_str() != me && tunnels);
    for node in others.map(|(_, n)| n) {
        let Some(tunnel) = tunnel_endpoint(node) else {
            continue;
        };
        for cidr in &node.pod_cidrs {
            out.insert(*cidr, (WORLD, Some(tunnel)));
        }
    }
    for (prefix, id) in identities {
        let tunnel = tunnel_for(prefix, nodes, me).filter(|_| tunnels);
        out.insert(*prefix, (*id, tunnel));
    }
    // Node addresses last: the other nodes', then this node's own, which win.
    for (_, node) in nodes.iter().filter(|(n, _)| n.as_str() != me) {
        for a in &node.addresses {
            out.insert(IpNet::from(*a), (REMOTE_NODE, None));
        }
    }
    let mine = nodes.get(me).map(|n| n.addresses.as_slice()).unwrap_or(&[]);
    for a in mine.iter().chain(own) {
        out.insert(IpNet::from(*a), (HOST, None));
    }
    out.into_iter()
        .map(|(prefix, (identity, tunnel))| IpcacheEntry {
            prefix,
            identity,
            tunnel,
        })
        .collect()
}

/// Native routing: the routes node `me` needs to reach the other nodes' pods over the
/// underlay, each pod CIDR via the node's first address of the same family (a CIDR of a
/// family the node has no address of gets none). Sorted by prefix.
pub fn native_routes(nodes: &BTreeMap<String, NodeSpec>, me: &str) -> Vec<(IpNet, IpAddr)> {
    let mut out: Vec<(IpNet, IpAddr)> = nodes
        .iter()
        .filter(|(n, _)| n.as_str() != me)
        .flat_map(|(_, node)| {
            node.pod_cidrs.iter().filter_map(|c| {
                let via = node
                    .addresses
                    .iter()
                    .find(|a| a.is_ipv4() == matches!(c, IpNet::V4(_)))?;
                Some((*c, *via))
            })
        })
        .collect();
    out.sort();
    out.dedup_by_key(|(c, _)| *c);
    out
}

/// The routes node `me` keeps to the other nodes' pod CIDRs, and their MTU. Native: every
/// CIDR via its node ([`native_routes`]), the device's MTU. Overlay: the IPv4 CIDRs via
/// their node's tunnel endpoint ([`tunnel_endpoint`]) with the pods' MTU (underlay minus the tunnel's headers),
/// for the node's own packets, which the underlay's tc egress (`mb_to_netdev`) puts into
/// the tunnel; without them a node cannot answer a remote pod (no route back), and the
/// MTU keeps its packets small enough to encapsulate. (IPv6 CIDRs: none, the underlay is
/// IPv4.)
pub fn node_routes(
    nodes: &BTreeMap<String, NodeSpec>,
    me: &str,
    overlay: Overlay,
    underlay_mtu: u16,
) -> (Vec<(IpNet, IpAddr)>, Option<u16>) {
    let mut routes = native_routes(nodes, me);
    if overlay == Overlay::Native {
        return (routes, None);
    }
    // An IPv4 CIDR's gateway is its node's first IPv4 address: the tunnel endpoint.
    routes.retain(|(c, _)| matches!(c, IpNet::V4(_)));
    (routes, Some(pod_mtu(overlay, underlay_mtu)))
}

/// The tc load balancer's services from the Service resources: TCP and UDP frontends (the
/// maps take those two), each with its node port and traffic policy, backends sorted
/// (every node builds the same Maglev table). Sorted by frontend.
pub fn lb_services(services: &[ServiceSpec]) -> Vec<LbService> {
    let mut out: Vec<LbService> = services
        .iter()
        .filter(|s| matches!(s.protocol, 6 | 17))
        .map(|s| {
            let mut backends = s.backends.clone();
            backends.sort_unstable();
            backends.dedup();
            LbService {
                frontend: s.frontend,
                proto: s.protocol,
                node_port: s.node_port,
                external_local: s.external_local,
                backends,
            }
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addrs: &[&str], cidrs: &[&str]) -> NodeSpec {
        NodeSpec {
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn cluster() -> BTreeMap<String, NodeSpec> {
        BTreeMap::from([
            ("node-1".into(), node(&["192.168.0.1"], &["10.0.1.0/24"])),
            (
                "node-2".into(),
                node(&["fd00::2", "192.168.0.2"], &["10.0.2.0/24", "fd10:2::/64"]),
            ),
            // A narrower CIDR carved out of node-2's for node-3: the longest one wins.
            ("node-3".into(), node(&["192.168.0.3"], &["10.0.2.128/25"])),
            // A node without an IPv4 address has no tunnel endpoint.
            ("node-6".into(), node(&["fd00::6"], &["10.0.6.0/24"])),
        ])
    }

    fn entry(prefix: &str, identity: u32, tunnel: Option<&str>) -> IpcacheEntry {
        IpcacheEntry {
            prefix: prefix.parse().unwrap(),
            identity,
            tunnel: tunnel.map(|t| t.parse().unwrap()),
        }
    }

    #[test]
    fn the_longest_pod_cidr_decides_the_tunnel_endpoint() {
        let nodes = cluster();
        let t = |p: &str, me: &str| tunnel_for(&p.parse().unwrap(), &nodes, me);
        let ip = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let table = [
            ("10.0.2.5/32", "node-1", ip("192.168.0.2")),
            ("10.0.2.200/32", "node-1", ip("192.168.0.3")),
            ("10.0.2.128/25", "node-1", ip("192.168.0.3")),
            // A prefix wider than every pod CIDR holding part of it: no node owns it.
            ("10.0.0.0/16", "node-1", None),
            // This node's own pods are delivered here, not tunnelled.
            ("10.0.1.9/32", "node-1", None),
            ("10.0.2.200/32", "node-3", None),
            ("10.0.2.5/32", "node-3", ip("192.168.0.2")),
            // IPv6 pods of node-2 are tunnelled over its IPv4 address.
            ("fd10:2::9/128", "node-1", ip("192.168.0.2")),
            ("10.0.6.1/32", "node-1", None),
            ("8.8.8.8/32", "node-1", None),
        ];
        for (prefix, me, want) in table {
            assert_eq!(t(prefix, me), want, "{prefix} seen from {me}");
        }
    }

    #[test]
    fn the_node_ipcache_joins_identities_with_nodes() {
        let nodes = cluster();
        let identities: Vec<(IpNet, u32)> = [
            ("10.0.1.7/32", 300),
            ("10.0.2.5/32", 301),
            ("10.0.2.200/32", 302),
            // NPHDS calls every node address host today; the agent knows better.
            ("192.168.0.1/32", HOST),
            ("192.168.0.2/32", HOST),
            ("203.0.113.0/24", 16777217),
        ]
        .iter()
        .map(|(p, id)| (p.parse().unwrap(), *id))
        .collect();
        let got = node_ipcache(
            &identities,
            &nodes,
            "node-1",
            &["172.16.0.1".parse().unwrap()],
            true,
        );
        let want = vec![
            entry("10.0.1.7/32", 300, None),
            entry("10.0.2.0/24", WORLD, Some("192.168.0.2")),
            entry("10.0.2.5/32", 301, Some("192.168.0.2")),
            entry("10.0.2.128/25", WORLD, Some("192.168.0.3")),
            entry("10.0.2.200/32", 302, Some("192.168.0.3")),
            entry("172.16.0.1/32", HOST, None),
            entry("192.168.0.1/32", HOST, None),
            entry("192.168.0.2/32", REMOTE_NODE, None),
            entry("192.168.0.3/32", REMOTE_NODE, None),
            entry("203.0.113.0/24", 16777217, None),
            entry("fd00::2/128", REMOTE_NODE, None),
            entry("fd00::6/128", REMOTE_NODE, None),
            entry("fd10:2::/64", WORLD, Some("192.168.0.2")),
        ];
        assert_eq!(got, want);

        // Seen from node-2: node-1's pod is tunnelled, its own are not, the roles of the
        // node addresses swap.
        let got = node_ipcache(&identities, &nodes, "node-2", &[], true);
        let find = |p: &str| got.iter().find(|e| e.prefix == p.parse().unwrap()).cloned();
        assert_eq!(
            find("10.0.1.7/32"),
            Some(entry("10.0.1.7/32", 300, Some("192.168.0.1")))
        );
        assert_eq!(find("10.0.2.5/32"), Some(entry("10.0.2.5/32", 301, None)));
        assert_eq!(find("192.168.0.1/32").unwrap().identity, REMOTE_NODE);
        assert_eq!(find("192.168.0.2/32").unwrap().identity, HOST);
        assert_eq!(find("fd00::2/128").unwrap().identity, HOST);
        assert_eq!(
            find("10.0.2.0/24"),
            None,
            "its own pod CIDR is no ipcache entry"
        );

        // No node registry: NPHDS as it is.
        let alone = node_ipcache(&identities, &BTreeMap::new(), "node-1", &[], true);
        assert_eq!(alone.len(), identities.len());
        assert!(alone.iter().all(|e| e.tunnel.is_none()));

        // Native routing: the same identities, no tunnel, no pod CIDR entries.
        let native = node_ipcache(&identities, &nodes, "node-1", &[], false);
        assert!(native.iter().all(|e| e.tunnel.is_none()), "{native:?}");
        assert!(native.iter().all(|e| e.identity != WORLD), "{native:?}");
        assert_eq!(
            native
                .iter()
                .find(|e| e.prefix == "10.0.2.5/32".parse().unwrap()),
            Some(&entry("10.0.2.5/32", 301, None))
        );
    }

    #[test]
    fn every_other_nodes_tunnel_endpoint_is_remote_node_whatever_nphds_says() {
        // The receiving node believes a tunnel packet's VNI only when its outer source
        // (the sender's tunnel endpoint) is remote-node in its ipcache.
        let nodes = cluster();
        let identities = vec![
            ("192.168.0.2/32".parse().unwrap(), WORLD),
            ("192.168.0.0/16".parse().unwrap(), 777),
        ];
        for me in ["node-1", "node-2", "node-3"] {
            let got = node_ipcache(&identities, &nodes, me, &[], true);
            for (name, n) in nodes.iter().filter(|(n, _)| n.as_str() != me) {
                let Some(t) = tunnel_endpoint(n) else {
                    continue;
                };
                let e = got
                    .iter()
                    .find(|e| e.prefix == IpNet::from(IpAddr::V4(t)))
                    .unwrap_or_else(|| panic!("{me}: no entry for {name}'s {t}"));
                assert_eq!(e.identity, REMOTE_NODE, "{me}: {name}'s {t}");
                assert_eq!(e.tunnel, None, "{me}: {name}'s {t}");
            }
        }
    }

    #[test]
    fn overlay_routes_send_other_nodes_ipv4_pod_cidrs_to_their_tunnel_endpoint() {
        let nodes = cluster();
        let (routes, mtu) = node_routes(&nodes, "node-1", Overlay::Geneve, 1500);
        let got: Vec<String> = routes.iter().map(|(c, v)| format!("{c} via {v}")).collect();
        assert_eq!(
            got,
            [
                "10.0.2.0/24 via 192.168.0.2",
                "10.0.2.128/25 via 192.168.0.3"
            ],
            "IPv4 CIDRs only, via the tunnel endpoint"
        );
        assert_eq!(
            mtu,
            Some(1450),
            "the pods' MTU: room for the tunnel's headers"
        );
        let (_, mtu) = node_routes(&nodes, "node-1", Overlay::Vxlan, 9000);
        assert_eq!(mtu, Some(8950));
        let (routes, mtu) = node_routes(&nodes, "node-1", Overlay::Native, 1500);
        assert_eq!(routes, native_routes(&nodes, "node-1"));
        assert_eq!(mtu, None);
    }

    #[test]
    fn native_routing_routes_other_nodes_pod_cidrs_via_their_address() {
        let nodes = cluster();
        let got: Vec<(String, String)> = native_routes(&nodes, "node-1")
            .into_iter()
            .map(|(c, via)| (c.to_string(), via.to_string()))
            .collect();
        let want: Vec<(String, String)> = [
            ("10.0.2.0/24", "192.168.0.2"),
            ("10.0.2.128/25", "192.168.0.3"),
            ("fd10:2::/64", "fd00::2"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        // node-6 has no IPv4 address for its IPv4 CIDR: no route rather than a wrong one.
        assert_eq!(got, want);
        assert!(native_routes(&nodes, "node-2")
            .iter()
            .all(|(c, _)| c.to_string() != "10.0.2.0/24"));
    }

    #[test]
    fn services_become_the_tc_load_balancers_frontends() {
        let svc = |fe: &str, proto: u8, node_port: u16, local: bool, bes: &[&str]| ServiceSpec {
            frontend: fe.parse().unwrap(),
            protocol: proto,
            backends: bes.iter().map(|b| b.parse().unwrap()).collect(),
            node_port,
            external_local: local,
        };
        let got = lb_services(&[
            svc("10.96.0.11:53", 17, 30053, false, &["10.0.2.2:53"]),
            svc(
                "10.96.0.10:80",
                6,
                30080,
                true,
                &["10.0.2.2:80", "10.0.1.2:80", "10.0.2.2:80"],
            ),
            // SCTP: the tc maps take TCP and UDP only.
            svc("10.96.0.12:9", 132, 0, false, &["10.0.1.2:9"]),
            svc("10.96.0.13:80", 6, 0, false, &[]),
        ]);
        let frontends: Vec<String> = got.iter().map(|s| s.frontend.to_string()).collect();
        assert_eq!(
            frontends,
            ["10.96.0.10:80", "10.96.0.11:53", "10.96.0.13:80"]
        );
        assert_eq!(
            (got[0].proto, got[0].node_port, got[0].external_local),
            (6, 30080, true)
        );
        let bes: Vec<String> = got[0].backends.iter().map(ToString::to_string).collect();
        assert_eq!(
            bes,
            ["10.0.1.2:80", "10.0.2.2:80"],
            "sorted, duplicates once"
        );
        assert_eq!((got[1].proto, got[1].node_port), (17, 30053));
        assert!(
            got[2].backends.is_empty(),
            "no backend: kept, the datapath drops"
        );
    }
}
