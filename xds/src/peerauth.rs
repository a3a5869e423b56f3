//! Istio's `security.istio.io` PeerAuthentication: the room where the objects are read,
//! checked, and resolved into the effective mutual TLS mode of one workload, per port,
//! exactly as istiod composes them for an istio-proxy's inbound listener.
//!
//! Resolution (istiod's `ComposePeerAuthentication` over the policies that apply to a
//! workload): a policy without `selector.matchLabels` in the root namespace
//! (`--root-namespace`, Istio's `istio-system`) is mesh-wide, one without it in the
//! workload's namespace is namespace-wide, one whose `matchLabels` are all among the pod's
//! labels in the workload's namespace is workload-level (a root-namespace policy with a
//! selector applies to nothing). Of several at one level the oldest (`creationTimestamp`,
//! then name) wins; an object without a timestamp (a file) counts as the oldest, as Go's
//! zero time does. Then mesh, namespace and workload are applied in that order, each
//! replacing the mode unless its mode is UNSET; `portLevelMtls` comes from the workload
//! policy only, an UNSET port inheriting the workload's resolved mode. When no policy sets
//! a mode the result says so (`mode: None`): the sidecar keeps its own setting, which
//! defaults to Istio's PERMISSIVE.
//!
//! Checks (Istio's validation and CRD schema, so a file or object kubectl would refuse is
//! refused here too, naming object and field): a mode is one of UNSET, DISABLE,
//! PERMISSIVE, STRICT; a `portLevelMtls` key is a port in 1-65535; `portLevelMtls` needs a
//! non-empty `selector.matchLabels` and at least one entry; unknown spec fields are
//! refused (a misspelt `mtls` would otherwise silently mean UNSET).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use membrane_api::mesh::{Effective, Mode};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Istio's default root namespace (mesh config `rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Why a PeerAuthentication object is refused: every problem found, one per line, each
/// naming the object and the field.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{}", .0.join("\n"))]
pub struct PeerAuthError(pub Vec<String>);

/// A mode as written: UNSET (inherit) or one in force.
pub type WrittenMode = Option<Mode>;

/// One checked PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    /// Namespace (`default` when unset, as kubectl).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.creationTimestamp`; `None` (a file without one) sorts first.
    pub created: Option<SystemTime>,
    /// `spec.selector.matchLabels`; empty: the namespace (or, in the root namespace, the
    /// mesh).
    pub match_labels: BTreeMap<String, String>,
    /// `spec.mtls.mode`.
    pub mode: WrittenMode,
    /// `spec.portLevelMtls`.
    pub ports: BTreeMap<u16, WrittenMode>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    selector: Option<RawSelector>,
    #[serde(default)]
    mtls: Option<RawMtls>,
    #[serde(default)]
    port_level_mtls: Option<BTreeMap<String, RawMtls>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    metadata: RawMeta,
    #[serde(default)]
    spec: Option<RawSpec>,
}

fn written_mode(s: Option<&str>) -> Result<WrittenMode, String> {
    match s {
        None | Some("UNSET") => Ok(None),
        Some("DISABLE") => Ok(Some(Mode::Disable)),
        Some("PERMISSIVE") => Ok(Some(Mode::Permissive)),
        Some("STRICT") => Ok(Some(Mode::Strict)),
        Some(other) => Err(format!(
            "{other:?} is not a mode (UNSET, DISABLE, PERMISSIVE or STRICT)"
        )),
    }
}

impl PeerAuthentication {
    /// `NAMESPACE/NAME`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Reads and checks one object (`kind: PeerAuthentication`); `origin` prefixes every
    /// message (a file name, `kubernetes`, an etcd key).
    pub fn parse(origin: &str, v: &Value) -> Result<Self, PeerAuthError> {
        let ns_name = || {
            let m = v.get("metadata");
            let s = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_str);
            format!(
                "{}/{}",
                s("namespace").unwrap_or("default"),
                s("name").unwrap_or("")
            )
        };
        let what = format!("{origin}: PeerAuthentication {}", ns_name());
        let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if !matches!(api, "security.istio.io/v1" | "security.istio.io/v1beta1") {
            return Err(PeerAuthError(vec![format!(
                "{what}: apiVersion: {api:?} is not security.istio.io/v1 or v1beta1"
            )]));
        }
        let raw: Raw = serde_path_to_error::deserialize(v)
            .map_err(|e| PeerAuthError(vec![format!("{what}: {}: {}", e.path(), e.inner())]))?;
        let mut errors = Vec::new();
        let created = match raw.metadata.creation_timestamp.as_deref() {
            None => None,
            Some(t) => match humantime::parse_rfc3339_weak(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(format!("{what}: metadata.creationTimestamp: {t:?}: {e}"));
                    None
                }
            },
        };
        if raw.metadata.name.is_empty() {
            errors.push(format!("{what}: metadata.name: missing"));
        }
        let spec = raw.spec.unwrap_or_default();
        let match_labels = spec
            .selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        for k in match_labels.keys() {
            if k.is_empty() {
                errors.push(format!(
                    "{what}: spec.selector.matchLabels: an empty label key"
                ));
            }
        }
        let mode =
            written_mode(spec.mtls.as_ref().and_then(|m| m.mode.as_deref())).unwrap_or_else(|e| {
                errors.push(format!("{what}: spec.mtls.mode: {e}"));
                None
            });
        let mut ports = BTreeMap::new();
        if let Some(pl) = &spec.port_level_mtls {
            if match_labels.is_empty() {
                errors.push(format!(
                    "{what}: spec.portLevelMtls: needs spec.selector.matchLabels \
                     (a mesh- or namespace-wide policy cannot have port-level mTLS)"
                ));
            }
            if pl.is_empty() {
                errors.push(format!(
                    "{what}: spec.portLevelMtls: if set, needs at least one port"
                ));
            }
            for (port, m) in pl {
                let p = match port.parse::<u16>() {
                    Ok(p) if p != 0 => p,
                    _ => {
                        errors.push(format!(
                            "{what}: spec.portLevelMtls[{port:?}]: not a port (1-65535)"
                        ));
                        continue;
                    }
                };
                match written_mode(m.mode.as_deref()) {
                    Ok(m) => {
                        ports.insert(p, m);
                    }
                    Err(e) => errors.push(format!("{what}: spec.portLevelMtls[{port}].mode: {e}")),
                }
            }
        }
        if !errors.is_empty() {
            return Err(PeerAuthError(errors));
        }
        Ok(PeerAuthentication {
            namespace: raw
                .metadata
                .namespace
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into()),
            name: raw.metadata.name,
            created,
            match_labels,
            mode,
            ports,
        })
    }

    /// Whether the selector picks a pod with `labels` (every `matchLabels` pair present).
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Istio's order at one level: oldest first, then by name.
    fn older_than(&self, other: &Self) -> bool {
        (self.created, &self.name, &self.namespace) < (other.created, &other.name, &other.namespace)
    }
}

/// The effective mode of the workload in `namespace` with `labels` under `all`, with
/// `root` the mesh's root namespace. See the module docs for the rules.
pub fn resolve(
    root: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    all: &[Arc<PeerAuthentication>],
) -> Effective {
    let mut mesh: Option<&PeerAuthentication> = None;
    let mut ns: Option<&PeerAuthentication> = None;
    let mut workload: Option<&PeerAuthentication> = None;
    fn pick<'a>(slot: &mut Option<&'a PeerAuthentication>, p: &'a PeerAuthentication) {
        if slot.is_none_or(|s| p.older_than(s)) {
            *slot = Some(p);
        }
    }
    for p in all.iter().map(Arc::as_ref) {
        if p.namespace != namespace && p.namespace != root {
            continue;
        }
        match (p.match_labels.is_empty(), p.namespace == root) {
            (true, true) => pick(&mut mesh, p),
            (true, false) => pick(&mut ns, p),
            (false, false) if p.selects(labels) => pick(&mut workload, p),
            // A selector in the root namespace, or one that does not pick this pod.
            _ => {}
        }
    }
    let mut out = Effective::default();
    for p in [mesh, ns, workload].into_iter().flatten() {
        if p.mode.is_some() {
            out.mode = p.mode;
        }
        out.policies.push(p.key());
    }
    if let Some(w) = workload {
        for (&port, &m) in &w.ports {
            // UNSET inherits the workload's mode; with none decided, the sidecar's own
            // setting, which is what leaving the port out says.
            if let Some(m) = m.or(out.mode) {
                out.ports.insert(port, m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
