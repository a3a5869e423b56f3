//! Arbitrary text through the whole policy pipeline: parse and validate every object, then
//! resolve each accepted one for an endpoint and ask the verdict functions about it.
//! Nothing here may panic, whatever the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_policy::http::HttpRequest;
use membrane_policy::resolve::NamedPorts;
use membrane_policy::{Direction, Endpoint, Engine, Identity, LabelSet, Proto};
use std::collections::BTreeSet;

/// Objects resolved per input; keeps one run fast enough for the fuzzer to make progress on
/// files that expand into many objects (`List`s, many documents).
const MAX_OBJECTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(objects) = membrane_policy::parse_file("fuzz.yaml", &text) else {
        return;
    };
    for obj in objects.iter().take(MAX_OBJECTS) {
        // Messages are part of the contract (they name file, object and field): build them.
        let _ = obj.error_lines();
        let _ = obj.warning_lines();
        let Ok(policy) = &obj.result else { continue };
        let ns = obj.namespace.as_deref().unwrap_or("default");
        resolve_one(policy.clone(), ns);
    }
});

fn labels(ns: &str, app: &str) -> LabelSet {
    LabelSet::parse(&format!(
        "k8s:app={app},k8s:role={app},k8s:io.kubernetes.pod.namespace={ns},\
         k8s:io.cilium.k8s.policy.cluster=default"
    ))
    .expect("fixed labels parse")
}

fn resolve_one(policy: std::sync::Arc<membrane_policy::CompiledPolicy>, ns: &str) {
    let mut engine = Engine::default();
    engine.apply_policy(policy);

    // A peer known only by its labels (as if seen in the ipcache) and the endpoint itself.
    let peer = engine
        .ensure_identity(&labels(ns, "frontend"))
        .ok()
        .map(|(id, _)| id);
    let mut named_ports = NamedPorts::new();
    named_ports.insert("http".into(), BTreeSet::from([8080]));
    let endpoint = Endpoint {
        labels: labels(ns, "backend"),
        named_ports,
    };
    let Ok((own, _)) = engine.upsert_endpoint("ns/backend", endpoint) else {
        return;
    };
    let Some(resolved) = engine.resolved("ns/backend") else {
        panic!("an endpoint just upserted has no resolution");
    };

    let mut remotes = vec![own, Identity::WORLD, Identity::HOST];
    remotes.extend(peer);
    remotes.extend(engine.cidr_identities().values().copied());
    let headers: Vec<(String, String)> = vec![("x-token".into(), "secret".into())];
    let requests = [
        HttpRequest {
            method: "GET",
            path: "/",
            host: None,
            headers: &headers,
            secrets: &membrane_policy::http::NoSecrets,
        },
        HttpRequest {
            method: "POST",
            path: "/private/x?y=1",
            host: Some("api.example.com"),
            headers: &headers,
            secrets: &membrane_policy::http::NoSecrets,
        },
    ];
    for dir in [Direction::Ingress, Direction::Egress] {
        let policy = resolved.direction(dir);
        for &remote in &remotes {
            for proto in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
                for port in [0, 80, 8080, 65535] {
                    let conn = policy.connection(remote, proto, port);
                    let _ = conn.l4_verdict();
                    for req in &requests {
                        let _ = conn.check_http(req);
                    }
                }
            }
        }
    }
}
