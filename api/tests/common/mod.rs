//! What the API crate's integration tests share: a small deterministic generator of
//! CiliumNetworkPolicy text (fixed seeds, so a failure names a seed that reproduces it),
//! the engine set up around it, and the reading of the shared policy corpus.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use membrane_policy::http::{SecretData, SecretName, SecretResolver};
use membrane_policy::resolve::{Endpoint, NamedPorts, ResolvedPolicy};
use membrane_policy::{AllowLocalhost, Engine, Identity, LabelSet, UnenforcedL7Mode};

/// Labels of a pod `app=APP` in namespace `default`.
pub fn pod(app: &str) -> LabelSet {
    LabelSet::parse(&format!(
        "k8s:app={app},k8s:io.kubernetes.pod.namespace=default,\
         k8s:io.cilium.k8s.policy.cluster=default"
    ))
    .expect("fixed labels parse")
}

/// The one secret generated policies name (`default/tok`).
pub struct Tok;

impl SecretResolver for Tok {
    fn secret(&self, name: &SecretName) -> Option<Arc<SecretData>> {
        (name.namespace == "default" && name.name == "tok")
            .then(|| Arc::new(SecretData::from([("token".to_owned(), b"s3cret".to_vec())])))
    }
}

/// A small deterministic generator of CiliumNetworkPolicy text for the endpoint `app=a`.
pub struct Gen {
    /// The seeded source of choices.
    pub rng: fastrand::Rng,
    /// Also generate what NPDS does not carry but the node agent's entries do: SCTP,
    /// named ports, every port (`port: "0"`), serverNames. Off for the NPDS round trip,
    /// whose seeds stay as they were.
    pub extended: bool,
}

impl Gen {
    /// The generator of one test case.
    pub fn seeded(seed: u64, extended: bool) -> Self {
        Gen {
            rng: fastrand::Rng::with_seed(seed),
            extended,
        }
    }

    /// One or two policies, named `p0`, `p1`.
    pub fn policies(&mut self) -> Vec<String> {
        (0..self.rng.usize(1..3))
            .map(|i| self.policy(&format!("p{i}")))
            .collect()
    }

    /// Either way of treating L7 rules nothing enforces.
    pub fn mode(&mut self) -> UnenforcedL7Mode {
        match self.rng.bool() {
            true => UnenforcedL7Mode::FailClosed,
            false => UnenforcedL7Mode::L4Only,
        }
    }

    pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.usize(..from.len())]
    }

    fn peer(&mut self, dir: &str) -> String {
        let (ep, ent, cidr) = match dir {
            "ingress" => ("fromEndpoints", "fromEntities", "fromCIDR"),
            _ => ("toEndpoints", "toEntities", "toCIDR"),
        };
        match self.rng.u8(..7) {
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
        if self.rng.bool() {
            fields.push(format!(
                "method: \"{}\"",
                self.pick(&["GET", "POST", "GET|PUT"])
            ));
        }
        if self.rng.bool() {
            fields.push(format!(
                "path: \"{}\"",
                self.pick(&["/v1/.*", "/public", "/"])
            ));
        }
        if self.rng.u8(..4) == 0 {
            fields.push("host: \"api\\\\.example\\\\.com\"".to_owned());
        }
        match self.rng.u8(..5) {
            0 => fields.push("headers: [\"X-Token: abc\"]".to_owned()),
            1 => fields.push("headers: [X-Present]".to_owned()),
            _ => {}
        }
        match self.rng.u8(..5) {
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
        if self.rng.u8(..4) == 0 {
            return out; // L3 only
        }
        let mut ports = Vec::new();
        for _ in 0..self.rng.usize(1..3) {
            let proto = match self.extended {
                true => self.pick(&["TCP", "TCP", "UDP", "ANY", "SCTP"]),
                false => self.pick(&["TCP", "TCP", "UDP", "ANY"]),
            };
            let extra = if self.extended { 6 } else { 4 };
            ports.push(match self.rng.u8(..extra) {
                0 => format!("{{port: \"9000\", endPort: 9010, protocol: {proto}}}"),
                4 => format!(
                    "{{port: \"{}\", protocol: {proto}}}",
                    self.pick(&["http", "0"])
                ),
                5 => format!("{{port: \"8000\", endPort: 8090, protocol: {proto}}}"),
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
        let every_port = ports.iter().any(|p| p.contains("port: \"0\""));
        if deny || !tcp_only || every_port {
            return out; // L7 rules are for TCP allows of given ports only
        }
        match self.rng.u8(..6) {
            0..=2 => {
                let rules: Vec<String> = (0..self.rng.usize(1..3))
                    .map(|_| self.http_rule())
                    .collect();
                out.push_str(&format!("      rules: {{http: [{}]}}\n", rules.join(", ")));
            }
            3 => out.push_str("      rules: {kafka: [{topic: t}]}\n"),
            // serverNames without L7 rules: only the TLS ClientHello decides.
            4 if self.extended => out.push_str("      serverNames: [api.example.com]\n"),
            _ => {}
        }
        out
    }

    pub fn policy(&mut self, name: &str) -> String {
        let mut out = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
             metadata: {{name: {name}, namespace: default}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: a}}}}\n"
        );
        if self.rng.u8(..4) == 0 {
            out.push_str(&format!(
                "  enableDefaultDeny: {{ingress: {}, egress: {}}}\n",
                self.rng.bool(),
                self.rng.bool()
            ));
        }
        for (section, dir, deny) in [
            ("ingress", "ingress", false),
            ("ingressDeny", "ingress", true),
            ("egress", "egress", false),
            ("egressDeny", "egress", true),
        ] {
            let n = match deny {
                true => self.rng.usize(..4).saturating_sub(2),
                false => self.rng.usize(..4),
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

/// The allow-localhost setting of generated case `seed`: one in three `policy` (the host a
/// peer like any other), else the default, which lets the host in; from the seed, not the
/// generator, so the draws of every seed stay as they were.
pub fn localhost_setting(seed: u64) -> AllowLocalhost {
    match seed % 3 {
        0 => AllowLocalhost::Policy,
        _ => AllowLocalhost::Auto,
    }
}

/// Loads `texts` into an engine with endpoint `app=a` and peers `app=b|c|d`; the resolved
/// policy of the endpoint and the identities to ask about (the host among them).
pub fn resolve(
    texts: &[String],
    mode: UnenforcedL7Mode,
    allow_localhost: AllowLocalhost,
    named_ports: NamedPorts,
) -> (Arc<ResolvedPolicy>, Vec<Identity>) {
    let mut engine = Engine::default();
    engine.set_unenforced_l7(mode);
    engine.set_allow_localhost(allow_localhost);
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
        named_ports,
    };
    let (own, _) = engine.upsert_endpoint("default/a", endpoint).unwrap();
    remotes.push(own);
    remotes.extend(engine.cidr_identities().values().copied());
    (engine.resolved("default/a").unwrap(), remotes)
}

/// Every `matchLabels` map in `v`, in document order (the `endpointSelector`'s first).
pub fn match_labels(v: &serde_yaml_ng::Value, out: &mut Vec<BTreeMap<String, String>>) {
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

/// Every policy of the corpus (`shared/corpus/cnp`, 200 files) that the engine accepts,
/// resolved for an endpoint carrying the labels its `endpointSelector` asks for (and the
/// named port `http` = 80, 8080), with peers carrying every label set the file names:
/// `check(what, resolved, remotes)` for each, under the default allow-localhost (the host
/// let in where no rule names it); returns how many were enforced in a direction.
pub fn for_each_corpus_policy(mut check: impl FnMut(&str, &ResolvedPolicy, &[Identity])) -> usize {
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
            check(&format!("{name}: {}", obj.name), &orig, &remotes);
        }
    }
    enforced
}
