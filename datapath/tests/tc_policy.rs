//! The packet path's policy decisions, one crafted packet at a time through
//! `BPF_PROG_TEST_RUN` on the pinned tc programs of real endpoints: allow, deny and
//! redirect per direction, identity 0, port ranges, deny before allow, anti-spoofing,
//! protocols the policy cannot decide, IPv6 and its extension headers, the counters and
//! the monitor events. Conntrack is in `tc_conntrack.rs`. Privileged; cleans up on drop.

mod common;
mod tc_common;

use membrane_datapath::{
    abi,
    policy_map::{Direction::*, MapVerdict::*},
    NodeSettings,
};
use tc_common::{one_pod, packet::*, rule, stat, TcNode, DROP, PASS};

const POD: &str = tc_common::ONE_POD;
const POD6: &str = tc_common::ONE_POD6;
const PEER: &str = "10.2.0.20";
const PEER6: &str = "fd00:2::20";
const OTHER: &str = "10.3.0.30";
const POD_ID: u32 = tc_common::ONE_POD_ID;
const PEER_ID: u32 = tc_common::ONE_PEER_ID;
const OTHER_ID: u32 = tc_common::ONE_OTHER_ID;

#[test]
fn egress_tcp_allowed_and_denied_by_port() {
    let n = one_pod(&[rule(Egress, PEER_ID, TCP, 80, 80, Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&tcp(POD, PEER, 40000, 80, SYN)), PASS);
    assert_eq!(ep.send(&tcp(POD, PEER, 40001, 81, SYN)), DROP);
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(stat(&stats, 0), 1, "{stats:?}");
    assert_eq!(stat(&stats, abi::RSN_TC_NO_POLICY), 1, "{stats:?}");
    assert!(stats
        .iter()
        .any(|s| s.name == "no-policy-packet" && s.bytes > 0));
    let ev = ep.events();
    assert!(
        ev.iter().any(|e| e.kind == "drop"
            && e.reason == "no-policy-packet"
            && e.program == "from-container"
            && e.src_identity == POD_ID
            && e.dst_identity == PEER_ID
            && e.proto == 6
            && e.dst.as_deref() == Some("10.2.0.20:81")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| e.kind == "policy-verdict"
            && e.verdict.as_deref() == Some("allowed")
            && e.dst.as_deref() == Some("10.2.0.20:80")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| e.is_drop() && e.kind == "policy-verdict"),
        "{ev:?}"
    );
}

#[test]
fn ingress_allow_deny_redirect_and_the_identity_wildcard() {
    let n = one_pod(&[
        rule(Ingress, PEER_ID, TCP, 80, 80, Allow),
        rule(Ingress, PEER_ID, TCP, 8080, 8080, Redirect),
        rule(Ingress, OTHER_ID, TCP, 80, 80, Deny),
        rule(Ingress, 0, TCP, 80, 80, Allow),
        rule(Ingress, 0, UDP, 53, 53, Allow),
    ]);
    let ep = &n.eps[0];
    assert_eq!(ep.deliver(&tcp(PEER, POD, 1000, 80, SYN)), PASS, "allow");
    assert_eq!(
        ep.deliver(&tcp(PEER, POD, 1001, 8080, SYN)),
        PASS,
        "redirect passes"
    );
    assert_eq!(
        ep.deliver(&tcp(PEER, POD, 1002, 443, SYN)),
        DROP,
        "no entry"
    );
    // Identity-specific DENY wins over the any-identity ALLOW of the same port.
    assert_eq!(ep.deliver(&tcp(OTHER, POD, 1003, 80, SYN)), DROP, "deny");
    // The world (no ipcache entry) falls through to identity 0.
    assert_eq!(
        ep.deliver(&tcp("192.0.2.1", POD, 1004, 80, SYN)),
        PASS,
        "wildcard"
    );
    assert_eq!(
        ep.deliver(&udp("192.0.2.1", POD, 1005, 53)),
        PASS,
        "wildcard udp"
    );
    assert_eq!(ep.deliver(&udp("192.0.2.1", POD, 1005, 54)), DROP);
    // Ingress rules never decide what the pod sends.
    assert_eq!(
        ep.send(&tcp(POD, PEER, 1006, 80, SYN)),
        DROP,
        "egress has no rule"
    );
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(stat(&stats, abi::RSN_TC_POLICY_DENY), 1, "{stats:?}");
    assert_eq!(stat(&stats, abi::RSN_TC_NO_POLICY), 3, "{stats:?}");
    let ev = ep.events();
    let deny = ev
        .iter()
        .find(|e| e.kind == "drop" && e.reason == "policy-deny-packet")
        .expect("deny drop event");
    assert_eq!(
        (deny.program.as_str(), deny.src_identity, deny.dst_identity),
        ("to-container", OTHER_ID, POD_ID)
    );
    assert!(ev
        .iter()
        .any(|e| e.kind == "policy-verdict" && e.reason == "policy-denied"));
}

#[test]
fn port_ranges_and_protocols_are_matched_exactly() {
    let n = one_pod(&[
        rule(Egress, PEER_ID, TCP, 1000, 1999, Allow),
        rule(Egress, 0, TCP, 1500, 1500, Deny),
        rule(Egress, 0, SCTP, 5000, 5001, Allow),
    ]);
    let ep = &n.eps[0];
    for (dport, want) in [
        (999, DROP),
        (1000, PASS),
        (1499, PASS),
        (1999, PASS),
        (2000, DROP),
    ] {
        assert_eq!(
            ep.send(&tcp(POD, PEER, 20000 + dport, dport, SYN)),
            want,
            "port {dport}"
        );
    }
    // The identity's own range decides before the any-identity DENY under it; others
    // fall through to that DENY, or to nothing.
    assert_eq!(ep.send(&tcp(POD, PEER, 3001, 1500, SYN)), PASS);
    assert_eq!(ep.send(&tcp(POD, OTHER, 3002, 1500, SYN)), DROP);
    assert_eq!(ep.send(&tcp(POD, OTHER, 3003, 1000, SYN)), DROP);
    assert_eq!(ep.send(&sctp(POD, OTHER, 3000, 5001)), PASS);
    assert_eq!(ep.send(&sctp(POD, OTHER, 3000, 5002)), DROP);
    assert_eq!(
        ep.send(&udp(POD, PEER, 3000, 1000)),
        DROP,
        "TCP rules do not cover UDP"
    );
}

#[test]
fn a_pod_cannot_send_from_an_address_that_is_not_its_own() {
    let mut n = one_pod(&[rule(Egress, 0, UDP, 1, 65535, Allow)]);
    n.add(2, OTHER_ID, &["10.1.0.11"], false);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&udp(POD, PEER, 5000, 53)), PASS);
    assert_eq!(ep.send(&udp(POD6, PEER6, 5000, 53)), PASS);
    // Another local pod's address, and an address nobody has.
    assert_eq!(ep.send(&udp("10.1.0.11", PEER, 5000, 53)), DROP);
    assert_eq!(ep.send(&udp("10.9.9.9", PEER, 5000, 53)), DROP);
    // Even with enforcement off: spoofing is never a policy question.
    n.node
        .set_settings(&NodeSettings {
            policy: false,
            ..NodeSettings::default()
        })
        .unwrap();
    assert_eq!(ep.send(&udp("10.1.0.11", PEER, 5000, 53)), DROP);
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(stat(&stats, abi::RSN_SPOOFED), 3, "{stats:?}");
    let ev = ep.events();
    assert!(
        ev.iter().any(|e| e.kind == "drop"
            && e.reason == "spoofed-source"
            && e.src.as_deref() == Some("10.1.0.11:5000")),
        "{ev:?}"
    );
}

#[test]
fn without_enforcement_nothing_is_dropped_by_policy() {
    let mut n = TcNode::new(true);
    // Node switch on, endpoint switch off.
    n.add(1, POD_ID, &[POD], false);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&tcp(POD, PEER, 1, 80, SYN)), PASS);
    assert_eq!(ep.deliver(&tcp(PEER, POD, 2, 80, SYN)), PASS);
    assert_eq!(
        ep.send(&eth(&ip_packet(POD, PEER, 47, &[0u8; 8]))),
        PASS,
        "unknown L4"
    );
    assert_eq!(ep.send(&other_l3()), PASS, "unknown L3");
    assert_eq!(ep.send(&ip4_fragment(POD, PEER)), PASS, "fragment");
    assert!(ep.events().iter().all(|e| e.kind != "policy-verdict"));
    // Flows are still tracked, so turning enforcement on keeps them.
    let ct = n.node.conntrack().unwrap();
    assert_eq!(ct.len(), 2, "{ct:?}");
    assert!(ct.iter().all(|e| e.verdict == 0));
}

#[test]
fn what_policy_cannot_decide_is_dropped_while_enforcing() {
    let n = one_pod(&[rule(Egress, 0, UDP, 1, 65535, Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&arp()), PASS, "ARP");
    assert_eq!(
        ep.send(&neighbour_solicitation(POD6, "ff02::1:ff00:20")),
        PASS,
        "ND"
    );
    assert_eq!(ep.send(&other_l3()), DROP);
    assert_eq!(
        ep.send(&eth(&ip_packet(POD, PEER, 47, &[0u8; 8]))),
        DROP,
        "GRE"
    );
    assert_eq!(ep.send(&ip4_fragment(POD, PEER)), DROP);
    // A truncated TCP header is malformed.
    let mut short = tcp(POD, PEER, 1, 2, SYN);
    short.truncate(14 + 20 + 10);
    assert_eq!(ep.send(&short), DROP);
    let stats = n.node.tc_stats().unwrap();
    for r in [
        abi::RSN_UNSUPPORTED_L3,
        abi::RSN_UNSUPPORTED_L4,
        abi::RSN_FRAGMENT,
        abi::RSN_MALFORMED,
    ] {
        assert_eq!(stat(&stats, r), 1, "reason {r}: {stats:?}");
    }
}

#[test]
fn ipv6_with_extension_headers() {
    let n = one_pod(&[rule(Egress, PEER_ID, TCP, 443, 443, Allow)]);
    let ep = &n.eps[0];
    let syn = |ext: &[(u8, Vec<u8>)], sport: u16, dport: u16| {
        eth(&ip_packet_ext(
            POD6,
            PEER6,
            TCP,
            ext,
            &tcp_hdr(sport, dport, SYN),
        ))
    };
    assert_eq!(ep.send(&syn(&[], 1, 443)), PASS);
    assert_eq!(ep.send(&syn(&[], 2, 444)), DROP);
    let two = [ext_opts(0), ext_opts(60)];
    assert_eq!(
        ep.send(&syn(&two, 3, 443)),
        PASS,
        "hop-by-hop + destination options"
    );
    assert_eq!(
        ep.send(&syn(&two, 4, 444)),
        DROP,
        "the port behind them decides"
    );
    let first_frag = [ext_opts(0), ext_fragment(0)];
    assert_eq!(
        ep.send(&syn(&first_frag, 5, 443)),
        PASS,
        "a first fragment has ports"
    );
    let later_frag = [ext_fragment(100)];
    assert_eq!(
        ep.send(&syn(&later_frag, 6, 443)),
        DROP,
        "a later one has none"
    );
    let five = [
        ext_opts(0),
        ext_opts(60),
        ext_opts(60),
        ext_opts(60),
        ext_opts(60),
    ];
    assert_eq!(ep.send(&syn(&five, 7, 443)), DROP, "too long a chain");
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(stat(&stats, abi::RSN_IPV6_EXTHDR), 1, "{stats:?}");
    assert_eq!(stat(&stats, abi::RSN_FRAGMENT), 1, "{stats:?}");
    let ev = ep.events();
    assert!(
        ev.iter()
            .any(|e| e.kind == "drop" && e.dst.as_deref() == Some("[fd00:2::20]:444")),
        "{ev:?}"
    );
}

#[test]
fn trace_events_only_with_the_trace_flag() {
    let n = one_pod(&[rule(Egress, 0, UDP, 1, 65535, Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&udp(POD, PEER, 1, 53)), PASS);
    assert!(ep.events().iter().all(|e| e.kind != "trace"));
    n.node
        .set_settings(&NodeSettings {
            policy: true,
            trace: true,
            ..NodeSettings::default()
        })
        .unwrap();
    assert_eq!(ep.send(&udp(POD, PEER, 1, 53)), PASS);
    assert_eq!(ep.deliver(&udp(PEER, POD, 53, 1)), PASS);
    let traces: Vec<String> = ep
        .events()
        .into_iter()
        .filter(|e| e.kind == "trace")
        .map(|e| e.program)
        .collect();
    assert_eq!(traces, ["from-container", "to-container"]);
}

#[test]
fn no_packet_sees_a_verdict_neither_policy_gives_while_the_policy_changes() {
    // The identity-specific DENY sits over an any-identity ALLOW in both policies, with
    // different blocks: the diff's order must never expose the ALLOW under a DENY.
    let p1 = [
        rule(Egress, PEER_ID, TCP, 80, 80, Deny),
        rule(Egress, 0, TCP, 1, 65535, Allow),
    ];
    let p2 = [
        rule(Egress, PEER_ID, TCP, 80, 81, Deny),
        rule(Egress, 0, TCP, 1, 1000, Allow),
    ];
    let n = one_pod(&p1);
    let ep = &n.eps[0];
    // Flows both policies decide alike: (destination, port, verdict).
    let stable = [
        (PEER, 80, DROP),
        (OTHER, 80, PASS),
        (OTHER, 500, PASS),
        (PEER, 500, PASS),
    ];
    let done = std::sync::atomic::AtomicBool::new(false);
    let (checked, wrong) = std::thread::scope(|s| {
        let dp = ep.dp.clone();
        let done = &done;
        s.spawn(move || {
            for i in 0..300 {
                dp.sync_policy(if i % 2 == 0 { &p2 } else { &p1 })
                    .expect("flip");
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let (mut checked, mut wrong) = (0u64, Vec::new());
        let mut sport = 1024u16;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            for (dst, port, want) in stable {
                sport = sport.wrapping_add(1).max(1024);
                let got = ep.send(&tcp(POD, dst, sport, port, SYN));
                checked += 1;
                if got != want {
                    wrong.push((dst, port, got));
                }
            }
        }
        (checked, wrong)
    });
    assert!(
        wrong.is_empty(),
        "{} of {checked} packets got a wrong verdict: {wrong:?}",
        wrong.len()
    );
    assert!(checked > 100, "only {checked} packets ran during the flips");
}
