//! NodePort to a backend on another node, for real (`overlay_cluster`): a client on the
//! underlay (no node, no pod) reaches node 1's NodePort, whose only backend is a pod on
//! node 2. In vxlan and geneve mode node 1 sends the translated request (DNAT to the
//! backend, SNAT to node 1's address) through the tunnel with `world` as the VNI, as
//! Cilium does (Cilium's policy caveats: N/S service traffic is world in tunnel mode);
//! natively it is routed and node 2 calls it remote-node by its ipcache. The backend's
//! ingress policy admits exactly that identity, tshark on node 1's underlay shows the
//! encapsulated (or native) request, and the replies come back to the client from the
//! NodePort. A datagram too big for the tunnel is refused with ICMP "fragmentation
//! needed" to the client, before any translation, and the client learns the path MTU.

mod common;
mod overlay_cluster;
mod tc_common;

use std::net::Ipv4Addr;

use membrane_datapath::{
    lb::LbService,
    policy_map::{Direction::*, MapVerdict, PolicyRule},
    Overlay,
};
use overlay_cluster::{
    decimal_vni, exec_in,
    scripts::{PMTU_PROBE, UDP_CLIENT, UDP_ECHO},
    Cluster,
};

const DEATHSTAR: u32 = 1003;
const WORLD: u32 = 2;
const REMOTE_NODE: u32 = 6;
const SOCKBENCH: &str = env!("CARGO_BIN_EXE_membrane-sockbench");
/// The client on the underlay: no node's address, so the ipcache calls it world.
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 50);

fn allow(id: u32, proto: u8, port: u16) -> PolicyRule {
    PolicyRule {
        direction: Ingress,
        remote_identity: id,
        proto,
        ports: (port, port),
        verdict: MapVerdict::Allow,
    }
}

fn nodeport_to_a_backend_on_another_node(overlay: Overlay) {
    let mut c = Cluster::new(2, overlay, true);
    let be = c.add_pod(1, DEATHSTAR, None);
    c.finish(&[]);
    c.route_pod_cidrs();
    let client = c.underlay_host(CLIENT);
    let backend = c.pods[be].ip;
    // What node 2 must see the client's flows as: world through a tunnel, remote-node
    // (node 1's address, by node 2's ipcache) when routed natively.
    let seen_as = if overlay == Overlay::Native {
        REMOTE_NODE
    } else {
        WORLD
    };
    c.policy(be, &[allow(seen_as, 6, 8080), allow(seen_as, 17, 5353)]);
    c.serve(
        be,
        &[SOCKBENCH, "echo", "--listen", &format!("{backend}:8080")],
    );
    c.serve(be, &["python3", "-c", UDP_ECHO, "5353"]);
    let services = [
        LbService {
            frontend: "10.96.0.10:80".parse().unwrap(),
            proto: 6,
            node_port: 30080,
            external_local: false,
            backends: vec![format!("{backend}:8080").parse().unwrap()],
        },
        LbService {
            frontend: "10.96.0.10:53".parse().unwrap(),
            proto: 17,
            node_port: 30053,
            external_local: false,
            backends: vec![format!("{backend}:5353").parse().unwrap()],
        },
    ];
    for n in &c.nodes {
        n.node.sync_services(&services).expect("sync services");
    }
    let (na, nb) = (c.nodes[0].ip, c.nodes[1].ip);

    let (filter, fields) = match overlay {
        Overlay::Vxlan => ("udp dst port 4789", ["vxlan.vni", "ip.src", "ip.dst"]),
        Overlay::Geneve => ("udp dst port 6081", ["geneve.vni", "ip.src", "ip.dst"]),
        Overlay::Native => ("tcp dst port 8080", ["ip.proto", "ip.src", "ip.dst"]),
    };
    let capture = c.tshark(0, filter, &fields, 4);
    let out = exec_in(
        &client.name,
        &[SOCKBENCH, "client", "--connect", &format!("{na}:30080")],
    );
    assert!(
        out.contains("OK round=0 bytes=1048576"),
        "{overlay}: 1 MiB echoed through the NodePort: {out}; node 1 counted {:?}, node 2 {:?}",
        c.nodes[0].node.tc_stats(),
        c.nodes[1].node.tc_stats()
    );
    let lines: Vec<String> = capture.lines().into_iter().map(decimal_vni).collect();
    let want = match overlay {
        // The translated request itself on the wire: from node 1's address.
        Overlay::Native => format!("6\t{na}\t{backend}"),
        _ => format!("{WORLD}\t{na},{na}\t{nb},{backend}"),
    };
    assert!(
        !lines.is_empty() && lines.iter().all(|l| *l == want),
        "{overlay}: every request packet as {want:?} on node 1's underlay, got {lines:?}; \
         node 1 counted {:?}, node 2 {:?}",
        c.nodes[0].node.tc_stats(),
        c.nodes[1].node.tc_stats()
    );

    if overlay != Overlay::Native {
        // 1460 bytes of UDP payload fit the client's link, not the tunnel: node 1 says so
        // (from the NodePort's address, quoting the client's own packet), the client's
        // kernel takes the MTU, and what fits still gets its echo from the NodePort.
        let out = exec_in(
            &client.name,
            &[
                "python3",
                "-c",
                PMTU_PROBE,
                &na.to_string(),
                "30053",
                "1460",
            ],
        );
        assert!(out.contains("too big, path mtu=1450"), "{overlay}: {out}");
        let stats = c.nodes[0].node.tc_stats().expect("stats");
        assert!(
            stats
                .iter()
                .any(|s| s.name == "frag-needed" && s.packets >= 1),
            "{overlay}: counted, got {stats:?}"
        );
    }
    let out = exec_in(
        &client.name,
        &["python3", "-c", UDP_CLIENT, &na.to_string(), "30053", "5"],
    );
    assert!(
        out.contains("udp ok=5"),
        "{overlay}: UDP through the NodePort: {out}"
    );
    drop(client);
}

#[test]
fn nodeport_to_a_backend_on_another_node_over_vxlan() {
    nodeport_to_a_backend_on_another_node(Overlay::Vxlan);
}

#[test]
fn nodeport_to_a_backend_on_another_node_over_geneve() {
    nodeport_to_a_backend_on_another_node(Overlay::Geneve);
}

#[test]
fn nodeport_to_a_backend_on_another_node_by_native_routing() {
    nodeport_to_a_backend_on_another_node(Overlay::Native);
}
