use super::*;
use crate::policy::{
    apply_header_actions, Decision, Direction, NoSecrets, RequestView, SecretResolver,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use membrane_api::proto::{
    header_match::{MatchAction, MismatchAction},
    port_network_policy_rule::{Verdict, L7},
    HeaderMatch, HttpNetworkPolicyRule, HttpNetworkPolicyRules, PortNetworkPolicy,
    PortNetworkPolicyRule, TlsContext,
};
use membrane_policy::rule::TlsSource;

/// `SocketAddress.Protocol::TCP`.
const TCP: i32 = 0;

fn re(name: &str, re: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                regex: re.into(),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn http(method: &str, path: &str) -> HttpNetworkPolicyRule {
    HttpNetworkPolicyRule {
        headers: vec![re(":method", method), re(":path", path)],
        header_matches: vec![],
    }
}

fn rule(
    remotes: &[u32],
    deny: bool,
    rules: Option<Vec<HttpNetworkPolicyRule>>,
) -> PortNetworkPolicyRule {
    PortNetworkPolicyRule {
        name: format!("r{remotes:?}{deny}"),
        remote_policies: remotes.to_vec(),
        verdict: deny.then_some(Verdict::Deny(true)),
        l7: rules.map(|r| L7::HttpRules(HttpNetworkPolicyRules { http_rules: r })),
        ..Default::default()
    }
}

fn port(port: u32, end_port: u32, rules: Vec<PortNetworkPolicyRule>) -> PortNetworkPolicy {
    PortNetworkPolicy {
        port,
        end_port,
        protocol: TCP,
        rules,
    }
}

fn enforcer(ports: Vec<PortNetworkPolicy>) -> Result<Enforcer, NpdsError> {
    let np = NetworkPolicy {
        endpoint_ips: vec!["10.0.0.1".into()],
        endpoint_id: 1,
        ingress_per_port_policies: ports,
        egress_per_port_policies: vec![],
    };
    let hosts = [
        NetworkPolicyHosts {
            policy: 100,
            host_addresses: vec!["10.0.0.3".into()],
        },
        NetworkPolicyHosts {
            policy: 200,
            host_addresses: vec!["10.0.0.4/32".into()],
        },
        NetworkPolicyHosts {
            policy: 300,
            host_addresses: vec!["10.0.0.1".into()],
        },
    ];
    build(
        "10.0.0.1".parse().unwrap(),
        &[np],
        &hosts,
        serde_json::json!({}),
    )
}

fn allowed(e: &Enforcer, from: &str, port: u16, method: &str, path: &str) -> bool {
    let headers = http::HeaderMap::new();
    let req = RequestView {
        method,
        path,
        host: None,
        headers: &headers,
        sni: None,
        peer_id: None,
        secrets: &NoSecrets,
    };
    let ip = from.parse().unwrap();
    let c = match e.check_l4(ip, Direction::Ingress, port) {
        Some(c) => c,
        None => e.check(ip, Direction::Ingress, port, &req),
    };
    assert_eq!(c.local_identity, 300);
    matches!(c.decision, Decision::Allow { .. })
}

#[test]
fn npds_rule_selection() {
    let e = enforcer(vec![
        port(
            80,
            0,
            vec![
                rule(
                    &[100],
                    false,
                    Some(vec![http("POST", "/v1/request-landing")]),
                ),
                rule(&[200], true, None),
            ],
        ),
        port(9000, 9010, vec![rule(&[], false, None)]),
        port(0, 0, vec![rule(&[200], false, None)]),
    ])
    .unwrap();
    let table = [
        // (from, port, method, path, allowed)
        ("10.0.0.3", 80, "POST", "/v1/request-landing", true),
        ("10.0.0.3", 80, "PUT", "/v1/exhaust-port", false),
        ("10.0.0.3", 80, "POST", "/v1/request-landing-x", false),
        // deny on 80 wins over the wildcard port's allow
        ("10.0.0.4", 80, "POST", "/v1/request-landing", false),
        // unknown peer: world, not in any set
        ("10.9.9.9", 80, "POST", "/v1/request-landing", false),
        // a range allows everyone at L4
        ("10.9.9.9", 9005, "GET", "/", true),
        ("10.9.9.9", 9011, "GET", "/", false),
        // the wildcard port
        ("10.0.0.4", 1234, "GET", "/", true),
        ("10.0.0.3", 1234, "GET", "/", false),
    ];
    for (from, p, m, path, want) in table {
        assert_eq!(
            allowed(&e, from, p, m, path),
            want,
            "{from} :{p} {m} {path}"
        );
    }
}

#[test]
fn npds_tls_contexts_and_server_names() {
    let mut terminate = rule(&[100], false, Some(vec![http("GET", "/.*")]));
    terminate.server_names = vec!["A.test".into()];
    terminate.downstream_tls_context = Some(TlsContext {
        tls_sds_secret: "shop/front".into(),
        ..Default::default()
    });
    terminate.upstream_tls_context = Some(TlsContext {
        trusted_ca: "PEM".into(),
        ..Default::default()
    });
    let mut sni_only = rule(&[], false, None);
    sni_only.server_names = vec!["b.test".into()];
    let e = enforcer(vec![
        port(443, 0, vec![terminate]),
        port(8443, 0, vec![sni_only]),
    ])
    .unwrap();
    let peer: IpAddr = "10.0.0.3".parse().unwrap();
    let plan = e
        .tls_plan(peer, Direction::Ingress, 443, Some("a.test"))
        .unwrap();
    assert!(plan.l4.is_none(), "HTTP rules decide per request");
    let tls = plan.tls.unwrap();
    assert_eq!(
        tls.terminating,
        Some(TlsSource::Secret {
            namespace: "shop".into(),
            name: "front".into(),
            certificate: None,
            private_key: None,
            trusted_ca: None,
        })
    );
    assert!(
        matches!(&tls.originating, Some(TlsSource::Inline { trusted_ca, .. }) if trusted_ca == "PEM")
    );
    // Another SNI: the rule does not apply, so nothing allows the peer.
    let plan = e
        .tls_plan(peer, Direction::Ingress, 443, Some("c.test"))
        .unwrap();
    assert!(matches!(plan.l4.unwrap().decision, Decision::Deny { .. }));
    // serverNames alone: an SNI check without termination.
    let verdict = |sni| {
        e.tls_plan("10.9.9.9".parse().unwrap(), Direction::Ingress, 8443, sni)
            .unwrap()
            .l4
            .unwrap()
            .decision
    };
    assert!(matches!(verdict(Some("b.test")), Decision::Allow { .. }));
    assert!(matches!(verdict(Some("a.test")), Decision::Deny { .. }));
    assert!(matches!(verdict(None), Decision::Deny { .. }));
    // Ports without TLS rules are not inspected.
    assert!(e.tls_plan(peer, Direction::Ingress, 80, None).is_none());
    // Unusable contexts are NACKed with the field named.
    let mut bad = rule(&[100], false, None);
    bad.downstream_tls_context = Some(TlsContext {
        certificate_chain: "PEM".into(),
        ..Default::default()
    });
    let msg = enforcer(vec![port(443, 0, vec![bad])])
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("rules[0].downstream_tls_context: a downstream TLS context needs both certificate_chain and private_key"), "{msg}");
    let mut bad = rule(&[100], false, None);
    bad.upstream_tls_context = Some(TlsContext {
        validation_context_sds_secret: "a/b/c".into(),
        ..Default::default()
    });
    let msg = enforcer(vec![port(443, 0, vec![bad])])
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(
            "upstream_tls_context.validation_context_sds_secret: \"a/b/c\" is not a secret name"
        ),
        "{msg}"
    );
}

#[test]
fn npds_header_match_with_a_secret() {
    use membrane_policy::http::{SecretData, SecretName};
    struct One(SecretName, &'static str);
    impl SecretResolver for One {
        fn secret(&self, name: &SecretName) -> Option<std::sync::Arc<SecretData>> {
            (*name == self.0).then(|| {
                std::sync::Arc::new(SecretData::from([(
                    "token".to_owned(),
                    self.1.as_bytes().to_vec(),
                )]))
            })
        }
    }
    let with_secret = |secret: &str, mismatch: MismatchAction| {
        let mut r = http("GET", "/.*");
        r.header_matches.push(HeaderMatch {
            name: "x-token".into(),
            value: String::new(),
            match_action: MatchAction::ContinueOnMatch as i32,
            mismatch_action: mismatch as i32,
            value_sds_secret: secret.into(),
        });
        enforcer(vec![port(80, 0, vec![rule(&[100], false, Some(vec![r]))])])
    };
    let e = with_secret("shop/api-token", MismatchAction::FailOnMismatch).unwrap();
    let store = One(
        SecretName {
            namespace: "shop".into(),
            name: "api-token".into(),
        },
        "s3cret",
    );
    let check = |e: &Enforcer, token: Option<&str>, secrets: &dyn SecretResolver| {
        let mut headers = http::HeaderMap::new();
        if let Some(t) = token {
            headers.insert("x-token", t.parse().unwrap());
        }
        let req = RequestView {
            method: "GET",
            path: "/",
            host: None,
            headers: &headers,
            sni: None,
            peer_id: None,
            secrets,
        };
        e.check("10.0.0.3".parse().unwrap(), Direction::Ingress, 80, &req)
            .decision
    };
    assert!(matches!(
        check(&e, Some("s3cret"), &store),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        check(&e, Some("guess"), &store),
        Decision::Deny { .. }
    ));
    assert!(matches!(check(&e, None, &store), Decision::Deny { .. }));
    // The secret gone: the match fails even with the old value.
    assert!(matches!(
        check(&e, Some("s3cret"), &NoSecrets),
        Decision::Deny { .. }
    ));
    // A bare name is in `default`.
    let e = with_secret("api-token", MismatchAction::FailOnMismatch).unwrap();
    assert!(matches!(
        check(&e, Some("s3cret"), &store),
        Decision::Deny { .. }
    ));
    // REPLACE puts the secret's value into the request.
    let e = with_secret("shop/api-token", MismatchAction::ReplaceOnMismatch).unwrap();
    let Decision::Allow { header_actions, .. } = check(&e, Some("guess"), &store) else {
        panic!("REPLACE allows")
    };
    let mut h = http::HeaderMap::new();
    h.insert("x-token", "guess".parse().unwrap());
    apply_header_actions(&mut h, &header_actions);
    assert_eq!(h.get_all("x-token").iter().collect::<Vec<_>>(), ["s3cret"]);
    let msg = with_secret("a/b/c", MismatchAction::FailOnMismatch)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains(
            "http_rules[0].header_matches[0].value_sds_secret: \"a/b/c\" is not a secret name"
        ),
        "{msg}"
    );
}

#[test]
fn no_policy_for_this_endpoint_denies_everything() {
    let e = build("10.0.0.9".parse().unwrap(), &[], &[], serde_json::json!({})).unwrap();
    let c = e
        .check_l4("10.0.0.3".parse().unwrap(), Direction::Ingress, 80)
        .unwrap();
    assert!(matches!(c.decision, Decision::Deny { .. }));
}

/// Kafka and generic L7 rules (membrane-xds sends them when its setting is
/// fail-closed) allow nothing here: the peer is denied on that port, and the
/// decision names the rule and why. An L4-only rule for the same peer and port
/// still allows; other peers and ports are unaffected.
#[test]
fn npds_unenforced_l7_rules_fail_closed() {
    let mut kafka = rule(&[100], false, None);
    kafka.name = "default/kafka spec.ingress[0]".into();
    kafka.l7 = Some(L7::KafkaRules(Default::default()));
    let mut redis = rule(&[100], false, None);
    redis.l7_proto = "redis".into();
    redis.l7 = Some(L7::L7Rules(Default::default()));
    let e = enforcer(vec![
        port(9092, 0, vec![kafka.clone()]),
        port(6379, 0, vec![redis]),
        port(80, 0, vec![rule(&[200], false, None)]),
    ])
    .expect("an update with Kafka and generic L7 rules is accepted");
    let c = e
        .check_l4("10.0.0.3".parse().unwrap(), Direction::Ingress, 9092)
        .expect("no HTTP rules on 9092: a connection verdict");
    match c.decision {
                Decision::Deny { decided_by } => assert!(
                    decided_by.starts_with("default/kafka spec.ingress[0]: kafka rules are not enforced by membrane: denied (fail closed"),
                    "{decided_by}"
                ),
                other => panic!("{other:?}"),
            }
    assert!(!allowed(&e, "10.0.0.3", 9092, "GET", "/"));
    assert!(!allowed(&e, "10.0.0.3", 6379, "GET", "/"));
    assert!(allowed(&e, "10.0.0.4", 80, "GET", "/"));
    assert!(!allowed(&e, "10.0.0.4", 9092, "GET", "/"));
    let merged = enforcer(vec![port(9092, 0, vec![kafka, rule(&[100], false, None)])]).unwrap();
    assert!(allowed(&merged, "10.0.0.3", 9092, "GET", "/"));
}

/// A regex that closes the user's group early (`a)|(.*`) would make the anchored
/// pattern match every path: the update is refused, naming the field.
#[test]
fn npds_regex_must_be_one_group() {
    let e = enforcer(vec![port(
        80,
        0,
        vec![rule(&[100], false, Some(vec![http("GET", "/public)|(.*")]))],
    )])
    .err()
    .expect("an unbalanced regex is refused")
    .to_string();
    assert!(
        e.contains("http_rules[0].path: \"/public)|(.*\" is not a valid RE2 regular expression"),
        "{e}"
    );
    // The anchored form membrane-xds writes decodes to the same verdicts.
    let ok = enforcer(vec![port(
        80,
        0,
        vec![rule(
            &[100],
            false,
            Some(vec![http("^(?:GET)$", "^(?:/public|/v1/.*)$")]),
        )],
    )])
    .unwrap();
    assert!(allowed(&ok, "10.0.0.3", 80, "GET", "/public"));
    assert!(allowed(&ok, "10.0.0.3", 80, "GET", "/v1/x"));
    assert!(!allowed(&ok, "10.0.0.3", 80, "GET", "/admin"));
    assert!(!allowed(&ok, "10.0.0.3", 80, "GET", "/public/x"));
}

#[test]
fn untranslatable_fields_are_named() {
    let bad_regex = enforcer(vec![port(
        80,
        0,
        vec![rule(&[100], false, Some(vec![http("POST", "/v1/(")]))],
    )])
    .err()
    .unwrap()
    .to_string();
    assert!(
        bad_regex.starts_with(
            "NetworkPolicy 10.0.0.1: ingress_per_port_policies[0].rules[0].http_rules[0].path: "
        ),
        "{bad_regex}"
    );
    let e = enforcer(vec![port(80, 70, vec![])])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("ingress_per_port_policies[0].end_port: 70 is below port 80"),
        "{e}"
    );
    let e = ipcache(&[NetworkPolicyHosts {
        policy: 5,
        host_addresses: vec!["nope".into()],
    }])
    .err()
    .unwrap()
    .to_string();
    assert_eq!(e, "NetworkPolicyHosts policy=5: host_addresses[0]: \"nope\" is not an IP address or CIDR prefix");
}
