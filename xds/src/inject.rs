//! Sidecar injection: an `admission.k8s.io/v1` AdmissionReview for a Pod in,
//! the AdmissionReview to answer with out (the same `uid`, `allowed: true`
//! and, when the pod gets a sidecar, a JSONPatch adding the `membrane-proxy`
//! container and Istio's `sidecar.istio.io/status` annotation).
//!
//! No I/O here: `webhook.rs` serves this over HTTPS. It never denies a pod:
//! a pod the rules skip, or one that cannot take the sidecar, is allowed
//! unchanged (the latter with a warning the API server shows the client);
//! only input that is not an AdmissionReview for a Pod is an error.
//!
//! Capture is done by the node's eBPF programs (membrane-agent honours the
//! `traffic.sidecar.istio.io/*` annotations), so unlike Istio there is no
//! init container and the sidecar needs no capability.

use base64::Engine;
use serde_json::{json, Map, Value};

/// The injected container's name.
pub const CONTAINER: &str = "membrane-proxy";
/// Istio's annotation listing what was injected; its presence marks a pod as
/// injected for istioctl and for this webhook.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Istio's per-pod opt-out (label or annotation).
pub const INJECT_KEY: &str = "sidecar.istio.io/inject";
/// Tells kubectl which container `logs`/`exec` mean by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
/// The uid the sidecar runs as (Istio's `istio-proxy` uid; the datapath
/// exempts its connections from capture).
pub const PROXY_UID: i64 = 1337;
/// Namespaces never injected, as Istio.
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];
/// The sidecar's own listener: `membrane-proxy standalone` requires one
/// (`--listen`/`--upstream`); bound to loopback so only the pod reaches it.
pub const PROXY_LISTEN_PORT: u16 = 15007;
/// The sidecar's capture listeners, as the sidecar's tests use them too.
pub use membrane_api::sidecar::{CAPTURE_INBOUND, CAPTURE_OUTBOUND};
/// Ports the sidecar binds in the pod's network namespace, with the names
/// its container declares: outbound and inbound capture (Istio's 15001 and
/// 15006), merged metrics and readiness (named as Istio's own templates
/// name 15020 and 15021).
pub const PROXY_PORTS: [(u16, &str); 4] = [
    (15001, "outbound"),
    (15006, "inbound"),
    (15020, "metrics"),
    (15021, "health"),
];

/// Where the sidecar's workload certificate is mounted, in Istio's legacy
/// layout: `cert-chain.pem`, `key.pem`, `root-cert.pem`.
pub const CERTS_DIR: &str = "/etc/certs";

/// The Secret holding the workload certificate of pods running as
/// `service_account` (in the pod's namespace), as Istio's legacy
/// `istio.SERVICE_ACCOUNT`; `membrane cert issue --secret` writes it.
pub fn cert_secret_name(service_account: &str) -> String {
    format!("membrane.{service_account}")
}

/// The injected volume holding the workload certificate Secret.
pub const CERTS_VOLUME: &str = "membrane-certs";

/// What the injected container is made of (from `membrane-xds` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// Container image of membrane-proxy.
    pub image: String,
    /// The control plane the sidecar dials: `https://HOST:15012` (mTLS with
    /// the pod's workload certificate, mounted from Secret
    /// `membrane.SERVICE_ACCOUNT`) or a plaintext `http://` address (no
    /// certificate mounted).
    pub xds_address: String,
    /// Istio revision recorded in the status annotation.
    pub revision: String,
}

/// Why a request is not an AdmissionReview for a Pod (answered with 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    /// The body does not parse as JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// apiVersion/kind are not `admission.k8s.io/v1` / `AdmissionReview`.
    #[error(
        "not an admission.k8s.io/v1 AdmissionReview: {field} is {found}, expected {expected:?}"
    )]
    NotAdmissionReview {
        /// The field that differs.
        field: &'static str,
        /// What it holds (JSON).
        found: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A required field of the request is missing or has the wrong type.
    #[error("AdmissionReview {field}: {what}")]
    BadRequest {
        /// JSON path of the field.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The object under review is not a Pod.
    #[error("AdmissionReview {field} is {found}, expected a Pod")]
    NotPod {
        /// JSON path of the field naming the kind.
        field: &'static str,
        /// What it holds.
        found: String,
    },
    /// `/inject/KEY/VALUE/...` with a key that cannot be an environment
    /// variable name.
    #[error(
        "path {path}: {key:?} is not an environment variable name (letters, digits, '_', '-', '.')"
    )]
    BadPathKey {
        /// The request path.
        path: String,
        /// The offending key.
        key: String,
    },
}

/// What the webhook decided for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar is added by the patch.
    Injected,
    /// Allowed unchanged: the reason (a skip rule).
    Skipped(String),
    /// Allowed unchanged because the pod cannot take the sidecar: the
    /// warning returned to the client.
    NotPatchable(String),
}

/// The answer: the AdmissionReview to send back and what was decided.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// `admission.k8s.io/v1` AdmissionReview with `response` set.
    pub review: Value,
    /// The decision, for logs and metrics.
    pub outcome: Outcome,
    /// `namespace/name` of the pod (the name may be a `generateName` prefix).
    pub pod: String,
}

/// Environment variables Istio's `/inject/KEY/VALUE/...` path parameters
/// set on the sidecar: `cluster` and `net` map to Istio's names, any other
/// key is upper-cased; `--slash--` in a value stands for `/`; a trailing key
/// without a value is ignored, as Istio does.
pub fn path_env(path: &str) -> Result<Vec<(String, String)>, ReviewError> {
    let rest = path
        .strip_prefix("/inject")
        .unwrap_or("")
        .trim_start_matches('/')
        .trim_end_matches('/');
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::new();
    for pair in parts.chunks_exact(2) {
        let key = match pair[0] {
            "cluster" => "ISTIO_META_CLUSTER_ID".to_string(),
            "net" => "ISTIO_META_NETWORK".to_string(),
            k => k.to_ascii_uppercase(),
        };
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(ReviewError::BadPathKey {
                path: path.to_string(),
                key: pair[0].to_string(),
            });
        }
        out.push((key, pair[1].replace("--slash--", "/")));
    }
    Ok(out)
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// Reviews one request body received on `path` (`/inject` or
/// `/inject/KEY/VALUE/...`).
pub fn review(body: &[u8], path: &str, sidecar: &Sidecar) -> Result<Reviewed, ReviewError> {
    let env = path_env(path)?;
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    if !doc.is_object() {
        return Err(ReviewError::NotAdmissionReview {
            field: "the body",
            found: short(&doc),
            expected: "an object",
        });
    }
    for (f, expected) in [
        ("apiVersion", "admission.k8s.io/v1"),
        ("kind", "AdmissionReview"),
    ] {
        let found = doc.get(f).unwrap_or(&Value::Null);
        if found.as_str() != Some(expected) {
            return Err(ReviewError::NotAdmissionReview {
                field: f,
                found: short(found),
                expected,
            });
        }
    }
    let req = field(&doc, "request").ok_or(ReviewError::BadRequest {
        field: "request",
        what: "missing".into(),
    })?;
    let uid = match field(req, "uid") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(v) if !v.is_string() => {
            return Err(ReviewError::BadRequest {
                field: "request.uid",
                what: format!("{} is not a string", short(v)),
            })
        }
        _ => {
            return Err(ReviewError::BadRequest {
                field: "request.uid",
                what: "missing".into(),
            })
        }
    };
    if let Some(k) = field(req, "kind") {
        let kind = (
            k.get("group").and_then(Value::as_str).unwrap_or(""),
            k.get("kind").and_then(Value::as_str),
        );
        if kind != ("", Some("Pod")) {
            return Err(ReviewError::NotPod {
                field: "request.kind",
                found: short(k),
            });
        }
    }
    let pod = match field(req, "object") {
        Some(o @ Value::Object(_)) => o,
        Some(o) => {
            return Err(ReviewError::NotPod {
                field: "request.object",
                found: short(o),
            })
        }
        None => {
            return Err(ReviewError::BadRequest {
                field: "request.object",
                what: "missing".into(),
            })
        }
    };
    if let Some(k) = field(pod, "kind") {
        if k.as_str() != Some("Pod") {
            return Err(ReviewError::NotPod {
                field: "request.object.kind",
                found: short(k),
            });
        }
    }

    let meta = field(pod, "metadata");
    let str_at = |v: Option<&Value>, k: &str| {
        v.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut namespace = str_at(meta, "namespace");
    if namespace.is_empty() {
        namespace = str_at(Some(req), "namespace");
    }
    let mut name = str_at(meta, "name");
    if name.is_empty() {
        name = str_at(meta, "generateName");
    }
    let pod_name = format!("{namespace}/{name}");

    let operation = str_at(Some(req), "operation");
    let outcome_patch = if !operation.is_empty() && operation != "CREATE" {
        (
            Outcome::Skipped(format!("operation {operation}: only CREATE is injected")),
            None,
        )
    } else {
        decide(pod, meta, &namespace, sidecar, &env)
    };
    let (outcome, patch) = outcome_patch;
    let mut response = json!({ "uid": uid, "allowed": true });
    if let Some(p) = patch {
        let bytes = serde_json::to_vec(&p).expect("a JSON value serializes");
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    if let Outcome::NotPatchable(w) = &outcome {
        response["warnings"] = json!([w]);
    }
    Ok(Reviewed {
        review: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        outcome,
        pod: pod_name,
    })
}

/// A value shown in an error, cut short.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// Istio's reading of `sidecar.istio.io/inject`: these values turn
/// injection off; anything else leaves the default (on).
fn says_no(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "n" | "no" | "false" | "off"
    )
}

fn decide(
    pod: &Value,
    meta: Option<&Value>,
    namespace: &str,
    sidecar: &Sidecar,
    env: &[(String, String)],
) -> (Outcome, Option<Value>) {
    let skip = |why: String| (Outcome::Skipped(why), None);
    let unpatchable = |why: String| {
        (
            Outcome::NotPatchable(format!("{CONTAINER} not injected: {why}")),
            None,
        )
    };
    if let Some(m) = meta.filter(|m| !m.is_object()) {
        return unpatchable(format!("metadata is {}, not a map", short(m)));
    }
    let annotations = meta.and_then(|m| field(m, "annotations"));
    let labels = meta.and_then(|m| field(m, "labels"));
    if let Some(a) = annotations {
        if !a.is_object() {
            return unpatchable(format!("metadata.annotations is {}, not a map", short(a)));
        }
    }
    let spec = field(pod, "spec");
    let containers = match spec.and_then(|s| field(s, "containers")) {
        Some(Value::Array(c)) => c,
        Some(c) => return unpatchable(format!("spec.containers is {}, not a list", short(c))),
        None => return unpatchable("the pod has no spec.containers".into()),
    };
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();

    // Idempotence first: a pod that has the sidecar, or says it was
    // injected (by this webhook or by istiod), is left alone.
    if names.contains(&CONTAINER) {
        return skip(format!("already has a {CONTAINER} container"));
    }
    if annotations.is_some_and(|a| a.get(STATUS_ANNOTATION).is_some()) {
        return skip(format!("already injected ({STATUS_ANNOTATION} is set)"));
    }
    if spec.and_then(|s| s.get("hostNetwork")) == Some(&Value::Bool(true)) {
        return skip("hostNetwork: true".into());
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return skip(format!("namespace {namespace} is never injected"));
    }
    // Istio: the label wins over the annotation.
    for (what, map) in [("label", labels), ("annotation", annotations)] {
        if let Some(v) = map.and_then(|m| m.get(INJECT_KEY)).and_then(Value::as_str) {
            if says_no(v) {
                return skip(format!("{what} {INJECT_KEY}: {v:?}"));
            }
            break;
        }
    }

    // The sidecar shares the pod's network namespace: an application port
    // it needs would make one of the two fail to bind.
    let mut taken = PROXY_PORTS.iter().map(|p| p.0).collect::<Vec<_>>();
    taken.push(PROXY_LISTEN_PORT);
    for (i, c) in containers.iter().enumerate() {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let port = p.get("containerPort").and_then(Value::as_u64);
            if let Some(port) = port.filter(|n| taken.iter().any(|t| u64::from(*t) == *n)) {
                return unpatchable(format!(
                    "spec.containers[{i}] ({cname}) declares port {port}, which {CONTAINER} needs"
                ));
            }
        }
    }

    // mTLS to the control plane: the pod's service account's certificate.
    let mtls = sidecar.xds_address.starts_with("https://");
    let volumes = spec.and_then(|s| field(s, "volumes"));
    if mtls {
        match volumes {
            None | Some(Value::Null) => {}
            Some(Value::Array(v)) => {
                if v.iter()
                    .any(|x| x.get("name").and_then(Value::as_str) == Some(CERTS_VOLUME))
                {
                    return unpatchable(format!(
                        "spec.volumes already has a volume named {CERTS_VOLUME}"
                    ));
                }
            }
            Some(v) => return unpatchable(format!("spec.volumes is {}, not a list", short(v))),
        }
    }
    let service_account = spec
        .and_then(|s| field(s, "serviceAccountName"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");

    let upstream_port = containers
        .iter()
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .unwrap_or(80);
    let status = json!({
        "initContainers": null,
        "containers": [CONTAINER],
        "volumes": if mtls { json!([CERTS_VOLUME]) } else { Value::Null },
        "imagePullSecrets": null,
        "revision": sidecar.revision,
    })
    .to_string();
    let mut add_annotations = vec![(STATUS_ANNOTATION.to_string(), Value::String(status))];
    let has_default = annotations.is_some_and(|a| a.get(DEFAULT_CONTAINER_ANNOTATION).is_some());
    if let (false, Some(first)) = (has_default, names.first()) {
        add_annotations.push((
            DEFAULT_CONTAINER_ANNOTATION.to_string(),
            Value::String(first.to_string()),
        ));
    }

    let mut ops = Vec::new();
    match (meta, annotations) {
        (None, _) => {
            let map: Map<String, Value> = add_annotations.into_iter().collect();
            ops.push(json!({"op": "add", "path": "/metadata", "value": {"annotations": map}}));
        }
        (Some(_), None) => {
            let map: Map<String, Value> = add_annotations.into_iter().collect();
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
        }
        (Some(_), Some(_)) => {
            for (k, v) in add_annotations {
                ops.push(json!({
                    "op": "add",
                    "path": format!("/metadata/annotations/{}", pointer_escape(&k)),
                    "value": v,
                }));
            }
        }
    }
    ops.push(json!({
        "op": "add",
        "path": "/spec/containers/-",
        "value": container(sidecar, env, upstream_port, mtls),
    }));
    if mtls {
        // Fails closed: without the Secret the pod does not start (rather
        // than run a sidecar that cannot authenticate).
        let volume = json!({
            "name": CERTS_VOLUME,
            "secret": {"secretName": cert_secret_name(service_account)},
        });
        ops.push(match volumes {
            Some(Value::Array(_)) => {
                json!({"op": "add", "path": "/spec/volumes/-", "value": volume})
            }
            _ => json!({"op": "add", "path": "/spec/volumes", "value": [volume]}),
        });
    }
    (Outcome::Injected, Some(Value::Array(ops)))
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The `membrane-proxy` container: mesh mode (policy from the control plane
/// under Istio's node id), capture listeners, metrics and readiness on the
/// pod's address, unprivileged as uid 1337.
fn container(sidecar: &Sidecar, env: &[(String, String)], upstream_port: u64, mtls: bool) -> Value {
    let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let mut vars = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
    ];
    vars.extend(env.iter().map(|(k, v)| json!({"name": k, "value": v})));
    let ports: Vec<Value> = PROXY_PORTS
        .iter()
        .map(|(port, name)| json!({"containerPort": port, "name": name, "protocol": "TCP"}))
        .collect();
    let mut c = json!({
        "name": CONTAINER,
        "image": sidecar.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["membrane-proxy"],
        "args": [
            "standalone",
            "--xds-address", sidecar.xds_address,
            // Kubernetes expands $(VAR) from the container's env.
            "--node-id", "sidecar~$(POD_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc.cluster.local",
            "--capture-outbound", CAPTURE_OUTBOUND,
            "--capture-inbound", CAPTURE_INBOUND,
            "--metrics", "0.0.0.0:15020",
            "--health", "0.0.0.0:15021",
            "--listen", format!("127.0.0.1:{PROXY_LISTEN_PORT}"),
            "--upstream", format!("127.0.0.1:{upstream_port}"),
        ],
        "env": vars,
        "ports": ports,
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if mtls {
        // Istio's legacy layout; the proxy re-reads rotated files.
        if let Some(args) = c["args"].as_array_mut() {
            for (flag, file) in [
                ("--xds-ca", "root-cert.pem"),
                ("--xds-cert", "cert-chain.pem"),
                ("--xds-key", "key.pem"),
            ] {
                args.push(json!(flag));
                args.push(json!(format!("{CERTS_DIR}/{file}")));
            }
        }
        c["volumeMounts"] =
            json!([{"name": CERTS_VOLUME, "mountPath": CERTS_DIR, "readOnly": true}]);
    }
    c
}

#[cfg(test)]
mod tests;
