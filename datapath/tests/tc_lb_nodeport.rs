//! NodePort and ClusterIPs reached from the underlay, with crafted packets through the
//! real `mb_from_netdev` (underlay ingress) and the backend pod's `mb_from_container`:
//! a local backend gets the packet DNATed and redirected to its veth with the client's
//! address kept, its reply leaves as from the NodePort; a remote backend gets DNAT + SNAT
//! to the node's address (the client's port, another one when that is taken) and its reply
//! is translated both ways; external-traffic-local only ever picks local backends. The test
//! runs happen on a thread inside a namespace of the test's own (the FIB lookups read its
//! routes, never the host's).

mod common;
mod lb_common;
mod tc_common;

use std::{collections::BTreeSet, net::SocketAddr};

use aya::programs::SchedClassifier;
use lb_common::{addrs, checksums_ok, dst_mac, frame, run, sa, DROP, REDIRECT, TCP, UDP};
use membrane_datapath::{lb::LbService, NodeSettings};
use membrane_test_support::{unique_name, Netns};
use tc_common::{in_netns, TcNode};

const NODE_IP: &str = "192.168.50.1";
const CLIENT: &str = "192.168.50.2";
/// A pod on another node, reached through 192.168.50.3.
const REMOTE: &str = "10.1.0.5:8080";

/// The test's underlay: a namespace with `under0` (the node's address, a route to the
/// other node's pods via 192.168.50.3) joined to a client namespace.
struct Underlay {
    ns: Netns,
    _client: Netns,
    ifindex: u32,
}

fn underlay() -> Underlay {
    let name = unique_name();
    let ns = Netns::add(&format!("{name}-u"));
    let client = Netns::add(&format!("{name}-c"));
    membrane_test_support::sandbox::veth(
        &ns,
        "under0",
        &format!("{NODE_IP}/24"),
        &client,
        "eth0",
        &format!("{CLIENT}/24"),
    );
    ns.ip(&["route", "add", "10.1.0.0/24", "via", "192.168.50.3"]);
    membrane_test_support::run(ns.exec("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
    let ifindex = in_netns(&ns.path(), || nix::net::if_::if_nametoindex("under0")).expect("under0");
    Underlay {
        ns,
        _client: client,
        ifindex,
    }
}

/// A node whose address is NODE_IP, with local backend pods 2 and 3, and its underlay
/// program loaded.
fn node() -> (TcNode, SchedClassifier) {
    let mut n = TcNode::new(false);
    n.add(2, 1002, &["10.0.0.2"], false);
    n.add(3, 1003, &["10.0.0.3"], false);
    let s = n.node.settings().expect("settings");
    n.node
        .set_settings(&NodeSettings {
            node_ip4: NODE_IP.parse().unwrap(),
            ..s
        })
        .expect("node address");
    n.node
        .load_overlay_programs()
        .expect("load underlay program");
    let p = SchedClassifier::from_pin(n.node.dir().join("progs/mb_from_netdev"))
        .expect("mb_from_netdev");
    (n, p)
}

fn node_port(proto: u8, port: u16, external_local: bool, backends: &[&str]) -> LbService {
    LbService {
        frontend: sa(&format!("10.96.0.30:{port}")),
        proto,
        node_port: port + 30000,
        external_local,
        backends: backends.iter().map(|b| sa(b)).collect(),
    }
}

fn np_addr(port: u16) -> SocketAddr {
    sa(&format!("{NODE_IP}:{}", port + 30000))
}

#[test]
fn nodeport_to_a_local_backend_is_delivered_to_its_veth_and_answered_as_the_nodeport() {
    let u = underlay();
    let (n, from_netdev) = node();
    n.node
        .sync_services(&[node_port(TCP, 80, false, &["10.0.0.2:8080"])])
        .expect("sync");
    let client = sa(&format!("{CLIENT}:40000"));
    let (rc, out) = in_netns(&u.ns.path(), || {
        run(&from_netdev, &frame(TCP, client, np_addr(80)), u.ifindex)
    });
    assert_eq!(rc, REDIRECT, "redirected to the pod's veth");
    assert!(checksums_ok(&out));
    assert_eq!(
        addrs(&out),
        (client, sa("10.0.0.2:8080")),
        "client kept, backend as destination"
    );
    assert_eq!(dst_mac(&out), n.eps[0].ep.mac);

    // The pod's reply: from the NodePort, out by the FIB (the client is on-link).
    let from2 = SchedClassifier::from_pin(n.eps[0].dp.dir().join("progs/mb_from_container"))
        .expect("from-container");
    let (rc, out) = in_netns(&u.ns.path(), || {
        run(&from2, &frame(TCP, sa("10.0.0.2:8080"), client), 0)
    });
    assert_eq!(rc, REDIRECT);
    assert!(checksums_ok(&out));
    assert_eq!(addrs(&out), (np_addr(80), client));
}

#[test]
fn nodeport_to_a_remote_backend_is_snated_and_its_reply_translated_both_ways() {
    let u = underlay();
    let (n, from_netdev) = node();
    n.node
        .sync_services(&[node_port(UDP, 53, false, &[REMOTE])])
        .expect("sync");
    let c1 = sa(&format!("{CLIENT}:41000"));
    let (rc, out) = in_netns(&u.ns.path(), || {
        run(&from_netdev, &frame(UDP, c1, np_addr(53)), u.ifindex)
    });
    assert_eq!(rc, REDIRECT, "forwarded toward the other node");
    assert!(checksums_ok(&out));
    assert_eq!(addrs(&out), (sa(&format!("{NODE_IP}:41000")), sa(REMOTE)));

    // Another client with the same port toward the same backend: another source port.
    let c2 = sa("192.168.50.9:41000");
    let (_, out2) = in_netns(&u.ns.path(), || {
        run(&from_netdev, &frame(UDP, c2, np_addr(53)), u.ifindex)
    });
    let (snat2, _) = addrs(&out2);
    assert_eq!(snat2.ip(), sa(&format!("{NODE_IP}:1")).ip());
    assert_ne!(snat2.port(), 41000, "the port toward the backend is taken");

    // The backend's replies, to each translated source: back to the right client.
    for (client, snat) in [(c1, sa(&format!("{NODE_IP}:41000"))), (c2, snat2)] {
        let (rc, out) = in_netns(&u.ns.path(), || {
            run(&from_netdev, &frame(UDP, sa(REMOTE), snat), u.ifindex)
        });
        assert_eq!(rc, REDIRECT, "reply to {client}");
        assert!(checksums_ok(&out));
        assert_eq!(addrs(&out), (np_addr(53), client));
    }
}

#[test]
fn external_traffic_local_picks_only_local_backends_and_drops_without_one() {
    let u = underlay();
    let (n, from_netdev) = node();
    n.node
        .sync_services(&[
            node_port(UDP, 53, true, &["10.0.0.2:5353", REMOTE]),
            node_port(UDP, 54, true, &[REMOTE]),
        ])
        .expect("sync");
    let seen: BTreeSet<SocketAddr> = (0..32)
        .map(|i| {
            let c = sa(&format!("{CLIENT}:{}", 42000 + i));
            let (rc, out) = in_netns(&u.ns.path(), || {
                run(&from_netdev, &frame(UDP, c, np_addr(53)), u.ifindex)
            });
            assert_eq!(rc, REDIRECT);
            let (src, dst) = addrs(&out);
            assert_eq!(src, c, "the client's address is kept");
            dst
        })
        .collect();
    assert_eq!(seen, BTreeSet::from([sa("10.0.0.2:5353")]));
    let (rc, _) = in_netns(&u.ns.path(), || {
        run(
            &from_netdev,
            &frame(UDP, sa(&format!("{CLIENT}:43000")), np_addr(54)),
            u.ifindex,
        )
    });
    assert_eq!(rc, DROP, "no local backend");
    let row = n
        .node
        .tc_stats()
        .expect("stats")
        .into_iter()
        .find(|s| s.reason == 40)
        .expect("lb-no-backend row");
    assert_eq!(row.packets, 1);
}

#[test]
fn a_clusterip_routed_in_from_the_underlay_is_translated() {
    let u = underlay();
    let (n, from_netdev) = node();
    n.node
        .sync_services(&[LbService {
            node_port: 0,
            ..node_port(TCP, 80, false, &["10.0.0.3:8080"])
        }])
        .expect("sync");
    let client = sa(&format!("{CLIENT}:44000"));
    let (rc, out) = in_netns(&u.ns.path(), || {
        run(
            &from_netdev,
            &frame(TCP, client, sa("10.96.0.30:80")),
            u.ifindex,
        )
    });
    assert_eq!(rc, REDIRECT);
    assert_eq!(addrs(&out), (client, sa("10.0.0.3:8080")));
    assert_eq!(dst_mac(&out), n.eps[1].ep.mac);
    // Not a frontend: untouched.
    let (rc, out) = in_netns(&u.ns.path(), || {
        run(
            &from_netdev,
            &frame(TCP, client, sa("10.96.0.31:80")),
            u.ifindex,
        )
    });
    assert_eq!(rc, lb_common::PASS);
    assert_eq!(addrs(&out), (client, sa("10.96.0.31:80")));
}
