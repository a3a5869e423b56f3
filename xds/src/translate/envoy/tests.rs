use envoy_types::pb::envoy::config::rbac::v3::{permission, principal, Permission, Principal};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;

use super::rbac::{any_principal, cidr, permissions, principals};
use super::*;
use crate::proto::port_network_policy_rule;

#[test]
fn sidecar_listeners_encode_as_prost_would_and_share_chains_by_policy() {
    let state = crate::source::dir::parse("sw.yaml", super::super::tests::STARWARS)
        .unwrap()
        .state;
    let out = super::super::Translator::new().translate(&state);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let snap = &out.snapshots["sidecar/default/deathstar-1"];
    let r = &snap.resources(LISTENER).unwrap().items["inbound|80"];
    let l: Listener = r.decode().unwrap();
    assert_eq!(l.name, "inbound|80");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.address.is_some());
    assert_eq!(
        l.encode_to_vec(),
        r.body.value,
        "the spliced encoding is prost's own"
    );
    assert_eq!(r.hash, crate::resource::content_hash(&r.body.value));

    // Two endpoints under one policy: the chains are built once, the
    // listeners differ only in their address.
    let np = NetworkPolicy::default();
    let ep = |ip: &str| EndpointModel {
        id: format!("default/{ip}"),
        pod: ip.into(),
        namespace: "default".into(),
        endpoint_id: 1,
        ips: vec![ip.into()],
        tcp_ports: vec![80],
        named_ports: Default::default(),
        labels: Default::default(),
        zone: None,
    };
    let mut cache = InboundCache::new();
    let a = sidecar_inbound(&ep("10.0.0.1"), &np, &BTreeMap::new(), &mut cache).unwrap();
    let b = sidecar_inbound(&ep("10.0.0.2"), &np, &BTreeMap::new(), &mut cache).unwrap();
    assert_eq!(cache.chains.len(), 1);
    let (la, lb): (Listener, Listener) = (a[0].decode().unwrap(), b[0].decode().unwrap());
    assert_eq!(la.filter_chains, lb.filter_chains);
    assert_ne!(la.address, lb.address);
    assert_eq!(lb.encode_to_vec(), b[0].body.value);
}

#[test]
fn a_header_match_against_a_secret_never_matches_in_rbac() {
    use crate::proto::{
        HeaderMatch, HttpNetworkPolicyRule, HttpNetworkPolicyRules, PortNetworkPolicyRule,
    };
    let rule = |value_sds_secret: &str| PortNetworkPolicyRule {
        l7: Some(port_network_policy_rule::L7::HttpRules(
            HttpNetworkPolicyRules {
                http_rules: vec![HttpNetworkPolicyRule {
                    headers: vec![],
                    header_matches: vec![HeaderMatch {
                        name: "x-token".into(),
                        value_sds_secret: value_sds_secret.into(),
                        ..Default::default()
                    }],
                }],
            },
        )),
        ..Default::default()
    };
    let never = Permission {
        rule: Some(permission::Rule::NotRule(Box::new(Permission {
            rule: Some(permission::Rule::Any(true)),
        }))),
    };
    let only = |p: Permission| match p.rule {
        Some(permission::Rule::OrRules(or)) => match &or.rules[..] {
            [Permission {
                rule: Some(permission::Rule::AndRules(and)),
            }] => and.rules.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    assert_eq!(only(permissions(&rule("default/tok"))), vec![never]);
    // Without a secret an empty value is a presence check.
    let present = only(permissions(&rule("")));
    assert!(
        matches!(&present[..], [Permission { rule: Some(permission::Rule::Header(h)) }]
            if h.header_match_specifier == Some(HeaderMatchSpecifier::PresentMatch(true))),
        "{present:?}"
    );
}

#[test]
fn principals_for_identities_without_addresses_match_nobody_and_stay_valid() {
    let none = BTreeMap::new();
    let nobody = Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(any_principal()))),
    };
    // Identity 1 (host) with no known address: nobody, not an empty OR.
    assert_eq!(principals(&[1], &none).unwrap(), nobody);
    // world with no other identity known: everyone ("not nobody").
    let world = principals(&[WORLD], &none).unwrap();
    assert_eq!(
        world,
        Principal {
            identifier: Some(principal::Identifier::OrIds(principal::Set {
                ids: vec![Principal {
                    identifier: Some(principal::Identifier::NotId(Box::new(nobody.clone()))),
                }],
            })),
        }
    );
    // An empty remote list means any remote.
    assert_eq!(principals(&[], &none).unwrap(), any_principal());
    let hosts = BTreeMap::from([(
        256u64,
        vec!["10.0.0.6".to_string(), "10.1.0.0/16".to_string()],
    )]);
    let p = format!("{:?}", principals(&[256], &hosts).unwrap());
    assert!(
        p.contains("10.0.0.6") && p.contains("value: 32") && p.contains("value: 16"),
        "{p}"
    );
    assert!(matches!(cidr("not-an-ip"), Err(TranslateError::Address(_))));
}
