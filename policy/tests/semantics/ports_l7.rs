//! Ports (named, ranges, protocols, ICMP) and L7: HTTP host, headers and query,
//! requirements and expressions, server names, and L7 protocols the proxy does not enforce.

use super::*;

#[test]
fn ports_named_ranges_protocols_icmp() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts: [{ports: [{port: "http-alt", protocol: TCP}]}]
  - toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
  - toPorts: [{ports: [{port: "53"}]}]
  - icmps: [{fields: [{type: EchoRequest}, {type: 128, family: IPv6}]}]
"#]);
    let named = Flow {
        named: &[("http-alt", 9090)],
        ..flow(TIEFIGHTER, DEATHSTAR, 9090)
    };
    check(
        "named port resolved",
        &run(&p, &named),
        "allowed",
        "default/ports spec.ingress[0]",
    );
    check(
        "named port unresolved",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 9090)),
        "denied",
        "",
    );
    check(
        "range start",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 8000)),
        "allowed",
        "default/ports spec.ingress[1]",
    );
    check(
        "range end",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 8100)),
        "allowed",
        "default/ports spec.ingress[1]",
    );
    check(
        "past range",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 8101)),
        "denied",
        "",
    );
    check(
        "ANY covers UDP",
        &run(
            &p,
            &Flow {
                proto: Proto::Udp,
                ..flow(TIEFIGHTER, DEATHSTAR, 53)
            },
        ),
        "allowed",
        "default/ports spec.ingress[2]",
    );
    check(
        "ANY covers TCP",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 53)),
        "allowed",
        "default/ports spec.ingress[2]",
    );
    check(
        "ICMP echo",
        &run(
            &p,
            &Flow {
                proto: Proto::Icmp,
                ..flow(TIEFIGHTER, DEATHSTAR, 8)
            },
        ),
        "allowed",
        "default/ports spec.ingress[3]",
    );
    check(
        "ICMP other type",
        &run(
            &p,
            &Flow {
                proto: Proto::Icmp,
                ..flow(TIEFIGHTER, DEATHSTAR, 13)
            },
        ),
        "denied",
        "",
    );
    check(
        "ICMPv6 echo",
        &run(
            &p,
            &Flow {
                proto: Proto::Icmpv6,
                ..flow(TIEFIGHTER, DEATHSTAR, 128)
            },
        ),
        "allowed",
        "default/ports spec.ingress[3]",
    );
}

#[test]
fn http_host_headers_and_query() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: "/v1/.*"
          host: "deathstar\\.empire\\.svc"
          headers: ["X-Has-Force: true", "X-Token"]
"#]);
    let base = |host, headers| Flow {
        http: Some(("GET", "/v1/status?x=1")),
        host,
        headers,
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let good: &[(&str, &str)] = &[("X-Has-Force", "true"), ("x-token", "t")];
    let wrong_value: &[(&str, &str)] = &[("X-Has-Force", "false"), ("x-token", "t")];
    let missing: &[(&str, &str)] = &[("X-Has-Force", "true")];
    check(
        "all match",
        &run(&p, &base(Some("deathstar.empire.svc"), good)),
        "allowed",
        "default/http spec.ingress[0]",
    );
    check(
        "host mismatch",
        &run(&p, &base(Some("evil.svc"), good)),
        "denied",
        "default/http spec.ingress[0]",
    );
    check(
        "header value mismatch",
        &run(&p, &base(Some("deathstar.empire.svc"), wrong_value)),
        "denied",
        "default/http spec.ingress[0]",
    );
    check(
        "header missing",
        &run(&p, &base(Some("deathstar.empire.svc"), missing)),
        "denied",
        "default/http spec.ingress[0]",
    );
}

#[test]
fn requires_and_expressions() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: req}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
  - fromEndpoints:
    - matchExpressions:
      - {key: class, operator: NotIn, values: [xwing]}
"#]);
    check(
        "meets requirement",
        &run(
            &p,
            &flow("k8s:class=tiefighter,k8s:env=prod", DEATHSTAR, 80),
        ),
        "allowed",
        "default/req spec.ingress[1]",
    );
    check(
        "fails requirement",
        &run(&p, &flow("k8s:class=tiefighter,k8s:env=dev", DEATHSTAR, 80)),
        "denied",
        "",
    );
    check(
        "NotIn excludes",
        &run(&p, &flow("k8s:class=xwing,k8s:env=prod", DEATHSTAR, 80)),
        "denied",
        "",
    );
}

#[test]
fn server_names_restrict_rules_to_tls_with_those_names() {
    // Cilium: with serverNames, TLS must be present and one of the names indicated.
    let sni_rule = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sni, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [deathstar.example]
      terminatingTLS: {secret: {name: ds-tls}}
      rules: {http: [{method: GET, path: /v1/.*}]}
"#;
    let p = policies(&[sni_rule]);
    let get = |sni| Flow {
        http: Some(("GET", "/v1/x")),
        sni,
        ..flow(TIEFIGHTER, DEATHSTAR, 443)
    };
    let r = run(&p, &get(Some("DeathStar.example")));
    check(
        "admitted name",
        &r,
        "allowed",
        "default/sni spec.ingress[0]",
    );
    assert!(
        r.explanation
            .contains("ingress: the proxy terminates TLS with secret default/ds-tls"),
        "{}",
        r.explanation
    );
    check(
        "another name",
        &run(&p, &get(Some("other.example"))),
        "denied",
        "",
    );
    check("no TLS", &run(&p, &get(None)), "denied", "");
}

/// Rules of an L7 protocol membrane does not enforce (Kafka, DNS, a generic l7proto) must
/// not become an L4 allow: by default the peers and port they cover are denied, the rule
/// is named and the reason given. An L4-only rule for the same peer and port still allows
/// (an L4 allow opens all of a port's L7 in Cilium), and turning default deny off does not
/// open what such a rule covers.
#[test]
fn unenforced_l7_rules_fail_closed() {
    let kafka = policies(&[KAFKA]);
    let r = run(&kafka, &flow(TIEFIGHTER, DEATHSTAR, 9092));
    check(
        "kafka: fail closed",
        &r,
        "denied",
        "default/kafka spec.ingress[0]",
    );
    assert!(
        r.explanation.contains("kafka rules") && r.explanation.contains("fail closed"),
        "{}",
        r.explanation
    );
    assert!(
        r.caveats
            .iter()
            .any(|c| c.contains("kafka rules of") && c.contains("not enforced")),
        "{:?}",
        r.caveats
    );
    let dns = policies(&[DNS]);
    let mut q = flow(TIEFIGHTER, "k8s:k8s-app=kube-dns", 53);
    q.proto = Proto::Udp;
    check(
        "dns: fail closed",
        &run(&dns, &q),
        "denied",
        "default/dns spec.egress[0]",
    );
    let redis = policies(&[L7PROTO]);
    check(
        "l7proto with default deny off: still denied",
        &run(&redis, &flow(TIEFIGHTER, DEATHSTAR, 6379)),
        "denied",
        "default/redis spec.ingress[0]",
    );
    check(
        "l7proto: other ports keep default allow",
        &run(&redis, &flow(TIEFIGHTER, DEATHSTAR, 6380)),
        "allowed",
        "",
    );
    let merged = policies(&[KAFKA, L4_9092_XWING]);
    check(
        "an L4-only rule for the same peer and port allows",
        &run(&merged, &flow(TIEFIGHTER, DEATHSTAR, 9092)),
        "allowed",
        "default/l4-9092 spec.ingress[0]",
    );
    check(
        "other peers stay denied",
        &run(&kafka, &flow(XWING, DEATHSTAR, 9092)),
        "denied",
        "",
    );

    // Only the explicit setting turns such rules into an L4 allow, and says so.
    let l4 = |f: Flow<'static>| Flow {
        unenforced_l7: UnenforcedL7Mode::L4Only,
        ..f
    };
    let r = run(&kafka, &l4(flow(TIEFIGHTER, DEATHSTAR, 9092)));
    check(
        "kafka: l4-only",
        &r,
        "allowed",
        "default/kafka spec.ingress[0]",
    );
    assert!(
        r.caveats
            .iter()
            .any(|c| c.contains("kafka rules of") && c.contains("l4-only")),
        "{:?}",
        r.caveats
    );
    check(
        "l4-only: other peers stay denied",
        &run(&kafka, &l4(flow(XWING, DEATHSTAR, 9092))),
        "denied",
        "",
    );
    let mut q = l4(flow(TIEFIGHTER, "k8s:k8s-app=kube-dns", 53));
    q.proto = Proto::Udp;
    check(
        "dns: l4-only",
        &run(&dns, &q),
        "allowed",
        "default/dns spec.egress[0]",
    );
}
