//! GSO packets against the tunnel's MTU, for real (`overlay_cluster`): two pods on
//! different nodes whose interfaces keep the underlay's MTU (misconfigured: 50 bytes too
//! big for the tunnel) stream TCP to each other with TSO on, so their stacks hand the host
//! veths GSO packets whose segments would not fit once encapsulated. Each node refuses
//! them with ICMP "fragmentation needed" as it refuses a single packet too big, the
//! senders learn the path MTU and every byte arrives; the nodes' kernels never had to
//! fragment or refuse a tunnel packet on the underlay (before, VXLAN handed them oversized
//! segments: dropped by the underlay's IP output, and no pod was told).

mod common;
mod overlay_cluster;
mod tc_common;

use std::process::Command;

use membrane_datapath::{
    policy_map::{Direction::*, MapVerdict, PolicyRule},
    Overlay,
};
use membrane_test_support::run;
use overlay_cluster::{Cluster, UNDERLAY_MTU};

const TIEFIGHTER: u32 = 1001;
const DEATHSTAR: u32 = 1003;
const SOCKBENCH: &str = env!("CARGO_BIN_EXE_membrane-sockbench");

fn allow(direction: membrane_datapath::policy_map::Direction, id: u32) -> PolicyRule {
    PolicyRule {
        direction,
        remote_identity: id,
        proto: 6,
        ports: (8080, 8080),
        verdict: MapVerdict::Allow,
    }
}

/// The IPv4 counters `names` of the namespace `ns` (/proc/net/snmp as seen from inside it).
fn ip_counters(ns: &str, names: &[&str]) -> Vec<u64> {
    let snmp = run(Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/snmp"]));
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (head, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    let pairs: Vec<(&str, u64)> = head
        .split_whitespace()
        .zip(values.split_whitespace())
        .map(|(k, v)| (k, v.parse().unwrap_or(0)))
        .collect();
    names
        .iter()
        .map(|n| {
            pairs
                .iter()
                .find(|(k, _)| k == n)
                .unwrap_or_else(|| panic!("no Ip {n} in {snmp}"))
                .1
        })
        .collect()
}

fn gso_segments_too_big_for_the_tunnel(overlay: Overlay) {
    let mut c = Cluster::new(2, overlay, true);
    let a = c.add_pod(0, TIEFIGHTER, Some(UNDERLAY_MTU));
    let b = c.add_pod(1, DEATHSTAR, Some(UNDERLAY_MTU));
    c.finish(&[]);
    c.policy(a, &[allow(Egress, DEATHSTAR)]);
    c.policy(b, &[allow(Ingress, TIEFIGHTER)]);
    for p in [a, b] {
        let out = c.exec(p, &["ethtool", "-K", "eth0", "tso", "on", "gso", "on"]);
        assert!(!out.contains("annot"), "{overlay}: TSO on: {out}");
        let out = c.exec(p, &["ethtool", "-k", "eth0"]);
        assert!(
            out.contains("tcp-segmentation-offload: on"),
            "{overlay}: {out}"
        );
    }
    // The underlays segment tunnel packets in software, so what crosses them (and what
    // tshark sees) are the wire's packets, each checked against the underlay's MTU by
    // the veth as a NIC would.
    for n in &c.nodes {
        let off = ["tx-udp_tnl-segmentation", "off"];
        let csum = ["tx-udp_tnl-csum-segmentation", "off"];
        run(n
            .ns
            .exec("ethtool")
            .args(["-K", &n.ul])
            .args(off)
            .args(csum));
    }
    let server = c.pods[b].ip.to_string();
    c.serve(
        b,
        &[SOCKBENCH, "echo", "--listen", &format!("{server}:8080")],
    );
    let counters = ["FragCreates", "FragFails"];
    let before: Vec<Vec<u64>> = c
        .nodes
        .iter()
        .map(|n| ip_counters(&n.ns.name, &counters))
        .collect();

    let port = if overlay == Overlay::Vxlan {
        4789
    } else {
        6081
    };
    let capture = c.tshark(
        0,
        &format!("udp dst port {port}"),
        &["frame.len", "ip.len"],
        400,
    );
    // 4 MiB each way in 64 KiB writes: TSO packets of many segments from both pods.
    let out = c.exec(
        a,
        &[
            SOCKBENCH,
            "client",
            "--connect",
            &format!("{server}:8080"),
            "--bytes",
            "4194304",
            "--chunk",
            "65536",
        ],
    );
    assert!(
        out.contains("OK round=0 bytes=4194304"),
        "{overlay}: every byte echoed: {out}; node 1 counted {:?}",
        c.nodes[0].node.tc_stats()
    );
    let lines = capture.lines();
    let biggest = lines
        .iter()
        .filter_map(|l| l.split('\t').next()?.parse::<u32>().ok())
        .max();
    // Segments of the MSS the sender learned (1450 − 40 − 12 bytes of timestamps), each
    // a full 1500-byte tunnel packet: none bigger, and none cut shorter on the way.
    assert_eq!(
        biggest,
        Some(u32::from(UNDERLAY_MTU) + 14),
        "{overlay}: the biggest of {} tunnel frames captured",
        lines.len()
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let after = ip_counters(&n.ns.name, &counters);
        assert_eq!(
            after,
            before[i],
            "{overlay}: node {} fragmented or refused tunnel packets ({counters:?})",
            i + 1
        );
        let stats = n.node.tc_stats().expect("stats");
        assert!(
            stats
                .iter()
                .any(|s| s.name == "frag-needed" && s.packets >= 1),
            "{overlay}: node {} refused a too-big packet, got {stats:?}",
            i + 1
        );
    }
    // Both senders took the tunnel's MTU from the nodes' errors.
    let client = c.pods[a].ip.to_string();
    for (p, peer) in [(a, &server), (b, &client)] {
        let out = c.exec(p, &["ip", "route", "get", peer]);
        assert!(out.contains("mtu 1450"), "{overlay}: learned: {out}");
    }
}

#[test]
fn gso_segments_too_big_for_vxlan_are_refused_with_the_mtu() {
    gso_segments_too_big_for_the_tunnel(Overlay::Vxlan);
}

#[test]
fn gso_segments_too_big_for_geneve_are_refused_with_the_mtu() {
    gso_segments_too_big_for_the_tunnel(Overlay::Geneve);
}
