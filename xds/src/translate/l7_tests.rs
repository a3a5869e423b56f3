//! What the translation makes of L7 rules no membrane proxy enforces (Kafka, DNS, generic
//! `l7proto`) and of user regexes: never an L4 allow by default, and regexes written in
//! the anchored form the engine matches.

use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3::permission;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use membrane_policy::UnenforcedL7Mode;
use prost::Message;

use super::tests::STARWARS;
use super::Translator;
use crate::node::SHARED_KEY;
use crate::proto::{port_network_policy_rule::L7, NetworkPolicy, PortNetworkPolicy};
use crate::resource::{LISTENER, NETWORK_POLICY};
use crate::source::dir::parse;

/// The Star Wars pods plus Kafka rules on the deathstar's 9092 (from the empire), DNS rules
/// on the tiefighter's egress, and a generic parser on the deathstar's 6379.
fn state() -> crate::source::ClusterState {
    let extra = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: deathstar-plans}]
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules: {l7proto: redis, l7: [{cmd: GET}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
"#;
    parse("sw.yaml", &format!("{STARWARS}{extra}"))
        .unwrap()
        .state
}

fn npds(t: &mut Translator, ip: &str) -> (NetworkPolicy, super::Translation) {
    let out = t.translate(&state());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let np = out.snapshots[SHARED_KEY]
        .resources(NETWORK_POLICY)
        .unwrap()
        .items[ip]
        .decode()
        .unwrap();
    (np, out)
}

fn port(ports: &[PortNetworkPolicy], n: u32, proto: i32) -> &PortNetworkPolicy {
    ports
        .iter()
        .find(|p| p.port == n && p.protocol == proto)
        .unwrap_or_else(|| panic!("no port {n}/{proto} in {ports:?}"))
}

/// The RBAC ALLOW filter of the deathstar's inbound listener on `port`.
fn rbac(out: &super::Translation, port: u16) -> Rbac {
    let side = &out.snapshots["sidecar/default/deathstar-1"];
    let l: Listener = side.resources(LISTENER).unwrap().items[&format!("inbound|{port}")]
        .decode()
        .unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!("{l:?}")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let allow = hcm
        .http_filters
        .iter()
        .find(|f| f.name == "envoy.filters.http.rbac")
        .unwrap();
    let Some(http_filter::ConfigType::TypedConfig(a)) = &allow.config_type else {
        panic!()
    };
    Rbac::decode(a.value.as_slice()).unwrap()
}

#[test]
fn unenforced_l7_rules_fail_closed_in_npds_and_rbac() {
    let mut t = Translator::new();
    let (np, out) = npds(&mut t, "10.0.0.5");
    for (n, proto) in [(9092, "kafka"), (6379, "redis")] {
        let p = port(&np.ingress_per_port_policies, n, 0);
        assert_eq!(p.rules.len(), 1, "{p:?}");
        let r = &p.rules[0];
        assert!(
            matches!(r.l7, Some(L7::L7Rules(ref l)) if l.l7_allow_rules.is_empty()),
            "port {n}: the rule must carry its parser and allow nothing, not be an L4 allow: {r:?}"
        );
        assert_eq!(r.l7_proto, proto);
        assert!(!r.remote_policies.is_empty());
    }
    // DNS on the tiefighter's egress: both protocols of port 53, never an L4 allow.
    let (tie, _) = npds(&mut t, "10.0.0.6");
    for proto in [0, 1] {
        let p = port(&tie.egress_per_port_policies, 53, proto);
        assert!(
            p.rules
                .iter()
                .all(|r| matches!(r.l7, Some(L7::L7Rules(_))) && r.l7_proto == "dns"),
            "{p:?}"
        );
    }
    // A stock Envoy given the same policy: the rule's permission never matches.
    let rb = rbac(&out, 9092);
    let policies = &rb.rules.as_ref().unwrap().policies;
    // Beside allow-localhost's policy for the host (no rule names it on 9092).
    let policies: Vec<_> = policies
        .iter()
        .filter(|(name, _)| !name.ends_with("-allow-localhost"))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(policies.len(), 1, "{policies:?}");
    for p in policies {
        let Some(permission::Rule::NotRule(not)) = &p.permissions[0].rule else {
            panic!("an L7 rule RBAC cannot check must admit nothing: {p:?}")
        };
        assert_eq!(not.rule, Some(permission::Rule::Any(true)));
    }

    // Only the explicit setting makes them L4 allows.
    t.set_unenforced_l7(UnenforcedL7Mode::L4Only);
    let (np, out) = npds(&mut t, "10.0.0.5");
    let r = &port(&np.ingress_per_port_policies, 9092, 0).rules[0];
    assert_eq!((&r.l7, r.l7_proto.as_str()), (&None, ""), "{r:?}");
    let rb = rbac(&out, 9092);
    for p in rb.rules.as_ref().unwrap().policies.values() {
        assert_eq!(p.permissions[0].rule, Some(permission::Rule::Any(true)));
    }
    // And back.
    t.set_unenforced_l7(UnenforcedL7Mode::FailClosed);
    let (np, _) = npds(&mut t, "10.0.0.5");
    let r = &port(&np.ingress_per_port_policies, 9092, 0).rules[0];
    assert!(matches!(r.l7, Some(L7::L7Rules(_))), "{r:?}");
}

/// NPDS and RBAC carry user regexes as one anchored group: a consumer that searches
/// (partial match) decides as the engine does, and Envoy's RE2 full match of
/// `^(?:P)$` is its full match of `P`.
#[test]
fn regexes_are_written_as_the_anchored_group_the_engine_matches() {
    let text = STARWARS.replace(
        "http: [{method: POST, path: /v1/request-landing}]",
        "http: [{method: \"POST|PUT\", path: \"/v1/request-landing|/public\"}]",
    );
    let out = Translator::new().translate(&parse("sw.yaml", &text).unwrap().state);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let np: NetworkPolicy = out.snapshots[SHARED_KEY]
        .resources(NETWORK_POLICY)
        .unwrap()
        .items["10.0.0.5"]
        .decode()
        .unwrap();
    let Some(L7::HttpRules(http)) = &np.ingress_per_port_policies[0].rules[0].l7 else {
        panic!("{np:?}")
    };
    let regex = |name: &str| {
        let h = http.http_rules[0]
            .headers
            .iter()
            .find(|h| h.name == name)
            .unwrap();
        match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(m)) => match &m.match_pattern {
                Some(MatchPattern::SafeRegex(r)) => r.regex.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let (method, path) = (regex(":method"), regex(":path"));
    assert_eq!(method, "^(?:POST|PUT)$");
    assert_eq!(path, "^(?:/v1/request-landing|/public)$");
    // Searched, not fully matched: the verdicts are still the engine's.
    let engine = membrane_policy::regexp::compile("/v1/request-landing|/public").unwrap();
    let searched = regex::Regex::new(&path).unwrap();
    for p in [
        "/public",
        "/v1/request-landing",
        "/admin/public",
        "/public/admin",
        "/v1/request-landing/x",
        "/x/v1/request-landing",
    ] {
        assert_eq!(searched.is_match(p), engine.is_match(p), "{p}");
    }
    assert!(!searched.is_match("/admin/public"));
    // The RBAC filter is derived from the same NPDS: the same anchored pattern.
    let text = format!("{:?}", rbac(&out, 80));
    assert!(text.contains("^(?:/v1/request-landing|/public)$"), "{text}");
}
