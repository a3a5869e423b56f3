//! IPv6 services in tc, with crafted packets through the real programs
//! (`BPF_PROG_TEST_RUN` on a pod's `mb_from_container` / `mb_to_container`): DNAT of TCP
//! and UDP to a backend (random and Maglev), the flow keeping it, reverse NAT of replies
//! with the L4 checksum right (IPv6 has no header checksum: only the pseudo-header
//! changes), hairpin, policy deciding on the backend's identity, extension headers
//! walked (options translated behind them; a Routing header, AH or a fragment left
//! alone), and a frontend without backends dropping with its reason. Privileged: each
//! test has its own netns, cgroups and pin directories.

mod common;
mod lb_common;
mod tc_common;

use std::{
    collections::BTreeSet,
    net::{SocketAddr, SocketAddrV6},
};

use aya::programs::SchedClassifier;
use lb_common::{
    addrs, checksums_ok, ext_fragment, ext_options, ext_routing, frame, frame6, frame_flags, run,
    sa, tuple, DROP, PASS, SYN_ACK, TCP, UDP,
};
use membrane_datapath::{
    abi::LB_MAGLEV_M,
    lb::{maglev, LbService},
    policy_map::{Direction::*, MapVerdict::*},
    LbAlgorithm, NodeSettings,
};
use tc_common::{rule, TcNode};

const VIP: &str = "[fd00:96::10]:53";
const CLIENT: &str = "fd00::1";
const B2: &str = "[fd00::2]:5353";
const B3: &str = "[fd00::3]:5353";

/// A node with a client pod (endpoint 1, identity 1001) and two backend pods (2, 3);
/// `enforce`: the node and the client enforce policy, and the client may reach only
/// identity 1002 (B2) on UDP and TCP 5353.
fn node(enforce: bool) -> TcNode {
    let mut n = TcNode::new(enforce);
    n.add(1, 1001, &[CLIENT], enforce);
    n.add(2, 1002, &["fd00::2"], false);
    n.add(3, 1003, &["fd00::3"], false);
    n.ipcache(&[
        ("fd00::1/128", 1001),
        ("fd00::2/128", 1002),
        ("fd00::3/128", 1003),
    ]);
    if enforce {
        n.eps[0]
            .dp
            .sync_policy(&[
                rule(Egress, 1002, UDP, 5353, 5353, Allow),
                rule(Egress, 1002, TCP, 5353, 5353, Allow),
            ])
            .expect("policy");
    }
    n
}

fn service(frontend: &str, proto: u8, backends: &[&str]) -> LbService {
    LbService {
        frontend: sa(frontend),
        proto,
        node_port: 0,
        external_local: false,
        backends: backends.iter().map(|b| sa(b)).collect(),
    }
}

/// An endpoint's two programs, opened from their pins.
fn progs(n: &TcNode, i: usize) -> (SchedClassifier, SchedClassifier) {
    let dir = n.eps[i].dp.dir().join("progs");
    (
        SchedClassifier::from_pin(dir.join("mb_from_container")).expect("from-container"),
        SchedClassifier::from_pin(dir.join("mb_to_container")).expect("to-container"),
    )
}

/// Send `f` through from-container: it must pass with its checksum right; where it went.
fn send_frame(from: &SchedClassifier, f: &[u8], what: &str) -> (SocketAddr, SocketAddr) {
    let (rc, out) = run(from, f, 0);
    assert_eq!(rc, PASS, "{what}: verdict");
    assert!(checksums_ok(&out), "{what}: checksum after DNAT");
    addrs(&out)
}

/// Send `proto` from `client` to `dst`; the backend it went to (the source unchanged).
fn send(from: &SchedClassifier, proto: u8, client: SocketAddr, dst: SocketAddr) -> SocketAddr {
    let (src, to) = send_frame(
        from,
        &frame(proto, client, dst),
        &format!("{client} -> {dst}"),
    );
    assert_eq!(src, client, "the source stays the client's");
    to
}

fn v6(s: &str) -> SocketAddrV6 {
    match sa(s) {
        SocketAddr::V6(a) => a,
        SocketAddr::V4(a) => panic!("{a}: not IPv6"),
    }
}

#[test]
fn ipv6_clusterip_tcp_and_udp_go_to_a_backend_keep_it_and_replies_come_from_the_frontend() {
    let n = node(false);
    n.node
        .sync_services(&[
            service(VIP, UDP, &[B2, B3]),
            service("[fd00:96::10]:5353", TCP, &[B2, B3]),
        ])
        .expect("sync");
    let mut read = n.node.lb_services().expect("read back");
    read.sort();
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(read[0].frontend, sa(VIP), "{read:?}");
    let (from, to) = progs(&n, 0);
    for (proto, front, port) in [(UDP, VIP, 40000), (TCP, "[fd00:96::10]:5353", 40001)] {
        let client = sa(&format!("[{CLIENT}]:{port}"));
        let backend = send(&from, proto, client, sa(front));
        assert!(
            [sa(B2), sa(B3)].contains(&backend),
            "{proto}: went to {backend}, not a backend"
        );
        for _ in 0..20 {
            assert_eq!(
                send(&from, proto, client, sa(front)),
                backend,
                "{proto}: the flow moved"
            );
        }
        // The backend's reply reaches the client as from the frontend.
        let (rc, out) = run(&to, &frame_flags(proto, backend, client, SYN_ACK), 0);
        assert_eq!(rc, PASS, "{proto}: reply");
        assert!(checksums_ok(&out), "{proto}: checksum after reverse NAT");
        assert_eq!(addrs(&out), (sa(front), client), "{proto}: reply");
    }
    // Both backends get flows (random selection).
    let seen: BTreeSet<SocketAddr> = (0..64)
        .map(|i| {
            send(
                &from,
                UDP,
                sa(&format!("[{CLIENT}]:{}", 41000 + i)),
                sa(VIP),
            )
        })
        .collect();
    assert_eq!(seen, BTreeSet::from([sa(B2), sa(B3)]));
    // Another port of the frontend address, and a backend reached directly: untouched.
    assert_eq!(
        send(&from, UDP, sa("[fd00::1]:42000"), sa("[fd00:96::10]:54")),
        sa("[fd00:96::10]:54")
    );
    assert_eq!(send(&from, UDP, sa("[fd00::1]:42001"), sa(B2)), sa(B2));
    let (_, out) = run(&to, &frame(UDP, sa(B3), sa("[fd00::1]:42002")), 0);
    assert_eq!(addrs(&out), (sa(B3), sa("[fd00::1]:42002")));
}

#[test]
fn ipv6_maglev_picks_the_backend_of_the_rust_table() {
    let n = node(false);
    let s = n.node.settings().expect("settings");
    n.node
        .set_settings(&NodeSettings {
            lb_algorithm: LbAlgorithm::Maglev,
            ..s
        })
        .expect("maglev mode");
    let backends = [B2, B3, "[fd00::99]:5353"];
    n.node
        .sync_services(&[service(VIP, UDP, &backends)])
        .expect("sync");
    let (from, _) = progs(&n, 0);
    let mut sorted: Vec<SocketAddr> = backends.iter().map(|b| sa(b)).collect();
    sorted.sort();
    let table = maglev::table(&sorted, LB_MAGLEV_M);
    let mut seen = BTreeSet::new();
    for i in 0..48u16 {
        let client = sa(&format!("[{CLIENT}]:{}", 42000 + i * 7));
        let t = tuple(UDP, client, sa(VIP));
        let want = sorted[table[maglev::flow_hash(&t) as usize % LB_MAGLEV_M]];
        assert_eq!(
            send(&from, UDP, client, sa(VIP)),
            want,
            "flow from {client}"
        );
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3, "48 flows over 3 backends reached {seen:?}");
}

#[test]
fn ipv6_hairpin_reaches_the_pod_itself_from_the_frontend() {
    let n = node(false);
    n.node
        .sync_services(&[service(VIP, UDP, &[B2]), service(VIP, TCP, &[B2])])
        .expect("sync");
    let (from2, to2) = progs(&n, 1);
    for (proto, port) in [(UDP, 46000), (TCP, 46001)] {
        let me = sa(&format!("[fd00::2]:{port}"));
        let as_frontend = sa(&format!("[fd00:96::10]:{port}"));
        let (rc, out) = run(&from2, &frame(proto, me, sa(VIP)), 0);
        assert_eq!(rc, PASS, "{proto}");
        assert!(checksums_ok(&out), "{proto}: checksum");
        // The pod would drop a packet from its own address: it comes from the frontend.
        assert_eq!(addrs(&out), (as_frontend, sa(B2)), "{proto}");
        let (rc, _) = run(&to2, &out, 0);
        assert_eq!(rc, PASS, "{proto}: into the pod");
        // Its answer comes back through its own from-container, translated both ways.
        let (rc, out) = run(&from2, &frame_flags(proto, sa(B2), as_frontend, SYN_ACK), 0);
        assert_eq!(rc, PASS, "{proto}: the answer");
        assert!(checksums_ok(&out), "{proto}: the answer's checksum");
        assert_eq!(addrs(&out), (sa(VIP), me), "{proto}: the answer");
    }
}

#[test]
fn ipv6_policy_decides_on_the_backend_and_replies_pass_conntrack() {
    let n = node(true);
    n.node
        .sync_services(&[service(VIP, UDP, &[B2, B3])])
        .expect("sync");
    let (from, to) = progs(&n, 0);
    let (mut allowed, mut denied) = (0, 0);
    for i in 0..32 {
        let c = sa(&format!("[{CLIENT}]:{}", 47000 + i));
        let (rc, out) = run(&from, &frame(UDP, c, sa(VIP)), 0);
        let (_, backend) = addrs(&out);
        if backend == sa(B2) {
            assert_eq!(rc, PASS, "flow from {c} to the allowed backend");
            allowed += 1;
            let (rc, out) = run(&to, &frame(UDP, sa(B2), c), 0);
            assert_eq!(rc, PASS, "reply to {c}");
            assert_eq!(addrs(&out), (sa(VIP), c));
        } else {
            assert_eq!(backend, sa(B3), "flow from {c}");
            assert_eq!(rc, DROP, "flow from {c} to a backend policy denies");
            denied += 1;
        }
    }
    assert!(
        allowed > 0 && denied > 0,
        "{allowed} allowed, {denied} denied"
    );
    let drops: Vec<_> = n.eps[0]
        .events()
        .into_iter()
        .filter(|e| e.kind == "drop")
        .collect();
    assert_eq!(drops.len(), denied, "{drops:?}");
    assert!(
        drops
            .iter()
            .all(|d| d.dst_identity == 1003 && d.dst.as_deref() == Some("[fd00::3]:5353")),
        "dropped as the backend's: {drops:?}"
    );
}

#[test]
fn ipv6_extension_headers_are_walked_and_routed_or_fragmented_packets_left_alone() {
    let n = node(false);
    n.node
        .sync_services(&[service(VIP, UDP, &[B2]), service(VIP, TCP, &[B2])])
        .expect("sync");
    let (from, to) = progs(&n, 0);
    // Options before the L4 header: translated, the checksum right.
    for (proto, port) in [(UDP, 48000), (TCP, 48001)] {
        let c = v6(&format!("[{CLIENT}]:{port}"));
        let f = frame6(proto, c, v6(VIP), &[ext_options(0), ext_options(60)]);
        let (src, dst) = send_frame(&from, &f, &format!("{proto} with options"));
        assert_eq!((src, dst), (SocketAddr::V6(c), sa(B2)), "{proto}");
        let (rc, out) = run(
            &to,
            &frame_flags(proto, sa(B2), SocketAddr::V6(c), SYN_ACK),
            0,
        );
        assert_eq!(rc, PASS);
        assert_eq!(addrs(&out), (sa(VIP), SocketAddr::V6(c)), "{proto}: reply");
    }
    // A Routing header (the pseudo-header's destination is its last address) and a first
    // fragment (the others carry no ports) pass untranslated, as IPv4 fragments do.
    let c = v6(&format!("[{CLIENT}]:48100"));
    for (what, ext) in [
        ("routing header", vec![ext_routing()]),
        ("first fragment", vec![ext_fragment(0, true)]),
        (
            "options, then a first fragment",
            vec![ext_options(0), ext_fragment(0, true)],
        ),
    ] {
        let f = frame6(UDP, c, v6(VIP), &ext);
        let (rc, out) = run(&from, &f, 0);
        assert_eq!(rc, PASS, "{what}");
        assert_eq!(out, f, "{what}: rewritten");
    }
    // A later fragment: no ports, nothing to translate.
    let f = frame6(UDP, c, v6(VIP), &[ext_fragment(8, false)]);
    let (rc, out) = run(&from, &f, 0);
    assert_eq!(rc, PASS, "later fragment");
    assert_eq!(out, f, "later fragment: rewritten");
}

#[test]
fn an_ipv6_frontend_without_backends_drops_with_its_reason() {
    let n = node(false);
    n.node
        .sync_services(&[service(VIP, UDP, &[])])
        .expect("sync");
    let (from, _) = progs(&n, 0);
    let (rc, _) = run(&from, &frame(UDP, sa("[fd00::1]:45000"), sa(VIP)), 0);
    assert_eq!(rc, DROP);
    let drops: Vec<_> = n.eps[0]
        .events()
        .into_iter()
        .filter(|e| e.kind == "drop")
        .collect();
    assert_eq!(drops.len(), 1, "one drop event: {drops:?}");
    assert_eq!(drops[0].reason, "lb-no-backend");
}
