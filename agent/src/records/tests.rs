use super::*;
use membrane_api::monitor::L7;

fn me() -> Attributed {
    Attributed {
        pod: "default/deathstar".into(),
        ips: vec!["10.0.0.10".parse().unwrap()],
        identity: 4242,
    }
}

fn table() -> Table {
    let mut t = Table::default();
    t.by_ip
        .insert("10.0.0.2".parse().unwrap(), "default/tiefighter".into());
    t.by_ip
        .insert("10.0.0.10".parse().unwrap(), "default/deathstar".into());
    t
}

fn record(direction: &str) -> Event {
    Event {
        kind: TYPE_L7.into(),
        verdict: Some("denied".into()),
        src: Some("10.0.0.2:40000".into()),
        dst: Some("10.0.0.10:80".into()),
        l7: Some(L7 {
            direction: direction.into(),
            method: "PUT".into(),
            path: "/v1/exhaust-port".into(),
            status: 403,
            ..L7::default()
        }),
        ..Event::default()
    }
}

#[test]
fn only_l7_records_with_a_verdict_and_a_direction_are_taken() {
    let ok = serde_json::to_vec(&record("ingress")).unwrap();
    assert!(parse(&ok).is_some());
    for bad in [
        Event {
            kind: "drop".into(),
            ..record("ingress")
        },
        Event {
            verdict: Some("maybe".into()),
            ..record("ingress")
        },
        Event {
            l7: None,
            ..record("ingress")
        },
        record("sideways"),
    ] {
        assert!(
            parse(&serde_json::to_vec(&bad).unwrap()).is_none(),
            "{bad:?}"
        );
    }
    assert!(parse(b"not json\n").is_none());
}

#[test]
fn the_senders_side_is_the_endpoint_whatever_the_record_claims() {
    let now = SystemTime::now();
    // A forged ingress record: it claims another pod and identity for its own side, a
    // pod for the peer this node does not know at that address, another node, and an
    // old time.
    let mut forged = record("ingress");
    forged.dst = Some("10.9.9.9:80".into());
    forged.dst_pod = Some("kube-system/victim".into());
    forged.dst_identity = 1;
    forged.src = Some("10.0.0.77:1".into());
    forged.src_pod = Some("default/somebody".into());
    forged.node = "other-node".into();
    forged.program = "sk_lookup".into();
    forged.time = "2001-01-01T00:00:00Z".into();
    let ev = attribute(forged, "node-1", &me(), &table(), now);
    assert_eq!(ev.dst_pod.as_deref(), Some("default/deathstar"));
    assert_eq!(ev.dst_identity, 4242);
    assert_eq!(
        ev.dst.as_deref(),
        Some("10.0.0.10:80"),
        "own address, port kept"
    );
    assert_eq!(ev.src_pod, None, "nobody on this node has 10.0.0.77");
    assert_eq!(ev.node, "node-1");
    assert_eq!(ev.program, "sidecar");
    assert_eq!(ev.time, monitor::rfc3339(now));

    // Egress: the source is the sender's; a loopback source becomes its address, and
    // the destination's pod is looked up on this node.
    let mut out = record("egress");
    out.src = Some("127.0.0.1:5555".into());
    out.dst = Some("10.0.0.2:8080".into());
    let t = monitor::rfc3339(now - Duration::from_millis(300));
    out.time = t.clone();
    let ev = attribute(out, "node-1", &me(), &table(), now);
    assert_eq!(ev.src.as_deref(), Some("10.0.0.10:5555"));
    assert_eq!(ev.src_pod.as_deref(), Some("default/deathstar"));
    assert_eq!(ev.src_identity, 4242);
    assert_eq!(ev.dst_pod.as_deref(), Some("default/tiefighter"));
    assert_eq!(ev.time, t, "a recent time of the sender's is kept");
}
