//! The reconcile loop: sources → translation → snapshot cache.
//!
//! Each tick scans the sources; when their good state changed, the whole
//! state is translated (the policy engine inside re-resolves only what the
//! change affects) and every snapshot is offered to the cache, which wakes
//! only the streams whose snapshot content changed; sidecars' snapshots are
//! offered one by one as they are built, so that their streams push while the
//! rest of the fleet is translated. A snapshot that fails
//! translation or its consistency check is not published: the node keeps
//! its previous one, and the failure shows in `/debug/sourcez` and metrics.
//!
//! With cluster-wide identities (etcd), each pass first obtains the identity
//! of every pod label set from [`ClusterIdentities`] and seeds the
//! translator with them (the policy engine's allocator does no I/O); after
//! translating, it hands over what was resolved for registration. A pass
//! that could not number every label set is retried on the next tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::auth::Workloads;
use crate::identity::{ClusterAllocator, ClusterIdentities};
use crate::kvstore::IpEntry;
use crate::node::AGENT_KEY_PREFIX;
use crate::recorder::{Recorder, SourceLabel};
use crate::snapshot::{SnapshotBuilder, SnapshotCache};
use crate::source::{ClusterState, Source};
use crate::translate::{self, Translator};

/// What one reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Snapshots whose content changed and were published.
    pub published: usize,
    /// Files rejected in this pass.
    pub rejected: usize,
    /// Translation errors in this pass.
    pub translate_errors: usize,
}

/// Owns the sources and the translator; publishes into the cache.
#[derive(Debug)]
pub struct Controller {
    sources: Vec<Box<dyn Source>>,
    translator: Translator,
    cache: Arc<SnapshotCache>,
    recorder: Arc<Recorder>,
    status: Arc<Mutex<Value>>,
    keys: BTreeSet<String>,
    first: bool,
    /// A pass found a source that has not read its input yet (logged once).
    waiting: bool,
    /// Cluster-wide identities (etcd); `None`: the translator allocates.
    identities: Option<Box<dyn ClusterIdentities>>,
    /// The last pass could not get every identity: try again next tick
    /// even if no source changed.
    retry: bool,
    /// Kept to configure a translator that replaces the first.
    unenforced_l7: membrane_policy::UnenforcedL7Mode,
    /// Likewise.
    allow_localhost: membrane_policy::AllowLocalhost,
    /// Likewise.
    root_namespace: String,
    /// The pods mTLS clients are checked against, replaced every pass.
    workloads: Option<Arc<Workloads>>,
}

impl Controller {
    /// A controller over `sources` (none is valid: every pod gone).
    pub fn new(
        sources: Vec<Box<dyn Source>>,
        cache: Arc<SnapshotCache>,
        recorder: Arc<Recorder>,
        status: Arc<Mutex<Value>>,
    ) -> Self {
        Controller {
            sources,
            translator: Translator::new(),
            cache,
            recorder,
            status,
            keys: BTreeSet::new(),
            first: true,
            waiting: false,
            identities: None,
            retry: false,
            unenforced_l7: Default::default(),
            allow_localhost: Default::default(),
            root_namespace: crate::peerauth::DEFAULT_ROOT_NAMESPACE.into(),
            workloads: None,
        }
    }

    /// Keeps `workloads` (what the mTLS xDS port checks node ids against)
    /// equal to the pods of the merged state.
    pub fn with_workloads(mut self, workloads: Arc<Workloads>) -> Self {
        self.workloads = Some(workloads);
        self
    }

    /// Takes identities from `ids` (agreed cluster-wide) instead of
    /// allocating them in process, and hands it what each pass resolved.
    pub fn with_cluster_identities(mut self, ids: Box<dyn ClusterIdentities>) -> Self {
        self.translator = Translator::with_allocator(ClusterAllocator::seeded());
        self.translator.set_unenforced_l7(self.unenforced_l7);
        self.translator.set_allow_localhost(self.allow_localhost);
        self.translator.set_root_namespace(&self.root_namespace);
        self.identities = Some(ids);
        self
    }

    /// Sets what Kafka, DNS and generic L7 rules do (`--unenforced-l7`).
    pub fn with_unenforced_l7(mut self, mode: membrane_policy::UnenforcedL7Mode) -> Self {
        self.unenforced_l7 = mode;
        self.translator.set_unenforced_l7(mode);
        self
    }

    /// Sets Cilium's allow-localhost (`--allow-localhost`): whether the node's own traffic
    /// reaches pods without a rule naming the host.
    pub fn with_allow_localhost(mut self, setting: membrane_policy::AllowLocalhost) -> Self {
        self.allow_localhost = setting;
        self.translator.set_allow_localhost(setting);
        self
    }

    /// Sets Istio's root namespace (`--root-namespace`): where a PeerAuthentication
    /// without a selector is mesh-wide.
    pub fn with_root_namespace(mut self, ns: &str) -> Self {
        self.root_namespace = ns.to_string();
        self.translator.set_root_namespace(ns);
        self
    }

    /// Scans, translates and publishes once.
    pub fn reconcile(&mut self) -> Reconciled {
        let mut out = Reconciled::default();
        let mut changed = false;
        let mut rejected = Vec::new();
        for source in &mut self.sources {
            let r = source.scan();
            changed |= r.changed;
            for _ in &r.rejected {
                self.recorder
                    .metrics
                    .source_errors
                    .get_or_create(&SourceLabel {
                        source: source.name().into(),
                    })
                    .inc();
            }
            rejected.extend(r.rejected);
        }
        out.rejected = rejected.len();
        if let Some(s) = self.sources.iter().find(|s| !s.synced()) {
            // Nothing is published from a partial state; the source wakes the
            // controller when it has read its input.
            if !self.waiting {
                info!(
                    source = s.name(),
                    "source not read yet; publishing nothing until it is"
                );
                self.waiting = true;
            }
            self.update_status(&[], &rejected);
            return out;
        }
        if !changed && !self.first && !self.retry {
            if !rejected.is_empty() {
                self.update_status(&[], &rejected);
            }
            return out;
        }
        self.first = false;
        let mut state = ClusterState::default();
        for source in &self.sources {
            state.extend(source.state());
        }
        if let Some(w) = &self.workloads {
            w.update(&state);
        }
        let mut alloc_errors = Vec::new();
        if let Some(ids) = &mut self.identities {
            let mut want = translate::endpoint_labels(&state);
            want.sort();
            want.dedup();
            let (got, errs) = ids.allocate(&want);
            self.translator.seed_identities(got);
            alloc_errors = errs;
        }
        self.retry = !alloc_errors.is_empty();
        // Sidecars' snapshots are published as they are built (their streams push while
        // the rest is translated); a key whose snapshot fails keeps its previous one.
        let mut early = 0;
        let t = self
            .translator
            .translate_publishing(&state, &mut |key, snap| {
                if self.cache.set(&key, snap) {
                    early += 1;
                    self.recorder.metrics.snapshots.inc();
                }
            });
        out.published += early;
        if let Some(ids) = &mut self.identities {
            ids.publish(registrations(&state, &self.translator));
        }
        let errors: Vec<String> = alloc_errors
            .into_iter()
            .chain(t.errors.iter().map(ToString::to_string))
            .collect();
        for e in &errors {
            warn!(error = %e, "translation error; the affected node keeps its previous snapshot");
            self.recorder.metrics.snapshot_errors.inc();
        }
        out.translate_errors = errors.len();
        let failed: BTreeSet<String> = t
            .errors
            .iter()
            .filter_map(|e| match e {
                crate::translate::TranslateError::Snapshot { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        let mut keys = t.keys.clone();
        // First what agents of nodes without endpoints get, so that an agent
        // whose node just lost its last endpoint moves to the new one.
        if let Some(template) = t.agent_template {
            out.published += self.cache.set_default(AGENT_KEY_PREFIX, template);
        }
        for (key, snap) in t.snapshots {
            if self.cache.set(&key, snap) {
                out.published += 1;
                self.recorder.metrics.snapshots.inc();
            }
        }
        // Pods that went away: their sidecars get an empty snapshot (every
        // resource removed) rather than keeping stale policy. Nodes that went
        // away: their agents get what an agent of an unknown node gets.
        let gone: Vec<String> = self.keys.difference(&keys).cloned().collect();
        for gone in gone {
            if failed.contains(&gone) {
                keys.insert(gone);
                continue;
            }
            if gone.starts_with(AGENT_KEY_PREFIX) {
                out.published += usize::from(self.cache.follow_default(&gone));
                continue;
            }
            if let Ok(empty) = SnapshotBuilder::new().build() {
                if self.cache.set(&gone, empty) {
                    out.published += 1;
                }
            }
        }
        self.keys = keys;
        info!(
            published = out.published,
            policies = state.policies.len(),
            pods = state.pods.len(),
            "reconciled"
        );
        self.update_status(&errors, &rejected);
        out
    }

    fn update_status(&self, errors: &[String], rejected: &[String]) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        *s = json!({
            "sources": self.sources.iter().map(|s| json!({"kind": s.name(), "status": s.status()})).collect::<Vec<_>>(),
            "last_rejections": rejected,
            "translation_errors": errors,
            "snapshots": self.cache.keys(),
        });
    }

    /// Reconciles when `wake` fires (a file-system event) and at least every
    /// `interval` (the fallback for events the watcher cannot see), until
    /// `shutdown` resolves.
    pub async fn run(
        mut self,
        interval: Duration,
        wake: Arc<tokio::sync::Notify>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the caller has just reconciled, and a pass now
        // could read a file that a writer is in the middle of (truncated, not yet closed).
        tick.tick().await;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => { self.reconcile(); }
                _ = wake.notified() => {
                    // Let a writer finish a burst of writes before reading.
                    tokio::time::sleep(EVENT_SETTLE).await;
                    self.reconcile();
                }
            }
        }
    }
}

/// What a pass resolved, for registration: every pod address with its
/// endpoint's identity, and every node's internal addresses (remote-node,
/// as the cluster-wide NPHDS carries them: a node's own addresses are the
/// host only on that node).
fn registrations(state: &ClusterState, t: &Translator) -> BTreeMap<String, IpEntry> {
    let mut out = BTreeMap::new();
    for p in &state.pods {
        let name = format!("{}/{}", p.metadata.ns(), p.metadata.name);
        let Some(id) = t.identity_of(&name) else {
            continue;
        };
        for ip in p.ips() {
            out.insert(
                ip,
                IpEntry {
                    identity: id.0,
                    kind: "endpoint".into(),
                    name: name.clone(),
                },
            );
        }
    }
    for n in &state.nodes {
        for a in n.status.addresses.iter().filter(|a| a.kind == "InternalIP") {
            out.entry(a.address.clone()).or_insert_with(|| IpEntry {
                identity: membrane_policy::Identity::REMOTE_NODE.0,
                kind: "node".into(),
                name: n.metadata.name.clone(),
            });
        }
    }
    out
}

/// How long to wait after a file-system event before scanning.
const EVENT_SETTLE: Duration = Duration::from_millis(5);

/// Watches `dir` with inotify (via `notify`) and fires `wake` on every
/// change. The returned watcher must be kept alive.
pub fn watch_dir(
    dir: &std::path::Path,
    wake: Arc<tokio::sync::Notify>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
        Ok(ev) => {
            // Act when a write is complete (close after writing), or on
            // creation, removal and renames (atomic replacement). A file
            // being written (truncate, then data) must not be read half
            // way: an empty policy file would briefly mean "no policy".
            let complete = matches!(
                ev.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Create(_)
                    | EventKind::Remove(_)
                    | EventKind::Modify(ModifyKind::Name(_))
            );
            tracing::debug!(kind = ?ev.kind, paths = ?ev.paths, complete, "source directory event");
            if complete {
                wake.notify_one();
            }
        }
        Err(e) => warn!(error = %e, "source directory watch error"),
    })?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}

#[cfg(test)]
mod incremental_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{LISTENER, NETWORK_POLICY};

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, labels: {org: empire, class: deathstar}}
spec: {containers: [{name: app, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, labels: {org: empire, class: tiefighter}}
status: {podIP: 10.0.0.6}
"#;

    #[test]
    fn reconcile_publishes_empties_removed_pods_and_keeps_state_on_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
        let cache = Arc::new(SnapshotCache::new());
        let recorder = Arc::new(Recorder::new());
        let status = Arc::new(Mutex::new(Value::Null));
        let mut c = Controller::new(
            vec![Box::new(crate::source::dir::DirSource::new(
                dir.path(),
                1 << 20,
            ))],
            cache.clone(),
            recorder.clone(),
            status.clone(),
        );
        let r = c.reconcile();
        assert_eq!(
            r.published, 4,
            "two sidecars, the shared snapshot and the relay's"
        );
        let death = cache.get("sidecar/default/deathstar-1").unwrap();
        assert!(death
            .resources(LISTENER)
            .is_some_and(|l| l.items.contains_key("inbound|80")));
        assert_eq!(c.reconcile(), Reconciled::default(), "nothing changed");

        // A bad file is rejected; nothing is republished.
        std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\nmetadata: {name: x}\nspec: {containers: [{ports: [{containerPort: eighty}]}]}\n").unwrap();
        let r = c.reconcile();
        assert_eq!((r.rejected, r.published), (1, 0));
        let s = status.lock().unwrap().clone();
        assert!(
            s["last_rejections"][0]
                .as_str()
                .unwrap()
                .contains("bad.yaml"),
            "{s}"
        );
        assert!(recorder
            .metrics
            .encode()
            .contains("membrane_xds_source_errors_total{source=\"dir\"} 1"));
        assert!(Arc::ptr_eq(
            &death,
            &cache.get("sidecar/default/deathstar-1").unwrap()
        ));

        // The deathstar goes away: its sidecar gets an empty snapshot.
        std::fs::write(
            dir.path().join("pods.yaml"),
            PODS.split("---").nth(1).unwrap(),
        )
        .unwrap();
        let r = c.reconcile();
        assert!(r.published >= 2, "{r:?}");
        let gone = cache.get("sidecar/default/deathstar-1").unwrap();
        assert!(gone.type_urls().next().is_none(), "every resource removed");
        let shared = cache.get(crate::node::SHARED_KEY).unwrap();
        let npds = &shared.resources(NETWORK_POLICY).unwrap().items;
        assert_eq!(npds.keys().collect::<Vec<_>>(), vec!["10.0.0.6"]);
    }
}
