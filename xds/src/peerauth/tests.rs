use super::*;
use serde_json::json;

const ROOT: &str = "istio-system";

fn pa(ns: &str, name: &str, created: Option<&str>, spec: Value) -> Arc<PeerAuthentication> {
    let mut meta = json!({"name": name, "namespace": ns});
    if let Some(t) = created {
        meta["creationTimestamp"] = t.into();
    }
    let v = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": meta,
        "spec": spec,
    });
    Arc::new(PeerAuthentication::parse("test", &v).unwrap())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mode(m: &str) -> Value {
    json!({"mtls": {"mode": m}})
}

/// (mode, ports) as the sidecar gets it, in Istio's spelling ("-" for "no policy decides").
fn show(e: &Effective) -> (String, Vec<(u16, &'static str)>) {
    (
        e.mode.map_or("-", Mode::as_str).to_string(),
        e.ports.iter().map(|(p, m)| (*p, m.as_str())).collect(),
    )
}

fn resolved(
    all: &[Arc<PeerAuthentication>],
    ns: &str,
    l: &[(&str, &str)],
) -> (String, Vec<(u16, &'static str)>) {
    show(&resolve(ROOT, ns, &labels(l), all))
}

#[test]
fn the_most_specific_level_wins_and_unset_inherits() {
    let mesh = pa(ROOT, "default", None, mode("STRICT"));
    let ns_perm = pa("foo", "default", None, mode("PERMISSIVE"));
    let ns_unset = pa("bar", "default", None, mode("UNSET"));
    let wl = pa(
        "foo",
        "app",
        None,
        json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "DISABLE"}}),
    );
    let wl_unset = pa(
        "bar",
        "app",
        None,
        json!({"selector": {"matchLabels": {"app": "a"}},
               "portLevelMtls": {"8080": {"mode": "DISABLE"}, "9090": {"mode": "UNSET"}}}),
    );
    let all = vec![mesh.clone(), ns_perm, ns_unset, wl, wl_unset];
    type Row<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        (&'a str, &'a [(u16, &'a str)]),
    );
    let table: &[Row] = &[
        // No namespace policy: the mesh's.
        ("other", &[("app", "a")], ("STRICT", &[])),
        // The namespace overrides the mesh.
        ("foo", &[("app", "b")], ("PERMISSIVE", &[])),
        // The workload overrides the namespace.
        ("foo", &[("app", "a"), ("v", "1")], ("DISABLE", &[])),
        // UNSET namespace: the mesh's mode; UNSET workload: the parent's; its port-level
        // UNSET: the workload's resolved mode.
        (
            "bar",
            &[("app", "a")],
            ("STRICT", &[(8080, "DISABLE"), (9090, "STRICT")]),
        ),
        // The root namespace's own workloads: mesh-level only.
        (ROOT, &[("app", "a")], ("STRICT", &[])),
    ];
    for (ns, l, (m, ports)) in table {
        let want = (m.to_string(), ports.to_vec());
        assert_eq!(resolved(&all, ns, l), want, "{ns} {l:?}");
    }
    // Nothing applies: no mode, the sidecar's own setting stays.
    assert_eq!(resolved(&[], "foo", &[]), ("-".into(), vec![]));
    // A workload policy's UNSET ports with nothing above: left to the sidecar.
    let only = pa(
        "foo",
        "w",
        None,
        json!({"selector": {"matchLabels": {"app": "a"}},
               "portLevelMtls": {"80": {"mode": "STRICT"}, "81": {}}}),
    );
    assert_eq!(
        resolved(&[only], "foo", &[("app", "a")]),
        ("-".into(), vec![(80, "STRICT")])
    );
    // Which objects decided, mesh first.
    let e = resolve(ROOT, "bar", &labels(&[("app", "a")]), &all);
    assert_eq!(
        e.policies,
        vec!["istio-system/default", "bar/default", "bar/app"]
    );
}

#[test]
fn a_root_namespace_selector_applies_to_nothing() {
    let all = vec![pa(
        ROOT,
        "sel",
        None,
        json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}}),
    )];
    assert_eq!(resolved(&all, "foo", &[("app", "a")]), ("-".into(), vec![]));
    assert_eq!(resolved(&all, ROOT, &[("app", "a")]), ("-".into(), vec![]));
}

#[test]
fn of_several_at_one_level_the_oldest_then_the_first_name_wins() {
    let old = pa(
        "foo",
        "zz-old",
        Some("2024-01-01T00:00:00Z"),
        mode("STRICT"),
    );
    let new = pa(
        "foo",
        "aa-new",
        Some("2024-06-01T00:00:00Z"),
        mode("DISABLE"),
    );
    assert_eq!(
        resolved(&[new.clone(), old.clone()], "foo", &[]).0,
        "STRICT"
    );
    assert_eq!(
        resolved(&[old.clone(), new.clone()], "foo", &[]).0,
        "STRICT"
    );
    // Same second: by name.
    let b = pa("foo", "b", Some("2024-01-01T00:00:00Z"), mode("DISABLE"));
    let a = pa("foo", "a", Some("2024-01-01T00:00:00Z"), mode("PERMISSIVE"));
    assert_eq!(
        resolved(&[b.clone(), a.clone()], "foo", &[]).0,
        "PERMISSIVE"
    );
    // No timestamp (a file): the oldest, as Go's zero time.
    let file = pa("foo", "zzz", None, mode("DISABLE"));
    assert_eq!(resolved(&[a, file], "foo", &[]).0, "DISABLE");
    // Workload level too, among policies that select the pod; the winner's UNSET mode
    // inherits, it does not fall through to the younger one.
    let w_old = pa(
        "foo",
        "w2",
        Some("2024-01-01T00:00:00Z"),
        json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"80": {"mode": "DISABLE"}}}),
    );
    let w_new = pa(
        "foo",
        "w1",
        Some("2024-02-01T00:00:00Z"),
        json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}}),
    );
    let mesh = pa(ROOT, "default", None, mode("PERMISSIVE"));
    assert_eq!(
        resolved(&[w_new, w_old, mesh], "foo", &[("app", "a")]),
        ("PERMISSIVE".into(), vec![(80, "DISABLE")])
    );
}

#[test]
fn bad_objects_are_refused_naming_object_and_field() {
    let bad = |spec: Value| {
        let v = json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "x", "namespace": "foo"},
            "spec": spec,
        });
        PeerAuthentication::parse("pa.yaml", &v)
            .unwrap_err()
            .to_string()
    };
    let cases = [
        (
            mode("MUTUAL"),
            "pa.yaml: PeerAuthentication foo/x: spec.mtls.mode: \"MUTUAL\" is not a mode",
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"0": {"mode": "STRICT"}}}),
            "spec.portLevelMtls[\"0\"]: not a port",
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"70000": {"mode": "STRICT"}}}),
            "spec.portLevelMtls[\"70000\"]: not a port",
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"http": {"mode": "STRICT"}}}),
            "spec.portLevelMtls[\"http\"]: not a port",
        ),
        (
            json!({"portLevelMtls": {"8080": {"mode": "STRICT"}}}),
            "spec.portLevelMtls: needs spec.selector.matchLabels",
        ),
        (
            json!({"selector": {}, "portLevelMtls": {"8080": {"mode": "STRICT"}}}),
            "spec.portLevelMtls: needs spec.selector.matchLabels",
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {}}),
            "spec.portLevelMtls: if set, needs at least one port",
        ),
        (
            json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {"80": {"mode": "strict"}}}),
            "spec.portLevelMtls[80].mode: \"strict\" is not a mode",
        ),
        (
            json!({"mtl": {"mode": "STRICT"}}),
            "spec.mtl: unknown field `mtl`",
        ),
        (json!({"mtls": {"mode": 3}}), "spec.mtls.mode: invalid type"),
    ];
    for (spec, says) in cases {
        let err = bad(spec.clone());
        assert!(err.contains(says), "{spec}: {err}");
    }
    let v = json!({"apiVersion": "security.istio.io/v2", "kind": "PeerAuthentication",
                   "metadata": {"name": "x"}});
    let err = PeerAuthentication::parse("f", &v).unwrap_err().to_string();
    assert!(
        err.contains("f: PeerAuthentication default/x: apiVersion"),
        "{err}"
    );
}

/// A YAML file as users write it (integer port keys), through the directory source's
/// parser, into a sidecar's snapshot as its `MeshTls`; a bad object rejects the file.
#[test]
fn a_file_reaches_the_sidecar_snapshot() {
    use crate::resource::MESH_TLS;
    use membrane_api::mesh::proto::MeshTls;
    use prost::Message;
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {containers: [{name: app, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.0.0.7}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"#;
    let contents = crate::source::dir::parse("pa.yaml", text).unwrap();
    assert_eq!(contents.state.peer_authentications.len(), 2);
    assert!(contents
        .objects
        .iter()
        .any(|o| o == "PeerAuthentication web"));
    let out = crate::translate::Translator::new().translate(&contents.state);
    let snap = &out.snapshots["sidecar/shop/web-1"];
    let set = snap.resources(MESH_TLS).expect("a MeshTls resource");
    let r = &set.items["shop/web-1"];
    let m = MeshTls::decode(r.body.value.as_slice()).unwrap();
    let e = Effective::from_proto(&m).unwrap();
    assert_eq!(e.mode, Some(Mode::Strict));
    assert_eq!(e.ports, [(8080, Mode::Permissive)].into());
    let bad = text.replace("PERMISSIVE}", "MUTUAL}");
    let err = crate::source::dir::parse("pa.yaml", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "pa.yaml: PeerAuthentication shop/web: spec.portLevelMtls[8080].mode: \"MUTUAL\""
        ),
        "{err}"
    );
}
