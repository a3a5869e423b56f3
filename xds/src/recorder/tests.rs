use super::*;
use crate::resource::NETWORK_POLICY;

#[test]
fn stale_report_names_the_nack_and_clears_on_ack() {
    let r = Recorder::new();
    let node = "sidecar~10.0.0.5~a.default~default.svc.cluster.local";
    r.connected(node, "c1", "127.0.0.1:1");
    r.watches(
        node,
        "c1",
        BTreeMap::from([(NETWORK_POLICY.to_string(), vec!["*".into()])]),
    );
    r.latest(
        node,
        &[(NETWORK_POLICY.to_string(), "v1".into())],
        SystemTime::now(),
    );
    let sent = |v: &str, n: &str| Sent {
        type_url: NETWORK_POLICY.into(),
        version: v.into(),
        nonce: n.into(),
        resources: 1,
        removed: 0,
    };
    r.sent(node, &sent("v1", "1"));
    let s = r.stale();
    assert_eq!(s.len(), 1);
    assert!(s[0].reason.contains("no ACK yet"), "{}", s[0].reason);
    r.outcome(
        node,
        &Outcome::Nack {
            type_url: NETWORK_POLICY.into(),
            version: "v1".into(),
            nonce: "1".into(),
            error: "invalid regex".into(),
        },
    );
    let s = r.stale();
    assert_eq!(s[0].nack_error.as_deref(), Some("invalid regex"));
    r.latest(
        node,
        &[(NETWORK_POLICY.to_string(), "v2".into())],
        SystemTime::now(),
    );
    r.sent(node, &sent("v2", "2"));
    r.outcome(
        node,
        &Outcome::Ack {
            type_url: NETWORK_POLICY.into(),
            version: "v2".into(),
            nonce: "2".into(),
        },
    );
    assert!(r.stale().is_empty());
    let rec = r.proxy(node).unwrap();
    assert_eq!(rec.types[NETWORK_POLICY].history.len(), 4);
    let text = r.metrics.encode();
    assert!(
        text.contains("membrane_xds_nacks_total{type=\"npds\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("membrane_xds_convergence_seconds_count{type=\"npds\"} 1"),
        "{text}"
    );
}

fn nack(t: &str, n: &str, error: &str) -> Outcome {
    Outcome::Nack {
        type_url: t.into(),
        version: "v1".into(),
        nonce: n.into(),
        error: error.into(),
    }
}

#[test]
fn records_are_bounded_cut_and_expire() {
    let limits = Limits {
        max_nodes: 3,
        events_per_node: 4,
        max_text_bytes: 100,
        disconnected_ttl: Duration::from_secs(60),
    };
    let r = Recorder::with_limits(limits);
    // Three proxies come and go, in order a, b, c; d is connected.
    for n in ["a", "b", "c"] {
        r.connected(n, "c1", "peer");
        r.disconnected(n, "c1");
    }
    r.connected("b", "c2", "peer"); // b is back: not evictable
    r.connected("d", "c1", "peer");
    let nodes =
        |r: &Recorder| -> Vec<String> { r.proxies().into_iter().map(|p| p.node_id).collect() };
    assert_eq!(nodes(&r), ["b", "c", "d"], "a (disconnected longest) went");
    r.connected("e", "c1", "peer");
    assert_eq!(nodes(&r), ["b", "d", "e"], "then c");
    // All connected now: a new proxy is served but not recorded.
    r.connected("f", "c1", "peer");
    assert!(r.proxy("f").is_none());
    let text = r.metrics.encode();
    assert!(
        text.contains("membrane_xds_recorder_evictions_total{reason=\"capacity\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("membrane_xds_recorder_evictions_total{reason=\"full\"} 1"),
        "{text}"
    );
    assert!(text.contains("membrane_xds_recorder_nodes 3"), "{text}");

    // Per proxy: at most 4 events over all types, the oldest go first;
    // NACK text is cut with a marker; unknown types leave no trace.
    for i in 0..5 {
        r.outcome(
            "d",
            &nack(NETWORK_POLICY, &i.to_string(), &"x".repeat(5000)),
        );
    }
    r.outcome("d", &nack("type.googleapis.com/evil", "9", "y"));
    let d = r.proxy("d").unwrap();
    assert_eq!(d.types.len(), 1, "{:?}", d.types.keys().collect::<Vec<_>>());
    let h = &d.types[NETWORK_POLICY].history;
    assert_eq!(h.len(), 4);
    let Event::Nack { nonce, error, .. } = &h[0] else {
        panic!("{h:?}")
    };
    assert_eq!(nonce, "1", "nonce 0 was the oldest");
    // Cut at the limit plus the room left for a marker the stream added.
    assert_eq!(
        error,
        &format!("{}... [4836 more bytes cut]", "x".repeat(164))
    );
    let last = d.types[NETWORK_POLICY].last_nack.as_ref().unwrap();
    assert_eq!(last.error.len(), error.len());

    // Disconnected records expire after the TTL; connected ones stay.
    r.disconnected("d", "c1");
    r.expire_at(Instant::now() + Duration::from_secs(61));
    assert_eq!(nodes(&r), ["b", "e"]);
    r.disconnected("b", "c2");
    r.disconnected("e", "c1");
    r.expire_at(Instant::now() + Duration::from_secs(61));
    assert!(nodes(&r).is_empty());
    assert!(r
        .metrics
        .encode()
        .contains("membrane_xds_recorder_evictions_total{reason=\"expired\"} 3"));
}
