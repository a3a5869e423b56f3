//! The Kubernetes source: list+watch of the seven kinds the directory source
//! reads (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Pod,
//! Namespace, Service, EndpointSlice, Node), with the `Valid` condition
//! written back to each policy's `status`.
//!
//! One kube-runtime watcher per kind feeds a [`Store`]. Every object goes
//! through the directory source's parser ([`super::dir::parse`]), so both
//! sources accept exactly the same objects. An object is all or nothing, as
//! a file is there: a bad version is rejected (named by kind,
//! namespace/name and field), and that object's last good version stays in
//! force. The watcher relists on its own when a watch ends with 410 Gone;
//! the relisted set replaces the kind's objects atomically, so objects
//! deleted while the watch was down go away and the others keep their
//! state.
//!
//! Objects are kept as dynamic JSON rather than typed structs: the parser
//! is the one place that decides what a valid object is.
//!
//! Status write-back: after a policy is accepted or rejected, its `Valid`
//! condition (`status.conditions`, the shape Cilium's CRDs declare) is
//! merge-patched on the `/status` subresource, only when it differs from
//! what the object already carries. `lastTransitionTime` moves only when the
//! condition's status flips. The CRDs have no `observedGeneration` field in
//! `status`, so none is written (the API server would prune it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::dir::{self, FileContents, FileError};
use super::{ClusterState, ScanReport, Source};

/// Why the Kubernetes source could not start.
#[derive(Debug, Error)]
pub enum KubeError {
    /// `--kubeconfig` could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// No configuration in the usual places (in-cluster, `KUBECONFIG`,
    /// `~/.kube/config`).
    #[error("no Kubernetes configuration found (in-cluster, KUBECONFIG, ~/.kube/config): {0}")]
    Infer(String),
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// One watched kind.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kind {
    /// `kind`.
    pub kind: &'static str,
    /// API group (`""` for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Resource name in URLs.
    pub plural: &'static str,
    /// A policy: its status is written back.
    pub policy: bool,
}

impl Kind {
    /// `apiVersion` as objects carry it.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// The kinds the source watches: the same the directory source reads.
pub const KINDS: [Kind; 7] = [
    Kind {
        kind: "CiliumNetworkPolicy",
        group: "cilium.io",
        version: "v2",
        plural: "ciliumnetworkpolicies",
        policy: true,
    },
    Kind {
        kind: "CiliumClusterwideNetworkPolicy",
        group: "cilium.io",
        version: "v2",
        plural: "ciliumclusterwidenetworkpolicies",
        policy: true,
    },
    Kind {
        kind: "Pod",
        group: "",
        version: "v1",
        plural: "pods",
        policy: false,
    },
    Kind {
        kind: "Namespace",
        group: "",
        version: "v1",
        plural: "namespaces",
        policy: false,
    },
    Kind {
        kind: "Service",
        group: "",
        version: "v1",
        plural: "services",
        policy: false,
    },
    Kind {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        policy: false,
    },
    Kind {
        kind: "Node",
        group: "",
        version: "v1",
        plural: "nodes",
        policy: false,
    },
];

/// Messages name their origin like the directory source names a file.
const ORIGIN: &str = "kubernetes";
/// The condition type Cilium's policy status uses.
const CONDITION: &str = "Valid";
/// Field manager for status patches.
const MANAGER: &str = "membrane-xds";

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
    changed: bool,
    rejected: Vec<String>,
    synced: BTreeSet<usize>,
    relists: BTreeMap<usize, u64>,
    watch_errors: BTreeMap<usize, String>,
    patches_sent: u64,
    patch_errors: Vec<String>,
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

fn describe(kind: &Kind, ns: &str, name: &str) -> String {
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

    /// Whether every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.synced.len() == KINDS.len()
    }

    fn state(&self) -> ClusterState {
        let mut s = ClusterState::default();
        for e in self.objects.values() {
            if let Some(g) = &e.good {
                s.extend(g.state.clone());
            }
        }
        s
    }

    fn status(&self) -> Value {
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

/// The Kubernetes API as a source; the watches run as tasks on the current
/// tokio runtime and stop when the source is dropped.
#[derive(Debug)]
pub struct KubeSource {
    store: Arc<Mutex<Store>>,
    synced: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A client from `--kubeconfig` when given, else from the usual places
/// (in-cluster service account, `KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    // The client's TLS uses the process-wide rustls provider: make it ring
    // whatever else the build enables (an error means one is installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match kubeconfig {
        Some(p) => {
            let err = |message: String| KubeError::Kubeconfig {
                path: p.display().to_string(),
                message,
            };
            let kc = Kubeconfig::read_from(p).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

fn lock(m: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KubeSource {
    /// Starts a watch per kind and the status writer; `wake` fires whenever
    /// the good state changed or an object was rejected.
    pub fn start(client: Client, wake: Arc<Notify>) -> Self {
        let store = Arc::new(Mutex::new(Store::default()));
        let (synced_tx, synced) = watch::channel(false);
        let synced_tx = Arc::new(synced_tx);
        let (patch_tx, patch_rx) = mpsc::unbounded_channel();
        let mut tasks = vec![tokio::spawn(write_status(
            client.clone(),
            patch_rx,
            store.clone(),
        ))];
        for kind in 0..KINDS.len() {
            tasks.push(tokio::spawn(watch_kind(
                client.clone(),
                kind,
                store.clone(),
                wake.clone(),
                patch_tx.clone(),
                synced_tx.clone(),
            )));
        }
        KubeSource {
            store,
            synced,
            tasks,
        }
    }

    /// Waits until every kind has been listed once, at most `limit`;
    /// returns whether it was.
    pub async fn wait_synced(&self, limit: Duration) -> bool {
        let mut rx = self.synced.clone();
        tokio::time::timeout(limit, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn watch_kind(
    client: Client,
    kind: usize,
    store: Arc<Mutex<Store>>,
    wake: Arc<Notify>,
    patches: mpsc::UnboundedSender<StatusPatch>,
    synced: Arc<watch::Sender<bool>>,
) {
    let k = &KINDS[kind];
    let api: Api<DynamicObject> = Api::all_with(client, &k.resource());
    let mut events = watcher(api).default_backoff().boxed();
    let mut buffer: Vec<Value> = Vec::new();
    let to_value = |o: DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
    while let Some(ev) = events.next().await {
        let out: Vec<StatusPatch> = match ev {
            Ok(Event::Init) => {
                buffer.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                buffer.push(to_value(o));
                continue;
            }
            Ok(Event::InitDone) => {
                let mut s = lock(&store);
                s.watch_errors.remove(&kind);
                let out = s.relisted(kind, std::mem::take(&mut buffer));
                if s.synced() {
                    synced.send_replace(true);
                }
                out
            }
            Ok(Event::Apply(o)) => lock(&store).apply(kind, to_value(o)).into_iter().collect(),
            Ok(Event::Delete(o)) => {
                lock(&store).delete(kind, &to_value(o));
                vec![]
            }
            // 410 Gone is the API server's normal "relist": the watcher
            // lists again on its own.
            Err(watcher::Error::WatchError(st)) if st.code == 410 => {
                info!(kind = k.kind, "watch expired (410 Gone); relisting");
                continue;
            }
            Err(e) => {
                warn!(kind = k.kind, error = %e, "watch failed; retrying with backoff");
                lock(&store).watch_errors.insert(kind, e.to_string());
                continue;
            }
        };
        for p in out {
            let _ = patches.send(p);
        }
        wake.notify_one();
    }
}

fn watcher(
    api: Api<DynamicObject>,
) -> impl futures_util::Stream<Item = watcher::Result<Event<DynamicObject>>> + Send {
    watcher::watcher(api, watcher::Config::default())
}

/// Sends status patches one at a time, retrying a failed one a few times.
async fn write_status(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<StatusPatch>,
    store: Arc<Mutex<Store>>,
) {
    const ATTEMPTS: u32 = 3;
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    while let Some(p) = rx.recv().await {
        let ar = KINDS[p.kind].resource();
        let api: Api<DynamicObject> = match &p.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let what = describe(
            &KINDS[p.kind],
            p.namespace.as_deref().unwrap_or(""),
            &p.name,
        );
        for attempt in 1..=ATTEMPTS {
            match api
                .patch_status(&p.name, &params, &Patch::Merge(&p.body))
                .await
            {
                Ok(_) => {
                    lock(&store).patches_sent += 1;
                    info!(object = %what, "policy status written");
                    break;
                }
                Err(e) => {
                    warn!(object = %what, attempt, error = %e, "writing policy status failed");
                    if attempt == ATTEMPTS {
                        let mut s = lock(&store);
                        s.patch_errors.push(format!("{what}: {e}"));
                        let excess = s.patch_errors.len().saturating_sub(16);
                        s.patch_errors.drain(..excess);
                    } else {
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    }
                }
            }
        }
    }
}

impl Source for KubeSource {
    fn name(&self) -> &'static str {
        "kube"
    }

    fn scan(&mut self) -> ScanReport {
        let mut s = lock(&self.store);
        ScanReport {
            changed: std::mem::take(&mut s.changed),
            rejected: std::mem::take(&mut s.rejected),
        }
    }

    fn state(&self) -> ClusterState {
        lock(&self.store).state()
    }

    fn status(&self) -> Value {
        lock(&self.store).status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNP: usize = 0;
    const POD: usize = 2;

    fn cnp(port: &str) -> Value {
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "rule1", "namespace": "default", "resourceVersion": "7", "generation": 1},
            "spec": {
                "endpointSelector": {"matchLabels": {"org": "empire"}},
                "ingress": [{"toPorts": [{"ports": [{"port": port}]}]}]
            }
        })
    }

    /// Kafka (or DNS, or l7proto) rules are accepted, and the Valid condition says that
    /// membrane does not enforce them and what it does instead.
    #[test]
    fn unenforced_l7_rules_are_named_in_the_valid_condition() {
        let mut s = Store::default();
        let mut v = cnp("9092");
        v["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["protocol"] = json!("TCP");
        v["spec"]["ingress"][0]["toPorts"][0]["rules"] =
            json!({"kafka": [{"role": "produce", "topic": "deathstar-plans"}]});
        let p = s.apply(CNP, v).expect("a verdict is written");
        let c = &p.body["status"]["conditions"][0];
        assert_eq!(c["status"], "True", "{c}");
        let msg = c["message"].as_str().unwrap();
        assert!(
            msg.starts_with("policy is valid and in force; warnings: spec.ingress[0].toPorts[0].rules.kafka: Kafka rules are not enforced by membrane")
                && msg.contains("fail closed"),
            "{msg}"
        );
        assert_eq!(s.state().policies.len(), 1, "the policy is in force");
    }

    #[test]
    fn bad_version_keeps_last_good_and_status_says_why() {
        let mut s = Store::default();
        let p = s.apply(CNP, cnp("80")).expect("first verdict is written");
        assert_eq!(p.namespace.as_deref(), Some("default"));
        let c = &p.body["status"]["conditions"][0];
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str()),
            (Some("Valid"), Some("True"))
        );
        assert!(std::mem::take(&mut s.changed));
        assert_eq!(s.state().policies.len(), 1);

        let p = s.apply(CNP, cnp("99999")).expect("rejection is written");
        let c = &p.body["status"]["conditions"][0];
        assert_eq!(c["status"], "False");
        let msg = c["message"].as_str().unwrap();
        assert!(
            msg.starts_with("spec.ingress[0].toPorts[0].ports[0].port"),
            "{msg}"
        );
        assert!(!s.changed, "a rejection changes no good state");
        assert_eq!(s.state().policies.len(), 1, "last good version stays");
        assert_eq!(s.rejected.len(), 1);
        assert!(
            s.rejected[0].starts_with("CiliumNetworkPolicy default/rule1: spec.ingress[0]"),
            "{}",
            s.rejected[0]
        );

        // The object now carries our condition: the same verdict is not written again,
        // nor is the object re-parsed for a status-only change.
        let mut again = cnp("99999");
        again["status"] = p.body["status"].clone();
        again["metadata"]["resourceVersion"] = json!("8");
        assert_eq!(s.apply(CNP, again), None);
        assert_eq!(s.rejected.len(), 1);
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = condition_patch(None, false, "x: bad", "2026-01-01T00:00:00Z").unwrap();
        let cur = first["status"].clone();
        assert_eq!(condition_patch(Some(&cur), false, "x: bad", "later"), None);
        let msg = condition_patch(Some(&cur), false, "y: bad", "2026-02-02T00:00:00Z").unwrap();
        assert_eq!(
            msg["status"]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        let flip = condition_patch(Some(&cur), true, "ok", "2026-03-03T00:00:00Z").unwrap();
        assert_eq!(
            flip["status"]["conditions"][0]["lastTransitionTime"],
            "2026-03-03T00:00:00Z"
        );
        // Other conditions survive the merge patch (which replaces lists whole).
        let other = json!({"conditions": [{"type": "Other", "status": "True"}]});
        let p = condition_patch(Some(&other), true, "ok", "t").unwrap();
        assert_eq!(p["status"]["conditions"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn relist_replaces_a_kinds_objects() {
        let mut s = Store::default();
        let pod = |name: &str| json!({"metadata": {"name": name, "namespace": "default"}, "status": {"podIP": "10.0.0.1"}});
        assert!(s.relisted(POD, vec![pod("a"), pod("b")]).is_empty());
        assert_eq!(s.state().pods.len(), 2);
        s.changed = false;
        s.relisted(POD, vec![pod("a")]);
        assert!(s.changed);
        assert_eq!(s.state().pods.len(), 1);
        assert_eq!(s.relists[&POD], 1);
        // Core list items carry no kind: it is filled in from the watched kind.
        assert_eq!(s.state().pods[0].metadata.name, "a");
    }
}
