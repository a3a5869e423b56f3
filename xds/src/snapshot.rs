//! Immutable, versioned snapshots and the per-node snapshot cache.
//!
//! A snapshot is everything one node (or the shared, non-sidecar group) may
//! see, for every type. It is built whole, checked for consistency (every
//! route, cluster and endpoint set a resource refers to is present) and only
//! then published; streams never see a half-built state and nobody pushes
//! ad hoc. Versions are content hashes, so an unchanged type keeps its
//! version across rebuilds (and across control-plane replicas), and
//! republishing an identical snapshot wakes no stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action, route_action::ClusterSpecifier, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use prost::Message;
use thiserror::Error;
use tokio::sync::watch;

use crate::resource::{content_hash, Resource, CLUSTER, ENDPOINT, LISTENER, ROUTE};

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Why a snapshot was not published.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// A resource refers to another resource the snapshot does not hold.
    #[error("inconsistent snapshot: {kind} {name:?} refers to missing {missing_kind} {missing:?}")]
    Dangling {
        /// Referring resource's type (short name).
        kind: &'static str,
        /// Referring resource's name.
        name: String,
        /// Missing resource's type (short name).
        missing_kind: &'static str,
        /// Missing resource's name.
        missing: String,
    },
    /// A resource in the snapshot does not decode as its declared type.
    #[error("snapshot resource {name:?} of type {type_url} does not decode: {error}")]
    Decode {
        /// Resource name.
        name: String,
        /// Type URL.
        type_url: String,
        /// Decoder message.
        error: String,
    },
    /// Two resources of one type share a name.
    #[error("snapshot holds two {type_url} resources named {name:?}")]
    Duplicate {
        /// Type URL.
        type_url: String,
        /// Resource name.
        name: String,
    },
}

/// The resources of one type in a snapshot, with their version.
#[derive(Debug, Clone, Default)]
pub struct TypeResources {
    /// Content hash of the whole set, as a hex string; the SotW `version_info`.
    pub version: String,
    /// Resources by name.
    pub items: BTreeMap<String, Resource>,
    /// The set's SotW encoding, made by the first stream that sends it whole
    /// and shared by every other ([`crate::wire`]).
    wire: OnceLock<(String, Bytes)>,
}

impl PartialEq for TypeResources {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.items == other.items
    }
}

/// An immutable set of resources for one node (or node group).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<TypeResources>>,
    /// Content hash of every type's version.
    pub version: String,
    /// When the control plane built it (for convergence time).
    pub created: SystemTime,
}

impl Snapshot {
    /// The resources of `type_url` (empty set if none).
    pub fn resources(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url).map(|t| &**t)
    }

    /// The resources of `type_url` as the shared set (its encoding is shared too).
    pub fn resources_shared(&self, type_url: &str) -> Option<Arc<TypeResources>> {
        self.types.get(type_url).cloned()
    }

    /// The version of `type_url` in this snapshot (the empty set has a version too).
    pub fn type_version(&self, type_url: &str) -> String {
        self.types
            .get(type_url)
            .map(|t| t.version.clone())
            .unwrap_or_else(|| empty_version().to_string())
    }

    /// Every type URL this snapshot holds resources of.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Checks that every reference resolves: listener → route config,
    /// route → cluster, EDS cluster → load assignment.
    pub fn check(&self) -> Result<(), SnapshotError> {
        let has = |t: &str, n: &str| self.types.get(t).is_some_and(|r| r.items.contains_key(n));
        // Every sidecar's snapshot is checked on every rebuild: references are looked up
        // where they are, and copied only into an error.
        let dangling = |t: &str, r: &Resource, to: &str, name: &str| SnapshotError::Dangling {
            kind: kind_word(t),
            name: r.name.clone(),
            missing_kind: kind_word(to),
            missing: name.to_string(),
        };
        for t in [LISTENER, ROUTE, CLUSTER] {
            let Some(set) = self.types.get(t) else {
                continue;
            };
            for r in set.items.values() {
                // Resources the translator built carry their references;
                // anything else is decoded.
                match &r.refs {
                    Some(explicit) => {
                        if let Some((to, name)) = explicit.iter().find(|(to, n)| !has(to, n)) {
                            return Err(dangling(t, r, to, name));
                        }
                    }
                    None => {
                        for (to, name) in decoded_refs(t, r)? {
                            if !has(to, &name) {
                                return Err(dangling(t, r, to, &name));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn kind_word(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "listener",
        ROUTE => "route",
        CLUSTER => "cluster",
        _ => "endpoint",
    }
}

/// The resources `r` (of type `t`) refers to, read from its encoded body:
/// listener → route config (RDS) or clusters (inline routes), route →
/// clusters, EDS cluster → load assignment.
pub fn decoded_refs(t: &str, r: &Resource) -> Result<Vec<(&'static str, String)>, SnapshotError> {
    let mut refs = Vec::new();
    match t {
        LISTENER => {
            let l: Listener = decode(r)?;
            for hcm in listener_hcms(&l, r)? {
                match hcm.route_specifier {
                    Some(RouteSpecifier::Rds(rds)) => refs.push((ROUTE, rds.route_config_name)),
                    Some(RouteSpecifier::RouteConfig(rc)) => {
                        refs.extend(route_clusters(&rc).into_iter().map(|c| (CLUSTER, c)))
                    }
                    _ => {}
                }
            }
        }
        ROUTE => {
            let rc: RouteConfiguration = decode(r)?;
            refs.extend(route_clusters(&rc).into_iter().map(|c| (CLUSTER, c)));
        }
        CLUSTER => {
            let c: Cluster = decode(r)?;
            // DiscoveryType::Eds = 3.
            if let Some(ClusterDiscoveryType::Type(3)) = c.cluster_discovery_type {
                let service = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                refs.push((ENDPOINT, service));
            }
        }
        _ => {}
    }
    Ok(refs)
}

fn decode<M: Message + Default>(r: &Resource) -> Result<M, SnapshotError> {
    r.decode().map_err(|e| SnapshotError::Decode {
        name: r.name.clone(),
        type_url: r.body.type_url.clone(),
        error: e.to_string(),
    })
}

fn listener_hcms(l: &Listener, r: &Resource) -> Result<Vec<HttpConnectionManager>, SnapshotError> {
    let mut out = Vec::new();
    let chains = l.filter_chains.iter().chain(l.default_filter_chain.iter());
    let mut configs: Vec<&envoy_types::pb::google::protobuf::Any> = chains
        .flat_map(|c| c.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        })
        .collect();
    if let Some(api) = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
    {
        configs.push(api);
    }
    for any in configs {
        if any.type_url == HCM_TYPE {
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
                SnapshotError::Decode {
                    name: r.name.clone(),
                    type_url: HCM_TYPE.to_string(),
                    error: e.to_string(),
                }
            })?;
            out.push(hcm);
        }
    }
    Ok(out)
}

fn route_clusters(rc: &RouteConfiguration) -> Vec<String> {
    let mut out = Vec::new();
    for vh in &rc.virtual_hosts {
        for route in &vh.routes {
            if let Some(Action::Route(ra)) = &route.action {
                match &ra.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => out.push(c.clone()),
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.iter().map(|c| c.name.clone()))
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn empty_version() -> &'static str {
    "0000000000000000"
}

impl TypeResources {
    /// The fields of a SotW response carrying this whole set (of type
    /// `type_url`), encoded once.
    pub fn wire(&self, type_url: &str) -> Bytes {
        let (t, bytes) = self.wire.get_or_init(|| {
            (
                type_url.to_string(),
                crate::wire::encode_set(type_url, self),
            )
        });
        if t == type_url {
            return bytes.clone();
        }
        // A set shared under two types (none is today) is encoded per use.
        crate::wire::encode_set(type_url, self)
    }

    /// A set with its content version, to share between snapshots (every
    /// sidecar's snapshot holds the same NPHDS set, for example).
    pub fn shared(items: impl IntoIterator<Item = Resource>) -> Arc<TypeResources> {
        let items: BTreeMap<String, Resource> =
            items.into_iter().map(|r| (r.name.clone(), r)).collect();
        Arc::new(TypeResources {
            version: set_version(&items),
            items,
            wire: OnceLock::new(),
        })
    }
}

fn set_version(items: &BTreeMap<String, Resource>) -> String {
    let mut buf = Vec::with_capacity(items.len() * 24);
    for (name, r) in items {
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        buf.extend_from_slice(&r.hash.to_le_bytes());
    }
    format!("{:016x}", content_hash(&buf))
}

/// Collects resources for one snapshot.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    types: BTreeMap<String, BTreeMap<String, Resource>>,
    sets: BTreeMap<String, Arc<TypeResources>>,
    duplicate: Option<(String, String)>,
}

impl SnapshotBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that starts with every type of `snap` (the sets are shared, not copied).
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        SnapshotBuilder {
            sets: snap.types.clone(),
            ..Self::default()
        }
    }

    /// Adds one resource; its type is the type URL of its body.
    pub fn add(&mut self, r: Resource) -> &mut Self {
        if !self.types.contains_key(r.body.type_url.as_str()) {
            self.types.insert(r.body.type_url.clone(), BTreeMap::new());
        }
        let t = self
            .types
            .get_mut(r.body.type_url.as_str())
            .expect("inserted above");
        // The one it replaces has the same type and name.
        if let Some(old) = t.insert(r.name.clone(), r) {
            if self.duplicate.is_none() {
                self.duplicate = Some((old.body.type_url.clone(), old.name));
            }
        }
        self
    }

    /// Adds a shared set of `type_url` resources (merged with any resources
    /// of that type added one by one).
    pub fn add_set(&mut self, type_url: &str, set: Arc<TypeResources>) -> &mut Self {
        self.sets.insert(type_url.to_string(), set);
        self
    }

    /// Seals the snapshot: computes versions and checks consistency.
    pub fn build(mut self) -> Result<Snapshot, SnapshotError> {
        if let Some((type_url, name)) = self.duplicate {
            return Err(SnapshotError::Duplicate { type_url, name });
        }
        let mut types: BTreeMap<String, Arc<TypeResources>> = BTreeMap::new();
        for (t, set) in std::mem::take(&mut self.sets) {
            match self.types.get_mut(&t) {
                Some(own) => {
                    for (name, r) in &set.items {
                        if own.insert(name.clone(), r.clone()).is_some() {
                            return Err(SnapshotError::Duplicate {
                                type_url: t,
                                name: name.clone(),
                            });
                        }
                    }
                }
                None => {
                    types.insert(t, set);
                }
            }
        }
        for (t, items) in self.types {
            let version = set_version(&items);
            types.insert(
                t,
                Arc::new(TypeResources {
                    version,
                    items,
                    wire: OnceLock::new(),
                }),
            );
        }
        let mut all = Vec::new();
        for (t, set) in &types {
            all.extend_from_slice(t.as_bytes());
            all.extend_from_slice(set.version.as_bytes());
        }
        let snap = Snapshot {
            types,
            version: format!("{:016x}", content_hash(&all)),
            created: SystemTime::now(),
        };
        snap.check()?;
        Ok(snap)
    }
}

/// The latest snapshot per node key, with a watch per key so streams wake
/// when their snapshot changes.
///
/// A key prefix may have a default ([`SnapshotCache::set_default`]): a key of
/// that prefix with no snapshot of its own gets it, and follows it until one
/// is published for the key. The node agents use it: an agent of a node the
/// sources do not know yet, or that runs no endpoint, gets what every agent
/// gets (services, nodes, the ipcache) without the translation having to know
/// every node name a client may present.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    nodes: Mutex<Nodes>,
}

#[derive(Debug, Default)]
struct Nodes {
    senders: HashMap<String, watch::Sender<Option<Arc<Snapshot>>>>,
    /// Per key prefix, its default snapshot.
    defaults: BTreeMap<String, Arc<Snapshot>>,
    /// Keys showing their prefix's default rather than a snapshot of their own.
    following: std::collections::HashSet<String>,
}

impl Nodes {
    fn default_for(&self, key: &str) -> Option<Arc<Snapshot>> {
        self.defaults
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, s)| s.clone())
    }
}

/// Replaces what `tx` holds with `snap`, waking its watchers, unless the
/// content is the same.
fn offer(tx: &watch::Sender<Option<Arc<Snapshot>>>, snap: Arc<Snapshot>) -> bool {
    tx.send_if_modified(|cur| {
        if cur.as_ref().is_some_and(|c| c.version == snap.version) {
            return false;
        }
        *cur = Some(snap);
        true
    })
}

impl SnapshotCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sender(&self, key: &str) -> watch::Sender<Option<Arc<Snapshot>>> {
        let mut nodes = self.lock();
        if let Some(tx) = nodes.senders.get(key) {
            return tx.clone();
        }
        let initial = nodes.default_for(key);
        if initial.is_some() {
            nodes.following.insert(key.to_string());
        }
        let tx = watch::channel(initial).0;
        nodes.senders.insert(key.to_string(), tx.clone());
        tx
    }

    /// Publishes `snap` for `key`. Returns false (and wakes nobody) when the
    /// content equals what is already published.
    pub fn set(&self, key: &str, snap: Snapshot) -> bool {
        let mut nodes = self.lock();
        nodes.following.remove(key);
        let tx = nodes
            .senders
            .entry(key.to_string())
            .or_insert_with(|| watch::channel(None).0);
        offer(tx, Arc::new(snap))
    }

    /// Makes `snap` the default of every key starting with `prefix`: keys
    /// with no snapshot of their own (or following the default) get it now.
    /// Returns how many keys changed.
    pub fn set_default(&self, prefix: &str, snap: Snapshot) -> usize {
        let snap = Arc::new(snap);
        let mut nodes = self.lock();
        nodes.defaults.insert(prefix.to_string(), snap.clone());
        let mut changed = 0;
        let Nodes {
            senders, following, ..
        } = &mut *nodes;
        for (key, tx) in senders.iter() {
            if !key.starts_with(prefix) {
                continue;
            }
            if following.contains(key) || tx.borrow().is_none() {
                following.insert(key.clone());
                changed += usize::from(offer(tx, snap.clone()));
            }
        }
        changed
    }

    /// Makes `key` follow its prefix's default again (its own snapshot went
    /// away). Returns false when nothing changed or there is no default.
    pub fn follow_default(&self, key: &str) -> bool {
        let tx = self.sender(key);
        let mut nodes = self.lock();
        let Some(snap) = nodes.default_for(key) else {
            return false;
        };
        nodes.following.insert(key.to_string());
        offer(&tx, snap)
    }

    /// The snapshot published for `key` (or its prefix's default), if any.
    pub fn get(&self, key: &str) -> Option<Arc<Snapshot>> {
        let nodes = self.lock();
        match nodes.senders.get(key) {
            Some(tx) => tx.borrow().clone(),
            None => nodes.default_for(key),
        }
    }

    /// Subscribes to `key`'s snapshots (the current one is marked seen only
    /// once the caller borrows it).
    pub fn watch(&self, key: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut rx = self.sender(key).subscribe();
        rx.mark_changed();
        rx
    }

    /// Every key with a published snapshot.
    pub fn keys(&self) -> Vec<String> {
        let nodes = self.lock();
        let mut keys: Vec<String> = nodes
            .senders
            .iter()
            .filter(|(_, tx)| tx.borrow().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, VirtualHost};

    fn eds_cluster(name: &str) -> Resource {
        let c = Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(3)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        };
        Resource::new(CLUSTER, name, &c)
    }

    fn route_to(name: &str, cluster: &str) -> Resource {
        let rc = RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: "vh".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        Resource::new(ROUTE, name, &rc)
    }

    fn cla(name: &str) -> Resource {
        let c = ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        };
        Resource::new(ENDPOINT, name, &c)
    }

    #[test]
    fn consistency_check_rejects_dangling_references() {
        let mut b = SnapshotBuilder::new();
        b.add(route_to("r", "c"));
        let err = b.build().unwrap_err();
        assert!(
            err.to_string()
                .contains("route \"r\" refers to missing cluster \"c\""),
            "{err}"
        );

        let mut b = SnapshotBuilder::new();
        b.add(route_to("r", "c")).add(eds_cluster("c"));
        let err = b.build().unwrap_err();
        assert!(err.to_string().contains("missing endpoint \"c\""), "{err}");

        let mut b = SnapshotBuilder::new();
        b.add(route_to("r", "c"))
            .add(eds_cluster("c"))
            .add(cla("c"));
        assert!(b.build().is_ok());
    }

    #[test]
    fn versions_are_content_hashes_and_identical_snapshots_wake_nobody() {
        let build = |cluster: &str| {
            let mut b = SnapshotBuilder::new();
            b.add(eds_cluster(cluster)).add(cla(cluster));
            b.build().unwrap()
        };
        let a = build("a");
        let a2 = build("a");
        let b = build("b");
        assert_eq!(a.type_version(CLUSTER), a2.type_version(CLUSTER));
        assert_ne!(a.type_version(CLUSTER), b.type_version(CLUSTER));
        assert_eq!(a.type_version(LISTENER), empty_version());

        let cache = SnapshotCache::new();
        let mut rx = cache.watch("n");
        assert!(cache.set("n", a));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!cache.set("n", a2), "same content must not republish");
        assert!(!rx.has_changed().unwrap());
        assert!(cache.set("n", b));
        assert!(rx.has_changed().unwrap());
        assert_eq!(cache.keys(), vec!["n".to_string()]);
    }

    #[test]
    fn keys_without_a_snapshot_follow_their_prefixs_default() {
        let build = |cluster: &str| {
            let mut b = SnapshotBuilder::new();
            b.add(eds_cluster(cluster)).add(cla(cluster));
            b.build().unwrap()
        };
        let cache = SnapshotCache::new();
        let mut early = cache.watch("agent/early");
        assert!(cache.get("agent/x").is_none());
        assert_eq!(
            cache.set_default("agent/", build("d1")),
            1,
            "the early watcher"
        );
        assert!(early.has_changed().unwrap());
        let d1 = early.borrow_and_update().clone().unwrap();
        assert!(d1.resources(CLUSTER).unwrap().items.contains_key("d1"));
        // A key nobody published: the default, for get and for a new watcher.
        assert_eq!(cache.get("agent/x").unwrap().version, d1.version);
        let late = cache.watch("agent/late");
        assert_eq!(late.borrow().as_ref().unwrap().version, d1.version);
        assert!(cache.get("sidecar/x").is_none(), "other prefixes have none");

        // A key of its own stops following; a new default moves only the others.
        assert!(cache.set("agent/early", build("own")));
        assert_eq!(
            cache.set_default("agent/", build("d2")),
            1,
            "agent/late only"
        );
        let own = cache.get("agent/early").unwrap();
        assert!(own.resources(CLUSTER).unwrap().items.contains_key("own"));
        assert!(cache
            .get("agent/late")
            .unwrap()
            .resources(CLUSTER)
            .unwrap()
            .items
            .contains_key("d2"));
        // Its own snapshot gone, it follows the default again.
        assert!(cache.follow_default("agent/early"));
        assert!(cache
            .get("agent/early")
            .unwrap()
            .resources(CLUSTER)
            .unwrap()
            .items
            .contains_key("d2"));
        assert!(
            !cache.follow_default("sidecar/x"),
            "no default for that prefix"
        );
    }
}
