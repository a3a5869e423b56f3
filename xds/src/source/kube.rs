//! The Kubernetes source: list+watch of the nine kinds the directory source
//! reads (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Pod,
//! Namespace, Service, EndpointSlice, Node, Istio's PeerAuthentication, membrane's
//! PrefilterDenyList), with the `Valid` condition
//! written back to each policy's `status`. A kind whose resource the API
//! server does not have (404: Istio's CRDs not installed) counts as listed
//! and empty, so start-up does not wait for it; the watcher keeps retrying
//! and takes the objects once the CRD appears.
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

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{ClusterState, ScanReport, Source};

mod store;

use store::describe;
pub use store::{condition_patch, StatusPatch, Store};

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
    /// Optional: the API may not serve it (a CRD of another project).
    pub optional: bool,
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
pub const KINDS: [Kind; 9] = [
    Kind {
        kind: "CiliumNetworkPolicy",
        group: "cilium.io",
        version: "v2",
        plural: "ciliumnetworkpolicies",
        policy: true,
        optional: false,
    },
    Kind {
        kind: "CiliumClusterwideNetworkPolicy",
        group: "cilium.io",
        version: "v2",
        plural: "ciliumclusterwidenetworkpolicies",
        policy: true,
        optional: false,
    },
    Kind {
        kind: "Pod",
        group: "",
        version: "v1",
        plural: "pods",
        policy: false,
        optional: false,
    },
    Kind {
        kind: "Namespace",
        group: "",
        version: "v1",
        plural: "namespaces",
        policy: false,
        optional: false,
    },
    Kind {
        kind: "Service",
        group: "",
        version: "v1",
        plural: "services",
        policy: false,
        optional: false,
    },
    Kind {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        policy: false,
        optional: false,
    },
    Kind {
        kind: "Node",
        group: "",
        version: "v1",
        plural: "nodes",
        policy: false,
        optional: false,
    },
    Kind {
        kind: "PeerAuthentication",
        group: "security.istio.io",
        version: "v1",
        plural: "peerauthentications",
        policy: false,
        optional: true,
    },
    // Optional as Istio's: a cluster upgraded before its CRDs are applied still starts.
    Kind {
        kind: "PrefilterDenyList",
        group: "membrane.io",
        version: "v1alpha1",
        plural: "prefilterdenylists",
        policy: false,
        optional: true,
    },
];

/// Field manager for status patches.
const MANAGER: &str = "membrane-xds";

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
            Err(watcher::Error::InitialListFailed(kube::Error::Api(st)))
                if st.code == 404 && k.optional =>
            {
                let mut s = lock(&store);
                if !s.is_synced(kind) {
                    info!(
                        kind = k.kind,
                        "not served by the API server (CRD not installed); empty until it is"
                    );
                    let out = s.relisted(kind, Vec::new());
                    debug_assert!(out.is_empty());
                    if s.synced() {
                        synced.send_replace(true);
                    }
                    drop(s);
                    wake.notify_one();
                }
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
mod tests;
