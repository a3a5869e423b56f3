//! The session state machine: a new control plane's first NPDS and NPHDS go in force
//! together (in either order), later updates one at a time, and rejected updates are
//! NACKed with the last good version while it stays in force.

use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use membrane_api::proto::{
    port_network_policy_rule::L7, HttpNetworkPolicyRule, HttpNetworkPolicyRules, PortNetworkPolicy,
    PortNetworkPolicyRule,
};

use super::*;
use crate::policy::{Decision, Direction};

const PEER: &str = "10.0.0.3";
const OTHER: &str = "10.0.0.4";

fn target() -> Target {
    Target {
        pod_ip: "10.0.0.1".parse().unwrap(),
        address: "http://xds:15010".into(),
        node_id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
    }
}

/// The endpoint's NPDS: port 80 open to identity `allowed`; `bad` adds an HTTP rule the
/// proxy refuses (a path that is not one regular expression).
fn npds(version: &str, nonce: &str, allowed: u32, bad: bool) -> DiscoveryResponse {
    let l7 = bad.then(|| {
        L7::HttpRules(HttpNetworkPolicyRules {
            http_rules: vec![HttpNetworkPolicyRule {
                headers: vec![HeaderMatcher {
                    name: ":path".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                                regex: "/public)|(.*".into(),
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                header_matches: vec![],
            }],
        })
    });
    let np = NetworkPolicy {
        endpoint_ips: vec!["10.0.0.1".into()],
        endpoint_id: 1,
        ingress_per_port_policies: vec![PortNetworkPolicy {
            port: 80,
            end_port: 0,
            protocol: 0,
            rules: vec![PortNetworkPolicyRule {
                remote_policies: vec![allowed],
                l7,
                ..Default::default()
            }],
        }],
        egress_per_port_policies: vec![],
    };
    response(Kind::Npds, version, nonce, vec![np.encode_to_vec()])
}

/// NPHDS: the endpoint itself as 300, and each (identity, address).
fn nphds(version: &str, nonce: &str, ids: &[(u32, &str)]) -> DiscoveryResponse {
    let mut all = vec![(300, "10.0.0.1")];
    all.extend_from_slice(ids);
    let bodies = all
        .iter()
        .map(|(id, ip)| {
            NetworkPolicyHosts {
                policy: u64::from(*id),
                host_addresses: vec![(*ip).into()],
            }
            .encode_to_vec()
        })
        .collect();
    response(Kind::Nphds, version, nonce, bodies)
}

fn response(kind: Kind, version: &str, nonce: &str, bodies: Vec<Vec<u8>>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        nonce: nonce.into(),
        type_url: kind.type_url().into(),
        resources: bodies
            .into_iter()
            .map(|value| Any {
                type_url: kind.type_url().into(),
                value,
            })
            .collect(),
        ..Default::default()
    }
}

fn allows(e: &Enforcer, ip: &str) -> bool {
    let c = e
        .check_l4(ip.parse().unwrap(), Direction::Ingress, 80)
        .expect("an L4 port");
    matches!(c.decision, Decision::Allow { .. })
}

/// (kind, version echoed, nonce, NACK?) of each reply, NPDS first.
fn replies(step: &Step) -> Vec<(Kind, String, String, bool)> {
    let mut out: Vec<_> = step
        .replies
        .iter()
        .map(|(k, r)| {
            (
                *k,
                r.version_info.clone(),
                r.response_nonce.clone(),
                r.error_detail.is_some(),
            )
        })
        .collect();
    out.sort_by_key(|r| r.0 == Kind::Nphds);
    out
}

fn rep(kind: Kind, version: &str, nonce: &str, nack: bool) -> (Kind, String, String, bool) {
    (kind, version.into(), nonce.into(), nack)
}

/// What a first session put in force: versions p1/h1, the peer is identity 100 and
/// allowed, the other address is 200.
fn in_force() -> Accepted {
    let mut a = Accepted::default();
    let mut s = Session::default();
    let t = target();
    let held = s.on_response(&mut a, &t, Kind::Npds, &npds("p1", "1", 100, false));
    assert!(held.enforce.is_none() && held.replies.is_empty());
    let hosts = nphds("h1", "1", &[(100, PEER), (200, OTHER)]);
    let step = s.on_response(&mut a, &t, Kind::Nphds, &hosts);
    let e = step.enforce.as_ref().expect("the pair in force");
    assert!(step.became_ready);
    assert!(allows(e, PEER) && !allows(e, OTHER));
    a
}

#[test]
fn a_new_control_planes_first_npds_and_nphds_go_in_force_together_in_either_order() {
    // The restarted control plane numbers the peer 200 and the other address 100: either
    // half beside the old other half would let the other address in.
    for npds_first in [true, false] {
        let mut a = in_force();
        let mut s = Session::default();
        let t = target();
        let p = npds("p2", "7", 200, false);
        let h = nphds("h2", "9", &[(200, PEER), (100, OTHER)]);
        let (first, second) = match npds_first {
            true => ((Kind::Npds, &p), (Kind::Nphds, &h)),
            false => ((Kind::Nphds, &h), (Kind::Npds, &p)),
        };
        let held = s.on_response(&mut a, &t, first.0, first.1);
        assert!(held.enforce.is_none() && held.replies.is_empty());
        assert_eq!(a.version(Kind::Npds), Some("p1"), "the last good stays");
        assert_eq!(a.version(Kind::Nphds), Some("h1"));
        let step = s.on_response(&mut a, &t, second.0, second.1);
        let e = step.enforce.as_ref().expect("the pair in force");
        assert!(allows(e, PEER) && !allows(e, OTHER));
        assert!(!step.became_ready, "it was ready before");
        assert_eq!(
            replies(&step),
            [
                rep(Kind::Npds, "p2", "7", false),
                rep(Kind::Nphds, "h2", "9", false)
            ]
        );
        assert_eq!(e.summary()["npds_version"], "p2");
        assert_eq!(e.summary()["nphds_version"], "h2");

        // Synced: a later update of one type goes in force on its own, at once.
        let step = s.on_response(&mut a, &t, Kind::Nphds, &nphds("h3", "10", &[(200, OTHER)]));
        let e = step.enforce.as_ref().expect("in force at once");
        assert!(allows(e, OTHER) && !allows(e, PEER));
        assert_eq!(replies(&step), [rep(Kind::Nphds, "h3", "10", false)]);
    }
}

#[test]
fn a_rejected_first_npds_is_nacked_and_the_held_hosts_wait_for_one_that_builds() {
    let mut a = in_force();
    let mut s = Session::default();
    let t = target();
    let held = s.on_response(&mut a, &t, Kind::Nphds, &nphds("h2", "1", &[(200, PEER)]));
    assert!(held.replies.is_empty());
    let step = s.on_response(&mut a, &t, Kind::Npds, &npds("bad", "2", 200, true));
    assert!(
        step.enforce.is_none(),
        "nothing of a rejected pair goes in force"
    );
    assert!(step.rejected.is_some());
    assert_eq!(
        replies(&step),
        [rep(Kind::Npds, "p1", "2", true)],
        "NACKed with the last good version; the hosts are not answered yet"
    );
    assert_eq!(a.version(Kind::Nphds), Some("h1"));
    let step = s.on_response(&mut a, &t, Kind::Npds, &npds("p2", "3", 200, false));
    let e = step.enforce.as_ref().expect("the pair in force");
    assert!(allows(e, PEER) && !allows(e, OTHER));
    assert_eq!(
        replies(&step),
        [
            rep(Kind::Npds, "p2", "3", false),
            rep(Kind::Nphds, "h2", "1", false)
        ]
    );
}

#[test]
fn undecodable_updates_are_nacked_at_once_and_change_nothing() {
    let mut a = in_force();
    let mut s = Session::default();
    let t = target();
    let mut garbage = npds("p9", "4", 100, false);
    garbage.resources[0].value = vec![0xff; 3];
    let step = s.on_response(&mut a, &t, Kind::Npds, &garbage);
    assert!(step.enforce.is_none());
    assert_eq!(replies(&step), [rep(Kind::Npds, "p1", "4", true)]);
    let bad_hosts = nphds("h9", "5", &[(100, "not an address")]);
    let step = s.on_response(&mut a, &t, Kind::Nphds, &bad_hosts);
    assert!(step.enforce.is_none());
    assert_eq!(replies(&step), [rep(Kind::Nphds, "h1", "5", true)]);
    assert_eq!(
        (a.version(Kind::Npds), a.version(Kind::Nphds)),
        (Some("p1"), Some("h1"))
    );
}
