//! Resolution cost at cluster scale: 1,000 endpoints under 1,000 CiliumNetworkPolicy objects.
//!
//! Measures (1) resolving every endpoint from scratch (apply all policies, upsert all
//! endpoints), (2) replacing one policy, which must re-resolve only the endpoints it selects,
//! and (3) one connection lookup plus one HTTP check on a resolved policy. The goal for (1)
//! is under one second on one core; `bench/policy.sh` pins the run and reports against it.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use membrane_policy::http::HttpRequest;
use membrane_policy::{
    parse_file, CompiledPolicy, Direction, Endpoint, Engine, LabelSet, Proto, Verdict,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

const ENDPOINTS: usize = 1_000;
const POLICIES: usize = 1_000;
/// Endpoints per app: the "handful" each policy selects.
const PER_APP: usize = 5;
const APPS: usize = ENDPOINTS / PER_APP;
const NAMESPACES: usize = 10;
const TIERS: [&str; 3] = ["web", "api", "db"];

fn app_namespace(app: usize) -> usize {
    app % NAMESPACES
}

/// Endpoint `i` belongs to app `i / PER_APP`, in that app's namespace.
fn endpoint(i: usize) -> (String, Endpoint) {
    let app = i / PER_APP;
    let ns = app_namespace(app);
    let labels = LabelSet::parse(&format!(
        "k8s:app=app{app},k8s:tier={},k8s:io.kubernetes.pod.namespace=ns{ns},\
         k8s:io.cilium.k8s.policy.cluster=default",
        TIERS[i % TIERS.len()]
    ))
    .expect("generated labels parse");
    let mut named_ports = std::collections::BTreeMap::new();
    named_ports.insert("http".to_owned(), BTreeSet::from([8080]));
    (
        format!("ns{ns}/app{app}-{i}"),
        Endpoint {
            labels,
            named_ports,
        },
    )
}

/// The app policy `j` protects, and the app it lets in (another app of the same namespace,
/// since a namespaced policy's peers are scoped to its namespace).
fn policy_apps(j: usize) -> (usize, usize) {
    let app = j % APPS;
    let peer = (app + NAMESPACES * (1 + j % 7)) % APPS;
    (app, peer)
}

/// Policy `j` as YAML. Every one allows ingress from a peer app on a port; one in four adds
/// HTTP rules, one in ten allows egress to a CIDR (with an exception), one in ten denies
/// ingress from a third app. `port_bump` changes the port to make a modified version.
fn policy_yaml(j: usize, port_bump: u16) -> String {
    let (app, peer) = policy_apps(j);
    let ns = app_namespace(app);
    let port = 8000 + (j % 100) as u16 + port_bump;
    let mut y = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata:\n  name: p{j}\n  namespace: ns{ns}\n\
         spec:\n  endpointSelector:\n    matchLabels:\n      app: app{app}\n\
         \x20 ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: app{peer}\n\
         \x20   toPorts:\n    - ports:\n      - port: \"{port}\"\n        protocol: TCP\n"
    );
    if j.is_multiple_of(4) {
        y.push_str(
            "      rules:\n        http:\n        - method: GET\n          path: /api/v1/.*\n\
             \x20       - method: POST\n          path: /api/v1/orders\n\
             \x20         headers: ['X-Tenant: t1']\n",
        );
    }
    if j % 10 == 3 {
        let _ = write!(
            y,
            "  egress:\n  - toCIDRSet:\n    - cidr: 10.{}.0.0/16\n      except: [10.{}.1.0/24]\n\
             \x20   toPorts:\n    - ports:\n      - port: \"443\"\n        protocol: TCP\n",
            j % 256,
            j % 256
        );
    }
    if j % 10 == 7 {
        let denied = (peer + NAMESPACES) % APPS;
        let _ = write!(
            y,
            "  ingressDeny:\n  - fromEndpoints:\n    - matchLabels:\n        app: app{denied}\n"
        );
    }
    y
}

fn compile(yaml: &str) -> Arc<CompiledPolicy> {
    let objs = parse_file("bench.yaml", yaml).expect("generated YAML parses");
    assert_eq!(objs.len(), 1);
    match &objs[0].result {
        Ok(p) => p.clone(),
        Err(_) => panic!(
            "generated policy rejected: {}",
            objs[0].error_lines().join("\n")
        ),
    }
}

struct Input {
    policies: Vec<Arc<CompiledPolicy>>,
    endpoints: Vec<(String, Endpoint)>,
}

fn input() -> Input {
    // One multi-document file, as `kubectl get cnp -A -o yaml` would give, parsed once.
    let text: String = (0..POLICIES)
        .map(|j| policy_yaml(j, 0))
        .collect::<Vec<_>>()
        .join("---\n");
    let objs = parse_file("bench.yaml", &text).expect("generated YAML parses");
    assert_eq!(objs.len(), POLICIES);
    let policies = objs
        .iter()
        .map(|o| match &o.result {
            Ok(p) => p.clone(),
            Err(_) => panic!("generated policy rejected: {}", o.error_lines().join("\n")),
        })
        .collect();
    Input {
        policies,
        endpoints: (0..ENDPOINTS).map(endpoint).collect(),
    }
}

fn resolve_all(input: &Input) -> Engine {
    let mut engine = Engine::default();
    for p in &input.policies {
        engine.apply_policy(p.clone());
    }
    // An initial sync, as the control plane does it: every endpoint in one batch.
    engine
        .upsert_endpoints(input.endpoints.clone())
        .expect("identity allocation");
    engine
}

fn bench(c: &mut Criterion) {
    let input = input();

    // Setup checks: the resolution is the one the generator describes, and a one-policy
    // change re-resolves exactly the endpoints that policy selects.
    let mut engine = resolve_all(&input);
    let changed = 1;
    let (app, _) = policy_apps(changed);
    let selected: Vec<String> = input
        .endpoints
        .iter()
        .filter(|(id, _)| id.starts_with(&format!("ns{}/app{app}-", app_namespace(app))))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(selected.len(), PER_APP);
    let modified = compile(&policy_yaml(changed, 1));
    let original = input.policies[changed].clone();
    let reresolved = engine.apply_policy(modified.clone());
    assert_eq!(
        reresolved, selected,
        "a one-policy change must re-resolve only the endpoints it selects"
    );
    eprintln!(
        "policy-bench: endpoints={ENDPOINTS} policies={POLICIES} one_rule_change_reresolved={}",
        reresolved.len()
    );
    engine.apply_policy(original.clone());

    // Lookup target: app0's first endpoint, protected by p0 (HTTP rules on port 8000)
    // against its peer app.
    let (target_app, peer_app) = policy_apps(0);
    let target = &input.endpoints[target_app * PER_APP].0;
    let peer_identity = engine
        .identity_of(&input.endpoints[peer_app * PER_APP].0)
        .expect("peer endpoint");
    let resolved = engine.resolved(target).expect("target endpoint");
    let headers: Vec<(String, String)> = vec![("x-tenant".into(), "t1".into())];
    let req = HttpRequest {
        method: "POST",
        path: "/api/v1/orders",
        host: Some("app0.ns0"),
        headers: &headers,
        secrets: &membrane_policy::http::NoSecrets,
    };
    let conn = resolved
        .direction(Direction::Ingress)
        .connection(peer_identity, Proto::Tcp, 8000);
    assert!(conn.needs_http(), "p0 puts HTTP rules on port 8000");
    assert_eq!(conn.check_http(&req).verdict, Verdict::Allowed);

    let mut g = c.benchmark_group("resolve");
    g.sample_size(10);
    g.bench_function("full_1000_endpoints_1000_policies", |b| {
        b.iter(|| black_box(resolve_all(&input)))
    });
    // Alternate between the two versions so every apply is a real change.
    let mut flip = false;
    g.bench_function("one_policy_change", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                if flip {
                    modified.clone()
                } else {
                    original.clone()
                }
            },
            |p| black_box(engine.apply_policy(p)),
            BatchSize::SmallInput,
        )
    });

    let resolved = engine.resolved(target).expect("target endpoint");
    let ingress = resolved.direction(Direction::Ingress);
    g.sample_size(100);
    g.bench_function("connection_and_check_http", |b| {
        b.iter(|| {
            let conn = ingress.connection(black_box(peer_identity), Proto::Tcp, black_box(8000));
            black_box(conn.check_http(black_box(&req)).verdict)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
