//! Sidecar injection: an `admission.k8s.io/v1` AdmissionReview for a Pod in,
//! the AdmissionReview to answer with out (the same `uid`, `allowed: true`
//! and, when the pod gets a sidecar, a JSONPatch from the pod as sent to the
//! pod as current Istio would inject it, `membrane-proxy` in place of
//! istio-proxy: `sidecar.rs` builds that pod, `probes.rs` rewrites the
//! application's probes).
//!
//! No I/O here: `webhook.rs` serves this over HTTPS. A pod the rules skip,
//! or one that cannot take the sidecar, is allowed unchanged (the latter
//! with a warning the API server shows the client); a pod whose
//! `proxy.istio.io/config` does not parse, or with an annotation value
//! Istio's injector refuses (`validate.rs`: the capture lists, the
//! interception mode, ...), is refused with the reason, as Istio refuses
//! it; input that is not an AdmissionReview for a Pod is an error.
//!
//! Capture is done by the node's eBPF programs (the CNI plugin and
//! membrane-agent, which read the pod's `traffic.sidecar.istio.io/*`
//! annotations), so unlike Istio there is no `istio-init` container and the
//! sidecar needs no capability.

use base64::Engine;
use serde_json::{json, Value};

mod probes;
pub mod sidecar;
pub mod validate;

/// The injected container's name: Istio's, which istioctl, `kubectl logs`
/// habits and Istio's tooling look for.
pub const CONTAINER: &str = "istio-proxy";
/// The name this webhook gave the sidecar before it used Istio's: a pod
/// with it is injected already.
pub const LEGACY_CONTAINER: &str = "membrane-proxy";
/// Istio's annotation listing what was injected; its presence marks a pod as
/// injected for istioctl and for this webhook.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// Istio's per-pod opt-out (label or annotation).
pub const INJECT_KEY: &str = "sidecar.istio.io/inject";
/// Istio's revision label: a pod naming another revision belongs to
/// another control plane.
pub const REVISION_LABEL: &str = "istio.io/rev";
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
/// Ports the sidecar binds in the pod's network namespace (the sidecar
/// contract): admin, outbound and inbound capture, status (merged metrics
/// and app probes), readiness, Prometheus.
pub const PROXY_PORTS: [u16; 6] = [15000, 15001, 15006, 15020, 15021, 15090];

/// Where the sidecar's workload certificate is mounted, in Istio's legacy
/// layout: `cert-chain.pem`, `key.pem`, `root-cert.pem`.
pub const CERTS_DIR: &str = "/etc/certs";

/// The Secret holding the workload certificate of pods running as
/// `service_account` (in the pod's namespace), as Istio's legacy
/// `istio.SERVICE_ACCOUNT`; `membrane cert issue --secret` writes it.
pub fn cert_secret_name(service_account: &str) -> String {
    format!("membrane.{service_account}")
}

/// The injected volume holding the workload certificate Secret (optional: without it
/// the sidecar requests its certificate from the CA with the pod's token).
pub const CERTS_VOLUME: &str = "membrane-certs";
/// The projected service-account token the sidecar proves its identity to the CA with,
/// as Istio's template mounts it: volume `istio-token`, audience `istio-ca`, at
/// `/var/run/secrets/tokens/istio-token`.
pub const TOKEN_VOLUME: &str = "istio-token";
/// Where it is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The token's audience (Istio's `global.sds.token.aud` default).
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// The volume of the mesh root, Istio's `istio-ca-root-cert` ConfigMap (istiod writes it
/// into every namespace), mounted at `/var/run/secrets/istio` (`root-cert.pem`).
pub const ROOT_VOLUME: &str = "istiod-ca-cert";
/// Where it is mounted.
pub const ROOT_DIR: &str = "/var/run/secrets/istio";
/// The ConfigMap.
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// The injected volume holding the node agent's records socket (a hostPath directory,
/// mounted into the sidecar only).
pub const RECORDS_VOLUME: &str = "membrane-records";
/// The records socket's directory on the node and in the sidecar, by default.
pub const RECORDS_DIR: &str = "/var/run/membrane/sidecar";
/// The records socket's file name in that directory (the agent's `--records-socket`).
pub const RECORDS_SOCKET_FILE: &str = "records.sock";

/// What the injected container is made of (from `membrane-xds` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    /// Container image of membrane-proxy.
    pub image: String,
    /// The control plane the sidecar dials: `https://HOST:15012` (mTLS with
    /// the pod's workload certificate, mounted from Secret
    /// `membrane.SERVICE_ACCOUNT`) or a plaintext `http://` address (no
    /// certificate mounted). It becomes ProxyConfig's `discoveryAddress`.
    pub xds_address: String,
    /// Istio revision recorded in the status annotation.
    pub revision: String,
    /// The proxy as a native sidecar (an init container with `restartPolicy:
    /// Always`, Kubernetes 1.29+) rather than a plain container.
    pub native_sidecars: bool,
    /// Mesh-wide `holdApplicationUntilProxyStarts`.
    pub hold_application: bool,
    /// Istio's `sidecarInjectorWebhook.rewriteAppHTTPProbe`.
    pub rewrite_probes: bool,
    /// `ISTIO_META_CLUSTER_ID` (Istio's default: `Kubernetes`).
    pub cluster_id: String,
    /// The mesh's trust domain (`TRUST_DOMAIN`, and the mesh id).
    pub trust_domain: String,
    /// Istio's CA the sidecar requests its certificate from (`CA_ADDR`, e.g. istiod's
    /// `istiod.istio-system.svc:15012`); `None`: the discovery address (membrane-xds
    /// with `--ca-key`).
    pub ca_address: Option<String>,
    /// The node directory holding the agent's records socket, mounted into the sidecar
    /// at the same path and named by `MEMBRANE_RECORDS_SOCKET` (`None`: no records).
    pub records_dir: Option<String>,
}

impl Sidecar {
    /// Istio's defaults around the three things that differ per install.
    pub fn new(image: &str, xds_address: &str, revision: &str) -> Self {
        Sidecar {
            image: image.into(),
            xds_address: xds_address.into(),
            revision: revision.into(),
            native_sidecars: true,
            hold_application: false,
            rewrite_probes: true,
            cluster_id: "Kubernetes".into(),
            trust_domain: "cluster.local".into(),
            ca_address: None,
            records_dir: Some(RECORDS_DIR.into()),
        }
    }

    /// `ISTIO_META_MESH_ID`: the trust domain, as Istio without a meshID.
    pub fn mesh_id(&self) -> &str {
        &self.trust_domain
    }

    /// The mesh's default ProxyConfig (JSON, Istio's field names): where
    /// the control plane is and how to reach it.
    pub fn default_proxy_config(&self) -> Value {
        let (plain, addr) = match self.xds_address.split_once("://") {
            Some((scheme, rest)) => (scheme == "http", rest),
            None => (false, self.xds_address.as_str()),
        };
        let mut pc = json!({"discoveryAddress": addr.trim_end_matches('/')});
        if plain {
            pc["controlPlaneAuthPolicy"] = json!("NONE");
        }
        if self.hold_application {
            pc["holdApplicationUntilProxyStarts"] = json!(true);
        }
        pc
    }
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
    /// Refused (as Istio refuses it): the reason returned to the client.
    Denied(String),
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
    if let Outcome::Denied(why) = &outcome {
        response["allowed"] = json!(false);
        response["status"] = json!({"code": 400, "reason": "BadRequest", "message": why});
    }
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
    for (what, v) in [("annotations", annotations), ("labels", labels)] {
        if let Some(v) = v.filter(|v| !v.is_object()) {
            return unpatchable(format!("metadata.{what} is {}, not a map", short(v)));
        }
    }
    let spec = field(pod, "spec");
    let containers = match spec.and_then(|s| field(s, "containers")) {
        Some(Value::Array(c)) => c,
        Some(c) => return unpatchable(format!("spec.containers is {}, not a list", short(c))),
        None => return unpatchable("the pod has no spec.containers".into()),
    };
    let inits = match spec.and_then(|s| field(s, "initContainers")) {
        None => &[][..],
        Some(Value::Array(c)) => &c[..],
        Some(c) => return unpatchable(format!("spec.initContainers is {}, not a list", short(c))),
    };
    let names: Vec<&str> = inits
        .iter()
        .chain(containers)
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();

    // Idempotence first: a pod that has the sidecar, or says it was
    // injected (by this webhook or by istiod), is left alone.
    if let Some(n) = names
        .iter()
        .find(|n| **n == CONTAINER || **n == LEGACY_CONTAINER)
    {
        return skip(format!("already has a {n} container"));
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
    // The webhook configuration sends a revision's pods to its webhook; a
    // pod that names another revision is that control plane's.
    if let Some(rev) = labels
        .and_then(|l| l.get(REVISION_LABEL))
        .and_then(Value::as_str)
    {
        let ours = if sidecar.revision.is_empty() {
            "default"
        } else {
            &sidecar.revision
        };
        if rev != ours {
            return skip(format!(
                "label {REVISION_LABEL}: {rev:?} is another revision than {ours:?}"
            ));
        }
    }

    // Istio checks the annotations it acts on once it has decided to
    // inject, and refuses the pod over a bad value: admission is where the
    // author sees it, not the node agent attaching the pod later.
    let bad = annotations
        .and_then(Value::as_object)
        .map(validate::annotations)
        .unwrap_or_default();
    if !bad.is_empty() {
        let why: Vec<String> = bad.iter().map(ToString::to_string).collect();
        return (
            Outcome::Denied(format!("{CONTAINER} not injected: {}", why.join("; "))),
            None,
        );
    }

    // The sidecar shares the pod's network namespace: an application port
    // it needs would make one of the two fail to bind.
    for (list, cs) in [("initContainers", inits), ("containers", &containers[..])] {
        for (i, c) in cs.iter().enumerate() {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let port = p.get("containerPort").and_then(Value::as_u64);
                if let Some(port) = port.filter(|n| PROXY_PORTS.iter().any(|t| u64::from(*t) == *n))
                {
                    return unpatchable(format!(
                        "spec.{list}[{i}] ({cname}) declares port {port}, which {CONTAINER} needs"
                    ));
                }
            }
        }
    }
    match spec.and_then(|s| field(s, "volumes")) {
        None => {}
        Some(Value::Array(v)) => {
            let ours = sidecar::VOLUMES
                .iter()
                .chain([&CERTS_VOLUME, &RECORDS_VOLUME]);
            for name in ours {
                if v.iter()
                    .any(|x| x.get("name").and_then(Value::as_str) == Some(name))
                {
                    return unpatchable(format!("spec.volumes already has a volume named {name}"));
                }
            }
        }
        Some(v) => return unpatchable(format!("spec.volumes is {}, not a list", short(v))),
    }

    match sidecar::inject(pod, namespace, sidecar, env) {
        Ok(injected) => {
            // The patch is the difference, as Istio computes it.
            let patch = json_patch::diff(pod, &injected);
            let ops = serde_json::to_value(patch).expect("a patch serializes");
            (Outcome::Injected, Some(ops))
        }
        Err(e) => (
            Outcome::Denied(format!("{CONTAINER} not injected: {e}")),
            None,
        ),
    }
}

#[cfg(test)]
mod tests;
