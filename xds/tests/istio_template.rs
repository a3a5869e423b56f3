//! `istio-patches/`: the `membrane` injection template, rendered as Istio's
//! injector renders it (Go text/template via the `gtmpl` crate, the Istio
//! and sprig functions it calls, the data Istio passes: `.ObjectMeta`,
//! `.Spec`, `.DeploymentMeta`, `.TypeMeta`, `.ProxyConfig`, `.MeshConfig`,
//! `.Values` with the istiod chart's defaults, `.NativeSidecars`), for the
//! golden pods of `inject_golden.rs`. The rendered `istio-proxy` container,
//! volumes, labels and annotations must be what membrane-xds's own webhook
//! injects (one truth); the merged pod must validate; a broken template
//! fails; the overlays carry the template verbatim.
//!
//! Istio's injector adds `ISTIO_KUBE_APP_PROBERS` and the status annotation
//! in Go after rendering any template, so those are not compared here (the
//! golden files pin the webhook's).
//!
//! Modelling notes: Go field access is keys with Go's names; methods Istio's
//! template calls on protos (`.GetValue`, `.String`) are keys too; gtmpl
//! ranges over maps in hash order, so the cases keep `proxyMetadata` to one
//! key.

mod golden_pods;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gtmpl::{Context, Func, FuncError, Template, Value as G};
use membrane_xds::inject::{self, sidecar::workload, Sidecar};
use serde_json::{json, Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---- Istio's and sprig's template functions the template calls ----

fn s(v: &G) -> String {
    match v {
        G::String(s) => s.clone(),
        G::NoValue | G::Nil => String::new(),
        other => other.to_string(),
    }
}

fn arg(a: &[G], i: usize, f: &str) -> Result<G, FuncError> {
    a.get(i)
        .cloned()
        .ok_or_else(|| FuncError::AtLeastXArgs(f.into(), i + 1))
}

fn map_of(v: &G) -> Option<&HashMap<String, G>> {
    match v {
        G::Map(m) | G::Object(m) => Some(m),
        _ => None,
    }
}

/// Istio: `annotation(meta, name, default)`: the annotation, else `fmt.Sprint(default)`.
fn annotation(a: &[G]) -> Result<G, FuncError> {
    let meta = arg(a, 0, "annotation")?;
    let name = s(&arg(a, 1, "annotation")?);
    let found = map_of(&meta)
        .and_then(|m| map_of(m.get("Annotations")?))
        .and_then(|ann| ann.get(&name).cloned());
    Ok(G::String(s(&found.unwrap_or(arg(a, 2, "annotation")?))))
}

/// Istio: `valueOrDefault(value, default)`.
fn value_or_default(a: &[G]) -> Result<G, FuncError> {
    let v = arg(a, 0, "valueOrDefault")?;
    Ok(if s(&v).is_empty() {
        arg(a, 1, "valueOrDefault")?
    } else {
        v
    })
}

/// Istio: `isset(map, key)`.
fn isset(a: &[G]) -> Result<G, FuncError> {
    let m = arg(a, 0, "isset")?;
    let k = s(&arg(a, 1, "isset")?);
    Ok(G::Bool(map_of(&m).is_some_and(|m| m.contains_key(&k))))
}

/// Istio: `toLower`.
fn to_lower(a: &[G]) -> Result<G, FuncError> {
    Ok(G::String(s(&arg(a, 0, "toLower")?).to_lowercase()))
}

/// sprig: `default DEFAULT VALUE` (VALUE piped last).
fn default(a: &[G]) -> Result<G, FuncError> {
    let d = arg(a, 0, "default")?;
    let v = a.get(1).cloned().unwrap_or(G::NoValue);
    Ok(if s(&v).is_empty() { d } else { v })
}

/// sprig: `quote` (Go's %q of the string).
fn quote(a: &[G]) -> Result<G, FuncError> {
    Ok(G::String(
        serde_json::to_string(&s(&arg(a, 0, "quote")?)).expect("a string"),
    ))
}

/// sprig: `dict K V ...`.
fn dict(a: &[G]) -> Result<G, FuncError> {
    let mut m = HashMap::new();
    for p in a.chunks(2) {
        m.insert(s(&p[0]), p.get(1).cloned().unwrap_or(G::Nil));
    }
    Ok(G::Map(m))
}

/// sprig: `first LIST`.
fn first(a: &[G]) -> Result<G, FuncError> {
    match arg(a, 0, "first")? {
        G::Array(v) => Ok(v.first().cloned().unwrap_or(G::Nil)),
        other => Err(FuncError::Generic(format!("first of {other}"))),
    }
}

/// sprig: `rest LIST`.
fn rest(a: &[G]) -> Result<G, FuncError> {
    match arg(a, 0, "rest")? {
        G::Array(v) => Ok(G::Array(v.into_iter().skip(1).collect())),
        other => Err(FuncError::Generic(format!("rest of {other}"))),
    }
}

/// Go's JSON of a `ContainerPort` (its field order, omitempty), as
/// Istio's `structToJSON` writes it.
fn struct_to_json(a: &[G]) -> Result<G, FuncError> {
    let p = arg(a, 0, "structToJSON")?;
    let m = map_of(&p).ok_or_else(|| FuncError::Generic(format!("structToJSON of {p}")))?;
    if !m.contains_key("ContainerPort") {
        return Err(FuncError::Generic(
            "structToJSON: not a ContainerPort".into(),
        ));
    }
    let mut out = Vec::new();
    for (go, js) in [
        ("Name", "name"),
        ("HostPort", "hostPort"),
        ("ContainerPort", "containerPort"),
        ("Protocol", "protocol"),
        ("HostIP", "hostIP"),
    ] {
        match m.get(go) {
            None | Some(G::NoValue) | Some(G::Nil) => {}
            Some(G::String(v)) if v.is_empty() => {}
            Some(G::String(v)) => out.push(format!("\"{js}\":{}", json!(v))),
            Some(G::Number(n)) if js == "hostPort" && n.as_u64() == Some(0) => {}
            Some(v) => out.push(format!("\"{js}\":{v}")),
        }
    }
    Ok(G::String(format!("{{{}}}", out.join(","))))
}

fn to_json(v: &G) -> Value {
    match v {
        G::Map(m) | G::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        G::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        G::String(s) => json!(s),
        G::Bool(b) => json!(b),
        G::Number(n) => serde_json::from_str(&n.to_string()).unwrap(),
        _ => Value::Null,
    }
}

/// Istio: `protoToJSON` (protojson of the ProxyConfig; field order is the
/// proto's there, JSON-equal to this).
fn proto_to_json(a: &[G]) -> Result<G, FuncError> {
    let mut pc = to_json(&arg(a, 0, "protoToJSON")?);
    // The message's JSON fields are lowerCamel; the Go-named keys model
    // what the template reads in Go.
    if let Value::Object(m) = &mut pc {
        m.retain(|k, _| k.starts_with(|c: char| c.is_ascii_lowercase()));
    }
    Ok(G::String(pc.to_string()))
}

fn template(text: &str) -> Result<Template, String> {
    let mut t = Template::default();
    t.add_funcs(&[
        ("annotation", annotation as Func),
        ("valueOrDefault", value_or_default as Func),
        ("isset", isset as Func),
        ("toLower", to_lower as Func),
        ("default", default as Func),
        ("quote", quote as Func),
        ("dict", dict as Func),
        ("first", first as Func),
        ("rest", rest as Func),
        ("structToJSON", struct_to_json as Func),
        ("protoToJSON", proto_to_json as Func),
    ]);
    t.parse(text).map_err(|e| e.to_string())?;
    Ok(t)
}

// ---- the data Istio passes ----

fn g(v: &Value) -> G {
    match v {
        Value::Null => G::Nil,
        Value::Bool(b) => G::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(G::from)
            .unwrap_or_else(|| G::from(n.as_f64().unwrap())),
        Value::String(s) => G::String(s.clone()),
        Value::Array(a) => G::Array(a.iter().map(g).collect()),
        Value::Object(o) => G::Map(o.iter().map(|(k, v)| (k.clone(), g(v))).collect()),
    }
}

/// A JSON object re-keyed with Go's field names (`containerPort` → `ContainerPort`).
fn go_named(v: &Value, keys: &[(&str, &str)]) -> HashMap<String, G> {
    keys.iter()
        .filter_map(|(js, go)| v.get(*js).map(|x| (go.to_string(), g(x))))
        .collect()
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(e) if e.is_object() && v.is_object() => merge(e, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The template data for `pod` in namespace `shop`.
fn data(pod: &Value, native: bool) -> G {
    let mesh: Value = serde_yaml_ng::from_str(&read("istio-patches/mesh-config.yaml")).unwrap();
    let meta = &pod["metadata"];
    let annotations = meta.get("annotations").cloned().unwrap_or(json!({}));
    let mut object_meta = go_named(meta, &[("name", "Name"), ("namespace", "Namespace")]);
    object_meta.insert("Labels".into(), g(meta.get("labels").unwrap_or(&json!({}))));
    object_meta.insert("Annotations".into(), g(&annotations));
    let containers: Vec<G> = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ports = c["ports"].as_array().cloned().unwrap_or_default();
            let mut m = go_named(c, &[("name", "Name"), ("image", "Image")]);
            m.insert(
                "Ports".into(),
                G::Array(
                    ports
                        .iter()
                        .map(|p| {
                            G::Map(go_named(
                                p,
                                &[
                                    ("name", "Name"),
                                    ("hostPort", "HostPort"),
                                    ("containerPort", "ContainerPort"),
                                    ("protocol", "Protocol"),
                                    ("hostIP", "HostIP"),
                                ],
                            ))
                        })
                        .collect(),
                ),
            );
            G::Map(m)
        })
        .collect();
    let mut spec = go_named(
        &pod["spec"],
        &[("serviceAccountName", "ServiceAccountName")],
    );
    spec.insert("Containers".into(), G::Array(containers));

    // Istio: the mesh's defaultConfig with the pod's proxy.istio.io/config merged in.
    let mut pc = mesh["defaultConfig"].clone();
    if let Some(text) = annotations
        .get("proxy.istio.io/config")
        .and_then(Value::as_str)
    {
        merge(&mut pc, serde_yaml_ng::from_str(text).unwrap());
    }
    let mut proxy_config = match g(&pc) {
        G::Map(m) => m,
        _ => unreachable!(),
    };
    let hold = pc["holdApplicationUntilProxyStarts"] == json!(true);
    proxy_config.insert(
        "HoldApplicationUntilProxyStarts".into(),
        G::Map(HashMap::from([("GetValue".to_string(), G::Bool(hold))])),
    );
    let mode = pc
        .get("interceptionMode")
        .and_then(Value::as_str)
        .unwrap_or("REDIRECT");
    proxy_config.insert(
        "InterceptionMode".into(),
        G::Map(HashMap::from([("String".to_string(), G::from(mode))])),
    );
    proxy_config.insert(
        "ProxyMetadata".into(),
        g(pc.get("proxyMetadata").unwrap_or(&json!({}))),
    );

    let (name, api, kind) = workload(meta);
    // The istiod chart's defaults for what the template reads.
    let values = json!({"revision": "", "global": {
        "meshID": "", "trustDomain": "cluster.local",
        "caAddress": "", "istioNamespace": "istio-system",
        "multiCluster": {"clusterName": ""},
        "proxy": {
            "holdApplicationUntilProxyStarts": false,
            "readinessInitialDelaySeconds": 0, "readinessPeriodSeconds": 15, "readinessFailureThreshold": 4,
            "startupProbe": {"enabled": true, "failureThreshold": 600},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2000m", "memory": "1024Mi"}},
        },
    }});
    G::Map(HashMap::from([
        ("ObjectMeta".to_string(), G::Map(object_meta)),
        ("Spec".to_string(), G::Map(spec)),
        (
            "DeploymentMeta".to_string(),
            G::Map(HashMap::from([
                ("Name".to_string(), G::from(name)),
                ("Namespace".to_string(), G::from("shop")),
            ])),
        ),
        (
            "TypeMeta".to_string(),
            G::Map(HashMap::from([
                ("APIVersion".to_string(), G::from(api)),
                ("Kind".to_string(), G::from(kind)),
            ])),
        ),
        ("ProxyConfig".to_string(), G::Map(proxy_config)),
        (
            "MeshConfig".to_string(),
            G::Map(HashMap::from([(
                "TrustDomain".to_string(),
                g(&mesh["trustDomain"]),
            )])),
        ),
        ("Values".to_string(), g(&values)),
        ("NativeSidecars".to_string(), G::Bool(native)),
        ("Revision".to_string(), G::from("default")),
    ]))
}

fn render(text: &str, pod: &Value, native: bool) -> Result<Value, String> {
    let t = template(text)?;
    let out = t
        .render(&Context::from(data(pod, native)))
        .map_err(|e| e.to_string())?;
    serde_yaml_ng::from_str(&out).map_err(|e| format!("{e}\n{out}"))
}

/// What membrane-xds's webhook makes of `pod`.
fn webhook(pod: &Value, native: bool) -> Value {
    let mut s = Sidecar::new(
        concat!("membrane:", env!("CARGO_PKG_VERSION")),
        "https://membrane-xds.membrane-system.svc:15012",
        pod["metadata"]["labels"]["istio.io/rev"]
            .as_str()
            .unwrap_or("default"),
    );
    s.native_sidecars = native;
    // With istiod, its CA: what Istio's template sets by default.
    s.ca_address = Some("istiod.istio-system.svc:15012".into());
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "t", "namespace": "shop", "operation": "CREATE", "object": pod}});
    let r = inject::review(review.to_string().as_bytes(), "/inject", &s).unwrap();
    golden_pods::patched(pod, &r.review["response"]).expect("injected")
}

fn proxy_of(pod: &Value) -> (&'static str, Value) {
    for list in ["initContainers", "containers"] {
        if let Some(c) = pod["spec"][list]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "istio-proxy"))
        {
            return (list, c.clone());
        }
    }
    panic!("no istio-proxy in {pod:#}")
}

/// The rendered template merged into the pod (Istio merges strategically:
/// lists of containers and volumes by name, maps by key).
fn merged(pod: &Value, rendered: &Value) -> Value {
    let mut out = pod.clone();
    for m in ["labels", "annotations"] {
        for (k, v) in rendered["metadata"][m].as_object().into_iter().flatten() {
            out["metadata"][m][k] = v.clone();
        }
    }
    for list in ["initContainers", "containers", "volumes"] {
        if let Some(items) = rendered["spec"][list].as_array() {
            let target = out["spec"]
                .as_object_mut()
                .unwrap()
                .entry(list)
                .or_insert(json!([]));
            target.as_array_mut().unwrap().extend(items.iter().cloned());
        }
    }
    out
}

const CASES: [(&str, bool); 9] = [
    ("plain", true),
    ("multi-container", true),
    ("named-ports", true),
    ("probes", true),
    ("cronjob", true),
    ("revision", true),
    ("fallback-hold", false),
    ("annotations", true),
    ("no-probe-rewrite", true),
];

#[test]
fn the_template_injects_what_the_webhook_injects() {
    let text = read("istio-patches/membrane-template.yaml");
    assert!(
        text.contains(concat!("`membrane:", env!("CARGO_PKG_VERSION"), "`")),
        "the template's default image is this release's"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (case, native) in CASES {
        let pod = golden_pods::pod(case);
        let rendered = render(&text, &pod, native).unwrap_or_else(|e| panic!("{case}: {e}"));
        let ours = webhook(&pod, native);

        let (list, mut want) = proxy_of(&ours);
        let (rlist, got) = proxy_of(&rendered);
        assert_eq!(rlist, list, "{case}: placement");
        // Istio's Go code adds the probers after any template renders.
        want["env"]
            .as_array_mut()
            .unwrap()
            .retain(|e| e["name"] != "ISTIO_KUBE_APP_PROBERS");
        assert_eq!(got, want, "{case}: the container");

        let theirs: Vec<&Value> = rendered["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        let own = pod["spec"]["volumes"].as_array().map_or(0, Vec::len);
        let added: Vec<&Value> = ours["spec"]["volumes"].as_array().unwrap()[own..]
            .iter()
            .collect();
        assert_eq!(theirs, added, "{case}: volumes");
        for m in ["labels", "annotations"] {
            for (k, v) in rendered["metadata"][m].as_object().unwrap() {
                assert_eq!(&ours["metadata"][m][k], v, "{case}: {m} {k}");
            }
        }
        let wanted_labels = ours["metadata"]["labels"].as_object().unwrap().len()
            - pod["metadata"]["labels"].as_object().map_or(0, Map::len);
        assert_eq!(
            rendered["metadata"]["labels"].as_object().unwrap().len(),
            wanted_labels,
            "{case}"
        );

        let f = tmp.path().join(format!("{case}.json"));
        std::fs::write(&f, merged(&pod, &rendered).to_string()).unwrap();
        files.push(f);
    }
    golden_pods::validate(&files);
}

#[test]
fn a_broken_template_fails() {
    let text = read("istio-patches/membrane-template.yaml");
    let pod = golden_pods::pod("plain");
    // An unclosed action, a function Istio does not have, a field the data
    // has not, YAML that does not parse.
    let broken = [
        text.replacen("{{- end }}", "", 1),
        text.replacen("toLower", "toLowerCase", 1),
        text.replacen(
            "protoToJSON .ProxyConfig",
            "protoToJSON .ProxyConfig.Nope.Deeper",
            1,
        ),
        text.replacen("  - name: istio-proxy", " - name: istio-proxy", 1),
    ];
    for (i, b) in broken.iter().enumerate() {
        assert_ne!(b, &text, "case {i} changed nothing");
        let r = render(b, &pod, true);
        let ok_but_different = r
            .as_ref()
            .is_ok_and(|v| proxy_of(v).1 != proxy_of(&webhook(&pod, true)).1);
        assert!(r.is_err() || ok_but_different, "case {i}: {r:?}");
    }
}

#[test]
fn the_overlays_carry_the_template_and_the_discovery_address() {
    let text = read("istio-patches/membrane-template.yaml");
    let mesh: Value = serde_yaml_ng::from_str(&read("istio-patches/mesh-config.yaml")).unwrap();
    let addr = &mesh["defaultConfig"]["discoveryAddress"];
    assert_eq!(addr, "membrane-xds.membrane-system.svc:15012");
    let op: Value = serde_yaml_ng::from_str(&read("istio-patches/istio-operator.yaml")).unwrap();
    assert_eq!(op["apiVersion"], "install.istio.io/v1alpha1");
    assert_eq!(op["kind"], "IstioOperator");
    assert_eq!(
        op["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["membrane"],
        json!(text)
    );
    assert_eq!(
        &op["spec"]["meshConfig"]["defaultConfig"]["discoveryAddress"],
        addr
    );
    let helm: Value = serde_yaml_ng::from_str(&read("istio-patches/helm-values.yaml")).unwrap();
    assert_eq!(
        helm["sidecarInjectorWebhook"]["templates"]["membrane"],
        json!(text)
    );
    assert_eq!(
        &helm["meshConfig"]["defaultConfig"]["discoveryAddress"],
        addr
    );
    // The README's steps name the files that exist.
    let readme = read("istio-patches/README.md");
    for f in [
        "membrane-template.yaml",
        "istio-operator.yaml",
        "helm-values.yaml",
        "mesh-config.yaml",
        "inject.istio.io/templates: membrane",
    ] {
        assert!(readme.contains(f), "README lacks {f}");
    }
    assert!(Path::new(&root().join("istio-patches/README.md")).exists());
}
