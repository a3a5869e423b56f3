//! The directory source: every `*.yaml`, `*.yml` and `*.json` file directly
//! in a directory, polled.
//!
//! Polling rather than inotify: it sees Kubernetes ConfigMap volume updates
//! (an atomic symlink swap) and network file systems the same way, and its
//! cost is bounded by the interval. A file is read again only when its size
//! or mtime changed, and re-parsed only when its content hash changed.
//!
//! A file is all or nothing: if any object in it is invalid, the whole file
//! is rejected, the rejection is reported (status, log, metric) and the last
//! good version of that file stays in force. Deleting a file removes what it
//! held.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

use super::k8s;
pub use super::ScanReport;
use super::{ClusterState, Source};

/// Why a file was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Read {
        /// File name.
        file: String,
        /// The I/O error.
        message: String,
    },
    /// The file is larger than the configured limit.
    #[error("{file}: {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// File name.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The text is not YAML/JSON.
    #[error("{0}")]
    Syntax(String),
    /// One or more objects are invalid; one line per error.
    #[error("{}", .0.join("\n"))]
    Objects(Vec<String>),
}

/// What one file holds.
#[derive(Debug, Clone, Default)]
pub struct FileContents {
    /// The file's state contribution.
    pub state: ClusterState,
    /// Object descriptions (`Pod default/x`), for status.
    pub objects: Vec<String>,
}

fn object<T: DeserializeOwned>(
    file: &str,
    kind: &str,
    v: &Value,
    errors: &mut Vec<String>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(x) => Some(x),
        Err(e) => {
            let meta = v.get("metadata");
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            errors.push(format!(
                "{file}: {kind} {ns}{name}: {}: {}",
                e.path(),
                e.inner()
            ));
            None
        }
    }
}

fn collect(file: &str, v: &Value, out: &mut FileContents, errors: &mut Vec<String>) {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        for item in v
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            collect(file, item, out, errors);
        }
        return;
    }
    let s = &mut out.state;
    match kind {
        "Pod" => s.pods.extend(object::<k8s::Pod>(file, kind, v, errors)),
        "Namespace" => s
            .namespaces
            .extend(object::<k8s::Namespace>(file, kind, v, errors)),
        "Service" => s
            .services
            .extend(object::<k8s::Service>(file, kind, v, errors)),
        "EndpointSlice" => s
            .slices
            .extend(object::<k8s::EndpointSlice>(file, kind, v, errors)),
        "Node" => s.nodes.extend(object::<k8s::Node>(file, kind, v, errors)),
        "PeerAuthentication" => match crate::peerauth::PeerAuthentication::parse(file, v) {
            Ok(p) => s.peer_authentications.push(Arc::new(p)),
            Err(e) => errors.extend(e.0),
        },
        "PrefilterDenyList" => match crate::prefilter::DenyList::parse(file, v) {
            Ok(d) => s.prefilter_deny_lists.push(Arc::new(d)),
            Err(e) => errors.extend(e.0),
        },
        _ => return, // policies are parsed by the policy crate; others are not ours
    }
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    out.objects.push(format!("{kind} {name}"));
}

/// Parses one file's text: policies through `membrane-policy`, the core
/// Kubernetes kinds here. Any invalid object rejects the file.
pub fn parse(file: &str, text: &str) -> Result<FileContents, FileError> {
    let loaded =
        membrane_policy::parse_file(file, text).map_err(|e| FileError::Syntax(e.to_string()))?;
    let mut out = FileContents::default();
    let mut errors = Vec::new();
    for obj in loaded {
        errors.extend(obj.error_lines());
        out.objects.push(obj.describe());
        if let Ok(p) = obj.result {
            out.state.policies.push(p);
        }
    }
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .map_err(|e| FileError::Syntax(format!("{file}: document {}: {e}", i + 1)))?;
        collect(file, &v, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(FileError::Objects(errors))
    }
}

#[derive(Debug)]
struct Entry {
    stamp: (u64, Option<SystemTime>),
    hash: u64,
    good: Option<Arc<FileContents>>,
    error: Option<FileError>,
}

/// A polled directory.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    max_bytes: u64,
    files: BTreeMap<PathBuf, Entry>,
}

fn wanted(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

impl DirSource {
    /// Watches `dir`; files over `max_bytes` are rejected.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        DirSource {
            dir: dir.into(),
            max_bytes,
            files: BTreeMap::new(),
        }
    }
}

impl Source for DirSource {
    fn name(&self) -> &'static str {
        "dir"
    }

    /// Looks at the directory once.
    fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let mut seen = HashSet::new();
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                // A missing directory is reported, and changes nothing.
                report.rejected.push(format!("{}: {e}", self.dir.display()));
                return report;
            }
        };
        let mut paths: Vec<PathBuf> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| wanted(p) && p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            seen.insert(path.clone());
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = std::fs::metadata(&path);
            let stamp = meta
                .as_ref()
                .map(|m| (m.len(), m.modified().ok()))
                .unwrap_or((0, None));
            if self.files.get(&path).is_some_and(|e| e.stamp == stamp) {
                continue;
            }
            let result = if stamp.0 > self.max_bytes {
                Err(FileError::TooLarge {
                    file: name.clone(),
                    size: stamp.0,
                    limit: self.max_bytes,
                })
            } else {
                std::fs::read_to_string(&path).map_err(|e| FileError::Read {
                    file: name.clone(),
                    message: e.to_string(),
                })
            };
            let hash = result
                .as_ref()
                .map(|t| crate::resource::content_hash(t.as_bytes()))
                .unwrap_or(0);
            let entry = self.files.entry(path.clone()).or_insert(Entry {
                stamp,
                hash: 0,
                good: None,
                error: None,
            });
            entry.stamp = stamp;
            if entry.hash == hash && hash != 0 && (entry.good.is_some() || entry.error.is_some()) {
                continue; // touched, not changed
            }
            entry.hash = hash;
            match result.and_then(|text| parse(&name, &text)) {
                Ok(contents) => {
                    entry.good = Some(Arc::new(contents));
                    entry.error = None;
                    report.changed = true;
                }
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "source file rejected; last good version stays in force");
                    report.rejected.push(e.to_string());
                    entry.error = Some(e);
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        if self.files.len() != before {
            report.changed = true;
        }
        report
    }

    /// The merged state of every file's last good version.
    fn state(&self) -> ClusterState {
        let mut s = ClusterState::default();
        for e in self.files.values() {
            if let Some(g) = &e.good {
                // Every kind, through the one merge (a kind added later cannot be missed).
                s.extend(g.state.clone());
            }
        }
        s
    }

    /// Per file: loaded objects, and the current rejection if any.
    fn status(&self) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|(p, e)| {
                json!({
                    "file": p.display().to_string(),
                    "in_force": e.good.is_some(),
                    "objects": e.good.as_ref().map(|g| g.objects.clone()).unwrap_or_default(),
                    "rejected": e.error.as_ref().map(|x| x.to_string()),
                })
            })
            .collect();
        json!({ "dir": self.dir.display().to_string(), "files": files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, namespace: default, labels: {org: empire, class: deathstar}}
spec: {containers: [{name: app, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.5}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {matchLabels: {org: empire}}
  ingress: [{fromEndpoints: [{matchLabels: {org: empire}}]}]
"#;

    #[test]
    fn bad_edit_keeps_last_good_version_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, GOOD).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "::: not yaml").unwrap();
        let mut src = DirSource::new(dir.path(), 1 << 20);
        let r = src.scan();
        assert!(r.changed && r.rejected.is_empty(), "{r:?}");
        assert_eq!(src.state().pods.len(), 1);
        assert_eq!(src.state().policies.len(), 1);
        assert_eq!(src.state().pods[0].ips(), vec!["10.0.0.5".to_string()]);

        // A bad port: the file is rejected, naming file, object and field.
        let bad = GOOD.replace(
            "ingress: [{fromEndpoints",
            "ingress: [{toPorts: [{ports: [{port: \"99999\"}]}], fromEndpoints",
        );
        std::fs::write(&f, &bad).unwrap();
        // mtime granularity: make sure the size differs so the change is seen.
        let r = src.scan();
        assert!(!r.changed);
        assert_eq!(r.rejected.len(), 1);
        assert!(r.rejected[0].contains("a.yaml: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].ports[0].port"), "{}", r.rejected[0]);
        assert_eq!(src.state().policies.len(), 1, "last good version stays");
        assert_eq!(src.status()["files"][0]["in_force"], true);
        assert!(src.status()["files"][0]["rejected"].is_string());

        // A bad Pod field is rejected too.
        std::fs::write(
            &f,
            GOOD.replace("containerPort: 80", "containerPort: eighty"),
        )
        .unwrap();
        let r = src.scan();
        assert!(
            r.rejected[0].contains(
                "a.yaml: Pod default/deathstar-1: spec.containers[0].ports[0].containerPort"
            ),
            "{}",
            r.rejected[0]
        );

        // Deleting the file removes what it held.
        std::fs::remove_file(&f).unwrap();
        let r = src.scan();
        assert!(r.changed);
        assert!(src.state().pods.is_empty());
    }
}
