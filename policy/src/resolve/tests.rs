use super::*;
use crate::load::parse_file;

fn policy(kind: &str, name: &str, selector: &str) -> Arc<CompiledPolicy> {
    let text = format!("apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n  endpointSelector: {selector}\n  ingress: [{{}}]\n");
    parse_file("t.yaml", &text)
        .unwrap()
        .remove(0)
        .result
        .unwrap()
}

#[test]
fn the_rule_index_finds_exactly_the_selecting_rules() {
    let mut repo = Repository::new();
    repo.upsert(policy(
        "CiliumNetworkPolicy",
        "by-app",
        "{matchLabels: {app: x}}",
    ));
    repo.upsert(policy(
        "CiliumNetworkPolicy",
        "other-app",
        "{matchLabels: {app: y}}",
    ));
    repo.upsert(policy("CiliumClusterwideNetworkPolicy", "everyone", "{}"));
    repo.upsert(policy(
        "CiliumNetworkPolicy",
        "has-tier",
        "{matchExpressions: [{key: tier, operator: Exists}]}",
    ));
    repo.upsert(policy(
        "CiliumNetworkPolicy",
        "not-y",
        "{matchExpressions: [{key: app, operator: NotIn, values: [y]}]}",
    ));
    let labels = crate::trace::pod_labels(LabelSet::parse("k8s:app=x,k8s:tier=web").unwrap());
    let names = |repo: &Repository| -> Vec<String> {
        repo.selecting_rules(&labels)
            .iter()
            .map(|(k, _)| k.name.clone())
            .collect()
    };
    assert_eq!(names(&repo), ["by-app", "has-tier", "not-y", "everyone"]);
    repo.remove(&policy("CiliumNetworkPolicy", "by-app", "{}").key);
    assert_eq!(names(&repo), ["has-tier", "not-y", "everyone"]);
    // Replacing a policy re-indexes it under its new selector.
    repo.upsert(policy(
        "CiliumNetworkPolicy",
        "other-app",
        "{matchLabels: {app: x}}",
    ));
    assert_eq!(names(&repo), ["has-tier", "not-y", "other-app", "everyone"]);
}

#[test]
fn server_names_and_tls_contexts_reach_the_resolved_policy() {
    use crate::rule::TlsSource;
    use crate::Engine;
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tls, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [A.example.com, "*.wild.example"]
      terminatingTLS: {secret: {name: front}}
      originatingTLS: {secret: {name: back, namespace: certs}, trustedCA: bundle.pem}
      rules: {http: [{method: GET}]}
  - toPorts:
    - ports: [{port: "8443", protocol: TCP}]
      serverNames: [b.example.com]
"#;
    let p = parse_file("t.yaml", text)
        .unwrap()
        .remove(0)
        .result
        .unwrap();
    let mut engine = Engine::default();
    engine.apply_policy(p);
    let labels = crate::trace::pod_labels(
        LabelSet::parse("k8s:app=web,k8s:io.kubernetes.pod.namespace=shop").unwrap(),
    );
    engine
        .upsert_endpoint(
            "web",
            Endpoint {
                labels,
                named_ports: Default::default(),
            },
        )
        .unwrap();
    let r = engine.resolved("web").unwrap();
    let world = Identity(2);
    let ing = &r.ingress;
    assert!(ing.inspects_tls(Proto::Tcp, 443) && ing.inspects_tls(Proto::Tcp, 8443));
    assert!(!ing.inspects_tls(Proto::Tcp, 80));
    let tls = ing
        .tls_for(world, Proto::Tcp, 443, Some("a.example.com"))
        .unwrap();
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
    assert!(matches!(
        &tls.originating,
        Some(TlsSource::Secret { namespace, trusted_ca: Some(ca), .. })
            if namespace == "certs" && ca == "bundle.pem"
    ));
    // (port, sni, admitted): names are case-insensitive, `*.` matches one label, and
    // without SNI (or without TLS) a rule with serverNames does not apply.
    let table = [
        (443, Some("A.EXAMPLE.COM"), true),
        (443, Some("x.wild.example"), true),
        (443, Some("x.y.wild.example"), false),
        (443, Some("wild.example"), false),
        (443, Some("c.example.com"), false),
        (443, None, false),
        (8443, Some("b.example.com"), true),
        (8443, Some("a.example.com"), false),
        (8443, None, false),
    ];
    for (port, sni, admitted) in table {
        let c = ing.connection_sni(world, Proto::Tcp, port, sni);
        assert_eq!(
            c.l4_verdict() == Verdict::Allowed,
            admitted,
            "{port} {sni:?}: {c:?}"
        );
        // A layer that cannot see TLS lets the proxy decide.
        assert_eq!(
            ing.connection(world, Proto::Tcp, port).l4_verdict(),
            Verdict::Allowed
        );
    }
    assert!(ing
        .tls_for(world, Proto::Tcp, 443, Some("c.example.com"))
        .is_none());
    assert!(ing
        .tls_for(world, Proto::Tcp, 8443, Some("b.example.com"))
        .is_none());
}

#[test]
fn the_allow_localhost_setting_reresolves_and_marks_ingress_only() {
    use crate::Engine;
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n  egress: [{}]\n";
    let p = parse_file("t.yaml", text)
        .unwrap()
        .remove(0)
        .result
        .unwrap();
    let mut engine = Engine::default();
    engine.apply_policy(p);
    let labels = crate::trace::pod_labels(LabelSet::parse("k8s:app=x").unwrap());
    engine
        .upsert_endpoint(
            "default/x",
            Endpoint {
                labels,
                named_ports: NamedPorts::new(),
            },
        )
        .unwrap();
    let host_on = |engine: &Engine| {
        let r = engine.resolved("default/x").unwrap();
        assert!(!r.egress.allow_localhost, "never on egress");
        (
            r.ingress.allow_localhost,
            r.ingress
                .connection(Identity::HOST, Proto::Tcp, 80)
                .l4_verdict(),
        )
    };
    assert_eq!(host_on(&engine), (true, Verdict::Allowed), "auto allows");
    assert!(
        engine
            .set_allow_localhost(AllowLocalhost::Always)
            .is_empty(),
        "auto is always here: nothing to re-resolve"
    );
    assert_eq!(host_on(&engine), (true, Verdict::Allowed));
    assert_eq!(
        engine.set_allow_localhost(AllowLocalhost::Policy),
        vec!["default/x".to_string()]
    );
    assert_eq!(
        host_on(&engine),
        (false, Verdict::Denied),
        "policy requires a rule"
    );
    assert!(
        engine
            .set_allow_localhost(AllowLocalhost::Policy)
            .is_empty(),
        "an unchanged setting re-resolves nothing"
    );
}
