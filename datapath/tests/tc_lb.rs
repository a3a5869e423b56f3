//! Service load balancing in tc, with crafted packets through the real programs
//! (`BPF_PROG_TEST_RUN` on a pod's `mb_from_container` / `mb_to_container`): DNAT to a
//! backend, a flow keeping its backend, reverse NAT of replies with valid checksums,
//! Maglev choosing what the Rust table says, a removed backend keeping its flows, no
//! backend → drop with its reason, hairpin; and the service maps' sync (read back,
//! invalid input refused whole). Privileged: each test has its own netns, cgroups and
//! pin directories.

mod common;
mod lb_common;
mod tc_common;

use std::{collections::BTreeSet, net::SocketAddr};

use aya::programs::SchedClassifier;
use lb_common::{addrs, checksums_ok, frame, run, sa, tuple, DROP, PASS, TCP, UDP};
use membrane_datapath::{
    abi::LB_MAGLEV_M,
    lb::{maglev, LbService},
    LbAlgorithm, NodeSettings,
};
use tc_common::TcNode;

const VIP: &str = "10.96.0.10:53";
const CLIENT: &str = "10.0.0.1";
const B2: &str = "10.0.0.2:5353";
const B3: &str = "10.0.0.3:5353";

/// A node (policy off: these tests are about translation) with a client pod (endpoint 1)
/// and two backend pods (2, 3).
fn node() -> TcNode {
    let mut n = TcNode::new(false);
    n.add(1, 1001, &[CLIENT], false);
    n.add(2, 1002, &["10.0.0.2"], false);
    n.add(3, 1003, &["10.0.0.3"], false);
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

/// Send `proto` from `client` to `dst` through from-container; the backend it went to.
fn send(from: &SchedClassifier, proto: u8, client: SocketAddr, dst: SocketAddr) -> SocketAddr {
    let (rc, out) = run(from, &frame(proto, client, dst), 0);
    assert_eq!(rc, PASS, "{client} -> {dst}: verdict");
    assert!(
        checksums_ok(&out),
        "{client} -> {dst}: checksums after DNAT"
    );
    let (src, to) = addrs(&out);
    assert_eq!(src, client, "the source stays the client's");
    to
}

#[test]
fn clusterip_udp_goes_to_a_backend_keeps_it_and_replies_come_from_the_frontend() {
    let n = node();
    n.node
        .sync_services(&[service(VIP, UDP, &[B2, B3])])
        .expect("sync");
    let (from, to) = progs(&n, 0);
    let client = sa("10.0.0.1:40000");
    let backend = send(&from, UDP, client, sa(VIP));
    assert!(
        [sa(B2), sa(B3)].contains(&backend),
        "went to {backend}, not a backend"
    );
    for _ in 0..20 {
        assert_eq!(send(&from, UDP, client, sa(VIP)), backend, "the flow moved");
    }
    // The backend's reply reaches the client as from the frontend.
    let (rc, out) = run(&to, &frame(UDP, backend, client), 0);
    assert_eq!(rc, PASS);
    assert!(checksums_ok(&out), "checksums after reverse NAT");
    assert_eq!(addrs(&out), (sa(VIP), client));
    // TCP to a frontend that is UDP only is not translated.
    assert_eq!(send(&from, TCP, client, sa(VIP)), sa(VIP));
    // Traffic to a backend directly is left alone both ways.
    assert_eq!(send(&from, UDP, sa("10.0.0.1:40001"), sa(B2)), sa(B2));
    let (_, out) = run(&to, &frame(UDP, sa(B3), sa("10.0.0.1:40002")), 0);
    assert_eq!(addrs(&out), (sa(B3), sa("10.0.0.1:40002")));
}

#[test]
fn random_selection_uses_every_backend() {
    let n = node();
    n.node
        .sync_services(&[service(VIP, TCP, &[B2, B3])])
        .expect("sync");
    let (from, _) = progs(&n, 0);
    let seen: BTreeSet<SocketAddr> = (0..64)
        .map(|i| send(&from, TCP, sa(&format!("{CLIENT}:{}", 41000 + i)), sa(VIP)))
        .collect();
    assert_eq!(seen, BTreeSet::from([sa(B2), sa(B3)]));
}

#[test]
fn maglev_picks_the_backend_of_the_rust_table() {
    let n = node();
    let s = n.node.settings().expect("settings");
    n.node
        .set_settings(&NodeSettings {
            lb_algorithm: LbAlgorithm::Maglev,
            ..s
        })
        .expect("maglev mode");
    let backends = ["10.0.0.2:5353", "10.0.0.3:5353", "10.0.9.9:5353"];
    n.node
        .sync_services(&[service(VIP, UDP, &backends)])
        .expect("sync");
    let (from, _) = progs(&n, 0);
    let mut sorted: Vec<SocketAddr> = backends.iter().map(|b| sa(b)).collect();
    sorted.sort();
    let table = maglev::table(&sorted, LB_MAGLEV_M);
    let mut seen = BTreeSet::new();
    for i in 0..48u16 {
        let client = sa(&format!("{CLIENT}:{}", 42000 + i * 7));
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
fn a_removed_backend_keeps_its_flows_and_gets_no_new_ones() {
    let n = node();
    n.node
        .sync_services(&[service(VIP, UDP, &[B2, B3])])
        .expect("sync");
    let (from, to) = progs(&n, 0);
    // Flows until one lands on each backend.
    let flows: Vec<(SocketAddr, SocketAddr)> = (0..64)
        .map(|i| {
            let c = sa(&format!("{CLIENT}:{}", 43000 + i));
            (c, send(&from, UDP, c, sa(VIP)))
        })
        .collect();
    let on_b3: Vec<SocketAddr> = flows
        .iter()
        .filter(|(_, b)| *b == sa(B3))
        .map(|(c, _)| *c)
        .collect();
    assert!(!on_b3.is_empty(), "no flow went to {B3}");

    n.node
        .sync_services(&[service(VIP, UDP, &[B2])])
        .expect("remove B3");
    for c in &on_b3 {
        assert_eq!(send(&from, UDP, *c, sa(VIP)), sa(B3), "flow from {c} moved");
        let (_, out) = run(&to, &frame(UDP, sa(B3), *c), 0);
        assert_eq!(addrs(&out), (sa(VIP), *c), "its replies still translate");
    }
    for i in 0..32 {
        let c = sa(&format!("{CLIENT}:{}", 44000 + i));
        assert_eq!(send(&from, UDP, c, sa(VIP)), sa(B2), "new flow from {c}");
    }
}

#[test]
fn a_frontend_without_backends_drops_with_its_reason() {
    let n = node();
    n.node
        .sync_services(&[service(VIP, UDP, &[])])
        .expect("sync");
    let (from, _) = progs(&n, 0);
    let (rc, _) = run(&from, &frame(UDP, sa("10.0.0.1:45000"), sa(VIP)), 0);
    assert_eq!(rc, DROP);
    let stats = n.node.tc_stats().expect("stats");
    let row = stats
        .iter()
        .find(|s| s.reason == 40)
        .expect("a row for reason 40");
    assert_eq!((row.name.as_str(), row.packets), ("lb-no-backend", 1));
    let drops: Vec<_> = n.eps[0]
        .events()
        .into_iter()
        .filter(|e| e.kind == "drop")
        .collect();
    assert_eq!(drops.len(), 1, "one drop event: {drops:?}");
    assert_eq!(drops[0].reason, "lb-no-backend");
}

#[test]
fn hairpin_reaches_the_pod_itself_from_the_frontend() {
    let n = node();
    n.node
        .sync_services(&[service(VIP, UDP, &[B2])])
        .expect("sync");
    let (from2, _) = progs(&n, 1);
    let me = sa("10.0.0.2:46000");
    let (rc, out) = run(&from2, &frame(UDP, me, sa(VIP)), 0);
    assert_eq!(rc, PASS);
    assert!(checksums_ok(&out));
    // The pod would drop a packet from its own address: it comes from the frontend.
    assert_eq!(addrs(&out), (sa("10.96.0.10:46000"), sa(B2)));
    // Its answer comes back through its own from-container, translated both ways.
    let (rc, out) = run(&from2, &frame(UDP, sa(B2), sa("10.96.0.10:46000")), 0);
    assert_eq!(rc, PASS);
    assert!(checksums_ok(&out));
    assert_eq!(addrs(&out), (sa(VIP), me));
}

#[test]
fn services_read_back_and_invalid_input_changes_nothing() {
    let n = node();
    let mut np = service("10.96.0.20:80", TCP, &[B3, B2, B3]);
    np.node_port = 30080;
    let want = vec![service(VIP, UDP, &[B2]), np.clone()];
    let r = n.node.sync_services(&want).expect("sync");
    assert_eq!(r.added, 3, "two ClusterIPs and a NodePort: {r:?}");
    let mut read = n.node.lb_services().expect("read back");
    read.sort();
    let mut expect = want.clone();
    expect[1].backends = vec![sa(B2), sa(B3)]; // sorted, deduplicated
    expect.sort();
    assert_eq!(read, expect);
    // Unchanged input writes nothing.
    assert_eq!(n.node.sync_services(&want).expect("again").changed, 0);

    for (bad, needle) in [
        (service("10.96.0.30:80", 1, &[B2]), "protocol 1"),
        (service("10.96.0.30:0", TCP, &[B2]), "port"),
        (
            service("10.96.0.30:80", TCP, &["[fd00::1]:80"]),
            "address family",
        ),
        (service(VIP, UDP, &[B3]), "listed twice"),
        (
            LbService {
                node_port: 30080,
                ..service("10.96.0.31:80", TCP, &[B2])
            },
            "node port 30080",
        ),
    ] {
        let mut all = want.clone();
        all.push(bad.clone());
        let err = n.node.sync_services(&all).expect_err("invalid").to_string();
        assert!(err.contains(needle), "{bad:?}: {err}");
        let mut now = n.node.lb_services().expect("read back");
        now.sort();
        assert_eq!(now, expect, "state after refusing {bad:?}");
    }
    assert_eq!(n.node.sync_services(&[]).expect("empty").removed, 3);
    assert!(n.node.lb_services().expect("read back").is_empty());
}

#[test]
fn policy_decides_on_the_backend_and_replies_still_pass_conntrack() {
    use membrane_datapath::{
        policy_map::{Direction, MapVerdict, PolicyRule},
        IpcacheEntry,
    };
    // An enforcing client allowed to reach identity 1002 (B2) on UDP 5353 only.
    let mut n = TcNode::new(true);
    n.add(1, 1001, &[CLIENT], true);
    n.add(2, 1002, &["10.0.0.2"], false);
    n.add(3, 1003, &["10.0.0.3"], false);
    let ipc: Vec<IpcacheEntry> = [
        ("10.0.0.1/32", 1001),
        ("10.0.0.2/32", 1002),
        ("10.0.0.3/32", 1003),
    ]
    .iter()
    .map(|(p, id)| IpcacheEntry {
        prefix: p.parse().unwrap(),
        identity: *id,
        tunnel: None,
    })
    .collect();
    n.node.sync_ipcache(&ipc).expect("ipcache");
    n.eps[0]
        .dp
        .sync_policy(&[PolicyRule {
            direction: Direction::Egress,
            remote_identity: 1002,
            proto: UDP,
            ports: (5353, 5353),
            verdict: MapVerdict::Allow,
        }])
        .expect("policy");
    n.node
        .sync_services(&[service(VIP, UDP, &[B2, B3])])
        .expect("sync");
    let (from, to) = progs(&n, 0);
    let (mut allowed, mut denied) = (0, 0);
    for i in 0..32 {
        let c = sa(&format!("{CLIENT}:{}", 47000 + i));
        let (rc, out) = run(&from, &frame(UDP, c, sa(VIP)), 0);
        let (_, backend) = addrs(&out);
        if backend == sa(B2) {
            assert_eq!(rc, PASS, "flow from {c} to the allowed backend");
            allowed += 1;
            // The reply is the flow's (conntrack) and comes from the frontend.
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
}

#[test]
fn a_direct_flow_on_a_port_a_service_flow_used_keeps_the_backend_as_its_replies_source() {
    // The client's port first carries a service flow, then (the connection gone, its
    // memory not yet aged out) a flow straight to the backend it was translated to.
    let n = node();
    n.node
        .sync_services(&[service(VIP, UDP, &[B2, B3])])
        .expect("sync");
    let (from, to) = progs(&n, 0);
    let client = sa("10.0.0.1:41000");
    let backend = send(&from, UDP, client, sa(VIP));
    let (_, out) = run(&to, &frame(UDP, backend, client), 0);
    assert_eq!(addrs(&out), (sa(VIP), client), "the service flow's reply");
    // The reverse NAT lives in the flow's conntrack entry (keyed by the backend).
    let rnat = rev_nat_of(&n, client, backend);
    assert_ne!(
        rnat, 0,
        "the service flow's entry has the frontend's reverse NAT id"
    );

    assert_eq!(
        send(&from, UDP, client, backend),
        backend,
        "direct: untouched"
    );
    let (rc, out) = run(&to, &frame(UDP, backend, client), 0);
    assert_eq!(rc, PASS);
    assert_eq!(
        addrs(&out),
        (backend, client),
        "a direct flow's reply must come from the address the client dialled"
    );
    assert_eq!(
        rev_nat_of(&n, client, backend),
        0,
        "the direct flow's entry"
    );

    // The port goes back to the service: translated again, replies from the frontend.
    let again = send(&from, UDP, client, sa(VIP));
    assert!([sa(B2), sa(B3)].contains(&again), "went to {again}");
    let (_, out) = run(&to, &frame(UDP, again, client), 0);
    assert_eq!(
        addrs(&out),
        (sa(VIP), client),
        "the new service flow's reply"
    );
    assert_eq!(rev_nat_of(&n, client, again), rnat);
}

/// The reverse NAT id of the client pod's (endpoint 1) conntrack entry of `client` →
/// `backend`.
fn rev_nat_of(n: &TcNode, client: SocketAddr, backend: SocketAddr) -> u32 {
    let ct = n.node.conntrack().expect("conntrack");
    ct.iter()
        .find(|e| e.endpoint_id == 1 && e.src == client && e.dst == backend)
        .unwrap_or_else(|| panic!("no entry {client} -> {backend}: {ct:?}"))
        .rev_nat_id
}

#[test]
fn a_pods_replies_are_translated_back_exactly_when_their_flow_needs_it_every_time() {
    // from-container asks the reverse translation map about a pod's replies once per
    // flow (the first reply) and keeps the answer in the flow's entry: a hairpin flow's
    // replies are translated every time, a plain flow's never.
    let n = node();
    n.node
        .sync_services(&[service(VIP, UDP, &[B2])])
        .expect("sync");
    let (from2, to2) = progs(&n, 1);
    let me = sa("10.0.0.2:46100");
    let as_frontend = sa("10.96.0.10:46100");
    // Hairpin: out through the pod's from-container, back in through its to-container
    // (which tracks the flow as one to the pod).
    let (rc, out) = run(&from2, &frame(UDP, me, sa(VIP)), 0);
    assert_eq!(rc, PASS);
    assert_eq!(addrs(&out), (as_frontend, sa(B2)));
    let (rc, _) = run(&to2, &out, 0);
    assert_eq!(rc, PASS, "the hairpin packet into the pod");
    for i in 0..3 {
        let (rc, out) = run(&from2, &frame(UDP, sa(B2), as_frontend), 0);
        assert_eq!(rc, PASS, "hairpin reply {i}");
        assert!(checksums_ok(&out), "hairpin reply {i}: checksums");
        assert_eq!(addrs(&out), (sa(VIP), me), "hairpin reply {i}");
    }
    // A flow from another pod straight to this one: its replies stay as they are.
    let c = sa("10.0.0.1:47100");
    let (rc, _) = run(&to2, &frame(UDP, c, sa(B2)), 0);
    assert_eq!(rc, PASS);
    for i in 0..3 {
        let (rc, out) = run(&from2, &frame(UDP, sa(B2), c), 0);
        assert_eq!(rc, PASS, "plain reply {i}");
        assert_eq!(addrs(&out), (sa(B2), c), "plain reply {i}");
    }
}

/// Bit `port` of the node's `mb_lb_ports` (the ports some frontend has).
fn port_marked(n: &TcNode, port: u16) -> bool {
    use aya::maps::{Array, Map, MapData};
    let data = MapData::from_pin(n.node.dir().join("maps/mb_lb_ports")).expect("mb_lb_ports");
    let ports: Array<MapData, u32> = Array::try_from(Map::Array(data)).expect("an array");
    ports.get(&u32::from(port >> 5), 0).expect("word") & (1 << (port & 31)) != 0
}

#[test]
fn the_frontend_ports_are_marked_while_a_frontend_has_them_and_only_then() {
    // Packets to a port whose bit is clear skip the frontend lookup: a frontend's port
    // must be marked as long as it exists, and a port no frontend has any more unmarked.
    let n = node();
    let (from, _) = progs(&n, 0);
    let mut np = service("10.96.0.20:80", TCP, &[B2]);
    np.node_port = 30080;
    n.node
        .sync_services(&[service(VIP, UDP, &[B2]), np])
        .expect("sync");
    for port in [53, 80, 30080] {
        assert!(port_marked(&n, port), "port {port}");
    }
    assert!(!port_marked(&n, 54), "port 54");
    assert_eq!(send(&from, UDP, sa("10.0.0.1:41000"), sa(VIP)), sa(B2));

    // The frontend moves from port 53 to 54: 53 unmarked, its packets untouched; 54 at
    // once translated.
    n.node
        .sync_services(&[service("10.96.0.10:54", UDP, &[B3])])
        .expect("sync");
    assert!(!port_marked(&n, 53) && !port_marked(&n, 80) && !port_marked(&n, 30080));
    assert!(port_marked(&n, 54));
    assert_eq!(send(&from, UDP, sa("10.0.0.1:41001"), sa(VIP)), sa(VIP));
    assert_eq!(
        send(&from, UDP, sa("10.0.0.1:41002"), sa("10.96.0.10:54")),
        sa(B3)
    );
    n.node.sync_services(&[]).expect("empty");
    assert!(!port_marked(&n, 54));
}
