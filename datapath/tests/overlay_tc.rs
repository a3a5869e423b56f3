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
        n
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
    let payload = udp(51000, 6081, &g.wrap(inner));
    let ip = ipv4(PEER_IP, NODE_IP, IPPROTO_UDP, true, &payload);
    eth(UNDERLAY_MAC, [0x02, 0, 0, 0, 0x10, 0x02], ETH_P_IP, &ip)
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
