//! The `cilium.io/v2` CRDs in `manifests/kubernetes/crds.yaml`: generated
//! from the policy model, structural, interchangeable with Cilium's own (same
//! names, and the same verdict on each of the 200 real policies of
//! `shared/corpus/cnp` as Cilium's CRDs give under strict field validation),
//! and bad objects are refused naming the field.

mod generate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..")
}

fn crds_file() -> PathBuf {
    root().join("manifests/kubernetes/crds.yaml")
}

fn cilium_crds() -> PathBuf {
    // shared/ sits beside the repository, in development and in CI alike.
    root().join("../shared/corpus/cnp/crds")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// One object's verdict from scripts/k8s-validate.py --json.
#[derive(Debug, Deserialize)]
struct Verdict {
    file: String,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    errors: Vec<String>,
}

impl Verdict {
    fn key(&self) -> String {
        let file = Path::new(&self.file).file_name().unwrap().to_string_lossy();
        format!(
            "{file}: {} {}/{}",
            self.kind.as_deref().unwrap_or(""),
            self.namespace.as_deref().unwrap_or(""),
            self.name.as_deref().unwrap_or("")
        )
    }
}

/// Validates `files` with the CRDs of `crd_dir` (the kinds of `crds.yaml` only).
fn verdicts(crd_dir: &Path, files: &[PathBuf]) -> BTreeMap<String, Vec<String>> {
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/k8s-validate.py"))
        .arg("--crds")
        .arg(crd_dir)
        .args(["-k", "1.34.0", "--json"])
        .args(files)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: Verdict = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        if matches!(
            v.kind.as_deref(),
            Some("CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "PrefilterDenyList")
        ) {
            // Several objects of a file may share a name (a CNP and a CCNP
            // both called "default"): their errors are kept together.
            map.entry(v.key())
                .or_insert_with(Vec::new)
                .extend(v.errors.clone());
        }
    }
    map
}

/// Our CRDs in a directory of their own, for --crds.
fn our_crd_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(crds_file(), dir.path().join("crds.yaml")).unwrap();
    dir
}

#[test]
fn crds_are_the_ones_generated_from_the_policy_model() {
    let want = generate::crds_yaml();
    if std::env::var_os("MEMBRANE_BLESS").is_some() {
        std::fs::write(crds_file(), &want).unwrap();
    }
    let have = std::fs::read_to_string(crds_file()).unwrap_or_default();
    assert!(
        have == want,
        "{} is not what the policy model generates; regenerate with \
         MEMBRANE_BLESS=1 cargo nextest run -p membrane-xds --test crds",
        crds_file().display()
    );
}

#[test]
fn crds_name_the_kinds_as_ciliums_do_and_are_structural() {
    let ours = yaml_docs(&crds_file());
    let mut theirs: Vec<Value> = std::fs::read_dir(cilium_crds())
        .unwrap()
        .flat_map(|e| yaml_docs(&e.unwrap().path()))
        .collect();
    theirs.sort_by_key(|c| c["metadata"]["name"].as_str().unwrap().to_string());
    let mut ours_sorted: Vec<Value> = ours
        .iter()
        .filter(|c| c["spec"]["group"] == "cilium.io")
        .cloned()
        .collect();
    ours_sorted.sort_by_key(|c| c["metadata"]["name"].as_str().unwrap().to_string());
    assert_eq!(ours_sorted.len(), 2);
    assert_eq!(ours.len(), 3, "the two of Cilium's and PrefilterDenyList");
    structural(
        &ours[2]["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        "PrefilterDenyList",
    );
    assert_eq!(theirs.len(), 2);
    for (o, t) in ours_sorted.iter().zip(&theirs) {
        assert_eq!(o["metadata"]["name"], t["metadata"]["name"]);
        for field in ["group", "names", "scope"] {
            assert_eq!(o["spec"][field], t["spec"][field], "spec.{field}");
        }
        let versions = |c: &Value| -> Vec<Value> {
            c["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| json!([v["name"], v["served"], v["storage"], v["subresources"]]))
                .collect()
        };
        assert_eq!(versions(o), versions(t));
        // The same top-level fields: an object one CRD keeps, the other keeps too.
        let top = |c: &Value| -> Vec<String> {
            let mut k: Vec<String> = c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                ["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            k.sort();
            k
        };
        assert_eq!(top(o), top(t));
        let rule = &o["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let their_rule =
            &t["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys(rule), keys(their_rule), "a rule's fields");
        structural(
            &o["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            "openAPIV3Schema",
        );
    }
}

/// Kubernetes' structural schema rules that the generator must keep: a type
/// on every node (or int-or-string / preserve-unknown-fields), no `$ref`,
/// no `additionalProperties: false`, no defaults.
fn structural(s: &Value, path: &str) {
    let m = s
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not a schema"));
    assert!(
        m.contains_key("type")
            || m.contains_key("x-kubernetes-int-or-string")
            || m.contains_key("x-kubernetes-preserve-unknown-fields"),
        "{path}: no type in {s}"
    );
    for bad in ["$ref", "definitions", "$defs", "default", "nullable"] {
        assert!(!m.contains_key(bad), "{path}: {bad} in {s}");
    }
    if m.contains_key("x-kubernetes-int-or-string") {
        assert!(
            !m.contains_key("anyOf") && !m.contains_key("type"),
            "{path}"
        );
    }
    if let Some(a) = m.get("additionalProperties") {
        assert!(a.is_object(), "{path}: additionalProperties {a}");
        assert!(
            !m.contains_key("properties"),
            "{path}: both kinds of fields"
        );
        structural(a, &format!("{path}.*"));
    }
    for (k, sub) in m
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural(sub, &format!("{path}.{k}"));
    }
    if let Some(items) = m.get("items") {
        structural(items, &format!("{path}[]"));
    }
}

#[test]
fn every_corpus_policy_gets_the_same_verdict_from_our_crds_as_from_ciliums() {
    let corpus = root().join("../shared/corpus/cnp");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 200, "corpus files");
    let dir = our_crd_dir();
    let ours = verdicts(dir.path(), &files);
    let theirs = verdicts(&cilium_crds(), &files);
    assert!(ours.len() >= 200, "{} policy objects", ours.len());
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    let mut differ = Vec::new();
    for (k, errs) in &ours {
        if errs.is_empty() != theirs[k].is_empty() {
            differ.push(format!("{k}: ours {errs:?}, Cilium's {:?}", theirs[k]));
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
    // What both refuse: the four objects an API server with strict field
    // validation refuses (see the corpus' INDEX.md), each naming the field.
    let refused: BTreeMap<&str, String> = ours
        .iter()
        .filter(|(_, e)| !e.is_empty())
        .map(|(k, e)| (k.as_str(), e.join("; ")))
        .collect();
    let names: Vec<&str> = refused.keys().copied().collect();
    assert_eq!(
        names,
        [
            "cilium-cilium__examples__policies__auth__auth.yaml: CiliumNetworkPolicy /l3-egress-rule",
            "cilium-cilium__examples__policies__l3__match-expressions__and-statement.yaml: CiliumNetworkPolicy /and-statement-policy",
            "cilium-cilium__examples__policies__l3__match-expressions__or-statement.yaml: CiliumNetworkPolicy /or-statement-policy",
            "cilium-star-wars-demo__l7_policy.yaml: CiliumNetworkPolicy /deathstar-api-protection",
            "cilium-star-wars-demo__policy__l7_policy.yaml: CiliumNetworkPolicy /deathstar-api-protection",
        ]
    );
    let why: Vec<&String> = refused.values().collect();
    assert!(
        why[0].contains("spec.egress[0]") && why[0].contains("'auth'"),
        "{}",
        why[0]
    );
    for w in &why[1..3] {
        assert!(
            w.contains("spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: 'in'"),
            "{w}"
        );
    }
    // The Star Wars demo's top-level `description` is no CRD field.
    for w in &why[3..] {
        assert!(w.contains("'description' was unexpected"), "{w}");
    }
}

#[test]
fn invalid_objects_are_refused_naming_the_field() {
    let base = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                             "rules": {"http": [{"method": "GET", "path": "/"}]}}],
            }],
        },
    });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "misspelt field",
            json!({"spec": {"ingress": [{"fromEndpoint": []}]}}),
            "spec.ingress[0]: Additional properties are not allowed ('fromEndpoint' was unexpected)",
        ),
        (
            "protocol outside the enum",
            json!({"spec": {"ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]}}),
            "spec.ingress[0].toPorts[0].ports[0].protocol: 'tcp' is not one of",
        ),
        (
            "a list where a rule goes",
            json!({"spec": {"ingress": "everyone"}}),
            "spec.ingress: 'everyone' is not of type 'array'",
        ),
        (
            "a required field missing",
            json!({"spec": {"egress": [{"toPorts": [{"ports": [{"protocol": "TCP"}]}]}]}}),
            "spec.egress[0].toPorts[0].ports[0]: 'port' is a required property",
        ),
        (
            "an ICMP type that is neither number nor name",
            json!({"spec": {"egress": [{"icmps": [{"fields": [{"type": [8]}]}]}]}}),
            "spec.egress[0].icmps[0].fields[0].type: [8] is not valid",
        ),
        (
            "an unknown entity",
            json!({"specs": [{"endpointSelector": {}, "egress": [{"toEntities": ["everywhere"]}]}]}),
            "specs[0].egress[0].toEntities[0]: 'everywhere' is not one of",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let dir = our_crd_dir();
    // The valid object passes, so each failure below is its change's.
    let f = tmp.path().join("valid.json");
    std::fs::write(&f, base.to_string()).unwrap();
    let v = verdicts(dir.path(), &[f]);
    assert_eq!(v.values().next().unwrap(), &Vec::<String>::new(), "{v:?}");
    for (what, change, want) in cases {
        let mut obj = base.clone();
        for (k, val) in change.as_object().unwrap() {
            obj[k] = val.clone();
        }
        let f = tmp.path().join("bad.json");
        std::fs::write(&f, obj.to_string()).unwrap();
        let v = verdicts(dir.path(), &[f]);
        let errs = v.values().next().unwrap();
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{what}: want {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn the_example_policies_are_valid_for_our_crds() {
    // manifests/README.md applies them.
    let mut files = Vec::new();
    for dir in std::fs::read_dir(root().join("manifests/examples")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    let dir = our_crd_dir();
    let v = verdicts(dir.path(), &files);
    assert!(v.len() >= 4, "{v:?}");
    for (k, errs) in &v {
        assert!(errs.is_empty(), "{k}: {errs:?}");
    }
}

#[test]
fn prefilter_deny_lists_are_checked_by_the_crd_and_by_membrane_xds() {
    let obj = |spec: Value| {
        json!({
            "apiVersion": "membrane.io/v1alpha1",
            "kind": "PrefilterDenyList",
            "metadata": {"name": "l"},
            "spec": spec,
        })
    };
    let cases = [
        (
            "good",
            obj(json!({"cidrs": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]})),
            "",
        ),
        (
            "typo",
            obj(json!({"cidr": ["10.0.0.0/8"]})),
            "'cidrs' is a required property",
        ),
        ("empty", obj(json!({"cidrs": []})), "spec.cidrs"),
        ("number", obj(json!({"cidrs": [10]})), "spec.cidrs[0]"),
        (
            "name",
            obj(json!({"cidrs": ["evil.example.com/8"]})),
            "spec.cidrs[0]",
        ),
    ];
    let dir = our_crd_dir();
    let files = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = cases
        .iter()
        .map(|(name, v, _)| {
            let p = files.path().join(format!("{name}.yaml"));
            std::fs::write(&p, serde_yaml_ng::to_string(v).unwrap()).unwrap();
            p
        })
        .collect();
    let v = verdicts(dir.path(), &paths);
    for (name, _, says) in &cases {
        let errs = &v[&format!("{name}.yaml: PrefilterDenyList /l")];
        if says.is_empty() {
            assert!(errs.is_empty(), "{name}: {errs:?}");
        } else {
            assert!(errs.join("; ").contains(says), "{name}: {errs:?}");
        }
    }
    // What the schema cannot see, membrane-xds refuses naming the object and the field.
    let host_bits = obj(json!({"cidrs": ["10.0.0.0/8", "10.1.2.3/8"]}));
    let p = files.path().join("host-bits.yaml");
    std::fs::write(&p, serde_yaml_ng::to_string(&host_bits).unwrap()).unwrap();
    assert!(
        verdicts(dir.path(), std::slice::from_ref(&p))["host-bits.yaml: PrefilterDenyList /l"]
            .is_empty()
    );
    let e =
        membrane_xds::source::dir::parse("host-bits.yaml", &std::fs::read_to_string(&p).unwrap())
            .unwrap_err()
            .to_string();
    assert_eq!(
        e,
        "host-bits.yaml: PrefilterDenyList l: spec.cidrs[1]: \"10.1.2.3/8\": host bits set (the \
         prefix is 10.0.0.0/8)"
    );
}
