//! from-container's encapsulation on crafted packets (BPF_PROG_TEST_RUN), on a pod's
//! real tc programs (attached to a host veth in the test's own namespace): the Geneve
//! bytes (outer headers, checksum, VNI = the pod's identity, the pod's frame kept) and
//! their decapsulation by the peer node's underlay program; VXLAN and native modes;
//! packets too big for the underlay answered with ICMP "fragmentation needed" / ICMPv6
//! "packet too big" carrying the right MTU, counted and reported.

mod common;
#[path = "common/frames.rs"]
mod frames;
mod tc_common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use frames::*;
use membrane_datapath::{abi::MbEndpointValue, IpcacheEntry, NodeSettings, Overlay};
use tc_common::TcNode;

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
const UNDERLAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x10, 0x01];
const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 9);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 9);
const POD_IDENTITY: u32 = 0x01_03e8;
const REMOTE_IDENTITY: u32 = 2001;
const EP_ID: u16 = 5;
/// 1500 (underlay) - 50 (VXLAN or Geneve over IPv4).
const INNER_MTU: u16 = 1450;

fn node_settings(overlay: Overlay, node_ip4: Ipv4Addr) -> NodeSettings {
    NodeSettings {
        node_ip4,
        underlay_ifindex: 1,
        overlay_ifindex: if overlay == Overlay::Vxlan { 1 } else { 0 },
        underlay_mtu: 1500,
        underlay_mac: UNDERLAY_MAC,
        overlay,
        ..NodeSettings::default()
    }
}

/// A node in `overlay` mode with one pod (10.1.0.5, fd00:1::5) and the remote pods'
/// prefixes behind the peer node in its ipcache.
fn node(overlay: Overlay) -> TcNode {
    let mut n = TcNode::new(false);
    n.node
        .set_settings(&node_settings(overlay, NODE_IP))
        .expect("node settings");
    n.add(EP_ID, POD_IDENTITY, &["10.1.0.5", "fd00:1::5"], false);
    let entry = |prefix: &str, identity, tunnel| IpcacheEntry {
        prefix: prefix.parse().unwrap(),
        identity,
        tunnel,
    };
    n.node
        .sync_ipcache(&[
            entry("10.1.0.5/32", POD_IDENTITY, None),
            entry("10.2.0.0/24", REMOTE_IDENTITY, Some(PEER_IP)),
            entry("fd00:2::/64", REMOTE_IDENTITY, Some(PEER_IP)),
        ])
        .expect("ipcache");
    n
}

/// The pod sends `frame`: from-container's verdict and the frame after it.
fn send(n: &TcNode, frame: &[u8]) -> SkbOut {
    run_tc(&n.eps[0].dp.dir().join("progs/mb_from_container"), frame, 0)
}

fn pod_frame(ip: &[u8]) -> Vec<u8> {
    let proto = if ip[0] >> 4 == 6 {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    };
    eth(
        [2, 0, 0, 0, 1, EP_ID as u8],
        [2, 0, 0, 0, 0, EP_ID as u8],
        proto,
        ip,
    )
}

fn udp4(dst: Ipv4Addr, df: bool, payload_len: usize) -> Vec<u8> {
    pod_frame(&ipv4(
        POD,
        dst,
        IPPROTO_UDP,
        df,
        &udp(40000, 53, &vec![0x5a; payload_len]),
    ))
}

fn count(n: &TcNode, name: &str) -> u64 {
    n.node
        .tc_stats()
        .expect("tc stats")
        .iter()
        .find(|s| s.name == name)
        .map_or(0, |s| s.packets)
}

#[test]
fn geneve_encapsulation_is_byte_exact_and_the_peer_decapsulates_it() {
    let n = node(Overlay::Geneve);
    let frame = udp4(REMOTE, true, 100);
    let out = send(&n, &frame);

    assert_eq!(out.retval, TC_ACT_REDIRECT, "sent to the underlay");
    let d = &out.data;
    assert_eq!(d.len(), frame.len() + 50, "50 bytes of tunnel headers");
    assert_eq!(&d[6..12], &UNDERLAY_MAC, "from the underlay's MAC");
    assert_eq!(&d[12..14], &ETH_P_IP.to_be_bytes());
    let ip = &d[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, d.len() - 14);
    assert_eq!(ip[6] & 0x40, 0x40, "outer DF");
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(ip[9], IPPROTO_UDP);
    assert_eq!(&ip[12..16], &NODE_IP.octets(), "from this node");
    assert_eq!(&ip[16..20], &PEER_IP.octets(), "to the destination's node");
    assert_eq!(csum(ip), 0, "outer IPv4 checksum valid");
    let udp_h = &d[34..42];
    let sport = u16::from_be_bytes([udp_h[0], udp_h[1]]);
    assert!(
        (32768..61000).contains(&sport),
        "source port {sport} from the flow hash"
    );
    assert_eq!(u16::from_be_bytes([udp_h[2], udp_h[3]]), 6081);
    assert_eq!(
        u16::from_be_bytes([udp_h[4], udp_h[5]]) as usize,
        d.len() - 34
    );
    let g = &d[42..50];
    assert_eq!(g[0], 0, "version 0, no options");
    assert_eq!(
        u16::from_be_bytes([g[2], g[3]]),
        ETH_P_TEB,
        "inner Ethernet"
    );
    assert_eq!(
        u32::from_be_bytes([0, g[4], g[5], g[6]]),
        POD_IDENTITY,
        "VNI = the pod's identity"
    );
    assert_eq!(&d[50..], &frame[..], "the pod's frame, whole");
    assert_eq!(count(&n, "forwarded"), 1);

    // The same flow always gets the same source port (ECMP keeps it on one path).
    let again = send(&n, &frame);
    assert_eq!(&again.data[34..36], &udp_h[0..2]);

    // The peer node takes it apart: delivered to its pod with the VNI as identity.
    let peer = TcNode::new(false);
    peer.node
        .set_settings(&node_settings(Overlay::Geneve, PEER_IP))
        .expect("peer settings");
    peer.node.load_overlay_programs().expect("overlay programs");
    // The peer believes the VNI only from a node it knows (this one: remote-node).
    peer.node
        .sync_ipcache(&[IpcacheEntry {
            prefix: format!("{NODE_IP}/32").parse().unwrap(),
            identity: 6,
            tunnel: None,
        }])
        .expect("peer ipcache");
    let mut wire = d.clone();
    wire[0..6].copy_from_slice(&UNDERLAY_MAC);
    let from_netdev = peer.node.dir().join("progs/mb_from_netdev");
    let out = run_tc(&from_netdev, &wire, 0);
    assert_eq!(out.retval, TC_ACT_SHOT, "no pod 10.2.0.9 on the peer yet");
    assert_eq!(count(&peer, "no-local-endpoint"), 1);

    let remote_pod = MbEndpointValue {
        ifindex: 42,
        identity: REMOTE_IDENTITY,
        endpoint_id: 9,
        mac: [2, 0, 0, 0, 2, 9],
        node_mac: [2, 0, 0, 0, 3, 9],
        pad: 0,
    };
    write_endpoint(peer.node.dir(), IpAddr::V4(REMOTE), remote_pod);
    let out = run_tc(&from_netdev, &wire, 0);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "delivered to the peer's pod");
    assert_eq!(
        out.mark,
        identity_mark(POD_IDENTITY),
        "with the sender's identity"
    );
    assert_eq!(&out.data[0..6], &remote_pod.mac);
    assert_eq!(&out.data[6..12], &remote_pod.node_mac);
    assert_eq!(
        &out.data[12..],
        &frame[12..],
        "the pod's IP packet as it was sent"
    );
}

#[test]
fn ipv6_pods_are_encapsulated_in_ipv4_geneve() {
    let n = node(Overlay::Geneve);
    let frame = pod_frame(&ipv6(POD6, REMOTE6, IPPROTO_UDP, &udp(40000, 53, b"six")));
    let out = send(&n, &frame);
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    assert_eq!(&out.data[12..14], &ETH_P_IP.to_be_bytes(), "outer IPv4");
    assert_eq!(&out.data[50..], &frame[..]);
}

#[test]
fn vxlan_redirects_to_the_vxlan_device_and_native_leaves_routing_to_the_kernel() {
    let frame = udp4(REMOTE, true, 100);

    let n = node(Overlay::Vxlan);
    let out = send(&n, &frame);
    assert_eq!(
        out.retval, TC_ACT_REDIRECT,
        "to the VXLAN device with a tunnel key"
    );
    assert_eq!(out.data, frame, "the device encapsulates, not the program");

    let n = node(Overlay::Native);
    let out = send(&n, &frame);
    assert_eq!(out.retval, TC_ACT_OK, "native: the kernel routes");
    assert_eq!(out.data, frame);

    // A destination on this node (no tunnel endpoint) is routed in every mode.
    let n = node(Overlay::Geneve);
    let local = pod_frame(&ipv4(
        POD,
        Ipv4Addr::new(10, 1, 0, 7),
        IPPROTO_UDP,
        true,
        &udp(1, 2, b"x"),
    ));
    let out = send(&n, &local);
    assert_eq!(out.retval, TC_ACT_OK);
    assert_eq!(out.data, local);
}

/// The ICMP error checks every test of a too-big IPv4 packet makes.
fn assert_frag_needed(out: &SkbOut, refused: &[u8]) {
    assert_eq!(out.retval, TC_ACT_REDIRECT, "sent back to the pod");
    let d = &out.data;
    assert_eq!(
        d.len(),
        14 + 20 + 8 + 28,
        "headers and the quote, nothing more"
    );
    assert_eq!(&d[0..6], &refused[6..12], "to the pod's MAC");
    assert_eq!(&d[6..12], &refused[0..6], "from its host veth's MAC");
    let ip = &d[14..34];
    assert_eq!(csum(ip), 0, "IPv4 checksum valid");
    assert_eq!(ip[9], IPPROTO_ICMP);
    assert_eq!(&ip[12..16], &NODE_IP.octets(), "from the node");
    assert_eq!(&ip[16..20], &POD.octets(), "to the sender");
    let icmp_m = &d[34..];
    assert_eq!((icmp_m[0], icmp_m[1]), (3, 4), "fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([icmp_m[6], icmp_m[7]]),
        INNER_MTU,
        "next-hop MTU"
    );
    assert_eq!(csum(icmp_m), 0, "ICMP checksum valid");
    assert_eq!(
        &icmp_m[8..],
        &refused[14..14 + 28],
        "quotes the header and 8 bytes"
    );
}

#[test]
fn too_big_for_the_underlay_gets_icmp_fragmentation_needed_with_the_mtu() {
    for overlay in [Overlay::Geneve, Overlay::Vxlan] {
        let n = node(overlay);
        // 1451 bytes of IP: one more than fits once encapsulated.
        let frame = udp4(REMOTE, true, usize::from(INNER_MTU) + 1 - 28);
        let out = send(&n, &frame);
        assert_frag_needed(&out, &frame);
        assert_eq!(count(&n, "frag-needed"), 1, "{overlay}: counted");
        let events = n.eps[0].events();
        assert!(
            events
                .iter()
                .any(|e| e.is_drop() && e.reason == "frag-needed"),
            "{overlay}: reported, got {events:?}"
        );

        // Without DF: refused the same way (never fragmented here, never silent).
        let frame = udp4(REMOTE, false, 1472);
        assert_frag_needed(&send(&n, &frame), &frame);
        assert_eq!(count(&n, "frag-needed"), 2);

        // Exactly the inner MTU still goes.
        let fits = udp4(REMOTE, true, usize::from(INNER_MTU) - 28);
        assert_eq!(send(&n, &fits).retval, TC_ACT_REDIRECT);
        assert_eq!(
            count(&n, "frag-needed"),
            2,
            "{overlay}: the one that fits is no error"
        );
    }
}

#[test]
fn too_big_ipv6_gets_packet_too_big_with_the_mtu() {
    let n = node(Overlay::Geneve);
    let frame = pod_frame(&ipv6(
        POD6,
        REMOTE6,
        IPPROTO_UDP,
        &udp(40000, 53, &[7u8; 1452]),
    ));
    let out = send(&n, &frame);
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    let d = &out.data;
    assert_eq!(d.len(), 14 + 40 + 8 + 48);
    assert_eq!(&d[12..14], &ETH_P_IPV6.to_be_bytes());
    let ip = &d[14..54];
    assert_eq!(ip[6], IPPROTO_ICMPV6);
    assert_eq!(
        &ip[8..24],
        &REMOTE6.octets(),
        "from the refused destination"
    );
    assert_eq!(&ip[24..40], &POD6.octets(), "to the sender");
    let m = &d[54..];
    assert_eq!((m[0], m[1]), (2, 0), "packet too big");
    assert_eq!(
        u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
        u32::from(INNER_MTU)
    );
    assert_eq!(
        &m[8..],
        &frame[14..14 + 48],
        "quotes the header and 8 bytes"
    );
    // The checksum covers the pseudo-header.
    let mut sum = Vec::new();
    sum.extend_from_slice(&ip[8..40]);
    sum.extend_from_slice(&(m.len() as u32).to_be_bytes());
    sum.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
    sum.extend_from_slice(m);
    assert_eq!(csum(&sum), 0, "ICMPv6 checksum valid");
    assert_eq!(count(&n, "frag-needed"), 1);
}

#[test]
fn a_too_big_icmp_error_is_dropped_not_answered() {
    let n = node(Overlay::Geneve);
    // An ICMP error (destination unreachable) quoting a big packet: no error answers it.
    let quoted = ipv4(
        REMOTE,
        POD,
        IPPROTO_UDP,
        true,
        &udp(53, 40000, &[0u8; 1440]),
    );
    let frame = pod_frame(&ipv4(
        POD,
        REMOTE,
        IPPROTO_ICMP,
        true,
        &icmp(3, 3, [0; 4], &quoted),
    ));
    let out = send(&n, &frame);
    assert_eq!(out.retval, TC_ACT_SHOT);
    assert_eq!(count(&n, "too-big"), 1);
}
