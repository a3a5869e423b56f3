use super::*;

fn full() -> Event {
    Event {
        node: "node-1".into(),
        time: "2026-12-07T17:00:00.000000001Z".into(),
        kind: "l7".into(),
        program: "sidecar".into(),
        proto: 6,
        verdict: Some("denied".into()),
        reason: "policy-denied".into(),
        src_identity: 7,
        dst_identity: 9,
        src: Some("10.0.1.5:41000".into()),
        dst: Some("10.0.2.7:80".into()),
        to: Some("127.0.0.1:15006".into()),
        src_pod: Some("default/xwing".into()),
        dst_pod: Some("default/deathstar-1".into()),
        revision: 3,
        cookie: 99,
        count: 1,
        l7: Some(L7 {
            direction: "ingress".into(),
            protocol: "HTTP/1.1".into(),
            method: "PUT".into(),
            path: "/v1/exhaust-port".into(),
            host: Some("deathstar".into()),
            status: 403,
            rule: Some("default/rule1 spec.ingress[0]".into()),
            peer_spiffe_id: Some("spiffe://cluster.local/ns/default/sa/xwing".into()),
        }),
    }
}

#[test]
fn every_field_survives_the_wire() {
    let e = full();
    assert_eq!(decode(encode(&e)), e);
    let bare = Event {
        kind: "trace".into(),
        ..Event::default()
    };
    assert_eq!(decode(encode(&bare)), bare);
}

fn filter(f: proto::Filter) -> Filter {
    Filter::new(&f).unwrap()
}

#[test]
fn filters_match_either_side_and_all_lists() {
    let e = full();
    let yes = [
        proto::Filter::default(),
        proto::Filter {
            pod: vec!["xwing".into()],
            ..Default::default()
        },
        proto::Filter {
            pod: vec!["default/deathstar-1".into(), "nothing".into()],
            namespace: vec!["default".into()],
            ..Default::default()
        },
        proto::Filter {
            identity: vec![9],
            verdict: vec!["denied".into()],
            r#type: vec!["l7".into()],
            port: vec![80],
            http_method: vec!["put".into()],
            http_path: vec!["^/v1/exhaust".into()],
            node: vec!["node-1".into()],
            ..Default::default()
        },
    ];
    for f in yes {
        assert!(filter(f.clone()).matches(&e), "{f:?}");
    }
    let no = [
        proto::Filter {
            pod: vec!["deathstar".into()],
            ..Default::default()
        },
        proto::Filter {
            namespace: vec!["kube-system".into()],
            ..Default::default()
        },
        proto::Filter {
            identity: vec![8],
            ..Default::default()
        },
        proto::Filter {
            verdict: vec!["allowed".into()],
            ..Default::default()
        },
        proto::Filter {
            port: vec![443, 70000],
            ..Default::default()
        },
        proto::Filter {
            http_method: vec!["GET".into()],
            ..Default::default()
        },
        proto::Filter {
            http_path: vec!["^/v2".into()],
            ..Default::default()
        },
        proto::Filter {
            r#type: vec!["drop".into()],
            ..Default::default()
        },
    ];
    for f in no {
        assert!(!filter(f.clone()).matches(&e), "{f:?}");
    }
}

#[test]
fn node_status_passes_content_filters_but_not_a_type_filter() {
    let s = Event {
        kind: TYPE_NODE_STATUS.into(),
        node: "node-2".into(),
        reason: "gone: connection refused".into(),
        ..Event::default()
    };
    let f = filter(proto::Filter {
        pod: vec!["xwing".into()],
        ..Default::default()
    });
    assert!(f.matches(&s));
    let f = filter(proto::Filter {
        r#type: vec!["drop".into()],
        ..Default::default()
    });
    assert!(!f.matches(&s));
}

#[test]
fn a_bad_filter_is_refused_with_its_value() {
    let e = Filter::new(&proto::Filter {
        http_path: vec!["a)(".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("\"a)(\""), "{e}");
    let e = Filter::new(&proto::Filter {
        verdict: vec!["maybe".into()],
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("maybe"), "{e}");
}
