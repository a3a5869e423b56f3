//! Table-driven tests of Cilium's policy semantics, written from Cilium's documentation:
//! each case is a set of policies, a flow, and the verdict (and deciding rule) Cilium gives.

use membrane_policy::labels::LabelSet;
use membrane_policy::load::parse_file;
use membrane_policy::rule::{CompiledPolicy, Proto};
use membrane_policy::trace::{trace, TraceHttp, TraceRequest, TraceResult};
use membrane_policy::{AllowLocalhost, UnenforcedL7Mode};
use std::sync::Arc;

mod auth;
mod localhost;
mod peers;
mod ports_l7;
mod starwars;

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
    allow_localhost: AllowLocalhost,
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
        allow_localhost: AllowLocalhost::default(),
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
        allow_localhost: f.allow_localhost,
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

const SW_L3L4: &str = include_str!("../../../manifests/examples/starwars/sw_l3_l4_policy.yaml");
const SW_L7: &str = include_str!("../../../manifests/examples/starwars/sw_l3_l4_l7_policy.yaml");
const SW_CIDR: &str =
    include_str!("../../../manifests/examples/starwars/sw_egress_cidr_except.yaml");

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
