//! Hairpin through the tc load balancer: a pod reaching itself through its own service.
//! from-container gives the packet the frontend as its source (the pod would drop one from
//! its own address), and the pod's to-container must decide the flow with the pod's own
//! identity as the source, not the frontend address's (world), and take the translated
//! replies as the replies they are. With crafted packets through the real programs
//! (`BPF_PROG_TEST_RUN`), and with real UDP and TCP in routed pod namespaces, policy
//! enforced: a pod whose ingress policy admits only its own identity gets through its
//! service, one that admits only world does not, and world stays world for everyone else.
//! Privileged; every namespace, cgroup and pin directory is the test's own.

mod common;
mod lb_common;
mod tc_common;

use std::path::{Path, PathBuf};

use aya::programs::SchedClassifier;
use lb_common::{addrs, checksums_ok, frame, run, sa, DROP, PASS, TCP, UDP};
use membrane_datapath::{
    lb::LbService,
    policy_map::{Direction::*, MapVerdict::*},
};
use tc_common::{
    echo::{tcp_echo, udp_echo, Servers},
    rule, TcNode,
};

/// Pod 2 admits only its own identity; pod 3 only world. Each is the backend of its own
/// service.
const POD2: &str = "10.0.0.2";
const POD3: &str = "10.0.0.3";
const ID2: u32 = 1002;
const ID3: u32 = 1003;
const WORLD: u32 = 2;
const VIP2: &str = "10.96.0.10:53";
const VIP3: &str = "10.96.0.11:53";
const TVIP2: &str = "10.96.0.10:80";
const TVIP3: &str = "10.96.0.11:80";

fn service(frontend: &str, proto: u8, backend: &str) -> LbService {
    LbService {
        frontend: sa(frontend),
        proto,
        node_port: 0,
        external_local: false,
        backends: vec![sa(backend)],
    }
}

/// Pods 2 and 3 enforcing, each its own service's backend (UDP 53 → 5353, TCP 80 →
/// 8080), each allowed to send to itself; ingress: pod 2 from its own identity, pod 3
/// from world.
fn node(routed: bool) -> TcNode {
    let mut n = if routed {
        TcNode::routed(true)
    } else {
        TcNode::new(true)
    };
    n.add(2, ID2, &[POD2], true);
    n.add(3, ID3, &[POD3], true);
    n.ipcache(&[("10.0.0.2/32", ID2), ("10.0.0.3/32", ID3)]);
    for (i, own, from) in [(0, ID2, ID2), (1, ID3, WORLD)] {
        n.eps[i]
            .dp
            .sync_policy(&[
                rule(Egress, own, UDP, 5353, 5353, Allow),
                rule(Egress, own, TCP, 8080, 8080, Allow),
                rule(Ingress, from, UDP, 5353, 5353, Allow),
                rule(Ingress, from, TCP, 8080, 8080, Allow),
            ])
            .expect("sync policy");
    }
    n.node
        .sync_services(&[
            service(VIP2, UDP, "10.0.0.2:5353"),
            service(VIP3, UDP, "10.0.0.3:5353"),
            service(TVIP2, TCP, "10.0.0.2:8080"),
            service(TVIP3, TCP, "10.0.0.3:8080"),
        ])
        .expect("sync services");
    n
}

/// An endpoint's two programs, opened from their pins.
fn progs(n: &TcNode, i: usize) -> (SchedClassifier, SchedClassifier) {
    let dir = n.eps[i].dp.dir().join("progs");
    (
        SchedClassifier::from_pin(dir.join("mb_from_container")).expect("from-container"),
        SchedClassifier::from_pin(dir.join("mb_to_container")).expect("to-container"),
    )
}

#[test]
fn a_hairpin_flow_is_decided_as_the_pods_own_and_its_replies_pass() {
    let n = node(false);
    let (from2, to2) = progs(&n, 0);
    let me = sa("10.0.0.2:46000");
    let as_frontend = sa("10.96.0.10:46000");
    let (rc, out) = run(&from2, &frame(UDP, me, sa(VIP2)), 0);
    assert_eq!(rc, PASS, "egress to itself is allowed");
    assert_eq!(addrs(&out), (as_frontend, sa("10.0.0.2:5353")));
    // Into the pod: the frontend address is world, but the flow is the pod's own.
    let (rc, _) = run(&to2, &out, 0);
    assert_eq!(rc, PASS, "ingress from its own identity is allowed");
    let ct = n.node.conntrack().expect("conntrack");
    let entry = ct
        .iter()
        .find(|e| e.endpoint_id == 2 && e.direction == Ingress && e.src == as_frontend)
        .unwrap_or_else(|| panic!("no ingress entry of the hairpin flow: {ct:?}"));
    assert_eq!(
        entry.remote_identity, ID2,
        "decided with the pod's identity"
    );
    let verdicts: Vec<_> = n.eps[0]
        .events()
        .into_iter()
        .filter(|e| e.kind == "policy-verdict" && e.program == "to-container")
        .collect();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert_eq!(verdicts[0].src_identity, ID2);
    // Its answers, translated back in from-container, reach it as replies (no ingress
    // rule admits the client's port) every time.
    for i in 0..3 {
        let (rc, out) = run(&from2, &frame(UDP, sa("10.0.0.2:5353"), as_frontend), 0);
        assert_eq!(rc, PASS, "reply {i} out");
        assert!(checksums_ok(&out), "reply {i}: checksums");
        assert_eq!(addrs(&out), (sa(VIP2), me), "reply {i}");
        let (rc, _) = run(&to2, &out, 0);
        assert_eq!(rc, PASS, "reply {i} into the pod");
    }
    let ct = n.node.conntrack().expect("conntrack");
    let sent = ct
        .iter()
        .find(|e| e.endpoint_id == 2 && e.direction == Egress && e.src == as_frontend)
        .unwrap_or_else(|| panic!("no egress entry of the hairpin flow: {ct:?}"));
    assert!(
        sent.seen_reply,
        "the replies were tracked as the flow's: {sent:?}"
    );
    assert!(
        !ct.iter().any(|e| e.endpoint_id == 2 && e.src == sa(VIP2)),
        "a reply was tracked as a new flow: {ct:?}"
    );

    // A packet from the same frontend address that is no hairpin flow's stays world:
    // pod 2 does not admit world.
    let (rc, _) = run(
        &to2,
        &frame(UDP, sa("10.96.0.10:46001"), sa("10.0.0.2:5353")),
        0,
    );
    assert_eq!(rc, DROP, "world is not the pod's own identity");
    let (rc, _) = run(&to2, &frame(UDP, sa(VIP2), sa("10.0.0.2:46002")), 0);
    assert_eq!(rc, DROP, "no flow of the pod's: no reply");
}

#[test]
fn a_pod_whose_policy_does_not_admit_itself_is_refused_its_hairpin_flow() {
    let n = node(false);
    let (from3, to3) = progs(&n, 1);
    let me = sa("10.0.0.3:46000");
    let (rc, out) = run(&from3, &frame(UDP, me, sa(VIP3)), 0);
    assert_eq!(rc, PASS);
    assert_eq!(addrs(&out), (sa("10.96.0.11:46000"), sa("10.0.0.3:5353")));
    let (rc, _) = run(&to3, &out, 0);
    assert_eq!(rc, DROP, "its ingress admits world, not its own identity");
    let drops: Vec<_> = n.eps[1]
        .events()
        .into_iter()
        .filter(|e| e.kind == "drop" && e.program == "to-container")
        .collect();
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!((drops[0].src_identity, drops[0].dst_identity), (ID3, ID3));
    // World itself still gets in.
    let (rc, _) = run(
        &to3,
        &frame(UDP, sa("192.0.2.1:40000"), sa("10.0.0.3:5353")),
        0,
    );
    assert_eq!(rc, PASS, "world is admitted");
}

#[test]
fn real_hairpin_flows_pass_by_the_pods_own_identity_and_only_by_it() {
    let n = node(true);
    let ns: Vec<PathBuf> = n
        .eps
        .iter()
        .map(|e| Path::new("/run/netns").join(&e.env.netns))
        .collect();
    let _echo: Vec<Servers> = ns
        .iter()
        .map(|p| Servers::start(p.clone(), &[8080], &[5353]))
        .collect();

    // Pod 2 admits only itself: it reaches itself through its service, UDP and TCP,
    // every answer from the frontend it asked.
    for i in 0..8 {
        assert_eq!(udp_echo(&ns[0], VIP2), Some(sa(VIP2)), "udp flow {i}");
        assert!(tcp_echo(&ns[0], TVIP2), "tcp connection {i}");
    }
    // Pod 3 admits only world: its own hairpin flows are refused, at its ingress, as its
    // own identity.
    assert_eq!(
        udp_echo(&ns[1], VIP3),
        None,
        "pod 3's udp hairpin got through"
    );
    assert!(!tcp_echo(&ns[1], TVIP3), "pod 3's tcp hairpin got through");
    let drops: Vec<_> = n.eps[1]
        .events()
        .into_iter()
        .filter(|e| e.kind == "drop")
        .collect();
    assert!(!drops.is_empty(), "no drop event");
    for d in &drops {
        assert_eq!(
            (d.program.as_str(), d.src_identity, d.dst_identity),
            ("to-container", ID3, ID3),
            "{d:?}"
        );
    }
    // Pod 3's refused flows left pod 2's alone.
    assert_eq!(
        udp_echo(&ns[0], VIP2),
        Some(sa(VIP2)),
        "pod 2 after pod 3's drops"
    );
}
