//! The Kubernetes source's objects and what was made of them: every kind's
//! objects with their last good parse, the `Valid` condition to write back, and
//! the status the debug endpoint shows. No I/O here: the watch tasks in the
//! parent module feed it and send the patches it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{info, warn};

use super::{Kind, KINDS};
use crate::source::dir::{self, FileContents, FileError};
use crate::source::ClusterState;

/// Messages name their origin like the directory source names a file.
const ORIGIN: &str = "kubernetes";
/// The condition type Cilium's policy status uses.
const CONDITION: &str = "Valid";

/// `(kind index, namespace, name)`; namespace empty for cluster-scoped kinds.
type Key = (usize, String, String);

#[derive(Debug)]
struct Entry {
    /// Hash of what parsing reads (no resourceVersion, managedFields, and
    /// for policies no status), so our own status patch is not a change.
    hash: u64,
    good: Option<Arc<FileContents>>,
    error: Option<String>,
}

/// A status patch to send.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusPatch {
    /// Index into [`KINDS`].
    pub kind: usize,
    /// Namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// The merge-patch body (`{"status": {"conditions": [...]}}`).
    pub body: Value,
}

/// The objects of every kind and their parse results; no I/O.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Entry>,
    pub(super) changed: bool,
    pub(super) rejected: Vec<String>,
    synced: BTreeSet<usize>,
    pub(super) relists: BTreeMap<usize, u64>,
    pub(super) watch_errors: BTreeMap<usize, String>,
    pub(super) patches_sent: u64,
    pub(super) patch_errors: Vec<String>,
}

fn key_of(kind: usize, v: &Value) -> Key {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (kind, s("/metadata/namespace"), s("/metadata/name"))
}

/// The lines of a rejection, without the origin and object prefix the
/// status message does not need (`spec.ingress[0]...: message`).
fn field_message(e: &FileError, describe: &str) -> String {
    let text = e.to_string();
    let prefix = format!("{ORIGIN}: {describe}: ");
    text.lines()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn describe(kind: &Kind, ns: &str, name: &str) -> String {
    if ns.is_empty() {
        format!("{} {name}", kind.kind)
    } else {
        format!("{} {ns}/{name}", kind.kind)
    }
}

/// The `Valid` condition to write, or `None` when `current` (the object's
/// `status`) already says the same. `now` is RFC 3339.
pub fn condition_patch(
    current: Option<&Value>,
    valid: bool,
    message: &str,
    now: &str,
) -> Option<Value> {
    let conditions: Vec<Value> = current
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_ours = |c: &Value| c.get("type").and_then(Value::as_str) == Some(CONDITION);
    let old = conditions.iter().find(|c| is_ours(c));
    let status = if valid { "True" } else { "False" };
    let reason = if valid {
        "PolicyAccepted"
    } else {
        "PolicyInvalid"
    };
    let field = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(old) = old {
        if field(old, "status").as_deref() == Some(status)
            && field(old, "reason").as_deref() == Some(reason)
            && field(old, "message").as_deref() == Some(message)
        {
            return None;
        }
    }
    let since = old
        .filter(|o| field(o, "status").as_deref() == Some(status))
        .and_then(|o| field(o, "lastTransitionTime"))
        .unwrap_or_else(|| now.to_string());
    // A merge patch replaces a list whole: keep the other conditions.
    let mut out: Vec<Value> = conditions.into_iter().filter(|c| !is_ours(c)).collect();
    out.push(json!({
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }));
    Some(json!({ "status": { "conditions": out } }))
}

fn now_rfc3339() -> String {
    // Seconds precision, as Kubernetes' metav1.Time serializes.
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

impl Store {
    /// Takes one object of `KINDS[kind]` as the API returned it (list items
    /// of core kinds carry no `kind`/`apiVersion`; they are filled in).
    /// Returns the status patch to write, if the object is a policy whose
    /// condition must change.
    pub fn apply(&mut self, kind: usize, mut v: Value) -> Option<StatusPatch> {
        let k = &KINDS[kind];
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), Value::String(k.kind.into()));
            o.insert("apiVersion".into(), Value::String(k.api_version()));
        }
        let key = key_of(kind, &v);
        let mut content = v.clone();
        if let Some(m) = content.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        if k.policy {
            if let Some(o) = content.as_object_mut() {
                o.remove("status");
            }
        }
        let text = content.to_string();
        let hash = crate::resource::content_hash(text.as_bytes());
        let what = describe(k, &key.1, &key.2);
        let entry = self.objects.entry(key.clone()).or_insert(Entry {
            hash: 0,
            good: None,
            error: None,
        });
        if entry.hash != hash || (entry.good.is_none() && entry.error.is_none()) {
            entry.hash = hash;
            match dir::parse(ORIGIN, &text) {
                Ok(c) => {
                    entry.good = Some(Arc::new(c));
                    entry.error = None;
                    self.changed = true;
                }
                Err(e) => {
                    let msg = field_message(&e, &what);
                    warn!(object = %what, error = %msg, "object rejected; its last good version stays in force");
                    self.rejected.push(format!("{what}: {msg}"));
                    entry.error = Some(msg);
                }
            }
        }
        let error = entry.error.clone();
        if !k.policy {
            return None;
        }
        // Accepted with warnings (e.g. Kafka or DNS rules membrane does not enforce, and
        // what it does instead): `kubectl describe` shows them in the Valid condition.
        let warnings: Vec<String> = entry
            .good
            .iter()
            .flat_map(|g| g.state.policies.iter())
            .flat_map(|p| p.warnings.iter().map(ToString::to_string))
            .collect();
        let (valid, message) = match error {
            Some(e) => (false, e),
            None if warnings.is_empty() => (true, "policy is valid and in force".to_string()),
            None => (
                true,
                format!(
                    "policy is valid and in force; warnings: {}",
                    warnings.join("; ")
                ),
            ),
        };
        let body = condition_patch(v.get("status"), valid, &message, &now_rfc3339())?;
        Some(StatusPatch {
            kind,
            namespace: (!key.1.is_empty()).then(|| key.1.clone()),
            name: key.2,
            body,
        })
    }

    /// An object was deleted: what it held goes.
    pub fn delete(&mut self, kind: usize, v: &Value) {
        if let Some(e) = self.objects.remove(&key_of(kind, v)) {
            self.changed |= e.good.is_some();
        }
    }

    /// A (re)list of `kind` completed with `items`: they replace the kind's
    /// objects. Returns the status patches to write.
    pub fn relisted(&mut self, kind: usize, items: Vec<Value>) -> Vec<StatusPatch> {
        let keep: BTreeSet<Key> = items.iter().map(|v| key_of(kind, v)).collect();
        let before = self.objects.len();
        let mut lost_good = false;
        self.objects.retain(|k, e| {
            let stay = k.0 != kind || keep.contains(k);
            lost_good |= !stay && e.good.is_some();
            stay
        });
        self.changed |= lost_good;
        if self.objects.len() != before {
            info!(
                kind = KINDS[kind].kind,
                removed = before - self.objects.len(),
                "relist dropped objects deleted meanwhile"
            );
        }
        if !self.synced.insert(kind) {
            *self.relists.entry(kind).or_default() += 1;
        }
        items
            .into_iter()
            .filter_map(|v| self.apply(kind, v))
            .collect()
    }

    /// Whether `kind` has been listed once.
    pub fn is_synced(&self, kind: usize) -> bool {
        self.synced.contains(&kind)
    }

    /// Whether every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.synced.len() == KINDS.len()
    }

    pub(super) fn state(&self) -> ClusterState {
        let mut s = ClusterState::default();
        for e in self.objects.values() {
            if let Some(g) = &e.good {
                s.extend(g.state.clone());
            }
        }
        s
    }

    pub(super) fn status(&self) -> Value {
        let kinds: Vec<Value> = KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let objects: Vec<String> = self
                    .objects
                    .iter()
                    .filter(|(key, e)| key.0 == i && e.good.is_some())
                    .map(|(key, _)| describe(k, &key.1, &key.2))
                    .collect();
                let rejected: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(key, _)| key.0 == i)
                    .filter_map(|(key, e)| {
                        e.error.as_ref().map(|err| {
                            json!({"object": describe(k, &key.1, &key.2), "in_force": e.good.is_some(), "error": err})
                        })
                    })
                    .collect();
                json!({
                    "kind": k.kind,
                    "synced": self.synced.contains(&i),
                    "relists": self.relists.get(&i).copied().unwrap_or(0),
                    "watch_error": self.watch_errors.get(&i),
                    "objects": objects,
                    "rejected": rejected,
                })
            })
            .collect();
        json!({
            "kinds": kinds,
            "status_patches_sent": self.patches_sent,
            "status_patch_errors": self.patch_errors,
        })
    }
}
