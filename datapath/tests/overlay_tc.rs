//! The overlay's kernel programs on crafted packets (BPF_PROG_TEST_RUN): Geneve
//! decapsulation on the underlay device (valid, IPv6 inside, every kind of bad header,
//! traffic that is not ours passing untouched), the VXLAN device's program without tunnel
//! metadata, and from-container's encapsulation (Geneve bytes, VXLAN, native, MTU and the
//! ICMP errors it builds). Each test has a node pin directory of its own; nothing is
//! attached to a device.

#[path = "common/frames.rs"]
mod frames;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use frames::*;
use membrane_datapath::{
    abi::MbEndpointValue,
    ensure_bpffs,
    node::{NodeDatapath, NodeSettings, Overlay},
    IpcacheEntry,
};
use membrane_test_support::{unique_name, PinDir};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const UNDERLAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x20, 0x05];
const VETH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x30, 0x05];
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const LOCAL_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 9);
const REMOTE_POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 9);
const LOCAL_IDENTITY: u32 = 1000;
const REMOTE_IDENTITY: u32 = 0x01_2345;
const VETH_IFINDEX: u32 = 77;
/// Cilium's reserved identities the trust check reads from the node ipcache.
const HOST: u32 = 1;
const REMOTE_NODE: u32 = 6;

/// A node directory of the test's own with the overlay programs loaded (not attached).
struct Node {
    node: NodeDatapath,
    _pins: PinDir,
}

fn settings(overlay: Overlay) -> NodeSettings {
    NodeSettings {
        node_ip4: NODE_IP,
        underlay_ifindex: 1,
        overlay_ifindex: if overlay == Overlay::Vxlan { 1 } else { 0 },
        underlay_mtu: 1500,
        underlay_mac: UNDERLAY_MAC,
        overlay,
        ..NodeSettings::default()
    }
}

impl Node {
    fn new(overlay: Overlay) -> Node {
        let pins = PinDir::new(&unique_name());
        ensure_bpffs(pins.path()).expect("bpffs");
        let node = NodeDatapath::load(pins.path().join("node"), &settings(overlay))
            .expect("load node maps");
        node.load_overlay_programs().expect("load overlay programs");
        let n = Node { node, _pins: pins };
        n.add_endpoint(IpAddr::V4(LOCAL_POD));
        n.add_endpoint(IpAddr::V6(LOCAL_POD6));
        n.ipcache(&[]);
        n
    }

    /// The node ipcache: this node's address (host), the peer node's (remote-node), the
    /// peer's pod CIDRs behind it, and `more`.
    fn ipcache(&self, more: &[(&str, u32, Option<Ipv4Addr>)]) {
        let base = [
            (format!("{NODE_IP}/32"), HOST, None),
            (format!("{PEER_IP}/32"), REMOTE_NODE, None),
            ("10.2.0.0/24".to_owned(), 2, Some(PEER_IP)),
            ("fd00:2::/64".to_owned(), 2, Some(PEER_IP)),
        ];
        let entries: Vec<IpcacheEntry> = base
            .into_iter()
            .chain(more.iter().map(|(p, i, t)| ((*p).to_owned(), *i, *t)))
            .map(|(prefix, identity, tunnel)| IpcacheEntry {
                prefix: prefix.parse().unwrap(),
                identity,
                tunnel,
            })
            .collect();
        self.node.sync_ipcache(&entries).expect("sync ipcache");
    }

    fn add_endpoint(&self, ip: IpAddr) {
        let value = MbEndpointValue {
            ifindex: VETH_IFINDEX,
            identity: LOCAL_IDENTITY,
            endpoint_id: 5,
            mac: POD_MAC,
            node_mac: VETH_MAC,
            pad: 0,
        };
        write_endpoint(self.node.dir(), ip, value);
    }

    fn prog(&self, name: &str) -> PathBuf {
        self.node.dir().join("progs").join(name)
    }

    fn run(&self, prog: &str, frame: &[u8]) -> SkbOut {
        run_tc(&self.prog(prog), frame, 0)
    }

    /// Packets counted under the stats row named `name`.
    fn count(&self, name: &str) -> u64 {
        self.node
            .tc_stats()
            .expect("tc stats")
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.packets)
    }

    /// The reasons of the drop events the node-wide programs reported so far.
    fn drop_reasons(&self) -> Vec<String> {
        let mut r = self.node.events().expect("node events");
        r.drain("test", 64)
            .expect("drain events")
            .into_iter()
            .filter(|e| e.is_drop())
            .map(|e| e.reason)
            .collect()
    }
}

/// A pod's UDP datagram from the remote pod to the local one, as an Ethernet frame.
fn inner_frame() -> Vec<u8> {
    let ip = ipv4(
        REMOTE_POD,
        LOCAL_POD,
        IPPROTO_UDP,
        true,
        &udp(40000, 53, b"hello"),
    );
    eth([0xaa; 6], [0xbb; 6], ETH_P_IP, &ip)
}

/// The Geneve packet another node sends to this one for `inner`.
fn geneve_packet(g: Geneve, inner: &[u8]) -> Vec<u8> {
    geneve_from(PEER_IP, g, inner)
}

/// The Geneve packet `src` sends to this node for `inner`.
fn geneve_from(src: Ipv4Addr, g: Geneve, inner: &[u8]) -> Vec<u8> {
    let payload = udp(51000, 6081, &g.wrap(inner));
    let ip = ipv4(src, NODE_IP, IPPROTO_UDP, true, &payload);
    eth(UNDERLAY_MAC, [0x02, 0, 0, 0, 0x10, 0x02], ETH_P_IP, &ip)
}

/// A UDP datagram from `src` to the local pod, as an Ethernet frame.
fn inner_from(src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(src) => {
            let ip = ipv4(src, LOCAL_POD, IPPROTO_UDP, true, &udp(40000, 53, b"hi"));
            eth([0xaa; 6], [0xbb; 6], ETH_P_IP, &ip)
        }
        IpAddr::V6(src) => {
            let ip = ipv6(src, LOCAL_POD6, IPPROTO_UDP, &udp(40000, 53, b"hi"));
            eth([0xaa; 6], [0xbb; 6], ETH_P_IPV6, &ip)
        }
    }
}

#[test]
fn geneve_to_a_local_pod_is_decapsulated_and_delivered_with_the_identity() {
    let n = Node::new(Overlay::Geneve);
    let inner = inner_frame();
    let out = n.run(
        "mb_from_netdev",
        &geneve_packet(Geneve::new(REMOTE_IDENTITY), &inner),
    );

    assert_eq!(out.retval, TC_ACT_REDIRECT, "delivered to the pod's veth");
    assert_eq!(
        out.mark,
        identity_mark(REMOTE_IDENTITY),
        "VNI carried in the mark"
    );
    assert_eq!(&out.data[0..6], &POD_MAC, "to the pod's MAC");
    assert_eq!(&out.data[6..12], &VETH_MAC, "from its host veth's MAC");
    assert_eq!(&out.data[12..14], &ETH_P_IP.to_be_bytes());
    assert_eq!(
        &out.data[14..],
        &inner[14..],
        "the inner IP packet, untouched"
    );
    assert_eq!(n.count("forwarded"), 1);
}

#[test]
fn geneve_with_options_and_ipv6_inside_is_decapsulated() {
    let n = Node::new(Overlay::Geneve);
    let ip = ipv6(
        REMOTE_POD6,
        LOCAL_POD6,
        IPPROTO_UDP,
        &udp(40000, 53, b"six"),
    );
    let inner = eth([0xaa; 6], [0xbb; 6], ETH_P_IPV6, &ip);
    let g = Geneve {
        opt_words: 2,
        ..Geneve::new(REMOTE_IDENTITY)
    };
    let out = n.run("mb_from_netdev", &geneve_packet(g, &inner));

    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(out.mark, identity_mark(REMOTE_IDENTITY));
    assert_eq!(&out.data[12..14], &ETH_P_IPV6.to_be_bytes());
    assert_eq!(&out.data[14..], &inner[14..]);
}

#[test]
fn bad_geneve_is_dropped_with_its_reason() {
    let n = Node::new(Overlay::Geneve);
    let inner = inner_frame();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "geneve-version",
            geneve_packet(
                Geneve {
                    version: 1,
                    ..Geneve::new(7)
                },
                &inner,
            ),
        ),
        (
            "geneve-options-length",
            // 63 words of options claimed, but only the inner frame follows the header.
            {
                let mut p = geneve_packet(Geneve::new(7), &inner);
                p[14 + 20 + 8] |= 0x3f;
                p
            },
        ),
        (
            "geneve-protocol",
            geneve_packet(
                Geneve {
                    proto: ETH_P_IP,
                    ..Geneve::new(7)
                },
                &inner,
            ),
        ),
        (
            "geneve-control",
            geneve_packet(
                Geneve {
                    flags: 0x40,
                    ..Geneve::new(7)
                },
                &inner,
            ),
        ),
        ("geneve-short", {
            // A Geneve header and no inner frame.
            let payload = udp(51000, 6081, &Geneve::new(7).wrap(&[]));
            eth(
                UNDERLAY_MAC,
                [2; 6],
                ETH_P_IP,
                &ipv4(PEER_IP, NODE_IP, IPPROTO_UDP, true, &payload),
            )
        }),
        ("no-local-endpoint", {
            let ip = ipv4(
                REMOTE_POD,
                Ipv4Addr::new(10, 1, 0, 99),
                IPPROTO_UDP,
                true,
                &udp(1, 2, b"x"),
            );
            geneve_packet(Geneve::new(7), &eth([0xaa; 6], [0xbb; 6], ETH_P_IP, &ip))
        }),
        ("overlay-inner-malformed", {
            let arp = eth([0xff; 6], [0xbb; 6], ETH_P_ARP, &[0u8; 28]);
            geneve_packet(Geneve::new(7), &arp)
        }),
    ];
    for (reason, packet) in &cases {
        let out = n.run("mb_from_netdev", packet);
        assert_eq!(out.retval, TC_ACT_SHOT, "{reason}: dropped");
        assert_eq!(n.count(reason), 1, "{reason}: counted under its reason");
        assert_eq!(out.mark, 0, "{reason}: no identity handed on");
    }
    let reported = n.drop_reasons();
    for (reason, _) in &cases {
        assert!(
            reported.iter().any(|r| r == reason),
            "{reason}: a drop event, got {reported:?}"
        );
    }
    assert_eq!(n.count("forwarded"), 0);
}

#[test]
fn traffic_that_is_not_geneve_to_this_node_passes_untouched() {
    let n = Node::new(Overlay::Geneve);
    let inner = inner_frame();
    let not_ours: Vec<(&str, Vec<u8>)> = vec![
        ("tcp to the node", {
            let ip = ipv4(
                PEER_IP,
                NODE_IP,
                IPPROTO_TCP,
                true,
                &tcp(40000, 22, 0x02, &[]),
            );
            eth(UNDERLAY_MAC, [2; 6], ETH_P_IP, &ip)
        }),
        ("geneve to another address", {
            let payload = udp(51000, 6081, &Geneve::new(7).wrap(&inner));
            let ip = ipv4(
                PEER_IP,
                Ipv4Addr::new(192, 168, 100, 3),
                IPPROTO_UDP,
                true,
                &payload,
            );
            eth(UNDERLAY_MAC, [2; 6], ETH_P_IP, &ip)
        }),
        ("vxlan port", {
            let payload = udp(51000, 4789, &[0u8; 8]);
            eth(
                UNDERLAY_MAC,
                [2; 6],
                ETH_P_IP,
                &ipv4(PEER_IP, NODE_IP, IPPROTO_UDP, true, &payload),
            )
        }),
        ("arp", eth([0xff; 6], [2; 6], ETH_P_ARP, &[0u8; 28])),
        ("ipv6", {
            let ip = ipv6(REMOTE_POD6, LOCAL_POD6, IPPROTO_UDP, &udp(1, 6081, b"x"));
            eth(UNDERLAY_MAC, [2; 6], ETH_P_IPV6, &ip)
        }),
    ];
    for (what, packet) in &not_ours {
        let out = n.run("mb_from_netdev", packet);
        assert_eq!(out.retval, TC_ACT_OK, "{what}: passes");
        assert_eq!(&out.data, packet, "{what}: untouched");
    }

    // Outside geneve mode, nothing on 6081 is ours either.
    let n = Node::new(Overlay::Vxlan);
    let packet = geneve_packet(Geneve::new(7), &inner);
    let out = n.run("mb_from_netdev", &packet);
    assert_eq!(out.retval, TC_ACT_OK);
    assert_eq!(out.data, packet);
}

#[test]
fn the_vxlan_device_drops_what_came_without_tunnel_metadata() {
    let n = Node::new(Overlay::Vxlan);
    let out = n.run("mb_from_overlay", &inner_frame());
    assert_eq!(out.retval, TC_ACT_SHOT);
    assert_eq!(n.count("overlay-no-tunnel-key"), 1);
    assert!(n
        .drop_reasons()
        .iter()
        .any(|r| r == "overlay-no-tunnel-key"));
}

#[test]
fn geneve_from_a_sender_that_is_no_node_is_dropped_whatever_its_vni() {
    let n = Node::new(Overlay::Geneve);
    // A pod's address as the outer source: known to the ipcache, but no node.
    n.ipcache(&[("10.9.0.7/32", 1234, None)]);
    let inner = inner_frame();
    let strangers = [
        Ipv4Addr::new(192, 168, 100, 66),
        Ipv4Addr::new(10, 9, 0, 7),
        NODE_IP,
    ];
    for src in strangers {
        let out = n.run(
            "mb_from_netdev",
            &geneve_from(src, Geneve::new(REMOTE_IDENTITY), &inner),
        );
        assert_eq!(out.retval, TC_ACT_SHOT, "{src}: dropped");
        assert_eq!(out.mark, 0, "{src}: no identity handed on");
    }
    assert_eq!(n.count("overlay-unknown-node"), 3);
    let mut r = n.node.events().expect("node events");
    let drops: Vec<_> = r
        .drain("test", 64)
        .expect("drain events")
        .into_iter()
        .filter(|e| e.is_drop())
        .collect();
    assert_eq!(drops.len(), 3, "{drops:?}");
    let first = &drops[0];
    assert_eq!(first.reason, "overlay-unknown-node");
    assert_eq!(first.program, "from-netdev");
    assert!(
        first
            .src
            .as_deref()
            .is_some_and(|a| a.starts_with("192.168.100.66")),
        "the outer source reported: {first:?}"
    );
    assert_eq!(
        first.src_identity, REMOTE_IDENTITY,
        "the identity it claimed"
    );

    // The same packet from the peer node is delivered with the VNI's identity.
    let out = n.run(
        "mb_from_netdev",
        &geneve_packet(Geneve::new(REMOTE_IDENTITY), &inner),
    );
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(out.mark, identity_mark(REMOTE_IDENTITY));
    assert_eq!(n.count("forwarded"), 1);

    // Forget the peer (no longer in the node registry): it is a stranger too.
    let n = Node::new(Overlay::Geneve);
    n.node.sync_ipcache(&[]).expect("empty ipcache");
    let out = n.run(
        "mb_from_netdev",
        &geneve_packet(Geneve::new(REMOTE_IDENTITY), &inner),
    );
    assert_eq!(out.retval, TC_ACT_SHOT);
    assert_eq!(n.count("overlay-unknown-node"), 1);
}

#[test]
fn a_node_cannot_speak_for_this_node_or_a_third_nodes_pods() {
    let n = Node::new(Overlay::Geneve);
    let third = Ipv4Addr::new(192, 168, 100, 3);
    n.ipcache(&[
        ("192.168.100.3/32", REMOTE_NODE, None),
        ("10.3.0.0/24", 2, Some(third)),
    ]);
    let spoofed: Vec<(&str, IpAddr, u32)> = vec![
        ("a pod of this node", IpAddr::V4(LOCAL_POD), REMOTE_IDENTITY),
        (
            "a pod of this node (IPv6)",
            IpAddr::V6(LOCAL_POD6),
            REMOTE_IDENTITY,
        ),
        ("this node itself", IpAddr::V4(NODE_IP), REMOTE_NODE),
        (
            "a pod of a third node",
            IpAddr::V4(Ipv4Addr::new(10, 3, 0, 4)),
            REMOTE_IDENTITY,
        ),
        ("the host identity", IpAddr::V4(REMOTE_POD), HOST),
    ];
    for (what, src, vni) in &spoofed {
        let out = n.run(
            "mb_from_netdev",
            &geneve_packet(Geneve::new(*vni), &inner_from(*src)),
        );
        assert_eq!(out.retval, TC_ACT_SHOT, "{what}: dropped");
        assert_eq!(out.mark, 0, "{what}: no identity handed on");
    }
    assert_eq!(n.count("overlay-spoofed-inner"), spoofed.len() as u64);
    assert!(n
        .drop_reasons()
        .iter()
        .all(|r| r == "overlay-spoofed-inner"));

    // What the peer can speak for: its pods (IPv4, IPv6), its own address (sent as
    // remote-node), and addresses outside the cluster.
    let allowed: Vec<(&str, IpAddr, u32)> = vec![
        ("its pod", IpAddr::V4(REMOTE_POD), REMOTE_IDENTITY),
        ("its pod (IPv6)", IpAddr::V6(REMOTE_POD6), REMOTE_IDENTITY),
        ("the peer node itself", IpAddr::V4(PEER_IP), REMOTE_NODE),
        ("the outside", IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 2),
    ];
    for (what, src, vni) in &allowed {
        let out = n.run(
            "mb_from_netdev",
            &geneve_packet(Geneve::new(*vni), &inner_from(*src)),
        );
        assert_eq!(out.retval, TC_ACT_REDIRECT, "{what}: delivered");
        assert_eq!(out.mark, identity_mark(*vni), "{what}: with the VNI");
    }
}

/// A packet the node itself sends from `src` to `dst`, as it leaves through the underlay.
fn node_frame(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let ip = ipv4(
        src,
        dst,
        IPPROTO_TCP,
        true,
        &tcp(15010, 40000, 0x12, &vec![0; len]),
    );
    eth([0x02, 0, 0, 0, 0x10, 0x02], UNDERLAY_MAC, ETH_P_IP, &ip)
}

#[test]
fn the_nodes_own_packets_to_a_remote_pod_go_through_the_tunnel_as_remote_node() {
    let n = Node::new(Overlay::Geneve);
    let frame = node_frame(NODE_IP, REMOTE_POD, 100);
    let out = n.run("mb_to_netdev", &frame);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "encapsulated and sent");
    let d = &out.data;
    assert_eq!(d.len(), frame.len() + 50);
    assert_eq!(&d[14 + 12..14 + 16], &NODE_IP.octets(), "outer source");
    assert_eq!(&d[14 + 16..14 + 20], &PEER_IP.octets(), "to the pod's node");
    assert_eq!(u16::from_be_bytes([d[36], d[37]]), 6081);
    assert_eq!(
        u32::from_be_bytes([0, d[46], d[47], d[48]]),
        REMOTE_NODE,
        "host is presented as remote-node"
    );
    assert_eq!(&d[50..], &frame[..], "the node's frame inside");

    // The peer takes it apart and hands remote-node to its pod.
    let peer = Node::new(Overlay::Geneve);
    peer.node
        .set_settings(&NodeSettings {
            node_ip4: PEER_IP,
            ..settings(Overlay::Geneve)
        })
        .unwrap();
    peer.node
        .sync_ipcache(&[IpcacheEntry {
            prefix: format!("{NODE_IP}/32").parse().unwrap(),
            identity: REMOTE_NODE,
            tunnel: None,
        }])
        .unwrap();
    peer.add_endpoint(IpAddr::V4(REMOTE_POD));
    let out = peer.run("mb_from_netdev", d);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "delivered on the peer");
    assert_eq!(out.mark, identity_mark(REMOTE_NODE));
    assert_eq!(&out.data[14..], &frame[14..]);

    // Not to a remote pod: untouched (tunnel packets, nodes, the outside).
    for dst in [PEER_IP, Ipv4Addr::new(203, 0, 113, 9), LOCAL_POD] {
        let f = node_frame(NODE_IP, dst, 100);
        let out = n.run("mb_to_netdev", &f);
        assert_eq!(out.retval, TC_ACT_OK, "{dst}: passes");
        assert_eq!(out.data, f, "{dst}: untouched");
    }
    let wire = out_of(&n);
    assert_eq!(
        n.run("mb_to_netdev", &wire).retval,
        TC_ACT_OK,
        "a tunnel packet passes"
    );

    // Too big for the tunnel (the route's MTU prevents it): dropped, counted.
    let big = node_frame(NODE_IP, REMOTE_POD, 1500 - 40);
    let out = n.run("mb_to_netdev", &big);
    assert_eq!(out.retval, TC_ACT_SHOT);
    assert_eq!(n.count("too-big"), 1);

    // VXLAN: handed to the VXLAN device, which encapsulates; native: the kernel routes.
    let n = Node::new(Overlay::Vxlan);
    let out = n.run("mb_to_netdev", &frame);
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(out.data, frame);
    let n = Node::new(Overlay::Native);
    let out = n.run("mb_to_netdev", &frame);
    assert_eq!(out.retval, TC_ACT_OK);
    assert_eq!(out.data, frame);
}

/// A Geneve packet this node would send to the peer (outer destination: a node).
fn out_of(n: &Node) -> Vec<u8> {
    n.run("mb_to_netdev", &node_frame(NODE_IP, REMOTE_POD, 10))
        .data
}
