//! The packet path's conntrack through `BPF_PROG_TEST_RUN`: TCP through its states
//! (SYN, SYN-ACK, ACK, FIN each side, RST), replies passing where policy would deny a new
//! flow, UDP, ICMP echo by identifier, ICMP errors related to a flow, the source identity
//! carried in the mark, pod-to-pod entries scoped per endpoint, read-back and GC.
//! Privileged; cleans up on drop.

mod common;
mod tc_common;

use std::time::Duration;

use membrane_datapath::{
    abi,
    policy_map::{Direction::*, MapVerdict::*},
    CtEntry, CtState,
};
use tc_common::{one_pod, packet::*, rule, stat, TcNode, DROP, PASS};

const POD: &str = tc_common::ONE_POD;
const POD6: &str = tc_common::ONE_POD6;
const PEER: &str = "10.2.0.20";
const PEER6: &str = "fd00:2::20";
const POD_ID: u32 = tc_common::ONE_POD_ID;
const PEER_ID: u32 = tc_common::ONE_PEER_ID;

fn entry<'a>(ct: &'a [CtEntry], src: &str) -> &'a CtEntry {
    ct.iter()
        .find(|e| e.src.to_string() == src)
        .unwrap_or_else(|| panic!("no conntrack entry from {src}: {ct:?}"))
}

#[test]
fn tcp_handshake_data_and_fin_both_ways() {
    let n = one_pod(&[rule(Egress, PEER_ID, TCP, 80, 80, Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&tcp(POD, PEER, 40000, 80, SYN)), PASS);
    let ct = n.node.conntrack().unwrap();
    let e = entry(&ct, "10.1.0.10:40000");
    assert_eq!(
        (e.state, e.seen_reply, e.direction),
        (CtState::New, false, Egress)
    );
    assert_eq!(
        (e.endpoint_id, e.proto, e.remote_identity, e.verdict),
        (1, 6, PEER_ID, abi::VERDICT_ALLOW)
    );
    // The ingress policy allows nothing, yet the replies pass.
    assert_eq!(ep.deliver(&tcp(PEER, POD, 80, 40000, SYN | ACK)), PASS);
    assert_eq!(
        entry(&n.node.conntrack().unwrap(), "10.1.0.10:40000").state,
        CtState::New
    );
    assert_eq!(ep.send(&tcp(POD, PEER, 40000, 80, ACK)), PASS);
    let e = n.node.conntrack().unwrap();
    let e = entry(&e, "10.1.0.10:40000");
    assert_eq!(
        (e.state, e.seen_reply, e.packets),
        (CtState::Established, true, 3)
    );
    assert_eq!(ep.deliver(&tcp(PEER, POD, 80, 40000, ACK)), PASS);
    assert_eq!(ep.send(&tcp(POD, PEER, 40000, 80, FIN | ACK)), PASS);
    assert_eq!(
        entry(&n.node.conntrack().unwrap(), "10.1.0.10:40000").state,
        CtState::Established,
        "half closed"
    );
    assert_eq!(ep.deliver(&tcp(PEER, POD, 80, 40000, FIN | ACK)), PASS);
    let e = n.node.conntrack().unwrap();
    let e = entry(&e, "10.1.0.10:40000");
    assert_eq!(e.state, CtState::Closing);
    // Closing entries live 10 s, established ones 6 h.
    let now = monotonic_ns();
    assert!(
        e.expires_ns > now && e.expires_ns <= now + 10_000_000_000,
        "{e:?} at {now}"
    );
    assert_eq!(
        ep.deliver(&tcp(PEER, POD, 80, 40000, ACK)),
        PASS,
        "the last ACK"
    );
    // A peer's own SYN to the pod is a new flow of the ingress policy: denied.
    assert_eq!(ep.deliver(&tcp(PEER, POD, 80, 40001, SYN)), DROP);
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(
        stat(&stats, 0),
        7,
        "seven packets of the connection: {stats:?}"
    );
    assert_eq!(stat(&stats, abi::RSN_TC_NO_POLICY), 1, "{stats:?}");
}

#[test]
fn established_tcp_lives_six_hours_and_rst_closes() {
    let n = one_pod(&[rule(Ingress, PEER_ID, TCP, 443, 443, Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.deliver(&tcp(PEER, POD, 5555, 443, SYN)), PASS);
    // The pod's answers pass though its egress policy allows nothing.
    assert_eq!(ep.send(&tcp(POD, PEER, 443, 5555, SYN | ACK)), PASS);
    assert_eq!(ep.deliver(&tcp(PEER, POD, 5555, 443, ACK)), PASS);
    let ct = n.node.conntrack().unwrap();
    let e = entry(&ct, "10.2.0.20:5555");
    assert_eq!((e.state, e.direction), (CtState::Established, Ingress));
    let now = monotonic_ns();
    assert!(e.expires_ns > now + 21_000 * 1_000_000_000, "{e:?}");
    assert_eq!(ep.send(&tcp(POD, PEER, 443, 5555, RST)), PASS);
    assert_eq!(
        entry(&n.node.conntrack().unwrap(), "10.2.0.20:5555").state,
        CtState::Closing
    );
    // The same tuple opened again is a new connection of the same entry.
    assert_eq!(ep.deliver(&tcp(PEER, POD, 5555, 443, SYN)), PASS);
    assert_eq!(
        entry(&n.node.conntrack().unwrap(), "10.2.0.20:5555").state,
        CtState::New
    );
    // The pod's own SYN from its service port to the peer is not a reply: denied.
    assert_eq!(ep.send(&tcp(POD, PEER, 443, 5556, SYN)), DROP);
}

#[test]
fn udp_replies_pass_and_other_ports_do_not() {
    let n = one_pod(&[rule(Egress, PEER_ID, UDP, 53, 53, Allow)]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&udp(POD, PEER, 33000, 53)), PASS);
    assert_eq!(ep.deliver(&udp(PEER, POD, 53, 33000)), PASS);
    assert_eq!(
        ep.deliver(&udp(PEER, POD, 53, 33001)),
        DROP,
        "not this flow's port"
    );
    assert_eq!(
        ep.deliver(&udp(PEER, POD, 54, 33000)),
        DROP,
        "nor its peer port"
    );
    let ct = n.node.conntrack().unwrap();
    let e = entry(&ct, "10.1.0.10:33000");
    assert_eq!(
        (e.state, e.seen_reply, e.proto),
        (CtState::Established, true, 17)
    );
    // IPv6 the same.
    assert_eq!(ep.send(&udp(POD6, PEER6, 33000, 53)), PASS);
    assert_eq!(ep.deliver(&udp(PEER6, POD6, 53, 33000)), PASS);
    assert_eq!(ep.deliver(&udp(PEER6, POD6, 53, 33002)), DROP);
}

#[test]
fn icmp_echo_by_identifier() {
    let n = one_pod(&[
        rule(Egress, PEER_ID, ICMP, 8, 8, Allow),
        rule(Egress, PEER_ID, ICMP6, 128, 128, Allow),
    ]);
    let ep = &n.eps[0];
    assert_eq!(ep.send(&echo(POD, PEER, 7, true)), PASS);
    assert_eq!(ep.deliver(&echo(PEER, POD, 7, false)), PASS);
    assert_eq!(
        ep.deliver(&echo(PEER, POD, 8, false)),
        DROP,
        "another identifier"
    );
    assert_eq!(
        ep.deliver(&echo(PEER, POD, 7, true)),
        DROP,
        "the peer's own ping: ingress"
    );
    assert_eq!(ep.send(&echo(POD6, PEER6, 9, true)), PASS);
    assert_eq!(ep.deliver(&echo(PEER6, POD6, 9, false)), PASS);
    assert_eq!(ep.deliver(&echo(PEER6, POD6, 10, false)), DROP);
    // Other ICMP types are decided by type, without an entry.
    assert_eq!(ep.send(&icmp_other(POD, PEER, 13)), DROP, "timestamp");
    let ct = n.node.conntrack().unwrap();
    let e = entry(&ct, "10.1.0.10:7");
    assert_eq!(
        (e.proto, e.dst.port(), e.state),
        (1, 0, CtState::Established)
    );
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(
        stat(&stats, abi::RSN_CT_NO_FLOW),
        2,
        "unsolicited echo replies: {stats:?}"
    );
}

#[test]
fn icmp_errors_pass_only_for_a_known_flow() {
    let n = one_pod(&[
        rule(Egress, PEER_ID, UDP, 53, 53, Allow),
        rule(Egress, PEER_ID, TCP, 80, 80, Allow),
    ]);
    let ep = &n.eps[0];
    let sent = ip_packet(POD, PEER, UDP, &ports_hdr(33000, 53));
    assert_eq!(ep.send(&eth(&sent)), PASS);
    // Port unreachable from the peer, quoting what the pod sent.
    assert_eq!(ep.deliver(&icmp_error(PEER, POD, 3, 3, &sent)), PASS);
    // Time exceeded from a router on the way (the world) is related too.
    assert_eq!(
        ep.deliver(&icmp_error("192.0.2.1", POD, 11, 0, &sent)),
        PASS
    );
    let unknown = ip_packet(POD, PEER, UDP, &ports_hdr(33001, 53));
    assert_eq!(ep.deliver(&icmp_error(PEER, POD, 3, 3, &unknown)), DROP);
    // TCP, where the quote holds only 8 bytes of the header.
    let syn = ip_packet(POD, PEER, TCP, &tcp_hdr(41000, 80, SYN));
    assert_eq!(ep.send(&eth(&syn)), PASS);
    assert_eq!(ep.deliver(&icmp_error(PEER, POD, 3, 1, &syn)), PASS);
    // IPv6: packet too big about a flow the pod opened.
    let n6 = one_pod(&[rule(Egress, PEER_ID, TCP, 80, 80, Allow)]);
    let ep6 = &n6.eps[0];
    let syn6 = ip_packet(POD6, PEER6, TCP, &tcp_hdr(41000, 80, SYN));
    assert_eq!(ep6.send(&eth(&syn6)), PASS);
    assert_eq!(ep6.deliver(&icmp_error(PEER6, POD6, 2, 0, &syn6)), PASS);
    let other6 = ip_packet(POD6, PEER6, TCP, &tcp_hdr(41001, 80, SYN));
    assert_eq!(ep6.deliver(&icmp_error(PEER6, POD6, 2, 0, &other6)), DROP);
    // The pod's own error about a packet it received on an allowed flow goes out.
    let n3 = one_pod(&[rule(Ingress, PEER_ID, UDP, 53, 53, Allow)]);
    let ep3 = &n3.eps[0];
    let query = ip_packet(PEER, POD, UDP, &ports_hdr(5353, 53));
    assert_eq!(ep3.deliver(&eth(&query)), PASS);
    assert_eq!(ep3.send(&icmp_error(POD, PEER, 3, 3, &query)), PASS);
    let stray = ip_packet(PEER, POD, UDP, &ports_hdr(5354, 53));
    assert_eq!(ep3.send(&icmp_error(POD, PEER, 3, 3, &stray)), DROP);
}

#[test]
fn the_overlay_mark_carries_the_source_identity() {
    const REMOTE_ID: u32 = 0x01_2345;
    let n = one_pod(&[rule(Ingress, REMOTE_ID, TCP, 80, 80, Allow)]);
    let ep = &n.eps[0];
    // Identity bits 0-15 in mark bits 16-31, bits 16-23 in mark bits 0-7, magic 0x0F00.
    let mark = ((REMOTE_ID & 0xffff) << 16) | (REMOTE_ID >> 16) | abi::MARK_MAGIC_IDENTITY;
    assert_eq!(
        ep.deliver_marked(&tcp("10.9.0.1", POD, 1, 80, SYN), mark),
        PASS
    );
    // Without the mark the ipcache says world: denied.
    assert_eq!(ep.deliver(&tcp("10.9.0.1", POD, 2, 80, SYN)), DROP);
    // Another mark is not an identity.
    assert_eq!(
        ep.deliver_marked(&tcp("10.9.0.1", POD, 3, 80, SYN), 0x0100_0001),
        DROP
    );
    let ev = ep.events();
    assert!(
        ev.iter().any(|e| e.kind == "policy-verdict"
            && e.src_identity == REMOTE_ID
            && e.verdict.as_deref() == Some("allowed")),
        "{ev:?}"
    );
}

#[test]
fn pod_to_pod_on_one_node_is_decided_at_both_ends() {
    let mut n = TcNode::new(true);
    n.add(1, POD_ID, &[POD], true);
    n.add(2, PEER_ID, &["10.1.0.11"], true);
    n.ipcache(&[("10.1.0.10/32", POD_ID), ("10.1.0.11/32", PEER_ID)]);
    n.eps[0]
        .dp
        .sync_policy(&[rule(Egress, PEER_ID, TCP, 80, 80, Allow)])
        .unwrap();
    n.eps[1]
        .dp
        .sync_policy(&[rule(Ingress, POD_ID, TCP, 8080, 8080, Allow)])
        .unwrap();
    let (a, b) = (&n.eps[0], &n.eps[1]);
    // Client egress allows 80, server ingress does not: the server side drops.
    assert_eq!(a.send(&tcp(POD, "10.1.0.11", 1, 80, SYN)), PASS);
    assert_eq!(
        b.deliver(&tcp(POD, "10.1.0.11", 1, 80, SYN)),
        DROP,
        "A's entry is not B's"
    );
    // Server ingress allows 8080, client egress does not: the client side drops.
    assert_eq!(a.send(&tcp(POD, "10.1.0.11", 2, 8080, SYN)), DROP);
    let ct = n.node.conntrack().unwrap();
    assert_eq!(ct.len(), 1, "{ct:?}");
    assert_eq!((ct[0].endpoint_id, ct[0].direction), (1, Egress));
    // Detaching an endpoint forgets its addresses and its flows.
    let ns = std::path::Path::new("/run/netns").join(&a.env.netns);
    let (node, dp, ep) = (n.node.clone(), a.dp.clone(), a.ep.clone());
    tc_common::in_netns(&ns, || node.detach_endpoint(&dp, &ep)).unwrap();
    assert!(n.node.conntrack().unwrap().is_empty());
    let eps = n.node.endpoints().unwrap();
    assert_eq!(eps.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
}

#[test]
fn gc_deletes_expired_entries_only() {
    let n = one_pod(&[
        rule(Egress, PEER_ID, TCP, 80, 80, Allow),
        rule(Egress, PEER_ID, UDP, 53, 53, Allow),
    ]);
    let ep = &n.eps[0];
    assert_eq!(
        ep.send(&tcp(POD, PEER, 1, 80, RST)),
        PASS,
        "closing from the start: 10 s"
    );
    assert_eq!(ep.send(&udp(POD, PEER, 2, 53)), PASS, "60 s");
    assert_eq!(n.node.ct_gc().unwrap(), 0);
    membrane_test_support::wait_until(
        Duration::from_secs(20),
        Duration::from_millis(250),
        "the closing entry expires and is collected",
        || (n.node.ct_gc().unwrap() == 1).then_some(()),
    );
    let ct = n.node.conntrack().unwrap();
    assert_eq!(ct.len(), 1, "{ct:?}");
    assert_eq!(ct[0].proto, 17);
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}
