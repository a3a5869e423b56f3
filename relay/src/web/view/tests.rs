use super::*;
use membrane_api::monitor::{L7, TYPE_LOST};

fn ev(kind: &str, verdict: Option<&str>, src: &str, dst: &str) -> Event {
    Event {
        time: "2026-12-07T17:00:00Z".to_owned(),
        kind: kind.to_owned(),
        program: "to-container".to_owned(),
        reason: "policy-denied".to_owned(),
        verdict: verdict.map(str::to_owned),
        src_pod: Some(format!("default/{src}")),
        dst_pod: Some(format!("default/{dst}")),
        dst: Some("10.201.0.11:80".to_owned()),
        count: 1,
        ..Event::default()
    }
}

#[test]
fn workloads_come_from_pod_names() {
    for (pod, w) in [
        ("deathstar-1", "deathstar"),
        ("deathstar-2", "deathstar"),
        ("web-7d9f8c6b5-x2x4z", "web"),
        ("node-agent-x2x4z", "node-agent"),
        ("db-0", "db"),
        ("tiefighter", "tiefighter"),
        ("x-wing", "x-wing"),
        ("api-proxy", "api-proxy"),
        ("-1", "-1"),
    ] {
        assert_eq!(workload(pod), w, "{pod}");
    }
}

#[test]
fn replicas_are_one_node_and_verdicts_colour_the_edges() {
    let mut v = View::new(Limits::default());
    v.add(ev("drop", Some("denied"), "xwing", "deathstar-1"));
    v.add(ev("drop", Some("denied"), "xwing", "deathstar-2"));
    v.add(ev(
        "policy-verdict",
        Some("allowed"),
        "tiefighter",
        "deathstar-2",
    ));
    let mut put = ev(TYPE_L7, Some("denied"), "tiefighter", "deathstar-1");
    put.l7 = Some(L7 {
        method: "PUT".to_owned(),
        path: "/v1/exhaust-port".to_owned(),
        status: 403,
        ..L7::default()
    });
    v.add(put);
    // Capture and trace records are no verdict: the table has them, the map does not.
    v.add(ev("capture", None, "tiefighter", "deathstar-1"));
    let m = v.map();
    assert_eq!(m.events, 5);
    let ids: Vec<&str> = m.nodes.iter().map(|n| n.peer.id.as_str()).collect();
    assert_eq!(
        ids,
        ["default/deathstar", "default/tiefighter", "default/xwing"]
    );
    let deathstar = &m.nodes[0];
    assert_eq!(
        deathstar.pods,
        ["default/deathstar-1", "default/deathstar-2"]
    );
    let edge = |src: &str| {
        m.edges
            .iter()
            .find(|e| e.src.label == src && e.dst.label == "deathstar")
            .unwrap()
    };
    let x = edge("xwing");
    assert_eq!((x.allowed, x.denied), (0, 2));
    assert_eq!(x.reasons["policy-denied (drop to-container)"], 2);
    assert_eq!(x.ports, [80]);
    let t = edge("tiefighter");
    assert_eq!((t.allowed, t.denied, t.denied_l7), (1, 1, 1));
    assert!(
        t.reasons
            .contains_key("L7 PUT /v1/exhaust-port: no rule allows it (403)"),
        "{:?}",
        t.reasons
    );
    let (flows, matched) = v.flows(|_| true, 2);
    assert_eq!(matched, 5);
    assert_eq!(flows[0].kind, "capture", "newest first");
}

#[test]
fn peers_without_a_pod_are_named_by_identity_or_address() {
    assert_eq!(peer(None, Some("1.2.3.4:80"), 2).id, "reserved:world");
    assert_eq!(peer(None, Some("10.0.0.1:80"), 300).id, "ip:10.0.0.1");
    assert_eq!(peer(None, Some("[fd00::1]:80"), 300).label, "fd00::1");
    assert_eq!(peer(None, None, 300).id, "identity:300");
    assert_eq!(peer(Some("ns/db-0"), None, 300).id, "ns/db");
}

#[test]
fn both_tables_stay_bounded() {
    let mut v = View::new(Limits { flows: 3, edges: 2 });
    for i in 0..10 {
        v.add(ev(
            "policy-verdict",
            Some("allowed"),
            &format!("client{i}x"),
            "server",
        ));
    }
    v.add(Event::lost("n1", 7, "slow-subscriber"));
    v.missed(3);
    let m = v.map();
    assert_eq!(m.edges.len(), 2);
    // The most recent edges stay; a peer no edge names is gone.
    let srcs: Vec<&str> = m.edges.iter().map(|e| e.src.label.as_str()).collect();
    assert!(
        srcs.contains(&"client9x") && srcs.contains(&"client8x"),
        "{srcs:?}"
    );
    assert_eq!(m.nodes.len(), 3);
    assert_eq!(m.lost, 10);
    let (flows, matched) = v.flows(|_| true, 100);
    assert_eq!((flows.len(), matched), (3, 3));
    assert_eq!(flows[0].kind, TYPE_LOST);
}

#[test]
fn the_destination_decides_the_colour_and_identities_find_their_workload() {
    let mut v = View::new(Limits::default());
    // The xwing's own egress allows its connect; the deathstar's node drops it.
    let mut connect = ev("policy-verdict", Some("allowed"), "xwing", "deathstar-2");
    connect.program = "connect4".to_owned();
    // A connect has no source address yet: only the identity names the xwing.
    connect.src_pod = None;
    connect.src_identity = 259;
    let mut out = ev("policy-verdict", Some("allowed"), "xwing", "deathstar-2");
    out.program = "from-container".to_owned();
    out.src_identity = 259;
    v.add(connect);
    v.add(out);
    v.add(ev("drop", Some("denied"), "xwing", "deathstar-2"));
    // Towards the world nothing decides on the way in: the way out stands.
    let mut world = ev("policy-verdict", Some("allowed"), "xwing", "x");
    world.program = "connect4".to_owned();
    world.dst_pod = None;
    world.dst_identity = 2;
    v.add(world);
    let m = v.map();
    let x = m.edges.iter().find(|e| e.dst.label == "deathstar").unwrap();
    assert_eq!(x.src.id, "default/xwing", "{m:?}");
    assert_eq!((x.allowed, x.allowed_out, x.denied), (0, 2, 1));
    let w = m.edges.iter().find(|e| e.dst.label == "world").unwrap();
    assert_eq!((w.allowed, w.denied), (1, 0));
    assert_eq!(m.edges.len(), 2, "{m:?}");
    assert!(!m.nodes.iter().any(|n| n.peer.id.starts_with("identity:")));
}
