use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status;

use super::*;
use crate::proto::NetworkPolicyHosts;
use crate::resource::{Resource, CLUSTER, NETWORK_POLICY_HOSTS};
use crate::snapshot::{Snapshot, SnapshotBuilder};

fn snap(hosts: &[(u64, &str)]) -> Arc<Snapshot> {
    let mut b = SnapshotBuilder::new();
    for (id, ip) in hosts {
        let h = NetworkPolicyHosts {
            policy: *id,
            host_addresses: vec![ip.to_string()],
        };
        b.add(Resource::new(NETWORK_POLICY_HOSTS, id.to_string(), &h));
    }
    Arc::new(b.build().unwrap())
}

/// The identities a SotW NPHDS response carries.
fn ids(resp: &crate::wire::SotwResponse) -> Vec<u64> {
    use prost::Message;
    resp.resources
        .iter()
        .map(|a| {
            NetworkPolicyHosts::decode(a.value.as_slice())
                .unwrap()
                .policy
        })
        .collect()
}

fn req(names: &[&str], version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| Status {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

#[test]
fn sotw_ack_nack_stale_and_one_in_flight() {
    let mut s = SotwStream::new(None);
    let s1 = snap(&[(256, "10.0.0.1"), (257, "10.0.0.2")]);
    // No snapshot yet: the request is recorded, nothing is sent.
    assert!(s
        .on_request(&req(&[], "", "", None))
        .unwrap()
        .responses
        .is_empty());
    let step = s.on_snapshot(s1.clone());
    assert_eq!(step.responses.len(), 1);
    let (sent, resp) = &step.responses[0];
    assert_eq!(resp.resources.len(), 2, "wildcard gets everything");
    assert_eq!(resp.version_info, s1.type_version(NETWORK_POLICY_HOSTS));
    let (v1, n1) = (sent.version.clone(), sent.nonce.clone());

    // A newer snapshot while the first response is in flight waits.
    let s2 = snap(&[(256, "10.0.0.1")]);
    assert!(s.on_snapshot(s2.clone()).responses.is_empty());
    // ACK of the first: the queued snapshot goes out, 257 removed by omission.
    let step = s.on_request(&req(&[], &v1, &n1, None)).unwrap();
    assert_eq!(
        step.outcomes,
        vec![Outcome::Ack {
            type_url: NETWORK_POLICY_HOSTS.into(),
            version: v1.clone(),
            nonce: n1.clone()
        }]
    );
    assert_eq!(step.responses.len(), 1);
    assert_eq!(step.responses[0].1.resources.len(), 1);
    let (v2, n2) = (
        step.responses[0].0.version.clone(),
        step.responses[0].0.nonce.clone(),
    );
    assert_ne!(n1, n2);

    // A stale request (old nonce) is ignored entirely.
    let step = s.on_request(&req(&["256"], &v1, &n1, None)).unwrap();
    assert!(matches!(step.outcomes[..], [Outcome::Stale { .. }]));
    assert!(step.responses.is_empty());

    // NACK of v2: recorded with the client's error; v2 is not resent.
    let step = s
        .on_request(&req(&[], &v1, &n2, Some("bad regex")))
        .unwrap();
    assert_eq!(
        step.outcomes,
        vec![Outcome::Nack {
            type_url: NETWORK_POLICY_HOSTS.into(),
            version: v2.clone(),
            nonce: n2.clone(),
            error: "bad regex".into()
        }]
    );
    assert!(step.responses.is_empty());
    assert!(s.on_snapshot(s2).responses.is_empty());
    let st = &s.status()[NETWORK_POLICY_HOSTS];
    assert_eq!(st.acked_version.as_deref(), Some(v1.as_str()));
    assert_eq!(st.nacked_version.as_deref(), Some(v2.as_str()));
    // A fixed snapshot is sent.
    let s3 = snap(&[(256, "10.0.0.9")]);
    assert_eq!(s.on_snapshot(s3).responses.len(), 1);
}

#[test]
fn sotw_named_subscriptions_and_type_checks() {
    let mut s = SotwStream::new(Some(NETWORK_POLICY_HOSTS));
    s.on_snapshot(snap(&[(256, "a"), (257, "b")]));
    let mut r = req(&["257", "999"], "", "", None);
    r.type_url.clear(); // single-type services may omit it
    let step = s.on_request(&r).unwrap();
    let (sent, resp) = &step.responses[0];
    assert_eq!(ids(resp), vec![257], "only existing named resources");
    assert_eq!(sent.resources, 1);
    assert_eq!(resp.resources.len(), 1);
    // Adding a name re-sends at the same version once ACKed.
    let ack = req(&["256", "257"], &sent.version, &sent.nonce, None);
    let step = s.on_request(&ack).unwrap();
    assert_eq!(ids(&step.responses[0].1), vec![256, 257]);

    let mut wrong = req(&[], "", "", None);
    wrong.type_url = CLUSTER.into();
    assert!(matches!(
        s.on_request(&wrong),
        Err(StreamError::WrongType { .. })
    ));
    let mut ads = SotwStream::new(None);
    let mut none = req(&[], "", "", None);
    none.type_url.clear();
    assert_eq!(
        ads.on_request(&none).unwrap_err(),
        StreamError::MissingTypeUrl
    );
}

#[test]
fn unknown_types_are_refused_and_leave_no_state() {
    let mut s = SotwStream::new(None);
    let mut r = req(&[], "", "", None);
    r.type_url = "type.googleapis.com/no.Such".into();
    let e = s.on_request(&r).unwrap_err();
    assert_eq!(e.reason(), "unknown_type");
    assert!(
        e.to_string()
            .contains("\"type.googleapis.com/no.Such\" is not served"),
        "{e}"
    );
    assert!(s.status().is_empty(), "nothing kept for the type");
    let mut d = DeltaStream::new(None);
    let dr = DeltaDiscoveryRequest {
        type_url: "x".repeat(10_000),
        ..Default::default()
    };
    let e = d.on_request(&dr).unwrap_err();
    assert!(e.to_string().len() < 1_000, "the type URL is cut: {e}");
    assert!(d.subscriptions().is_empty());
}

#[test]
fn nack_text_is_cut_with_a_marker_and_names_are_bounded() {
    let limits = StreamLimits {
        max_names_per_type: 3,
        max_text_bytes: 16,
        max_node_id_bytes: 8,
    };
    let mut s = SotwStream::new(None).with_limits(limits);
    s.on_snapshot(snap(&[(256, "a")]));
    let step = s.on_request(&req(&[], "", "", None)).unwrap();
    let sent = step.responses[0].0.clone();
    let long = "é".repeat(1000); // 2000 bytes, cut on a character boundary
    let step = s
        .on_request(&req(&[], "", &sent.nonce, Some(&long)))
        .unwrap();
    let Outcome::Nack { error, .. } = &step.outcomes[0] else {
        panic!("{:?}", step.outcomes)
    };
    assert_eq!(
        error,
        &format!("{}... [1984 more bytes cut]", "é".repeat(8))
    );
    assert_eq!(
        s.on_request(&req(&["1", "2", "3", "4"], "", "", None))
            .unwrap_err()
            .reason(),
        "too_many_names"
    );
    // Delta subscriptions accumulate: the sum is bounded.
    let mut d = DeltaStream::new(None).with_limits(limits);
    let sub = |names: &[&str]| DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    d.on_request(&sub(&["1", "2"])).unwrap();
    d.on_request(&sub(&["3"])).unwrap();
    assert_eq!(
        d.on_request(&sub(&["4"])).unwrap_err().reason(),
        "too_many_names"
    );
    assert_eq!(
        d.subscriptions()[NETWORK_POLICY_HOSTS],
        Subscription::Names(["1", "2", "3"].iter().map(|n| n.to_string()).collect())
    );
    assert!(check_node_id("12345678", &limits).is_ok());
    assert_eq!(
        check_node_id("123456789", &limits).unwrap_err().to_string(),
        "node.id is 9 bytes, longer than the 8 allowed"
    );
}

#[test]
fn delta_sends_changes_and_removals_and_honours_nack() {
    let mut d = DeltaStream::new(None);
    d.on_snapshot(snap(&[(256, "a"), (257, "b")]));
    let r = DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        ..Default::default()
    };
    let step = d.on_request(&r).unwrap();
    let (sent, resp) = &step.responses[0];
    assert_eq!(resp.resources.len(), 2);
    let ack = DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        response_nonce: sent.nonce.clone(),
        ..Default::default()
    };
    let step = d.on_request(&ack).unwrap();
    assert!(matches!(step.outcomes[..], [Outcome::Ack { .. }]));
    assert!(step.responses.is_empty(), "nothing changed");

    // 256 changes, 257 goes away: only the difference is sent.
    let step = d.on_snapshot(snap(&[(256, "c")]));
    let (sent, resp) = &step.responses[0];
    assert_eq!(sent.resources, 1);
    let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["256"]);
    assert_eq!(resp.removed_resources, vec!["257".to_string()]);
    // NACK: the client keeps its old state, and the same content is not resent.
    let nack = DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        response_nonce: sent.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "no".into(),
            details: vec![],
        }),
        ..Default::default()
    };
    let step = d.on_request(&nack).unwrap();
    assert!(matches!(step.outcomes[..], [Outcome::Nack { .. }]));
    assert!(step.responses.is_empty());
    // Restoring the original content: nothing to send, the client has it.
    assert!(d
        .on_snapshot(snap(&[(256, "a"), (257, "b")]))
        .responses
        .is_empty());
}

#[test]
fn a_slow_client_gets_the_latest_version_never_a_stale_one() {
    // SotW: three snapshots while the first response is unACKed.
    let mut s = SotwStream::new(None);
    s.on_request(&req(&[], "", "", None)).unwrap();
    let s1 = snap(&[(256, "10.0.0.1")]);
    let step = s.on_snapshot(s1.clone());
    let (sent1, _) = &step.responses[0];
    let (v1, n1) = (sent1.version.clone(), sent1.nonce.clone());
    let s2 = snap(&[(256, "10.0.0.2")]);
    let s3 = snap(&[(256, "10.0.0.3")]);
    assert!(s.on_snapshot(s2.clone()).responses.is_empty());
    assert!(s.on_snapshot(s3.clone()).responses.is_empty());
    // The ACK of the first brings the newest, skipping the one in between.
    let step = s.on_request(&req(&[], &v1, &n1, None)).unwrap();
    assert_eq!(step.responses.len(), 1);
    let (sent3, resp3) = &step.responses[0];
    assert_eq!(resp3.version_info, s3.type_version(NETWORK_POLICY_HOSTS));
    assert_ne!(resp3.version_info, s2.type_version(NETWORK_POLICY_HOSTS));
    // Its ACK settles the stream; a late duplicate of the old ACK is stale and
    // brings nothing (in particular not s2).
    let step = s
        .on_request(&req(&[], &sent3.version, &sent3.nonce, None))
        .unwrap();
    assert!(step.responses.is_empty());
    let step = s.on_request(&req(&[], &v1, &n1, None)).unwrap();
    assert!(matches!(step.outcomes[..], [Outcome::Stale { .. }]));
    assert!(step.responses.is_empty());
    assert_eq!(
        s.status()[NETWORK_POLICY_HOSTS].acked_version.as_deref(),
        Some(sent3.version.as_str())
    );

    // Delta: the same, and the coalesced response is the difference from what
    // the client ACKed (s1) to the newest (s3), with s2's removal folded in.
    let mut d = DeltaStream::new(None);
    d.on_snapshot(snap(&[(256, "10.0.0.1"), (257, "10.0.0.7")]));
    let first = DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        ..Default::default()
    };
    let step = d.on_request(&first).unwrap();
    let nonce1 = step.responses[0].0.nonce.clone();
    assert!(d
        .on_snapshot(snap(&[(256, "10.0.0.2")]))
        .responses
        .is_empty());
    assert!(d
        .on_snapshot(snap(&[(256, "10.0.0.3"), (258, "10.0.0.8")]))
        .responses
        .is_empty());
    let ack = |nonce: &str| DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    let step = d.on_request(&ack(&nonce1)).unwrap();
    let (sent, resp) = &step.responses[0];
    let mut names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["256", "258"]);
    assert_eq!(resp.removed_resources, ["257"]);
    let hosts = hosts_of(&resp.resources[0].resource);
    assert_eq!(hosts.host_addresses, ["10.0.0.3"], "the newest content");
    let step = d.on_request(&ack(&sent.nonce)).unwrap();
    assert!(step.responses.is_empty());
    let step = d.on_request(&ack(&nonce1)).unwrap();
    assert!(matches!(step.outcomes[..], [Outcome::Stale { .. }]));
    assert!(step.responses.is_empty());
}

fn hosts_of(a: &envoy_types::pb::google::protobuf::Any) -> NetworkPolicyHosts {
    use prost::Message;
    NetworkPolicyHosts::decode(a.value.as_slice()).unwrap()
}

#[test]
fn the_generation_moves_with_the_subscriptions_and_not_with_acks() {
    // SotW: a new type and a changed subscription move it; an ACK does not.
    let mut s = SotwStream::new(None);
    let g0 = s.generation();
    s.on_snapshot(snap(&[(256, "10.0.0.1")]));
    let step = s.on_request(&req(&[], "", "", None)).unwrap();
    let g1 = s.generation();
    assert_ne!(g0, g1, "a new type");
    let (sent, _) = &step.responses[0];
    s.on_request(&req(&[], &sent.version, &sent.nonce, None))
        .unwrap();
    assert_eq!(s.generation(), g1, "an ACK changes no subscription");
    s.on_request(&req(&["256"], &sent.version, &sent.nonce, None))
        .unwrap();
    assert_ne!(s.generation(), g1, "wildcard → one name");
    assert_eq!(
        s.status()[NETWORK_POLICY_HOSTS].subscription,
        Subscription::Names(["256".to_string()].into())
    );

    // Delta: likewise.
    let mut d = DeltaStream::new(None);
    let dreq = |sub: &[&str], nonce: &str| DeltaDiscoveryRequest {
        type_url: NETWORK_POLICY_HOSTS.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    d.on_snapshot(snap(&[(256, "10.0.0.1")]));
    let g0 = d.generation();
    let step = d.on_request(&dreq(&[], "")).unwrap();
    let g1 = d.generation();
    assert_ne!(g0, g1, "a new type");
    d.on_request(&dreq(&[], &step.responses[0].0.nonce))
        .unwrap();
    assert_eq!(d.generation(), g1, "an ACK changes no subscription");
    d.on_request(&dreq(&["257"], "")).unwrap();
    assert_ne!(d.generation(), g1, "a name subscribed");
}
