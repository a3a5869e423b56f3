//! What gets injected, as Istio's `sidecar` injection template and its
//! injector's post-processing build it, with `membrane-proxy` in place of
//! istio-proxy: the `istio-proxy` container (a native sidecar, or a plain
//! container on older clusters), its volumes, Istio's labels and
//! annotations, the rewritten app probes and `sidecar.istio.io/status`.
//!
//! `istio-patches/membrane-template.yaml` renders the same container from
//! Istio's own injector; `xds/tests/istio_template.rs` holds the two equal.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::probes::{self, Captured};
use super::{
    Sidecar, CERTS_DIR, CERTS_VOLUME, CONTAINER, PROXY_UID, RECORDS_SOCKET_FILE, RECORDS_VOLUME,
    ROOT_CONFIGMAP, ROOT_DIR, ROOT_VOLUME, STATUS_ANNOTATION, TOKEN_AUDIENCE, TOKEN_DIR,
    TOKEN_VOLUME,
};

/// Istio's annotation overriding the proxy image.
pub const PROXY_IMAGE_ANNOTATION: &str = "sidecar.istio.io/proxyImage";
/// Istio's per-pod ProxyConfig overrides (YAML or JSON).
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
/// Istio's per-pod choice of a native sidecar (`"true"`/`"false"`).
pub const NATIVE_SIDECAR_ANNOTATION: &str = "sidecar.istio.io/nativeSidecar";
/// Istio's per-pod switch for app-probe rewriting.
pub const REWRITE_PROBES_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// Volumes the injection adds (besides the certificate's).
pub const VOLUMES: [&str; 3] = ["istio-envoy", "istio-data", "istio-podinfo"];

/// Why a pod is refused (Istio refuses these pods too).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// `proxy.istio.io/config` is not a YAML/JSON map.
    #[error("annotation {PROXY_CONFIG_ANNOTATION}: {0}")]
    ProxyConfig(String),
}

/// Istio's `SidecarInjectionStatus`, in its field order.
#[derive(Serialize)]
struct Status<'a> {
    #[serde(rename = "initContainers")]
    init_containers: Option<Vec<&'a str>>,
    containers: Option<Vec<&'a str>>,
    volumes: Option<Vec<&'a str>>,
    #[serde(rename = "imagePullSecrets")]
    image_pull_secrets: Option<Vec<&'a str>>,
    revision: &'a str,
}

/// The workload a pod belongs to, as Istio's `GetDeployMetaFromPod` names
/// it: `(name, apiVersion, kind)`.
pub fn workload(meta: &Value) -> (String, String, String) {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut name = s(meta, "name");
    let (mut api, mut kind) = ("v1".to_string(), "Pod".to_string());
    if !s(meta, "generateName").is_empty() {
        let controller = meta
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r.get("controller") == Some(&Value::Bool(true)));
        if let Some(r) = controller {
            api = s(r, "apiVersion");
            kind = s(r, "kind");
            name = s(r, "name");
            let hash = meta
                .pointer("/labels/pod-template-hash")
                .and_then(Value::as_str)
                .unwrap_or("");
            if kind == "ReplicaSet" && !hash.is_empty() && name.ends_with(hash) {
                name = name
                    .strip_suffix(&format!("-{hash}"))
                    .unwrap_or(&name)
                    .to_string();
                kind = "Deployment".into();
            } else if kind == "Job" {
                // A CronJob's Job is NAME-<8 to 11 digits of schedule time>.
                if let Some((base, stamp)) = name.rsplit_once('-') {
                    if (8..=11).contains(&stamp.len())
                        && stamp.bytes().all(|b| b.is_ascii_digit())
                        && !base.is_empty()
                    {
                        name = base.to_string();
                        kind = "CronJob".into();
                        api = "batch/v1".into();
                    }
                }
            }
        }
    }
    if name.is_empty() {
        name = s(meta, "name");
    }
    (name, api, kind)
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Recursive merge of JSON maps (Istio merges `proxy.istio.io/config` into
/// the mesh's default ProxyConfig field by field; maps such as
/// `proxyMetadata` merge key by key).
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The pod's ProxyConfig: the mesh default (the control plane's address)
/// with the pod's `proxy.istio.io/config` merged in.
pub fn proxy_config(
    sidecar: &Sidecar,
    annotations: &Map<String, Value>,
) -> Result<Value, InjectError> {
    let mut pc = sidecar.default_proxy_config();
    if let Some(text) = annotations.get(PROXY_CONFIG_ANNOTATION) {
        let text = text.as_str().unwrap_or("");
        let over: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| InjectError::ProxyConfig(format!("not YAML: {e}")))?;
        match over {
            Value::Object(_) => merge(&mut pc, over),
            Value::Null => {}
            other => {
                return Err(InjectError::ProxyConfig(format!(
                    "{} is not a map of ProxyConfig fields",
                    super::short(&other)
                )))
            }
        }
    }
    Ok(pc)
}

/// Istio's `ISTIO_META_POD_PORTS`: every container port as Go's
/// `structToJSON` writes a `ContainerPort` (its field order).
pub fn pod_ports(containers: &[Value]) -> String {
    let mut out = Vec::new();
    for p in containers.iter().flat_map(|c| {
        c.get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    }) {
        let mut fields = Vec::new();
        for k in ["name", "hostPort", "containerPort", "protocol", "hostIP"] {
            match p.get(k) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(Value::Number(n)) if n.as_u64() == Some(0) && k == "hostPort" => {}
                Some(v) => fields.push(format!("{}:{v}", Value::from(k))),
            }
        }
        out.push(format!("{{{}}}", fields.join(",")));
    }
    format!("[{}]", out.join(","))
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// The injected pod: `pod` with the sidecar, its volumes, Istio's labels
/// and annotations, rewritten probes and the status annotation.
/// `path_env` comes from Istio's `/inject/KEY/VALUE` path.
pub fn inject(
    pod: &Value,
    namespace: &str,
    sidecar: &Sidecar,
    path_env: &[(String, String)],
) -> Result<Value, InjectError> {
    let mut out = pod.clone();
    let empty = Map::new();
    let meta = pod.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let annotations = meta
        .get("annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let labels = meta
        .get("labels")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let ann = |k: &str| annotations.get(k).and_then(Value::as_str);
    let label = |k: &str| {
        labels
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let spec = pod.get("spec").cloned().unwrap_or_else(|| json!({}));
    let containers: Vec<Value> = spec["containers"].as_array().cloned().unwrap_or_default();
    let app_names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .filter(|n| *n != CONTAINER)
        .collect();

    let pc = proxy_config(sidecar, annotations)?;
    // As Istio's template: any value but "false" asks for a native sidecar.
    let native = ann(NATIVE_SIDECAR_ANNOTATION).map_or(sidecar.native_sidecars, |v| v != "false");
    let hold = pc.get("holdApplicationUntilProxyStarts") == Some(&Value::Bool(true));
    let (workload, api, kind) = workload(&meta);
    let workload_ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };

    // The environment of the sidecar contract, in the order of Istio's template.
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        json!({"name": "PROXY_CONFIG", "value": format!("{pc}\n")}),
        json!({"name": "ISTIO_META_POD_PORTS", "value": pod_ports(&containers)}),
        json!({"name": "ISTIO_META_APP_CONTAINERS", "value": app_names.join(",")}),
        json!({"name": "ISTIO_META_CLUSTER_ID", "value": sidecar.cluster_id}),
        json!({"name": "ISTIO_META_INTERCEPTION_MODE", "value": ann("sidecar.istio.io/interceptionMode")
            .or_else(|| pc.get("interceptionMode").and_then(Value::as_str))
            .unwrap_or("REDIRECT")}),
    ];
    if !workload.is_empty() {
        env.push(json!({"name": "ISTIO_META_WORKLOAD_NAME", "value": workload}));
        env.push(json!({"name": "ISTIO_META_OWNER", "value": format!(
            "kubernetes://apis/{api}/namespaces/{workload_ns}/{}s/{workload}",
            kind.to_lowercase()
        )}));
    }
    env.push(json!({"name": "ISTIO_META_MESH_ID", "value": sidecar.mesh_id()}));
    env.push(json!({"name": "TRUST_DOMAIN", "value": sidecar.trust_domain}));
    if let Some(ca) = &sidecar.ca_address {
        env.push(json!({"name": "CA_ADDR", "value": ca}));
    }
    if let Some(dir) = &sidecar.records_dir {
        let socket = format!("{}/{RECORDS_SOCKET_FILE}", dir.trim_end_matches('/'));
        env.push(json!({"name": "MEMBRANE_RECORDS_SOCKET", "value": socket}));
    }
    if let Some(md) = pc.get("proxyMetadata").and_then(Value::as_object) {
        for (k, v) in md {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            env.push(json!({"name": k, "value": v}));
        }
    }
    // Istio's path parameters replace what the template set, sorted, last.
    let mut path_env = path_env.to_vec();
    path_env.sort();
    env.retain(|e| !path_env.iter().any(|(k, _)| e["name"] == k.as_str()));
    env.extend(path_env.iter().map(|(k, v)| json!({"name": k, "value": v})));

    let mtls = sidecar.xds_address.starts_with("https://");
    let mut mounts = vec![
        json!({"name": "istio-data", "mountPath": "/var/lib/istio/data"}),
        json!({"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}),
        json!({"name": "istio-podinfo", "mountPath": "/etc/istio/pod"}),
    ];
    let mut volumes = vec![
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-data", "emptyDir": {}}),
        json!({"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}}),
    ];
    if let Some(dir) = &sidecar.records_dir {
        // The node agent's socket: the sidecar alone mounts it (read-write, to connect);
        // the agent tells the pods apart by their network namespace.
        mounts.push(json!({"name": RECORDS_VOLUME, "mountPath": dir}));
        volumes.push(
            json!({"name": RECORDS_VOLUME, "hostPath": {"path": dir, "type": "DirectoryOrCreate"}}),
        );
    }
    if mtls {
        let sa = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        mounts.push(json!({"name": CERTS_VOLUME, "mountPath": CERTS_DIR, "readOnly": true}));
        mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR}));
        mounts.push(json!({"name": ROOT_VOLUME, "mountPath": ROOT_DIR}));
        // The Secret (`membrane cert issue`) is optional: without it the sidecar asks
        // the CA with the projected token and verifies against the mesh root ConfigMap
        // (optional too, for a cluster that only uses Secrets); a sidecar with neither
        // is never ready and says why.
        volumes.push(json!({"name": CERTS_VOLUME, "secret": {
            "secretName": super::cert_secret_name(sa), "optional": true}}));
        volumes.push(json!({"name": TOKEN_VOLUME, "projected": {"sources": [
            {"serviceAccountToken": {"audience": TOKEN_AUDIENCE, "expirationSeconds": 43200, "path": "istio-token"}}
        ]}}));
        volumes.push(json!({"name": ROOT_VOLUME, "configMap": {
            "name": ROOT_CONFIGMAP, "optional": true}}));
    }

    let probe = |period: u32, threshold: u32, delay: u32| {
        json!({
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "initialDelaySeconds": delay,
            "periodSeconds": period,
            "timeoutSeconds": 3,
            "failureThreshold": threshold,
        })
    };
    let any_resource = [
        "proxyCPU",
        "proxyMemory",
        "proxyCPULimit",
        "proxyMemoryLimit",
    ]
    .iter()
    .any(|k| ann(&format!("sidecar.istio.io/{k}")).is_some());
    let resources = if any_resource {
        let mut r = json!({});
        for (k, section, field) in [
            ("proxyCPU", "requests", "cpu"),
            ("proxyMemory", "requests", "memory"),
            ("proxyCPULimit", "limits", "cpu"),
            ("proxyMemoryLimit", "limits", "memory"),
        ] {
            if let Some(v) = ann(&format!("sidecar.istio.io/{k}")) {
                r[section][field] = json!(v);
            }
        }
        r
    } else {
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2000m", "memory": "1024Mi"}})
    };
    let mut c = json!({
        "name": CONTAINER,
        "image": ann(PROXY_IMAGE_ANNOTATION).unwrap_or(&sidecar.image),
        "command": ["membrane-proxy"],
        "args": ["sidecar"],
        "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
        "env": env,
        "startupProbe": probe(1, 600, 0),
        "readinessProbe": probe(15, 4, 0),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
        },
        "resources": resources,
        "volumeMounts": mounts,
    });
    if native {
        c["restartPolicy"] = json!("Always");
    } else if hold {
        // Without native sidecars the kubelet starts containers in order
        // and runs each postStart hook to the end first: the proxy goes
        // first and its hook returns once it is ready.
        c["lifecycle"] = json!({"postStart": {"exec": {"command": ["membrane-proxy", "wait"]}}});
    }

    // Labels and annotations Istio's template writes.
    let (name_label, rev_label) = (
        label("service.istio.io/canonical-name")
            .or(label("app.kubernetes.io/name"))
            .or(label("app"))
            .unwrap_or(&workload)
            .to_string(),
        label("service.istio.io/canonical-revision")
            .or(label("app.kubernetes.io/version"))
            .or(label("version"))
            .unwrap_or("latest")
            .to_string(),
    );
    let meta_out = out
        .as_object_mut()
        .expect("a pod is a map")
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let labels_out = meta_out
        .as_object_mut()
        .expect("metadata is a map")
        .entry("labels")
        .or_insert_with(|| json!({}));
    for (k, v) in [
        (
            "security.istio.io/tlsMode",
            label("security.istio.io/tlsMode").unwrap_or("istio"),
        ),
        ("service.istio.io/canonical-name", &name_label),
        ("service.istio.io/canonical-revision", &rev_label),
    ] {
        labels_out[k] = json!(v);
    }
    if let Some((_, net)) = path_env.iter().find(|(k, _)| k == "ISTIO_META_NETWORK") {
        labels_out["topology.istio.io/network"] = json!(net);
    }
    let ann_out = meta_out
        .as_object_mut()
        .expect("metadata is a map")
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if let Some(first) = app_names.first() {
        for k in [
            "kubectl.kubernetes.io/default-logs-container",
            "kubectl.kubernetes.io/default-container",
        ] {
            if ann(k).is_none() {
                ann_out[k] = json!(first);
            }
        }
    }
    let injected_volumes: Vec<&str> = volumes.iter().filter_map(|v| v["name"].as_str()).collect();
    let status = Status {
        init_containers: native.then(|| vec![CONTAINER]),
        containers: (!native).then(|| vec![CONTAINER]),
        volumes: Some(injected_volumes),
        image_pull_secrets: None,
        revision: if sidecar.revision.is_empty() {
            "default"
        } else {
            &sidecar.revision
        },
    };
    ann_out[STATUS_ANNOTATION] = json!(serde_json::to_string(&status).expect("status serializes"));

    // Probes: the application's containers (init containers too: a native
    // sidecar of the application's own has probes) hand theirs to the proxy.
    let spec_out = out["spec"].as_object_mut().expect("checked: spec is a map");
    let rewrite = ann(REWRITE_PROBES_ANNOTATION)
        .and_then(go_bool)
        .unwrap_or(sidecar.rewrite_probes);
    if rewrite {
        let captured = Captured::from_annotations(annotations);
        let mut inits = spec_out.remove("initContainers");
        let mut conts = spec_out.remove("containers");
        let mut all: Vec<&mut Value> = Vec::new();
        for list in [&mut inits, &mut conts] {
            if let Some(Value::Array(a)) = list {
                all.extend(a.iter_mut());
            }
        }
        if let Some(probers) = probes::rewrite_all(&mut all, &captured) {
            c["env"]
                .as_array_mut()
                .expect("env is a list")
                .push(json!({"name": probes::APP_PROBERS_ENV, "value": probers}));
        }
        for (k, v) in [("initContainers", inits), ("containers", conts)] {
            if let Some(v) = v {
                spec_out.insert(k.into(), v);
            }
        }
    }

    // Placement, as Istio orders it after merging its template.
    if native {
        let inits = spec_out
            .entry("initContainers")
            .or_insert_with(|| json!([]));
        if !inits.is_array() {
            *inits = json!([]);
        }
        inits.as_array_mut().expect("a list").insert(0, c);
    } else {
        let list = spec_out["containers"]
            .as_array_mut()
            .expect("checked: a list");
        if hold {
            list.insert(0, c);
        } else {
            list.push(c);
        }
    }
    let vols = spec_out.entry("volumes").or_insert_with(|| json!([]));
    if !vols.is_array() {
        *vols = json!([]);
    }
    vols.as_array_mut().expect("a list").extend(volumes);
    Ok(out)
}
