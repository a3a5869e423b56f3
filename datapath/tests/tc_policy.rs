//! The packet path's decisions, one crafted packet at a time through
//! `BPF_PROG_TEST_RUN` on the pinned tc programs of real endpoints: policy per direction
//! (allow, deny, redirect, identity 0, port ranges, deny before allow), anti-spoofing,
//! conntrack (TCP states, UDP, ICMP echo and errors), unknown L3/L4, IPv6, the counters
//! and the monitor events. Privileged (bpffs, netns, cgroup); cleans up on drop.

mod common;
mod tc_common;

use membrane_datapath::{
    abi,
    policy_map::{Direction::*, MapVerdict, PolicyRule},
    IpcacheEntry,
};
use tc_common::{packet::*, TcNode, DROP, PASS};

const POD: &str = "10.1.0.10";
const PEER: &str = "10.2.0.20";
const POD_ID: u32 = 1000;
const PEER_ID: u32 = 2000;

fn rule(
    direction: membrane_datapath::policy_map::Direction,
    id: u32,
    proto: u8,
    lo: u16,
    hi: u16,
    verdict: MapVerdict,
) -> PolicyRule {
    PolicyRule {
        direction,
        remote_identity: id,
        proto,
        ports: (lo, hi),
        verdict,
    }
}

fn ipcache(node: &TcNode, entries: &[(&str, u32)]) {
    let e: Vec<IpcacheEntry> = entries
        .iter()
        .map(|(p, id)| IpcacheEntry {
            prefix: p.parse().unwrap(),
            identity: *id,
            tunnel: None,
        })
        .collect();
    node.node.sync_ipcache(&e).expect("sync ipcache");
}

/// One enforcing endpoint (10.1.0.10, fd00:1::10) with the peer's identity known.
fn one_pod(rules: &[PolicyRule]) -> TcNode {
    let mut n = TcNode::new(true);
    n.add(1, POD_ID, &[POD, "fd00:1::10"], true);
    ipcache(
        &n,
        &[
            ("10.1.0.10/32", POD_ID),
            ("fd00:1::10/128", POD_ID),
            ("10.2.0.0/24", PEER_ID),
            ("fd00:2::/64", PEER_ID),
        ],
    );
    n.eps[0].dp.sync_policy(rules).expect("sync policy");
    n
}

#[test]
fn egress_tcp_allowed_and_denied_by_port() {
    let n = one_pod(&[rule(Egress, PEER_ID, TCP, 80, 80, MapVerdict::Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&tcp(POD, PEER, 40000, 80, SYN)), PASS);
    assert_eq!(ep.send(&tcp(POD, PEER, 40001, 81, SYN)), DROP);
    let stats = n.node.tc_stats().unwrap();
    let row = |r: u8| {
        stats
            .iter()
            .find(|s| s.reason == r)
            .map_or(0, |s| s.packets)
    };
    assert_eq!(row(0), 1, "{stats:?}");
    assert_eq!(row(abi::RSN_TC_NO_POLICY), 1, "{stats:?}");
    let ev = ep.events();
    assert!(
        ev.iter().any(|e| e.kind == "drop"
            && e.reason == "no-policy-packet"
            && e.program == "from-container"
            && e.src_identity == POD_ID
            && e.dst_identity == PEER_ID
            && e.proto == 6),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.kind == "policy-verdict" && e.verdict.as_deref() == Some("allowed")),
        "{ev:?}"
    );
}
