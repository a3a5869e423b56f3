//! IPv6 services in tc with real traffic: a node namespace routing pods (each its own
//! namespace on a veth, a /128, the default route via the host veth's link-local
//! address), policy enforced, IPv6 UDP and TCP ClusterIPs with two backend pods. The
//! client's datagrams are sent without connect and its TCP connections from a thread in
//! no pod's cgroup, so only the tc load balancer translates: every answer must come from
//! the frontend, both backends must get flows, the backends' ingress policy decides on
//! the client's identity, and a backend reaching itself through its service (hairpin)
//! gets its answers. Privileged; every namespace, cgroup and pin directory is the test's
//! own and goes on drop.

mod common;
mod lb_common;
mod tc_common;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::{sa, TCP, UDP};
use membrane_datapath::{
    lb::LbService,
    policy_map::{Direction::*, MapVerdict::*},
};
use tc_common::{
    echo::{tcp_echo, udp_echo, Servers},
    rule, TcNode,
};

const CLIENT_ID: u32 = 1001;
const BACKEND_ID: u32 = 1002;
const UVIP: &str = "[fd00:96::10]:53";
const TVIP: &str = "[fd00:96::10]:80";

fn service(frontend: &str, proto: u8, backends: &[&str]) -> LbService {
    LbService {
        frontend: sa(frontend),
        proto,
        node_port: 0,
        external_local: false,
        backends: backends.iter().map(|b| sa(b)).collect(),
    }
}

#[test]
fn real_ipv6_udp_and_tcp_reach_both_backends_through_the_service_and_answer_from_it() {
    let mut n = TcNode::routed(true);
    n.add(1, CLIENT_ID, &["fd00:1::1"], true);
    n.add(2, BACKEND_ID, &["fd00:1::2"], true);
    n.add(3, BACKEND_ID, &["fd00:1::3"], true);
    n.ipcache(&[
        ("fd00:1::1/128", CLIENT_ID),
        ("fd00:1::2/128", BACKEND_ID),
        ("fd00:1::3/128", BACKEND_ID),
    ]);
    n.eps[0]
        .dp
        .sync_policy(&[
            rule(Egress, BACKEND_ID, UDP, 5353, 5353, Allow),
            rule(Egress, BACKEND_ID, TCP, 8080, 8080, Allow),
        ])
        .expect("client policy");
    for i in [1, 2] {
        // The backends admit the client, and themselves (hairpin).
        n.eps[i]
            .dp
            .sync_policy(&[
                rule(Ingress, CLIENT_ID, UDP, 5353, 5353, Allow),
                rule(Ingress, CLIENT_ID, TCP, 8080, 8080, Allow),
                rule(Ingress, BACKEND_ID, UDP, 5353, 5353, Allow),
                rule(Egress, BACKEND_ID, UDP, 5353, 5353, Allow),
            ])
            .expect("backend policy");
    }
    n.node
        .sync_services(&[
            service(UVIP, UDP, &["[fd00:1::2]:5353", "[fd00:1::3]:5353"]),
            service(TVIP, TCP, &["[fd00:1::2]:8080", "[fd00:1::3]:8080"]),
        ])
        .expect("sync services");
    let ns: Vec<PathBuf> = n
        .eps
        .iter()
        .map(|e| Path::new("/run/netns").join(&e.env.netns))
        .collect();
    let _echo: Vec<Servers> = ns[1..]
        .iter()
        .map(|p| Servers::start(p.clone(), &[8080], &[5353]))
        .collect();

    for i in 0..12 {
        assert_eq!(udp_echo(&ns[0], UVIP), Some(sa(UVIP)), "udp flow {i}");
        assert!(tcp_echo(&ns[0], TVIP), "tcp connection {i}");
    }
    // Both backends took flows of each protocol: their ingress conntrack entries.
    let ct = n.node.conntrack().expect("conntrack");
    let client: IpAddr = "fd00:1::1".parse().unwrap();
    for proto in [UDP, TCP] {
        let backends: BTreeSet<u16> = ct
            .iter()
            .filter(|e| e.direction == Ingress && e.proto == proto && e.src.ip() == client)
            .map(|e| e.endpoint_id)
            .collect();
        assert_eq!(
            backends,
            BTreeSet::from([2, 3]),
            "protocol {proto}: the backends that took flows; {ct:?}"
        );
    }
    // A backend reaches itself through the service: the flows that land on itself are
    // hairpin flows, decided by its own identity, answered from the frontend.
    for i in 0..8 {
        assert_eq!(
            udp_echo(&ns[1], UVIP),
            Some(sa(UVIP)),
            "hairpin udp flow {i}"
        );
    }
    // The client may not reach the backends on another port, through a frontend or not.
    assert!(
        !tcp_echo(&ns[0], "[fd00:1::2]:5353"),
        "tcp 5353 is not allowed"
    );
    let drops: Vec<_> = n.eps[0]
        .events()
        .into_iter()
        .filter(|e| e.kind == "drop")
        .collect();
    assert!(
        drops
            .iter()
            .any(|d| d.dst.as_deref() == Some("[fd00:1::2]:5353") && d.dst_identity == BACKEND_ID),
        "{drops:?}"
    );
}
