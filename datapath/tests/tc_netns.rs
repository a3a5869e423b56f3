//! Real traffic through the packet path: a node namespace routing two pods (each its own
//! namespace on a veth, /32 address, default route via the on-link gateway), tc attached
//! to both host veths with pinned tcx links, policy enforced. TCP, UDP and ICMP flows are
//! allowed and dropped as each end's policy says, replies pass, and the drops show in the
//! endpoints' monitor ring buffers and the node's counters. The test process's threads
//! enter the pod namespaces (never a cgroup), so only the packet path decides.
//! Privileged; everything is removed on drop.

mod common;
mod tc_common;

use std::{
    net::UdpSocket,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use membrane_datapath::{
    abi,
    policy_map::{Direction::*, MapVerdict::*},
};
use tc_common::{
    echo::{tcp_echo, udp_echo, Servers},
    in_netns,
    packet::*,
    rule, stat, TcNode,
};

const A: &str = "10.1.0.10";
const B: &str = "10.1.0.11";
const A_ID: u32 = 1000;
const B_ID: u32 = 2000;

/// One ICMP echo request from inside `ns` over a raw socket (no `ping` binary needed):
/// true when the matching reply arrives within 2 s.
fn ping(ns: &Path, to: &str) -> bool {
    use nix::sys::{
        socket::{
            recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag,
            SockProtocol, SockType, SockaddrIn,
        },
        time::TimeVal,
    };
    use std::os::fd::AsRawFd;
    let to: std::net::Ipv4Addr = to.parse().unwrap();
    in_netns(ns, || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        )
        .expect("raw ICMP socket");
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000)).unwrap();
        let id: u16 = 0x4d42;
        let mut pkt = [8u8, 0, 0, 0, 0, 0, 0, 1, b'm', b'b', 0, 0, 0, 0, 0, 0];
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        let sum = pkt
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        let dst = SockaddrIn::from(std::net::SocketAddrV4::new(to, 0));
        sendto(fd.as_raw_fd(), &pkt, &dst, MsgFlags::empty()).expect("send echo");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n >= ihl + 8 && buf[ihl] == 0 && buf[ihl + 4..ihl + 6] == id.to_be_bytes() {
                return true;
            }
        }
        false
    })
}

/// What a host veth carries: from-container on ingress, to-container on egress (the
/// kernel keeps 15 bytes of a program's name).
const ON_VETH: [&str; 2] = ["mb_from_contain", "mb_to_container"];

/// The names of the tcx programs on `dev` (ingress, then egress), asked in the namespace.
fn tcx_progs(ns: &Path, dev: &str) -> Vec<String> {
    in_netns(ns, || {
        let mut out = Vec::new();
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(dev, kind).expect("query tcx");
            for p in progs {
                out.push(p.name_as_str().unwrap_or("?").to_owned());
            }
        }
        out
    })
}

#[test]
fn real_flows_are_allowed_and_dropped_as_both_ends_say() {
    let mut n = TcNode::routed(true);
    n.add(1, A_ID, &[A], true);
    n.add(2, B_ID, &[B], true);
    n.ipcache(&[("10.1.0.10/32", A_ID), ("10.1.0.11/32", B_ID)]);
    n.eps[0]
        .dp
        .sync_policy(&[
            rule(Egress, B_ID, TCP, 80, 80, Allow),
            rule(Egress, B_ID, TCP, 8080, 8080, Allow),
            rule(Egress, B_ID, UDP, 53, 53, Allow),
            rule(Egress, B_ID, ICMP, 8, 8, Allow),
        ])
        .unwrap();
    n.eps[1]
        .dp
        .sync_policy(&[
            rule(Ingress, A_ID, TCP, 80, 81, Allow),
            rule(Ingress, A_ID, UDP, 53, 54, Allow),
            rule(Ingress, 0, ICMP, 8, 8, Allow),
        ])
        .unwrap();
    let (a_ns, b_ns) = (
        Path::new("/run/netns").join(&n.eps[0].env.netns),
        Path::new("/run/netns").join(&n.eps[1].env.netns),
    );
    // The links are pinned and the programs really sit on the host veths.
    for ep in &n.eps {
        let links = ep.dp.dir().join(format!("links/tc-{}", ep.ep.ifindex));
        assert!(links.join("ingress").exists() && links.join("egress").exists());
    }
    let node_ns = n.node_ns.as_ref().unwrap().path();
    assert_eq!(tcx_progs(&node_ns, "h1"), ON_VETH);
    assert_eq!(tcx_progs(&node_ns, "h2"), ON_VETH);

    let _servers = Servers::start(b_ns.clone(), &[80, 81, 8080], &[53, 54]);
    // Allowed at both ends; the replies pass both to-container/from-container by conntrack.
    assert!(tcp_echo(&a_ns, "10.1.0.11:80"), "tcp 80");
    assert!(udp_echo(&a_ns, "10.1.0.11:53").is_some(), "udp 53");
    assert!(ping(&a_ns, B), "ping A -> B");
    // A's egress has no rule for 81 / 54: dropped as A sends them.
    assert!(!tcp_echo(&a_ns, "10.1.0.11:81"), "tcp 81");
    assert!(udp_echo(&a_ns, "10.1.0.11:54").is_none(), "udp 54");
    // B's ingress has no rule for 8080: dropped on the way into B.
    assert!(!tcp_echo(&a_ns, "10.1.0.11:8080"), "tcp 8080");
    // B may not start anything toward A (its egress is empty), not even a ping.
    assert!(!ping(&b_ns, A), "ping B -> A");
    // Still fine afterwards: established state is per flow.
    assert!(tcp_echo(&a_ns, "10.1.0.11:80"), "tcp 80 again");

    let a_ev = n.eps[0].events();
    let b_ev = n.eps[1].events();
    let drop_to = |ev: &[membrane_datapath::events::Event], program: &str, dst: &str| {
        ev.iter()
            .any(|e| e.kind == "drop" && e.program == program && e.dst.as_deref() == Some(dst))
    };
    assert!(
        drop_to(&a_ev, "from-container", "10.1.0.11:81"),
        "{a_ev:#?}"
    );
    assert!(
        drop_to(&a_ev, "from-container", "10.1.0.11:54"),
        "{a_ev:#?}"
    );
    assert!(
        drop_to(&b_ev, "to-container", "10.1.0.11:8080"),
        "{b_ev:#?}"
    );
    assert!(
        b_ev.iter()
            .any(|e| e.kind == "drop" && e.program == "from-container" && e.proto == 1),
        "{b_ev:#?}"
    );
    let stats = n.node.tc_stats().unwrap();
    assert!(stat(&stats, abi::RSN_TC_NO_POLICY) >= 4, "{stats:?}");
    assert!(stat(&stats, 0) > 10, "{stats:?}");
    assert_eq!(stat(&stats, abi::RSN_SPOOFED), 0, "{stats:?}");
    let ct = n.node.conntrack().unwrap();
    assert!(
        ct.iter()
            .any(|e| e.endpoint_id == 1 && e.dst.to_string() == "10.1.0.11:80" && e.seen_reply),
        "{ct:?}"
    );
    assert!(
        ct.iter()
            .any(|e| e.endpoint_id == 2 && e.dst.to_string() == "10.1.0.11:80" && e.seen_reply),
        "{ct:?}"
    );
}

#[test]
fn a_pod_that_spoofs_its_source_gets_nowhere_and_detach_restores_the_plain_path() {
    let mut n = TcNode::routed(true);
    n.add(1, A_ID, &[A], true);
    n.add(2, B_ID, &[B], false);
    n.ipcache(&[("10.1.0.10/32", A_ID), ("10.1.0.11/32", B_ID)]);
    n.eps[0]
        .dp
        .sync_policy(&[rule(Egress, 0, UDP, 1, 65535, Allow)])
        .unwrap();
    let (a_ns, b_ns) = (
        Path::new("/run/netns").join(&n.eps[0].env.netns),
        Path::new("/run/netns").join(&n.eps[1].env.netns),
    );
    let _servers = Servers::start(b_ns, &[], &[53]);
    assert!(udp_echo(&a_ns, "10.1.0.11:53").is_some());
    // A takes a second address it was not given and sends from it.
    n.eps[0]
        .env
        .ip(&["addr", "add", "10.1.0.99/32", "dev", "eth0"]);
    let spoofed = in_netns(&a_ns, || {
        let s = UdpSocket::bind("10.1.0.99:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.send_to(b"ping", "10.1.0.11:53").unwrap();
        let mut buf = [0u8; 16];
        s.recv_from(&mut buf).is_ok()
    });
    assert!(!spoofed);
    assert!(stat(&n.node.tc_stats().unwrap(), abi::RSN_SPOOFED) >= 1);
    // Detached, nothing decides A's packets any more (B does not enforce).
    let node = n.node.clone();
    let (dp, ep) = (n.eps[0].dp.clone(), n.eps[0].ep.clone());
    let node_ns = n.node_ns.as_ref().unwrap().path();
    in_netns(&node_ns, || node.detach_endpoint(&dp, &ep)).unwrap();
    membrane_test_support::wait_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "the tcx links on h1 are released",
        || tcx_progs(&node_ns, "h1").is_empty().then_some(()),
    );
    assert_eq!(tcx_progs(&node_ns, "h2"), ON_VETH);
    assert!(udp_echo(&a_ns, "10.1.0.11:53").is_some());
    // Tearing an endpoint's pin directory down detaches its tc programs too.
    n.eps[1].dp.teardown().unwrap();
    membrane_test_support::wait_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "the tcx links on h2 are released",
        || tcx_progs(&node_ns, "h2").is_empty().then_some(()),
    );
}

#[test]
fn ipv6_flows_pass_and_drop_and_neighbour_discovery_gets_through() {
    let mut n = TcNode::routed(true);
    n.add(1, A_ID, &[A, "fd00:1::10"], true);
    n.add(2, B_ID, &[B, "fd00:1::11"], true);
    n.ipcache(&[
        ("10.1.0.10/32", A_ID),
        ("fd00:1::10/128", A_ID),
        ("10.1.0.11/32", B_ID),
        ("fd00:1::11/128", B_ID),
    ]);
    n.eps[0]
        .dp
        .sync_policy(&[
            rule(Egress, B_ID, TCP, 80, 81, Allow),
            rule(Egress, B_ID, UDP, 53, 53, Allow),
        ])
        .unwrap();
    n.eps[1]
        .dp
        .sync_policy(&[
            rule(Ingress, A_ID, TCP, 80, 80, Allow),
            rule(Ingress, A_ID, UDP, 53, 53, Allow),
        ])
        .unwrap();
    let (a_ns, b_ns) = (
        Path::new("/run/netns").join(&n.eps[0].env.netns),
        Path::new("/run/netns").join(&n.eps[1].env.netns),
    );
    let _servers = Servers::start(b_ns, &[80, 81], &[53]);
    assert!(tcp_echo(&a_ns, "[fd00:1::11]:80"), "tcp6 80");
    assert!(udp_echo(&a_ns, "[fd00:1::11]:53").is_some(), "udp6 53");
    assert!(!tcp_echo(&a_ns, "[fd00:1::11]:81"), "tcp6 81: B's ingress");
    // The same over IPv4 through the same sockets.
    assert!(tcp_echo(&a_ns, "10.1.0.11:80"), "tcp 80");
    let b_ev = n.eps[1].events();
    assert!(
        b_ev.iter().any(|e| e.kind == "drop"
            && e.program == "to-container"
            && e.dst.as_deref() == Some("[fd00:1::11]:81")),
        "{b_ev:#?}"
    );
    let stats = n.node.tc_stats().unwrap();
    assert_eq!(
        stat(&stats, abi::RSN_SPOOFED),
        0,
        "ND is not spoofing: {stats:?}"
    );
}
