//! Translation: cluster state → identities → resolved policy
//! (`membrane-policy`) → snapshots of xDS resources, one per sidecar and one
//! shared by every other client.
//!
//! The policy engine is kept across updates, so a change re-resolves only the
//! endpoints it affects; the snapshot cache then republishes only the
//! snapshots whose content changed.

pub mod agent;
pub mod envoy;
mod hosts;
mod npds;

#[cfg(test)]
mod l7_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use membrane_policy::identity::Identity;
use membrane_policy::labels::{
    Label, LabelSet, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE, POLICY_CLUSTER, POLICY_SERVICEACCOUNT,
    SOURCE_K8S,
};
use membrane_policy::resolve::{Endpoint, NamedPorts, ResolvedPolicy, UnenforcedL7Mode};
use membrane_policy::{CompiledPolicy, Engine, PolicyKey};
use thiserror::Error;

use crate::identity::ClusterAllocator;
use crate::node::{pod_key, SHARED_KEY};
use crate::proto::NetworkPolicyHosts;
use crate::resource::{
    content_hash, Resource, CLUSTER, ENDPOINT, LISTENER, MESH_TLS, NETWORK_POLICY_HOSTS, ROUTE,
};
use crate::snapshot::{Snapshot, SnapshotBuilder, SnapshotError, TypeResources};
use crate::source::{k8s, ClusterState};

/// Why translation failed for part of the state.
#[derive(Debug, Error)]
pub enum TranslateError {
    /// An address that is neither an IP nor a prefix.
    #[error("address {0:?} is neither an IP address nor a CIDR prefix")]
    Address(String),
    /// Identity allocation failed.
    #[error("pod {pod}: identity allocation failed: {error}")]
    Identity {
        /// `namespace/pod`.
        pod: String,
        /// The allocator's error.
        error: String,
    },
    /// A snapshot failed its consistency check.
    #[error("snapshot {key}: {error}")]
    Snapshot {
        /// Snapshot key.
        key: String,
        /// The check's error.
        error: SnapshotError,
    },
}

/// A pod as the translation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointModel {
    /// `namespace/pod`.
    pub id: String,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Numeric endpoint id for NPDS.
    pub endpoint_id: u64,
    /// Pod IPs, primary first.
    pub ips: Vec<String>,
    /// Declared TCP container ports.
    pub tcp_ports: Vec<u16>,
    /// Named container ports.
    pub named_ports: NamedPorts,
    /// Cilium labels.
    pub labels: LabelSet,
    /// Zone of its node, if known.
    pub zone: Option<String>,
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// Address.
    pub ip: String,
    /// Target port.
    pub port: u16,
    /// Zone, for the EDS locality.
    pub zone: Option<String>,
}

/// One service port and its backends.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePortModel {
    /// Service port.
    pub port: u16,
    /// `TCP` (the default), `UDP` or `SCTP`, as the Service spells it.
    pub protocol: String,
    /// Backends.
    pub backends: Vec<Backend>,
    /// The node port (0 = none): only for services of type `NodePort` or `LoadBalancer`.
    pub node_port: u16,
}

/// A service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceModel {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// `spec.clusterIP`, when it has one (not headless: `None` or empty).
    pub cluster_ip: Option<String>,
    /// Ports.
    pub ports: Vec<ServicePortModel>,
    /// `spec.externalTrafficPolicy: Local` on a service with node ports.
    pub external_local: bool,
}

impl ServiceModel {
    /// `NAME.NAMESPACE.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// Cilium's labels for a pod: its own labels, namespace, namespace labels,
/// service account and cluster, all with source `k8s`.
pub fn pod_labels(pod: &k8s::Pod, ns_labels: Option<&BTreeMap<String, String>>) -> LabelSet {
    let ns = pod.metadata.ns();
    let mut l: Vec<Label> = pod
        .metadata
        .labels
        .iter()
        .map(|(k, v)| Label::new(SOURCE_K8S, k, v))
        .collect();
    l.push(Label::new(SOURCE_K8S, POD_NAMESPACE, ns));
    l.push(Label::new(SOURCE_K8S, POLICY_CLUSTER, "default"));
    l.push(Label::new(SOURCE_K8S, POLICY_SERVICEACCOUNT, "default"));
    for (k, v) in ns_labels.into_iter().flatten() {
        l.push(Label::new(
            SOURCE_K8S,
            &format!("{NAMESPACE_LABELS_PREFIX}{k}"),
            v,
        ));
    }
    LabelSet::from_labels(l)
}

fn endpoint_model(pod: &k8s::Pod, state: &ClusterState) -> EndpointModel {
    let ns = pod.metadata.ns().to_string();
    let ns_labels = state
        .namespaces
        .iter()
        .find(|n| n.metadata.name == ns)
        .map(|n| &n.metadata.labels);
    let mut named = NamedPorts::new();
    let mut tcp = Vec::new();
    for c in &pod.spec.containers {
        for p in &c.ports {
            if let Some(n) = &p.name {
                named.entry(n.clone()).or_default().insert(p.container_port);
            }
            if p.protocol.as_deref().unwrap_or("TCP") == "TCP" {
                tcp.push(p.container_port);
            }
        }
    }
    tcp.sort_unstable();
    tcp.dedup();
    let zone = pod.spec.node_name.as_ref().and_then(|n| {
        state
            .nodes
            .iter()
            .find(|x| &x.metadata.name == n)
            .and_then(|x| {
                x.metadata
                    .labels
                    .get("topology.kubernetes.io/zone")
                    .cloned()
            })
    });
    let id = format!("{ns}/{}", pod.metadata.name);
    EndpointModel {
        // Cilium endpoint ids are 16-bit; a stable hash keeps them stable
        // across restarts and replicas.
        endpoint_id: content_hash(id.as_bytes()) % 65535 + 1,
        id,
        pod: pod.metadata.name.clone(),
        namespace: ns,
        ips: pod.ips(),
        tcp_ports: tcp,
        named_ports: named,
        labels: pod_labels(pod, ns_labels),
        zone,
    }
}

/// Whether a Service of `spec.type` `kind` opens node ports (Kubernetes: `NodePort`, and
/// `LoadBalancer` unless `allocateLoadBalancerNodePorts` is false, which then leaves
/// `nodePort` unset, so the port's own field decides).
fn has_node_ports(kind: Option<&str>) -> bool {
    matches!(kind, Some("NodePort" | "LoadBalancer"))
}

fn service_models(state: &ClusterState, eps: &[(EndpointModel, &k8s::Pod)]) -> Vec<ServiceModel> {
    let mut out = Vec::new();
    for svc in &state.services {
        let ns = svc.metadata.ns();
        let node_ports = has_node_ports(svc.spec.kind.as_deref());
        let mut ports = Vec::new();
        for sp in &svc.spec.ports {
            let mut backends = BTreeSet::new();
            if !svc.spec.selector.is_empty() {
                for (ep, pod) in eps {
                    if ep.namespace != ns
                        || !svc
                            .spec
                            .selector
                            .iter()
                            .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
                    {
                        continue;
                    }
                    let target = match &sp.target_port {
                        Some(serde_json::Value::Number(n)) => {
                            n.as_u64().and_then(|n| u16::try_from(n).ok())
                        }
                        Some(serde_json::Value::String(name)) => ep
                            .named_ports
                            .get(name)
                            .and_then(|s| s.iter().next().copied())
                            .or_else(|| name.parse().ok()),
                        _ => Some(sp.port),
                    };
                    if let (Some(port), Some(ip)) = (target, ep.ips.first()) {
                        backends.insert(Backend {
                            ip: ip.clone(),
                            port,
                            zone: ep.zone.clone(),
                        });
                    }
                }
            }
            for slice in &state.slices {
                let owner = slice.metadata.labels.get("kubernetes.io/service-name");
                if slice.metadata.ns() != ns || owner != Some(&svc.metadata.name) {
                    continue;
                }
                let port = slice
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name || slice.ports.len() == 1)
                    .and_then(|p| p.port);
                for e in &slice.endpoints {
                    for a in &e.addresses {
                        if let Some(port) = port {
                            backends.insert(Backend {
                                ip: a.clone(),
                                port,
                                zone: e.zone.clone(),
                            });
                        }
                    }
                }
            }
            ports.push(ServicePortModel {
                port: sp.port,
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                backends: backends.into_iter().collect(),
                node_port: sp.node_port.filter(|_| node_ports).unwrap_or(0),
            });
        }
        out.push(ServiceModel {
            name: svc.metadata.name.clone(),
            namespace: ns.to_string(),
            cluster_ip: svc
                .spec
                .cluster_ip
                .clone()
                .filter(|ip| !ip.is_empty() && ip != "None"),
            ports,
            external_local: node_ports
                && svc.spec.external_traffic_policy.as_deref() == Some("Local"),
        });
    }
    out
}

/// The result of one translation.
#[derive(Debug, Default)]
pub struct Translation {
    /// Snapshots rebuilt because their inputs changed, per cache key
    /// (`sidecar/NS/POD` and `shared`; without the sidecars' when they were handed
    /// over as built, see [`Translator::translate_publishing`]).
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Every key that should have a snapshot now (rebuilt or not).
    pub keys: BTreeSet<String>,
    /// Parts that could not be translated; the previous snapshot of those
    /// keys stays published.
    pub errors: Vec<TranslateError>,
    /// What an agent of a node with no endpoint (`agent/NODE` not in `keys`)
    /// is served; `None` when it could not be built (the last one stays).
    pub agent_template: Option<Snapshot>,
}

/// One endpoint's NPDS resource as last translated, with what it was built
/// from, so an endpoint the engine did not re-resolve is neither re-encoded
/// nor re-hashed.
#[derive(Debug)]
struct NpdsEntry {
    /// What it shares with the other endpoints of its resolution, and that
    /// resolution. The engine hands out the same `Arc` until it re-resolves the
    /// endpoint (see `membrane_policy::Engine`); the body holds it, which keeps
    /// the pointer from being reused, so pointer equality means "same resolution".
    body: Arc<npds::NpdsBody>,
    ips: Vec<String>,
    endpoint_id: u64,
    resource: Resource,
}

/// A sidecar's inbound sets (listeners, routes, clusters with the services') as last
/// built, with the resources they were built from.
#[derive(Debug)]
struct InboundSets {
    /// The inbound resources' bodies (pointers; the sets hold them, so a pointer is not
    /// reused while this lives).
    bodies: Vec<usize>,
    /// The version of the services' clusters merged into the cluster set.
    services: String,
    sets: Vec<(&'static str, Arc<TypeResources>)>,
}

/// The NPDS bodies of one pass, by resolution (pointer) and then named ports.
type Bodies = HashMap<usize, Vec<Arc<npds::NpdsBody>>>;

/// Keeps the policy engine, and what was built from it, between updates.
#[derive(Debug)]
pub struct Translator {
    engine: Engine<ClusterAllocator>,
    policies: BTreeMap<PolicyKey, Arc<CompiledPolicy>>,
    endpoints: BTreeMap<String, Endpoint>,
    /// Per sidecar key, a hash of everything its snapshot is built from;
    /// unchanged inputs skip the rebuild.
    inputs: BTreeMap<String, u64>,
    /// Per endpoint id, its NPDS resource. Encoding every endpoint's policy
    /// on every change was most of a one-policy change's cost (about 190 of
    /// 205 ms for 1,000 endpoints under 10,000 rules); a re-resolved endpoint's
    /// policy is converted and encoded once per resolution, not per replica
    /// (`npds.rs`).
    npds: HashMap<String, NpdsEntry>,
    /// The sidecars' inbound filter chains, kept between passes (`envoy::InboundCache`).
    inbound: envoy::InboundCache,
    /// Per sidecar key, its inbound listeners as last built (reused while their
    /// chains and address stay the same).
    listeners: HashMap<String, Vec<envoy::BuiltListener>>,
    /// Per sidecar key, its inbound sets: a snapshot rebuilt for another reason (its
    /// NPHDS view, at every pod churn) shares them instead of re-collecting and re-hashing
    /// the same resources.
    inbound_sets: HashMap<String, InboundSets>,
    /// The cluster-wide named ports the NPDS cache was built with (egress
    /// named ports resolve against them); a change empties the cache.
    npds_named: NamedPorts,
    /// Per identity, its NPHDS resource and the addresses it was built from.
    nphds: HashMap<u64, (Vec<String>, Resource)>,
    /// What the node agents' snapshots were built from.
    agents: agent::AgentCache,
    /// Istio's root namespace: its PeerAuthentication without a selector is mesh-wide.
    root_namespace: String,
}

impl Default for Translator {
    fn default() -> Self {
        Self::with_allocator(ClusterAllocator::default())
    }
}

/// The label set of every pod that gets an endpoint (pods with an address),
/// in state order: what identities a translation of `state` needs.
pub fn endpoint_labels(state: &ClusterState) -> Vec<LabelSet> {
    state
        .pods
        .iter()
        .filter(|p| !p.ips().is_empty())
        .map(|p| {
            let ns_labels = state
                .namespaces
                .iter()
                .find(|n| n.metadata.name == p.metadata.ns())
                .map(|n| &n.metadata.labels);
            pod_labels(p, ns_labels)
        })
        .collect()
}

impl Translator {
    /// A translator with an in-memory identity allocator.
    pub fn new() -> Self {
        Self::default()
    }

    /// A translator whose identities come from `allocator` (seeded: agreed
    /// cluster-wide, see [`crate::identity`]).
    pub fn with_allocator(allocator: ClusterAllocator) -> Self {
        Translator {
            engine: Engine::new(allocator),
            policies: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            inputs: BTreeMap::new(),
            npds: HashMap::new(),
            inbound: envoy::InboundCache::new(),
            listeners: HashMap::new(),
            inbound_sets: HashMap::new(),
            npds_named: NamedPorts::new(),
            nphds: HashMap::new(),
            agents: agent::AgentCache::default(),
            root_namespace: crate::peerauth::DEFAULT_ROOT_NAMESPACE.into(),
        }
    }

    /// Sets Istio's root namespace (`--root-namespace`), where a PeerAuthentication
    /// without a selector is mesh-wide.
    pub fn set_root_namespace(&mut self, ns: &str) {
        self.root_namespace = ns.to_string();
        // Every sidecar's mode may change: rebuild them all.
        self.inputs.clear();
    }

    /// Sets what Kafka, DNS and generic L7 rules (which no membrane proxy enforces) do:
    /// fail closed (the default; the NPDS rule carries its parser and allows nothing) or
    /// allow their peers and ports at L4 (`l4-only`; the NPDS rule has no L7).
    pub fn set_unenforced_l7(&mut self, mode: UnenforcedL7Mode) {
        self.engine.set_unenforced_l7(mode);
        // Cached NPDS entries were encoded under the old setting; the endpoints were
        // re-resolved, so their resolutions no longer match the cache anyway.
        self.npds.clear();
    }

    /// Sets Cilium's allow-localhost for every resolution (re-resolving when it changes).
    pub fn set_allow_localhost(&mut self, setting: membrane_policy::AllowLocalhost) {
        self.engine.set_allow_localhost(setting);
    }

    /// Feeds a seeded allocator identities agreed cluster-wide.
    pub fn seed_identities(&mut self, ids: impl IntoIterator<Item = (LabelSet, Identity)>) {
        self.engine.allocator_mut().seed(ids);
    }

    /// The identity the endpoint `namespace/pod` holds, if any.
    pub fn identity_of(&self, endpoint: &str) -> Option<Identity> {
        self.engine.identity_of(endpoint)
    }

    /// Feeds the engine the differences from the last state.
    fn sync_engine(
        &mut self,
        state: &ClusterState,
        eps: &[(EndpointModel, &k8s::Pod)],
        errors: &mut Vec<TranslateError>,
    ) {
        // Endpoints first, then policies: a new identity re-resolves the
        // endpoints whose rules select it, so adding pods under a large
        // policy set one by one would be quadratic; a policy change
        // re-resolves only the endpoints it selects.
        let ids: BTreeSet<&str> = eps.iter().map(|(e, _)| e.id.as_str()).collect();
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|k| !ids.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            if let Err(e) = self.engine.remove_endpoint(&k) {
                errors.push(TranslateError::Identity {
                    pod: k.clone(),
                    error: e.to_string(),
                });
            }
            self.endpoints.remove(&k);
        }
        // Changed endpoints go to the engine in one batch: identities first, then one
        // resolution each.
        let mut batch = Vec::new();
        for (m, _) in eps {
            // Compared in place: every pass looks at every endpoint.
            if self
                .endpoints
                .get(&m.id)
                .is_some_and(|e| e.labels == m.labels && e.named_ports == m.named_ports)
            {
                continue;
            }
            let ep = Endpoint {
                labels: m.labels.clone(),
                named_ports: m.named_ports.clone(),
            };
            batch.push((m.id.clone(), ep));
        }
        if !batch.is_empty() {
            match self.engine.upsert_endpoints(batch.clone()) {
                Ok(_) => self.endpoints.extend(batch),
                Err(e) => {
                    // The batch failed on allocation; retry one by one so the others land.
                    for (id, ep) in batch {
                        match self.engine.upsert_endpoint(&id, ep.clone()) {
                            Ok(_) => {
                                self.endpoints.insert(id, ep);
                            }
                            Err(e1) => errors.push(TranslateError::Identity {
                                pod: id.clone(),
                                error: format!("{e1} (batch: {e})"),
                            }),
                        }
                    }
                }
            }
        }
        let mut want: BTreeMap<PolicyKey, Arc<CompiledPolicy>> = BTreeMap::new();
        for p in &state.policies {
            want.insert(p.key.clone(), p.clone());
        }
        let gone: Vec<PolicyKey> = self
            .policies
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            self.engine.delete_policy(&k);
            self.policies.remove(&k);
        }
        // Changed policies go in one batch: each endpoint they select is re-resolved once.
        let mut changed = Vec::new();
        for (k, p) in want {
            if self
                .policies
                .get(&k)
                .is_some_and(|old| Arc::ptr_eq(old, &p))
            {
                continue;
            }
            changed.push(p.clone());
            self.policies.insert(k, p);
        }
        if !changed.is_empty() {
            self.engine.apply_policies(changed);
        }
    }

    /// `m`'s NPDS resource: the cached one when neither its resolution nor
    /// the endpoint fields NPDS carries changed, else its own fields spliced
    /// before the body its resolution shares (made once per pass in `bodies`).
    fn npds_for(
        &mut self,
        m: &EndpointModel,
        resolved: Arc<ResolvedPolicy>,
        bodies: &mut Bodies,
    ) -> (Arc<npds::NpdsBody>, Resource) {
        let ptr = Arc::as_ptr(&resolved) as usize;
        if let Some(e) = self.npds.get(&m.id) {
            if e.body.is_for(&resolved, &m.named_ports)
                && e.ips == m.ips
                && e.endpoint_id == m.endpoint_id
            {
                let same = bodies.entry(ptr).or_default();
                if !same.iter().any(|b| Arc::ptr_eq(b, &e.body)) {
                    same.push(e.body.clone());
                }
                return (e.body.clone(), e.resource.clone());
            }
        }
        let same = bodies.entry(ptr).or_default();
        let body = match same.iter().find(|b| b.is_for(&resolved, &m.named_ports)) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(npds::NpdsBody::new(
                    resolved,
                    &m.named_ports,
                    &self.npds_named,
                ));
                same.push(b.clone());
                b
            }
        };
        let resource = body.resource(&m.ips, m.endpoint_id);
        self.npds.insert(
            m.id.clone(),
            NpdsEntry {
                body: body.clone(),
                ips: m.ips.clone(),
                endpoint_id: m.endpoint_id,
                resource: resource.clone(),
            },
        );
        (body, resource)
    }

    /// Translates the whole state into snapshots.
    pub fn translate(&mut self, state: &ClusterState) -> Translation {
        let mut sidecars = BTreeMap::new();
        let mut out = self.translate_publishing(state, &mut |key, snap| {
            sidecars.insert(key, snap);
        });
        out.snapshots.extend(sidecars);
        out
    }

    /// Translates the whole state; each rebuilt sidecar snapshot goes to `publish` as soon
    /// as it is built and checked (the result's `snapshots` holds the others: the shared
    /// one, the agents' and the relay's). At fleet size a change rebuilds thousands of
    /// sidecar snapshots: handing each over at once lets their streams push while the rest
    /// is still being translated, instead of after the last one.
    pub fn translate_publishing(
        &mut self,
        state: &ClusterState,
        publish: &mut dyn FnMut(String, Snapshot),
    ) -> Translation {
        let mut out = Translation::default();
        let eps: Vec<(EndpointModel, &k8s::Pod)> = state
            .pods
            .iter()
            .filter(|p| !p.ips().is_empty())
            .map(|p| (endpoint_model(p, state), p))
            .collect();
        self.sync_engine(state, &eps, &mut out.errors);

        // NPHDS: identity → addresses, cluster-wide and per node (`hosts.rs`).
        let hosts = self.hosts(state, &eps);

        let services = service_models(state, &eps);
        if self.npds_named != *self.engine.cluster_named_ports() {
            self.npds.clear();
            self.npds_named = self.engine.cluster_named_ports().clone();
        }
        // Sets every snapshot shares, built once (Arc), not per sidecar.
        let nphds = hosts.shared.set.clone();
        let mut service_resources = Vec::new();
        for s in &services {
            service_resources.extend(envoy::service_clusters(s));
        }
        let (svc_clusters, svc_clas): (Vec<Resource>, Vec<Resource>) = service_resources
            .into_iter()
            .partition(|r| r.body.type_url == CLUSTER);
        let svc_clusters = TypeResources::shared(svc_clusters);
        let svc_clas = TypeResources::shared(svc_clas);
        let mut shared = SnapshotBuilder::new();
        shared.add_set(NETWORK_POLICY_HOSTS, nphds.clone());
        shared.add_set(CLUSTER, svc_clusters.clone());
        shared.add_set(ENDPOINT, svc_clas.clone());
        for s in &services {
            for r in envoy::grpc_listeners(s) {
                shared.add(r);
            }
        }

        // The RBAC principals come from the sidecar's NPHDS view (a node's own addresses
        // are the host there); the chain keys name what of it each chain read.
        let mut bodies = Bodies::new();
        self.inbound.begin();
        for (m, pod) in &eps {
            let Some(resolved) = self.engine.resolved(&m.id) else {
                continue;
            };
            // The sidecar's NPHDS is its node's view: that node's addresses are the host.
            let view = hosts.for_pod(pod);
            let (body, npds_res) = self.npds_for(m, resolved, &mut bodies);
            shared.add(npds_res.clone());
            let key = pod_key(&m.namespace, &m.pod);
            out.keys.insert(key.clone());
            // The workload's PeerAuthentication mode, one resource per sidecar.
            let mesh_tls = Resource::new(
                MESH_TLS,
                m.id.clone(),
                &crate::peerauth::resolve(
                    &self.root_namespace,
                    &m.namespace,
                    &pod.metadata.labels,
                    &state.peer_authentications,
                )
                .to_proto(),
            );
            let input = content_hash(
                format!(
                    "{:x}|{:x}|{:?}|{:?}|{}|{}|{}",
                    npds_res.hash,
                    mesh_tls.hash,
                    m.ips,
                    m.tcp_ports,
                    view.set.version,
                    svc_clusters.version,
                    svc_clas.version
                )
                .as_bytes(),
            );
            if self.inputs.get(&key) == Some(&input) {
                continue;
            }
            let mut b = SnapshotBuilder::new();
            b.add(npds_res);
            b.add(mesh_tls);
            b.add_set(NETWORK_POLICY_HOSTS, view.set.clone());
            b.add_set(CLUSTER, svc_clusters.clone());
            b.add_set(ENDPOINT, svc_clas.clone());
            let built = self.listeners.entry(key.clone()).or_default();
            let inbound_bodies = match envoy::sidecar_inbound(
                m,
                &body.np,
                &body.ingress_hashes,
                &view.peers(),
                &mut self.inbound,
                built,
            ) {
                Ok(rs) => {
                    let bodies: Vec<usize> =
                        rs.iter().map(|r| Arc::as_ptr(&r.body) as usize).collect();
                    // The same resources as last time: their sets as they were.
                    match self.inbound_sets.get(&key) {
                        Some(prev)
                            if prev.bodies == bodies && prev.services == svc_clusters.version =>
                        {
                            for (t, set) in &prev.sets {
                                b.add_set(t, set.clone());
                            }
                        }
                        _ => {
                            for r in rs {
                                b.add(r);
                            }
                        }
                    }
                    bodies
                }
                Err(e) => {
                    self.inputs.remove(&key);
                    out.errors.push(e);
                    continue;
                }
            };
            match b.build() {
                Ok(s) => {
                    self.inputs.insert(key.clone(), input);
                    let sets = [LISTENER, ROUTE, CLUSTER]
                        .into_iter()
                        .filter_map(|t| Some((t, s.resources_shared(t)?)))
                        .collect();
                    self.inbound_sets.insert(
                        key.clone(),
                        InboundSets {
                            bodies: inbound_bodies,
                            services: svc_clusters.version.clone(),
                            sets,
                        },
                    );
                    publish(key, s);
                }
                Err(error) => {
                    self.inputs.remove(&key);
                    out.errors.push(TranslateError::Snapshot { key, error });
                }
            }
        }
        self.inputs.retain(|k, _| out.keys.contains(k));
        self.listeners.retain(|k, _| out.keys.contains(k));
        self.inbound_sets.retain(|k, _| out.keys.contains(k));
        self.inbound.end();
        self.npds.retain(|id, _| self.endpoints.contains_key(id));
        out.keys.insert(SHARED_KEY.to_string());
        match shared.build() {
            Ok(s) => {
                self.translate_agents(state, &eps, &services, &s, &hosts, &mut out);
                out.snapshots.insert(SHARED_KEY.to_string(), s);
            }
            Err(error) => out.errors.push(TranslateError::Snapshot {
                key: SHARED_KEY.to_string(),
                error,
            }),
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;
