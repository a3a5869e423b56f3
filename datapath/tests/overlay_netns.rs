//! Pods on different nodes for real, in network namespaces (`overlay_cluster`): TCP and UDP
//! between pods over VXLAN, Geneve and native routing, with tshark on the underlay
//! decoding the tunnel and the VNI = the sending pod's identity; the receiving node's
//! ingress policy deciding by the identity in the VNI, not by its ipcache; a packet too
//! big for the underlay answered with ICMP "fragmentation needed" and the MTU; three
//! nodes in a full mesh.

mod common;
mod overlay_cluster;
mod tc_common;

use membrane_datapath::{
    policy_map::{Direction::*, MapVerdict, PolicyRule},
    Overlay,
};
use overlay_cluster::{
    decimal_vni,
    scripts::{PMTU_PROBE, TCP_PROBE, UDP_CLIENT, UDP_ECHO},
    Cluster,
};

const TIEFIGHTER: u32 = 1001;
const XWING: u32 = 1002;
const DEATHSTAR: u32 = 1003;

const SOCKBENCH: &str = env!("CARGO_BIN_EXE_membrane-sockbench");

fn rule(
    direction: membrane_datapath::policy_map::Direction,
    id: u32,
    proto: u8,
    port: u16,
) -> PolicyRule {
    PolicyRule {
        direction,
        remote_identity: id,
        proto,
        ports: if port == 0 {
            (1, u16::MAX)
        } else {
            (port, port)
        },
        verdict: MapVerdict::Allow,
    }
}

/// The tunnel headers tshark decodes, by mode: (capture filter, VNI field).
fn tunnel(overlay: Overlay) -> (&'static str, &'static str) {
    match overlay {
        Overlay::Vxlan => ("udp port 4789", "vxlan.vni"),
        Overlay::Geneve => ("udp port 6081", "geneve.vni"),
        Overlay::Native => ("tcp port 8080", "ip.proto"),
    }
}

/// Two nodes, a pod on each: TCP (1 MiB echoed and checksummed) and UDP (20 datagrams
/// echoed) from node 1's pod to node 2's, and what the underlay carried.
fn pods_on_two_nodes_talk(overlay: Overlay) {
    let mut c = Cluster::new(2, overlay, false);
    let a = c.add_pod(0, TIEFIGHTER, None);
    let b = c.add_pod(1, DEATHSTAR, None);
    c.finish(&[]);
    let server = c.pods[b].ip.to_string();
    c.serve(
        b,
        &[SOCKBENCH, "echo", "--listen", &format!("{server}:8080")],
    );
    c.serve(b, &["python3", "-c", UDP_ECHO, "5353"]);

    let (filter, vni) = tunnel(overlay);
    // The first packets on the wire, once the capture is live: the TCP echo's handshake
    // and first segments, both directions.
    let capture = c.tshark(0, filter, &[vni, "ip.src", "ip.dst"], 6);
    let out = c.exec(
        a,
        &[SOCKBENCH, "client", "--connect", &format!("{server}:8080")],
    );
    assert!(
        out.contains("OK round=0 bytes=1048576"),
        "{overlay}: TCP echo: {out}"
    );
    let out = c.exec(a, &["python3", "-c", UDP_CLIENT, &server, "5353", "20"]);
    assert!(out.contains("udp ok=20"), "{overlay}: UDP echo: {out}");

    let lines: Vec<String> = capture.lines().into_iter().map(decimal_vni).collect();
    let (pa, pb) = (c.pods[a].ip, c.pods[b].ip);
    let (na, nb) = (c.nodes[0].ip, c.nodes[1].ip);
    if overlay == Overlay::Native {
        // The pods' own packets on the wire, no outer header.
        assert!(
            lines.iter().any(|l| l == &format!("6\t{pa}\t{pb}")),
            "native: pod to pod unencapsulated, got {lines:?}"
        );
        return;
    }
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("{TIEFIGHTER}\t{na},{pa}\t{nb},{pb}")),
        "{overlay}: VNI = the sender's identity {TIEFIGHTER} from {na} ({pa}), got {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("{DEATHSTAR}\t{nb},{pb}\t{na},{pa}")),
        "{overlay}: the replies carry {DEATHSTAR}, got {lines:?}"
    );
}

#[test]
fn pods_on_two_nodes_talk_over_vxlan() {
    pods_on_two_nodes_talk(Overlay::Vxlan);
}

#[test]
fn pods_on_two_nodes_talk_over_geneve() {
    pods_on_two_nodes_talk(Overlay::Geneve);
}

#[test]
fn pods_on_two_nodes_talk_by_native_routing() {
    pods_on_two_nodes_talk(Overlay::Native);
}

/// The deathstar (node 2) admits tiefighters on 8080. Node 2's ipcache says the xwing's
/// address is a tiefighter (an ipcache that would allow it), yet the xwing is dropped:
/// node 2 decides by the identity the VNI carries.
fn ingress_policy_decides_by_the_vni(overlay: Overlay) {
    let mut c = Cluster::new(2, overlay, true);
    let tie = c.add_pod(0, TIEFIGHTER, None);
    let xw = c.add_pod(0, XWING, None);
    let ds = c.add_pod(1, DEATHSTAR, None);
    c.finish(&[(1, xw, TIEFIGHTER)]);
    for p in [tie, xw] {
        c.policy(p, &[rule(Egress, 0, 6, 0)]);
    }
    c.policy(ds, &[rule(Ingress, TIEFIGHTER, 6, 8080)]);
    let server = c.pods[ds].ip.to_string();
    c.serve(
        ds,
        &[SOCKBENCH, "echo", "--listen", &format!("{server}:8080")],
    );

    let out = c.exec(tie, &["python3", "-c", TCP_PROBE, &server, "8080"]);
    assert!(
        out.contains("tcp connected b'hello\\n'"),
        "{overlay}: tiefighter lands: {out}"
    );
    let out = c.exec(xw, &["python3", "-c", TCP_PROBE, &server, "8080"]);
    assert!(
        out.contains("tcp failed"),
        "{overlay}: xwing must be dropped: {out}"
    );

    let events = c.pods[ds]
        .dp
        .events()
        .expect("events")
        .drain("test", 1000)
        .unwrap();
    let drop = events
        .iter()
        .find(|e| e.is_drop() && e.program == "to-container")
        .unwrap_or_else(|| panic!("{overlay}: no drop at the deathstar, got {events:?}"));
    assert_eq!(
        drop.src_identity, XWING,
        "{overlay}: the VNI's identity, not the ipcache's"
    );
    assert_eq!(drop.dst_identity, DEATHSTAR);
    assert!(
        events
            .iter()
            .all(|e| !(e.is_drop() && e.src_identity == TIEFIGHTER)),
        "{overlay}: the tiefighter was never dropped: {events:?}"
    );
}

#[test]
fn ingress_policy_decides_by_the_vni_over_vxlan() {
    ingress_policy_decides_by_the_vni(Overlay::Vxlan);
}

#[test]
fn ingress_policy_decides_by_the_vni_over_geneve() {
    ingress_policy_decides_by_the_vni(Overlay::Geneve);
}

/// A pod whose MTU is the underlay's (misconfigured: 50 bytes too big for the tunnel)
/// sends a DF datagram that fits its link but not the tunnel: the node answers with ICMP
/// "fragmentation needed", which the pod's to-container lets in as related to the pod's
/// flow (policy enforced), and the pod's kernel learns the path MTU of 1450.
fn too_big_is_refused_with_the_mtu(overlay: Overlay) {
    let mut c = Cluster::new(2, overlay, true);
    let a = c.add_pod(0, TIEFIGHTER, Some(overlay_cluster::UNDERLAY_MTU));
    let b = c.add_pod(1, DEATHSTAR, None);
    c.finish(&[]);
    c.policy(a, &[rule(Egress, DEATHSTAR, 17, 5353)]);
    c.policy(b, &[rule(Ingress, TIEFIGHTER, 17, 5353)]);
    let server = c.pods[b].ip.to_string();
    c.serve(b, &["python3", "-c", UDP_ECHO, "5353"]);

    // 1460 bytes of UDP payload: a 1488-byte IP packet.
    let out = c.exec(a, &["python3", "-c", PMTU_PROBE, &server, "5353", "1460"]);
    assert!(out.contains("too big, path mtu=1450"), "{overlay}: {out}");
    let stats = c.nodes[0].node.tc_stats().expect("stats");
    assert!(
        stats
            .iter()
            .any(|s| s.name == "frag-needed" && s.packets >= 1),
        "{overlay}: counted, got {stats:?}"
    );
    // What fits the tunnel still goes through.
    let out = c.exec(a, &["python3", "-c", UDP_CLIENT, &server, "5353", "5"]);
    assert!(out.contains("udp ok=5"), "{overlay}: {out}");
}

#[test]
fn too_big_over_geneve_is_refused_with_the_mtu() {
    too_big_is_refused_with_the_mtu(Overlay::Geneve);
}

#[test]
fn too_big_over_vxlan_is_refused_with_the_mtu() {
    too_big_is_refused_with_the_mtu(Overlay::Vxlan);
}

/// Three nodes, a pod on each, every pod reaching the two others over UDP and TCP.
fn three_nodes_full_mesh(overlay: Overlay) {
    let mut c = Cluster::new(3, overlay, false);
    let pods: Vec<usize> = (0..3)
        .map(|n| c.add_pod(n, 2000 + n as u32, None))
        .collect();
    c.finish(&[]);
    for &p in &pods {
        let ip = c.pods[p].ip.to_string();
        c.serve(p, &["python3", "-c", UDP_ECHO, "5353"]);
        c.serve(p, &[SOCKBENCH, "echo", "--listen", &format!("{ip}:8080")]);
    }
    for &from in &pods {
        for &to in pods.iter().filter(|&&t| t != from) {
            let dst = c.pods[to].ip.to_string();
            let out = c.exec(from, &["python3", "-c", UDP_CLIENT, &dst, "5353", "5"]);
            assert!(
                out.contains("udp ok=5"),
                "{overlay}: pod {from} to {to}: {out}"
            );
            let out = c.exec(from, &["python3", "-c", TCP_PROBE, &dst, "8080"]);
            assert!(
                out.contains("tcp connected"),
                "{overlay}: pod {from} to {to}: {out}"
            );
        }
    }
}

/// Pods' IPv6 between nodes, inside the IPv4 tunnel.
fn ipv6_pods_talk(overlay: Overlay) {
    let mut c = Cluster::new(2, overlay, false);
    let a = c.add_pod(0, TIEFIGHTER, None);
    let b = c.add_pod(1, DEATHSTAR, None);
    c.finish(&[]);
    c.serve(b, &["python3", "-c", UDP_ECHO, "5353"]);
    let server = c.pods[b].ip6.expect("IPv6 in overlay modes").to_string();
    let out = c.exec(a, &["python3", "-c", UDP_CLIENT, &server, "5353", "10"]);
    assert!(out.contains("udp ok=10"), "{overlay}: UDP over IPv6: {out}");
}

#[test]
fn ipv6_pods_talk_over_geneve() {
    ipv6_pods_talk(Overlay::Geneve);
}

#[test]
fn ipv6_pods_talk_over_vxlan() {
    ipv6_pods_talk(Overlay::Vxlan);
}

#[test]
fn three_nodes_full_mesh_over_geneve() {
    three_nodes_full_mesh(Overlay::Geneve);
}

#[test]
fn three_nodes_full_mesh_over_vxlan() {
    three_nodes_full_mesh(Overlay::Vxlan);
}

/// Setting a node up again changes nothing; a device squatting on the VXLAN device's
/// name is refused, not replaced; teardown leaves no pin and no VXLAN device.
#[test]
fn setup_is_idempotent_refuses_a_foreign_device_and_tears_down() {
    use membrane_datapath::node::{device, VXLAN_DEVICE};
    use tc_common::in_netns;

    let c = Cluster::new(1, Overlay::Vxlan, false);
    let n = &c.nodes[0];
    let ns = n.ns.path();
    let err = in_netns(&ns, || n.node.attach_underlay("nosuchdev")).expect_err("no device");
    assert!(err.to_string().contains("nosuchdev"), "{err}");
    let vxlan = in_netns(&ns, || device(VXLAN_DEVICE)).expect("mb_vxlan");
    assert_eq!(vxlan.mtu, 1450, "the pods' MTU");
    let links = || {
        let mut v: Vec<String> = std::fs::read_dir(n.node.dir().join("links"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = links();
    in_netns(&ns, || {
        n.node.setup_overlay().expect("setup again");
        n.node.attach_underlay(&n.ul).expect("attach again");
    });
    assert_eq!(links(), before, "no second attachment");
    let s = n.node.settings().unwrap();
    assert_eq!(s.overlay_ifindex, vxlan.ifindex);

    // Another device by that name: an error naming it, the settings untouched.
    in_netns(&ns, || n.node.teardown_overlay()).expect("teardown overlay");
    assert!(
        in_netns(&ns, || device(VXLAN_DEVICE)).is_err(),
        "mb_vxlan deleted"
    );
    n.ns.ip(&["link", "add", VXLAN_DEVICE, "type", "bridge"]);
    let err = in_netns(&ns, || n.node.setup_overlay()).expect_err("a bridge is no VXLAN device");
    assert!(err.to_string().contains(VXLAN_DEVICE), "{err}");
    assert_eq!(n.node.settings().unwrap(), s);
    in_netns(&ns, || n.node.teardown_overlay()).expect("teardown overlay");
    assert!(
        in_netns(&ns, || device(VXLAN_DEVICE)).is_ok(),
        "not ours: left alone"
    );
    n.ns.ip(&["link", "del", VXLAN_DEVICE]);

    in_netns(&ns, || n.node.setup_overlay()).expect("set up anew");
    n.node.teardown().expect("teardown");
    assert!(!n.node.dir().exists(), "no pin left");
}
