//! The NPDS encoder and decoder tested against each other: for a policy resolved by the
//! engine, `decode(encode(p))` (through the wire bytes) must give the same verdicts as `p`
//! for a grid of peers, ports and requests. Verdicts are compared, not structures: the
//! decoder may order rules differently and does not keep origins' policy keys.
//!
//! Policies come from a small deterministic generator (fixed seeds, so a failure names a
//! seed that reproduces it) and from the real policies in `shared/corpus/cnp`.

use std::collections::BTreeMap;
use std::sync::Arc;

use membrane_api::npds::{decode, encode};
use membrane_api::proto::NetworkPolicy;
use membrane_policy::http::{HttpRequest, SecretData, SecretName, SecretResolver};
use membrane_policy::resolve::{DirectionPolicy, Endpoint, NamedPorts, ResolvedPolicy};
use membrane_policy::{Direction, Engine, Identity, LabelSet, Proto, UnenforcedL7Mode};
use prost::Message;

/// Labels of a pod `app=APP` in namespace `default`.
fn pod(app: &str) -> LabelSet {
    LabelSet::parse(&format!(
        "k8s:app={app},k8s:io.kubernetes.pod.namespace=default,\
         k8s:io.cilium.k8s.policy.cluster=default"
    ))
    .expect("fixed labels parse")
}

/// The one secret generated policies name (`default/tok`).
struct Tok;

impl SecretResolver for Tok {
    fn secret(&self, name: &SecretName) -> Option<Arc<SecretData>> {
        (name.namespace == "default" && name.name == "tok")
            .then(|| Arc::new(SecretData::from([("token".to_owned(), b"s3cret".to_vec())])))
    }
}

/// `p` through the encoder, the wire bytes and the decoder.
fn round_trip(p: &ResolvedPolicy) -> ResolvedPolicy {
    let named = NamedPorts::new();
    let np = encode::network_policy(vec!["10.0.0.1".into()], 7, p, &named, &named);
    let wire = NetworkPolicy::decode(np.encode_to_vec().as_slice()).expect("own bytes decode");
    assert_eq!(wire, np, "the message survives the wire");
    decode::network_policy(&wire).expect("the decoder accepts what the encoder writes")
}

const PORTS: [u16; 6] = [80, 443, 8080, 9000, 9005, 9011];

/// Every verdict of `orig` and `decoded` on the grid, compared; `what` names the case.
fn same_verdicts(
    orig: &ResolvedPolicy,
    decoded: &ResolvedPolicy,
    remotes: &[Identity],
    what: &str,
) {
    let header_sets: Vec<Vec<(String, String)>> = vec![
        vec![],
        vec![("x-token".into(), "abc".into())],
        vec![
            ("x-token".into(), "s3cret".into()),
            ("x-present".into(), "1".into()),
        ],
        vec![("x-h".into(), "v".into())],
        vec![
            ("x-h".into(), "other".into()),
            ("x-token".into(), "abc".into()),
        ],
    ];
    let mut requests = Vec::new();
    for method in ["GET", "POST", "PUT"] {
        for path in ["/", "/v1/x", "/public", "/public/x"] {
            for host in [None, Some("api.example.com")] {
                for headers in &header_sets {
                    requests.push((method, path, host, headers));
                }
            }
        }
    }
    for dir in [Direction::Ingress, Direction::Egress] {
        let (a, b): (&DirectionPolicy, &DirectionPolicy) =
            (orig.direction(dir), decoded.direction(dir));
        for port in PORTS {
            // Whether the port has HTTP rules at all is not compared: the encoder leaves out
            // rules that select no identity, which decide nothing.
            let at = |detail: &str| format!("{what}: {dir:?} port {port}: {detail}");
            for &remote in remotes {
                let (ca, cb) = (
                    a.connection(remote, Proto::Tcp, port),
                    b.connection(remote, Proto::Tcp, port),
                );
                let at = |detail: &str| at(&format!("remote {}: {detail}", remote.0));
                assert_eq!(ca.l4_verdict(), cb.l4_verdict(), "{}", at("L4 verdict"));
                assert_eq!(ca.needs_http(), cb.needs_http(), "{}", at("needs HTTP"));
                for (method, path, host, headers) in &requests {
                    let req = HttpRequest {
                        method,
                        path,
                        host: *host,
                        headers: *headers,
                        secrets: &Tok,
                    };
                    let (da, db) = (ca.check_http(&req), cb.check_http(&req));
                    let at = at(&format!("{method} {path} host={host:?} {headers:?}"));
                    assert_eq!(da.verdict, db.verdict, "{at}: verdict");
                    assert_eq!(da.header_actions, db.header_actions, "{at}: header actions");
                }
            }
        }
    }
}

/// A small deterministic generator of CiliumNetworkPolicy text for the endpoint `app=a`.
struct Gen(fastrand::Rng);

impl Gen {
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.0.usize(..from.len())]
    }

    fn peer(&mut self, dir: &str) -> String {
        let (ep, ent, cidr) = match dir {
            "ingress" => ("fromEndpoints", "fromEntities", "fromCIDR"),
            _ => ("toEndpoints", "toEntities", "toCIDR"),
        };
        match self.0.u8(..7) {
            0 => format!("{ep}: [{{matchLabels: {{app: b}}}}]"),
            1 => format!("{ep}: [{{matchLabels: {{app: c}}}}, {{matchLabels: {{app: a}}}}]"),
            2 => format!("{ep}: [{{}}]"),
            3 => format!(
                "{ent}: [{}]",
                self.pick(&["world", "all", "host", "cluster"])
            ),
            4 => format!("{cidr}: [10.1.0.0/16]"),
            5 => format!("{ep}: [{{matchLabels: {{app: b}}}}, {{matchLabels: {{app: d}}}}]"),
            _ => format!("{ep}: [{{matchLabels: {{app: nobody}}}}]"),
        }
    }

    fn http_rule(&mut self) -> String {
        let mut fields = Vec::new();
        if self.0.bool() {
            fields.push(format!(
                "method: \"{}\"",
                self.pick(&["GET", "POST", "GET|PUT"])
            ));
        }
        if self.0.bool() {
            fields.push(format!(
                "path: \"{}\"",
                self.pick(&["/v1/.*", "/public", "/"])
            ));
        }
        if self.0.u8(..4) == 0 {
            fields.push("host: \"api\\\\.example\\\\.com\"".to_owned());
        }
        match self.0.u8(..5) {
            0 => fields.push("headers: [\"X-Token: abc\"]".to_owned()),
            1 => fields.push("headers: [X-Present]".to_owned()),
            _ => {}
        }
        match self.0.u8(..5) {
            0 => {
                let mismatch = self.pick(&["", "ADD", "LOG", "DELETE", "REPLACE"]);
                let mismatch = match mismatch {
                    "" => String::new(),
                    m => format!(", mismatch: {m}"),
                };
                fields.push(format!(
                    "headerMatches: [{{name: x-h, value: v{mismatch}}}]"
                ));
            }
            1 => fields.push("headerMatches: [{name: x-token, secret: {name: tok}}]".to_owned()),
            _ => {}
        }
        format!("{{{}}}", fields.join(", "))
    }

    fn rule(&mut self, dir: &str, deny: bool) -> String {
        let mut out = format!("  - {}\n", self.peer(dir));
        if self.0.u8(..4) == 0 {
            return out; // L3 only
        }
        let mut ports = Vec::new();
        for _ in 0..self.0.usize(1..3) {
            let proto = self.pick(&["TCP", "TCP", "UDP", "ANY"]);
            ports.push(match self.0.u8(..4) {
                0 => format!("{{port: \"9000\", endPort: 9010, protocol: {proto}}}"),
                _ => format!(
                    "{{port: \"{}\", protocol: {proto}}}",
                    self.pick(&["80", "443", "8080"])
                ),
            });
        }
        out.push_str(&format!(
            "    toPorts:\n    - ports: [{}]\n",
            ports.join(", ")
        ));
        let tcp_only = ports.iter().all(|p| p.contains("TCP"));
        if deny || !tcp_only {
            return out; // L7 rules are for TCP allows only
        }
        match self.0.u8(..6) {
            0..=2 => {
                let rules: Vec<String> =
                    (0..self.0.usize(1..3)).map(|_| self.http_rule()).collect();
                out.push_str(&format!("      rules: {{http: [{}]}}\n", rules.join(", ")));
            }
            3 => out.push_str("      rules: {kafka: [{topic: t}]}\n"),
            _ => {}
        }
        out
    }

    fn policy(&mut self, name: &str) -> String {
        let mut out = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
             metadata: {{name: {name}, namespace: default}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: a}}}}\n"
        );
        if self.0.u8(..4) == 0 {
            out.push_str(&format!(
                "  enableDefaultDeny: {{ingress: {}, egress: {}}}\n",
                self.0.bool(),
                self.0.bool()
            ));
        }
        for (section, dir, deny) in [
            ("ingress", "ingress", false),
            ("ingressDeny", "ingress", true),
            ("egress", "egress", false),
            ("egressDeny", "egress", true),
        ] {
            let n = match deny {
                true => self.0.usize(..4).saturating_sub(2),
                false => self.0.usize(..4),
            };
            if n == 0 {
                continue;
            }
            out.push_str(&format!("  {section}:\n"));
            for _ in 0..n {
                out.push_str(&self.rule(dir, deny));
            }
        }
        out
    }
}

/// Loads `texts` into an engine with endpoint `app=a` and peers `app=b|c|d`; the resolved
/// policy of the endpoint and the identities to ask about.
fn resolve(texts: &[String], mode: UnenforcedL7Mode) -> (Arc<ResolvedPolicy>, Vec<Identity>) {
    let mut engine = Engine::default();
    engine.set_unenforced_l7(mode);
    for (i, text) in texts.iter().enumerate() {
        for obj in membrane_policy::parse_file(&format!("p{i}.yaml"), text).unwrap() {
            match &obj.result {
                Ok(p) => {
                    engine.apply_policy(p.clone());
                }
                Err(_) => panic!("generated policy invalid: {:?}\n{text}", obj.error_lines()),
            }
        }
    }
    let mut remotes = vec![Identity::WORLD, Identity::HOST, Identity(424_242)];
    for app in ["b", "c", "d"] {
        remotes.push(engine.ensure_identity(&pod(app)).unwrap().0);
    }
    let endpoint = Endpoint {
        labels: pod("a"),
        named_ports: NamedPorts::new(),
    };
    let (own, _) = engine.upsert_endpoint("default/a", endpoint).unwrap();
    remotes.push(own);
    remotes.extend(engine.cidr_identities().values().copied());
    (engine.resolved("default/a").unwrap(), remotes)
}

#[test]
fn decode_of_encode_decides_as_the_generated_policy() {
    let mut seen_http = 0;
    for seed in 0..300u64 {
        let mut g = Gen(fastrand::Rng::with_seed(seed));
        let texts: Vec<String> = (0..g.0.usize(1..3))
            .map(|i| g.policy(&format!("p{i}")))
            .collect();
        let mode = match g.0.bool() {
            true => UnenforcedL7Mode::FailClosed,
            false => UnenforcedL7Mode::L4Only,
        };
        let (orig, remotes) = resolve(&texts, mode);
        seen_http += usize::from(
            PORTS
                .iter()
                .any(|p| orig.ingress.has_http_on(Proto::Tcp, *p)),
        );
        let decoded = round_trip(&orig);
        same_verdicts(
            &orig,
            &decoded,
            &remotes,
            &format!("seed {seed} ({mode:?})\n{}", texts.join("---\n")),
        );
    }
    // The generator must reach the interesting part: HTTP rules on a port.
    assert!(
        seen_http > 50,
        "only {seen_http} of 300 policies had HTTP rules"
    );
}

/// Every policy of the corpus that the engine accepts, for an endpoint carrying the labels
/// its `endpointSelector` asks for, with peers carrying every label set the file names.
#[test]
fn decode_of_encode_decides_as_every_corpus_policy() {
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("../../shared/corpus/cnp");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 200, "corpus files");
    let mut enforced = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        for obj in membrane_policy::parse_file(&name, &text).unwrap() {
            let Ok(policy) = &obj.result else { continue };
            let ns = obj.namespace.as_deref().unwrap_or("default");
            let mut engine = Engine::default();
            engine.apply_policy(policy.clone());
            let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(
                text.split("\n---")
                    .find(|doc| doc.contains(&obj.name))
                    .unwrap_or(&text),
            )
            .unwrap_or_default();
            let mut label_sets = Vec::new();
            match_labels(&yaml, &mut label_sets);
            let labels = |m: &BTreeMap<String, String>| {
                let mut text: Vec<String> = m
                    .iter()
                    .map(|(k, v)| match k.split_once(':') {
                        Some(_) => format!("{k}={v}"),
                        None => format!("k8s:{k}={v}"),
                    })
                    .collect();
                if !m.keys().any(|k| k.contains("io.kubernetes.pod.namespace")) {
                    text.push(format!("k8s:io.kubernetes.pod.namespace={ns}"));
                }
                text.push("k8s:io.cilium.k8s.policy.cluster=default".into());
                LabelSet::parse(&text.join(","))
            };
            let mut remotes = vec![Identity::WORLD, Identity::HOST, Identity(424_242)];
            for m in &label_sets {
                if let Ok(l) = labels(m) {
                    if let Ok((id, _)) = engine.ensure_identity(&l) {
                        remotes.push(id);
                    }
                }
            }
            // The endpoint: the first label set (the endpointSelector's, when it has one).
            let own = label_sets
                .first()
                .and_then(|m| labels(m).ok())
                .unwrap_or_else(|| pod("a"));
            let endpoint = Endpoint {
                labels: own,
                named_ports: NamedPorts::from([("http".into(), [80, 8080].into())]),
            };
            let (id, _) = engine.upsert_endpoint("ep", endpoint).unwrap();
            remotes.push(id);
            remotes.extend(engine.cidr_identities().values().copied());
            let orig = engine.resolved("ep").unwrap();
            enforced += usize::from(orig.ingress.enforced || orig.egress.enforced);
            let decoded = round_trip(&orig);
            same_verdicts(&orig, &decoded, &remotes, &format!("{name}: {}", obj.name));
        }
    }
    assert!(
        enforced > 100,
        "only {enforced} corpus policies selected their endpoint"
    );
}

/// Every `matchLabels` map in `v`, in document order (the `endpointSelector`'s first).
fn match_labels(v: &serde_yaml_ng::Value, out: &mut Vec<BTreeMap<String, String>>) {
    use serde_yaml_ng::Value;
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                if k.as_str() == Some("matchLabels") {
                    if let Ok(labels) = serde_yaml_ng::from_value(v.clone()) {
                        out.push(labels);
                    }
                } else {
                    match_labels(v, out);
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| match_labels(v, out)),
        _ => {}
    }
}
