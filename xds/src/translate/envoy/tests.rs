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
    let (map, hashes) = (BTreeMap::new(), std::collections::HashMap::new());
    let peers = Peers {
        map: &map,
        hashes: &hashes,
        version: "v",
    };
    cache.begin();
    let a = sidecar_inbound(&ep("10.0.0.1"), &np, &[], &peers, &mut cache, &mut vec![]).unwrap();
    let b = sidecar_inbound(&ep("10.0.0.2"), &np, &[], &peers, &mut cache, &mut vec![]).unwrap();
    cache.end();
    assert_eq!(cache.chains.len(), 1);
    let (la, lb): (Listener, Listener) = (a[0].decode().unwrap(), b[0].decode().unwrap());
    assert_eq!(la.filter_chains, lb.filter_chains);
    assert_ne!(la.address, lb.address);
    assert_eq!(lb.encode_to_vec(), b[0].body.value);
}

/// A port whose rule allows identity `from`, and one whose rule allows `world`.
fn two_ports(from: u32) -> NetworkPolicy {
    use crate::proto::{PortNetworkPolicy, PortNetworkPolicyRule};
    let port = |port: u32, remote: u32| PortNetworkPolicy {
        port,
        rules: vec![PortNetworkPolicyRule {
            remote_policies: vec![remote],
            ..Default::default()
        }],
        ..Default::default()
    };
    NetworkPolicy {
        ingress_per_port_policies: vec![port(80, from), port(81, WORLD)],
        ..Default::default()
    }
}

#[test]
fn listeners_are_kept_across_passes_until_what_their_chains_read_changes() {
    let ep = EndpointModel {
        id: "default/a".into(),
        pod: "a".into(),
        namespace: "default".into(),
        endpoint_id: 1,
        ips: vec!["10.0.0.1".into()],
        tcp_ports: vec![],
        named_ports: Default::default(),
        labels: Default::default(),
        zone: None,
    };
    let hosts = |extra: &str| -> BTreeMap<u64, Vec<String>> {
        [
            (1000, vec!["10.0.1.1".to_string()]),
            (1001, vec!["10.0.2.1".to_string(), extra.to_string()]),
        ]
        .into()
    };
    let hashes = |m: &BTreeMap<u64, Vec<String>>| -> std::collections::HashMap<u64, u64> {
        m.iter()
            .map(|(id, a)| (*id, crate::resource::content_hash(a.join(",").as_bytes())))
            .collect()
    };
    let mut cache = InboundCache::new();
    let mut built = Vec::new();
    let mut pass = |np: &NetworkPolicy, map: &BTreeMap<u64, Vec<String>>, built: &mut Vec<_>| {
        let h = hashes(map);
        let version = format!(
            "{:x}",
            crate::resource::content_hash(format!("{map:?}").as_bytes())
        );
        let peers = Peers {
            map,
            hashes: &h,
            version: &version,
        };
        cache.begin();
        let out = sidecar_inbound(&ep, np, &[], &peers, &mut cache, built).unwrap();
        cache.end();
        let listeners: BTreeMap<String, Resource> = out
            .into_iter()
            .filter(|r| r.body.type_url == LISTENER)
            .map(|r| (r.name.clone(), r))
            .collect();
        listeners
    };
    let same = |a: &Resource, b: &Resource| Arc::ptr_eq(&a.body, &b.body);
    let np = two_ports(1000);
    let first = pass(&np, &hosts("10.0.2.2"), &mut built);
    assert_eq!(first.len(), 2);
    // Nothing changed: both listeners are the very same resources.
    let again = pass(&np, &hosts("10.0.2.2"), &mut built);
    assert!(same(&first["inbound|80"], &again["inbound|80"]));
    assert!(same(&first["inbound|81"], &again["inbound|81"]));
    // Identity 1001 (not named on port 80) gains an address: port 80 is kept; port 81's
    // `world` is everything else, so it is rebuilt and no longer admits the address.
    let moved = pass(&np, &hosts("10.0.2.3"), &mut built);
    assert!(same(&first["inbound|80"], &moved["inbound|80"]));
    assert!(!same(&first["inbound|81"], &moved["inbound|81"]));
    assert_ne!(first["inbound|81"].hash, moved["inbound|81"].hash);
    // Port 80's rule names identity 1001 instead: rebuilt, with its addresses.
    let renamed = pass(&two_ports(1001), &hosts("10.0.2.3"), &mut built);
    assert!(!same(&moved["inbound|80"], &renamed["inbound|80"]));
    // (The addresses sit in the encoded RBAC config, nested bytes inside the listener.)
    let has = |r: &Resource, a: &str| r.body.value.windows(a.len()).any(|w| w == a.as_bytes());
    assert!(has(&renamed["inbound|80"], "10.0.2.3"));
    assert!(!has(&renamed["inbound|80"], "10.0.1.1"));
    assert!(has(&moved["inbound|80"], "10.0.1.1"));
    // Whatever was reused is what a cache that starts empty builds.
    let fresh = {
        let mut cache = InboundCache::new();
        let map = hosts("10.0.2.3");
        let h = hashes(&map);
        let peers = Peers {
            map: &map,
            hashes: &h,
            version: "other",
        };
        cache.begin();
        sidecar_inbound(&ep, &two_ports(1001), &[], &peers, &mut cache, &mut vec![]).unwrap()
    };
    for r in fresh.iter().filter(|r| r.body.type_url == LISTENER) {
        assert_eq!(r.body.value, renamed[&r.name].body.value, "{}", r.name);
    }
    // The chains no listener holds any more are dropped at the end of a pass.
    assert_eq!(
        cache.chains.len(),
        2,
        "port 80's and port 81's current chains"
    );
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
