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

#[test]
fn names_let_an_unnamed_end_match_but_never_rename_a_named_one() {
    // node-1's record of a connect to a pod of node-2: the agent could not name the server.
    let e = Event {
        src: Some("10.201.0.1:40000".into()),
        src_pod: Some("default/client".into()),
        dst: Some("10.202.0.2:9090".into()),
        kind: "policy-verdict".into(),
        ..Event::default()
    };
    let by_pod = |pod: &str, names: &[(&str, &str)]| proto::Filter {
        pod: vec![pod.into()],
        names: names
            .iter()
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .collect(),
        ..Default::default()
    };
    assert!(!filter(by_pod("server2", &[])).matches(&e));
    let named = [("10.202.0.2", "default/server2")];
    assert!(filter(by_pod("server2", &named)).matches(&e));
    assert!(filter(by_pod("default/server2", &named)).matches(&e));
    let ns = proto::Filter {
        namespace: vec!["prod".into()],
        names: [("10.202.0.2".to_owned(), "prod/db".to_owned())].into(),
        ..Default::default()
    };
    assert!(filter(ns).matches(&e), "the named end's namespace");
    // The writer's own name wins: an address reused by another pod does not rename it.
    let stale = [("10.201.0.1", "default/other")];
    assert!(!filter(by_pod("other", &stale)).matches(&e));
    // A bare address works as well as IP:PORT, IPv6 included.
    let v6 = Event {
        dst: Some("[fd00::2]:80".into()),
        ..Event::default()
    };
    assert!(filter(by_pod("server2", &[("fd00::2", "default/server2")])).matches(&v6));
    assert_eq!(end_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(end_ip("nowhere:80"), None);

    let f = filter(by_pod("server2", &[]));
    assert!(f.selects_pods() && f.picks("default/server2") && !f.picks("default/server"));
    let f = filter(proto::Filter {
        namespace: vec!["prod".into()],
        ..Default::default()
    });
    assert!(f.picks("prod/db") && !f.picks("default/db"));
    assert!(!filter(proto::Filter::default()).selects_pods());
}

#[test]
fn a_name_for_a_non_address_is_refused_naming_it() {
    let e = Filter::new(&proto::Filter {
        names: [("10.0.0.300".to_owned(), "default/x".to_owned())].into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("\"10.0.0.300\""), "{e}");
}
