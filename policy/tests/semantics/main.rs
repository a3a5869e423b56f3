//! Table-driven tests of Cilium's policy semantics, written from Cilium's documentation:
//! each case is a set of policies, a flow, and the verdict (and deciding rule) Cilium gives.

use membrane_policy::labels::LabelSet;
use membrane_policy::load::parse_file;
use membrane_policy::rule::{CompiledPolicy, Proto};
use membrane_policy::trace::{trace, TraceHttp, TraceRequest, TraceResult};
use membrane_policy::UnenforcedL7Mode;
use std::sync::Arc;

fn policies(texts: &[&str]) -> Vec<Arc<CompiledPolicy>> {
    texts
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            parse_file(&format!("case{i}.yaml"), t)
                .unwrap()
                .into_iter()
                .map(move |o| {
                    o.result
                        .unwrap_or_else(|e| panic!("policy {i} invalid: {e:?}"))
                })
        })
        .collect()
}

struct Flow<'a> {
    src: &'a str,
    dst: &'a str,
    port: u16,
    proto: Proto,
    src_ip: Option<&'a str>,
    dst_ip: Option<&'a str>,
    http: Option<(&'a str, &'a str)>,
    host: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    named: &'a [(&'a str, u16)],
    sni: Option<&'a str>,
    unenforced_l7: UnenforcedL7Mode,
}

fn flow<'a>(src: &'a str, dst: &'a str, port: u16) -> Flow<'a> {
    Flow {
        src,
        dst,
        port,
        proto: Proto::Tcp,
        src_ip: None,
        dst_ip: None,
        http: None,
        host: None,
        headers: &[],
        named: &[],
        sni: None,
        unenforced_l7: UnenforcedL7Mode::default(),
    }
}

fn run(p: &[Arc<CompiledPolicy>], f: &Flow<'_>) -> TraceResult {
    let req = TraceRequest {
        src: LabelSet::parse(f.src).unwrap(),
        dst: LabelSet::parse(f.dst).unwrap(),
        src_ip: f.src_ip.map(|s| s.parse().unwrap()),
        dst_ip: f.dst_ip.map(|s| s.parse().unwrap()),
        dport: f.port,
        proto: f.proto,
        named_ports: f
            .named
            .iter()
            .map(|(n, p)| (n.to_string(), [*p].into_iter().collect()))
            .collect(),
        sni: f.sni.map(Into::into),
        unenforced_l7: f.unenforced_l7,
        http: f.http.map(|(m, path)| TraceHttp {
            method: m.into(),
            path: path.into(),
            host: f.host.map(Into::into),
            headers: f
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
        }),
    };
    trace(p, &req).unwrap()
}

const DEATHSTAR: &str = "k8s:org=empire,k8s:class=deathstar";
const TIEFIGHTER: &str = "k8s:org=empire,k8s:class=tiefighter";
const XWING: &str = "k8s:org=alliance,k8s:class=xwing";

const SW_L3L4: &str = include_str!("../../manifests/examples/starwars/sw_l3_l4_policy.yaml");
const SW_L7: &str = include_str!("../../manifests/examples/starwars/sw_l3_l4_l7_policy.yaml");
const SW_CIDR: &str = include_str!("../../manifests/examples/starwars/sw_egress_cidr_except.yaml");

/// One table row: name, policies, flow, verdict, deciding "policy rule" ("" for none).
type Case<'a> = (
    &'a str,
    &'a [Arc<CompiledPolicy>],
    Flow<'a>,
    &'a str,
    &'a str,
);

/// (case name, verdict, deciding "policy rule" or "" for none)
fn check(name: &str, r: &TraceResult, verdict: &str, decided: &str) {
    assert_eq!(r.verdict, verdict, "{name}: verdict\n{}", r.explanation);
    let got = r
        .decided_by
        .as_ref()
        .map(|d| format!("{} {}", d.policy, d.rule))
        .unwrap_or_default();
    assert_eq!(got, decided, "{name}: decided_by\n{}", r.explanation);
}

#[test]
fn star_wars() {
    let none = policies(&[]);
    let l3 = policies(&[SW_L3L4]);
    let l7 = policies(&[SW_L7]);
    let post = Flow {
        http: Some(("POST", "/v1/request-landing")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let put = Flow {
        http: Some(("PUT", "/v1/exhaust-port")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let xwing_post = Flow {
        http: Some(("POST", "/v1/request-landing")),
        ..flow(XWING, DEATHSTAR, 80)
    };
    let cases: Vec<Case> = vec![
        (
            "no policy: tiefighter lands",
            &none,
            flow(TIEFIGHTER, DEATHSTAR, 80),
            "allowed",
            "",
        ),
        (
            "no policy: xwing lands",
            &none,
            flow(XWING, DEATHSTAR, 80),
            "allowed",
            "",
        ),
        (
            "L3/L4: tiefighter allowed",
            &l3,
            flow(TIEFIGHTER, DEATHSTAR, 80),
            "allowed",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L3/L4: xwing denied",
            &l3,
            flow(XWING, DEATHSTAR, 80),
            "denied",
            "",
        ),
        (
            "L3/L4: other port denied",
            &l3,
            flow(TIEFIGHTER, DEATHSTAR, 81),
            "denied",
            "",
        ),
        (
            "L3/L4: UDP 80 denied",
            &l3,
            Flow {
                proto: Proto::Udp,
                ..flow(TIEFIGHTER, DEATHSTAR, 80)
            },
            "denied",
            "",
        ),
        (
            "L3/L4: any HTTP passes",
            &l3,
            Flow {
                http: Some(("PUT", "/v1/exhaust-port")),
                ..flow(TIEFIGHTER, DEATHSTAR, 80)
            },
            "allowed",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L3/L4: egress of the deathstar is not under policy",
            &l3,
            flow(DEATHSTAR, XWING, 80),
            "allowed",
            "",
        ),
        (
            "L7: landing request allowed",
            &l7,
            post,
            "allowed",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L7: exhaust port denied",
            &l7,
            put,
            "denied",
            "default/rule1 spec.ingress[0]",
        ),
        (
            "L7: xwing still dropped at L3",
            &l7,
            xwing_post,
            "denied",
            "",
        ),
        (
            "L7: path regex matches whole path only",
            &l7,
            Flow {
                http: Some(("POST", "/v1/request-landing/../exhaust-port")),
                ..flow(TIEFIGHTER, DEATHSTAR, 80)
            },
            "denied",
            "default/rule1 spec.ingress[0]",
        ),
    ];
    // Labels without a source are `any:` labels and match `k8s:` selectors.
    check(
        "bare labels",
        &run(
            &l3,
            &flow(
                "org=empire,class=tiefighter",
                "org=empire,class=deathstar",
                80,
            ),
        ),
        "allowed",
        "default/rule1 spec.ingress[0]",
    );
    for (name, p, f, v, d) in cases {
        check(name, &run(p, &f), v, d);
    }
    let r = run(
        &l7,
        &Flow {
            http: Some(("PUT", "/v1/exhaust-port")),
            ..flow(TIEFIGHTER, DEATHSTAR, 80)
        },
    );
    let d = r.decided_by.unwrap();
    assert_eq!(
        (d.kind.as_str(), d.rule_index, d.direction.as_str()),
        ("CiliumNetworkPolicy", 0, "ingress")
    );
}

#[test]
fn cidr_with_except() {
    let p = policies(&[SW_CIDR]);
    let world = "reserved:world";
    let to = |ip: &'static str, port| Flow {
        dst_ip: Some(ip),
        ..flow(XWING, world, port)
    };
    check(
        "inside cidr",
        &run(&p, &to("10.1.2.3", 443)),
        "allowed",
        "default/xwing-egress spec.egress[0]",
    );
    check(
        "edge of cidr",
        &run(&p, &to("10.255.255.255", 443)),
        "allowed",
        "default/xwing-egress spec.egress[0]",
    );
    check("in except", &run(&p, &to("10.96.0.1", 443)), "denied", "");
    check(
        "end of except",
        &run(&p, &to("10.111.255.255", 443)),
        "denied",
        "",
    );
    check(
        "after except",
        &run(&p, &to("10.112.0.1", 443)),
        "allowed",
        "default/xwing-egress spec.egress[0]",
    );
    check(
        "outside cidr",
        &run(&p, &to("192.168.1.1", 443)),
        "denied",
        "",
    );
    check("wrong port", &run(&p, &to("10.1.2.3", 80)), "denied", "");
    // A pod's address is its pod identity, never a CIDR identity.
    check(
        "pods are not selected by CIDR",
        &run(&p, &flow(XWING, DEATHSTAR, 443)),
        "denied",
        "",
    );
}

const ALLOW_ALL_80: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-all}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEntities: [all]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const DENY_XWING: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-xwing}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {class: xwing}}]
"#;

#[test]
fn deny_beats_allow() {
    let p = policies(&[ALLOW_ALL_80, DENY_XWING]);
    check(
        "xwing denied by deny rule",
        &run(&p, &flow(XWING, DEATHSTAR, 80)),
        "denied",
        "default/deny-xwing spec.ingressDeny[0]",
    );
    check(
        "tiefighter allowed",
        &run(&p, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "allowed",
        "default/allow-all spec.ingress[0]",
    );
    // Deny rules alone put the endpoint into default deny, as in Cilium.
    let only_deny = policies(&[DENY_XWING]);
    check(
        "deny-only policy default-denies others",
        &run(&only_deny, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "denied",
        "",
    );
}

const L4_ONLY_TIE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4-tie}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const L4_ONLY_XWING: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4-xwing}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: xwing}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

#[test]
fn l4_allow_and_l7_allow_merge_per_peer() {
    let put = |src| Flow {
        http: Some(("PUT", "/v1/exhaust-port")),
        ..flow(src, DEATHSTAR, 80)
    };
    // Same peer and port: the L4-only rule opens all HTTP.
    let merged = policies(&[SW_L7, L4_ONLY_TIE]);
    check(
        "L4+L7 same peer: all HTTP allowed",
        &run(&merged, &put(TIEFIGHTER)),
        "allowed",
        "default/l4-tie spec.ingress[0]",
    );
    // Another peer's L4-only rule does not open L7 for the tiefighter.
    let other = policies(&[SW_L7, L4_ONLY_XWING]);
    check(
        "L4 for another peer keeps L7",
        &run(&other, &put(TIEFIGHTER)),
        "denied",
        "default/rule1 spec.ingress[0]",
    );
    check(
        "that peer gets all HTTP",
        &run(&other, &put(XWING)),
        "allowed",
        "default/l4-xwing spec.ingress[0]",
    );
}

#[test]
fn namespaces_scope_namespaced_policies() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-ns, namespace: empire}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{}]
"#]);
    let ds = "k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=empire";
    let in_ns = "k8s:class=tiefighter,k8s:io.kubernetes.pod.namespace=empire";
    let other_ns = "k8s:class=tiefighter,k8s:io.kubernetes.pod.namespace=rebels";
    check(
        "same namespace allowed",
        &run(&p, &flow(in_ns, ds, 80)),
        "allowed",
        "empire/same-ns spec.ingress[0]",
    );
    check(
        "other namespace denied",
        &run(&p, &flow(other_ns, ds, 80)),
        "denied",
        "",
    );
    check(
        "world denied",
        &run(&p, &flow("reserved:world", ds, 80)),
        "denied",
        "",
    );
    // The policy does not select the same labels in another namespace.
    let ds_other = "k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=default";
    check(
        "endpoint in other namespace unaffected",
        &run(&p, &flow("reserved:world", ds_other, 80)),
        "allowed",
        "",
    );

    let cross = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cross, namespace: empire}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": rebels}}]
"#]);
    check(
        "explicit namespace selects it",
        &run(&cross, &flow(other_ns, ds, 80)),
        "allowed",
        "empire/cross spec.ingress[0]",
    );
    check(
        "and only it",
        &run(&cross, &flow(in_ns, ds, 80)),
        "denied",
        "",
    );
}

#[test]
fn clusterwide_peers_are_any_pod() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: ccnp}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{}]
"#]);
    let ds = "k8s:class=deathstar,k8s:io.kubernetes.pod.namespace=empire";
    check(
        "pod of any namespace",
        &run(
            &p,
            &flow("k8s:a=b,k8s:io.kubernetes.pod.namespace=x", ds, 80),
        ),
        "allowed",
        "ccnp spec.ingress[0]",
    );
    check(
        "world is not a pod",
        &run(&p, &flow("reserved:world", ds, 80)),
        "denied",
        "",
    );
    check(
        "host is not a pod",
        &run(&p, &flow("reserved:host", ds, 80)),
        "denied",
        "",
    );
}

#[test]
fn host_is_policed_by_node_selectors_only() {
    let ccnp_all_pods = policies(&["apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: pods}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n"]);
    check(
        "endpointSelector {} leaves the host alone",
        &run(&ccnp_all_pods, &flow(XWING, "reserved:host", 22)),
        "allowed",
        "",
    );
    check(
        "but selects pods",
        &run(&ccnp_all_pods, &flow(XWING, DEATHSTAR, 22)),
        "denied",
        "",
    );
    let host = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: host-fw}
spec:
  nodeSelector: {}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
"#]);
    check(
        "host policy allows the cluster",
        &run(&host, &flow(XWING, "reserved:host", 22)),
        "allowed",
        "host-fw spec.ingress[0]",
    );
    check(
        "host policy denies the world",
        &run(
            &host,
            &Flow {
                src_ip: Some("8.8.8.8"),
                ..flow("reserved:world", "reserved:host", 22)
            },
        ),
        "denied",
        "",
    );
    check(
        "host policy does not select pods",
        &run(&host, &flow("reserved:world", DEATHSTAR, 22)),
        "allowed",
        "",
    );
}

#[test]
fn entities() {
    let mk = |e: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: ent}}\nspec:\n  endpointSelector: {{matchLabels: {{class: deathstar}}}}\n  ingress:\n  - fromEntities: [{e}]\n"
        )
    };
    let table: &[(&str, &str, Option<&str>, &str)] = &[
        ("world", "reserved:world", Some("8.8.8.8"), "allowed"),
        ("world", TIEFIGHTER, None, "denied"),
        ("cluster", TIEFIGHTER, None, "allowed"),
        ("cluster", "reserved:host", None, "allowed"),
        ("cluster", "reserved:remote-node", None, "allowed"),
        ("cluster", "reserved:world", Some("8.8.8.8"), "denied"),
        ("host", "reserved:host", None, "allowed"),
        ("host", "reserved:remote-node", None, "denied"),
        ("remote-node", "reserved:remote-node", None, "allowed"),
        ("kube-apiserver", "reserved:kube-apiserver", None, "allowed"),
        ("health", "reserved:health", None, "allowed"),
        ("all", "reserved:world", Some("1.2.3.4"), "allowed"),
        ("all", XWING, None, "allowed"),
        ("none", XWING, None, "denied"),
    ];
    for (entity, src, ip, want) in table {
        let p = policies(&[&mk(entity)]);
        let r = run(
            &p,
            &Flow {
                src_ip: *ip,
                ..flow(src, DEATHSTAR, 80)
            },
        );
        assert_eq!(
            r.verdict, *want,
            "entity {entity} from {src}\n{}",
            r.explanation
        );
    }
}

#[test]
fn default_deny_per_direction_and_enable_default_deny() {
    let ingress_only = policies(&[SW_L3L4]);
    check(
        "egress stays open",
        &run(&ingress_only, &flow(DEATHSTAR, "reserved:world", 443)),
        "allowed",
        "",
    );
    let empty_rule = policies(&["apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-all}\nspec:\n  endpointSelector: {}\n  ingress:\n  - {}\n"]);
    check(
        "ingress: [{}] denies all",
        &run(&empty_rule, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "denied",
        "",
    );
    let empty_list = policies(&["apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: nothing}\nspec:\n  endpointSelector: {}\n  ingress: []\n"]);
    check(
        "ingress: [] enforces nothing",
        &run(&empty_list, &flow(TIEFIGHTER, DEATHSTAR, 80)),
        "allowed",
        "",
    );
    let no_dd = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-default-deny}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET}]}
"#;
    let p = policies(&[no_dd]);
    check(
        "unmatched peer allowed",
        &run(&p, &flow(XWING, DEATHSTAR, 9000)),
        "allowed",
        "",
    );
    let get = Flow {
        http: Some(("GET", "/")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    let put = Flow {
        http: Some(("PUT", "/")),
        ..flow(TIEFIGHTER, DEATHSTAR, 80)
    };
    check(
        "L7 still enforced: GET",
        &run(&p, &get),
        "allowed",
        "default/no-default-deny spec.ingress[0]",
    );
    check(
        "L7 still enforced: PUT",
        &run(&p, &put),
        "denied",
        "default/no-default-deny spec.ingress[0]",
    );
    // A default-deny policy alongside wins.
    let both = policies(&[no_dd, SW_L3L4]);
    check(
        "another rule's default deny applies",
        &run(&both, &flow(XWING, DEATHSTAR, 9000)),
        "denied",
        "",
    );
}

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
fn unresolvable_peers_are_called_out() {
    let p = policies(&[r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#]);
    let r = run(
        &p,
        &Flow {
            dst_ip: Some("93.184.216.34"),
            ..flow(XWING, "reserved:world", 443)
        },
    );
    assert_eq!(r.verdict, "denied");
    assert!(
        r.caveats
            .iter()
            .any(|c| c.contains("toFQDNs api.example.com")),
        "{:?}",
        r.caveats
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

const KAFKA: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: deathstar-plans}]
"#;

const DNS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.cluster.local"}]
"#;

const L7PROTO: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: redis}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
      rules:
        l7proto: redis
        l7: [{cmd: GET}]
"#;

const L4_9092_XWING: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4-9092}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
"#;

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
