//! Translation: cluster state → identities → resolved policy
//! (`membrane-policy`) → snapshots of xDS resources, one per sidecar and one
//! shared by every other client.
//!
//! The policy engine is kept across updates, so a change re-resolves only the
//! endpoints it affects; the snapshot cache then republishes only the
//! snapshots whose content changed.

pub mod envoy;
pub mod npds;

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
use crate::proto::{NetworkPolicy, NetworkPolicyHosts};
use crate::resource::{
    content_hash, Resource, CLUSTER, ENDPOINT, NETWORK_POLICY, NETWORK_POLICY_HOSTS,
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
    /// Backends.
    pub backends: Vec<Backend>,
}

/// A service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceModel {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Ports.
    pub ports: Vec<ServicePortModel>,
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

fn service_models(state: &ClusterState, eps: &[(EndpointModel, &k8s::Pod)]) -> Vec<ServiceModel> {
    let mut out = Vec::new();
    for svc in &state.services {
        let ns = svc.metadata.ns();
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
                backends: backends.into_iter().collect(),
            });
        }
        out.push(ServiceModel {
            name: svc.metadata.name.clone(),
            namespace: ns.to_string(),
            ports,
        });
    }
    out
}

/// The result of one translation.
#[derive(Debug, Default)]
pub struct Translation {
    /// Snapshots rebuilt because their inputs changed, per cache key
    /// (`sidecar/NS/POD` and `shared`).
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Every key that should have a snapshot now (rebuilt or not).
    pub keys: BTreeSet<String>,
    /// Parts that could not be translated; the previous snapshot of those
    /// keys stays published.
    pub errors: Vec<TranslateError>,
}

/// One endpoint's NPDS resource as last translated, with what it was built
/// from, so an endpoint the engine did not re-resolve is neither re-encoded
/// nor re-hashed.
#[derive(Debug)]
struct NpdsEntry {
    /// The engine's resolution it was built from. The engine hands out the
    /// same `Arc` until it re-resolves the endpoint (see
    /// `membrane_policy::Engine`); holding it keeps the pointer from being
    /// reused, so pointer equality means "same resolution".
    resolved: Arc<ResolvedPolicy>,
    ips: Vec<String>,
    endpoint_id: u64,
    named_ports: NamedPorts,
    np: Arc<NetworkPolicy>,
    resource: Resource,
}

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
    /// 205 ms for 1,000 endpoints under 10,000 rules).
    npds: HashMap<String, NpdsEntry>,
    /// The cluster-wide named ports the NPDS cache was built with (egress
    /// named ports resolve against them); a change empties the cache.
    npds_named: NamedPorts,
    /// Per identity, its NPHDS resource and the addresses it was built from.
    nphds: HashMap<u64, (Vec<String>, Resource)>,
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
            npds_named: NamedPorts::new(),
            nphds: HashMap::new(),
        }
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
            let ep = Endpoint {
                labels: m.labels.clone(),
                named_ports: m.named_ports.clone(),
            };
            if self.endpoints.get(&m.id) == Some(&ep) {
                continue;
            }
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
    /// the endpoint fields NPDS carries changed, else encoded anew.
    fn npds_for(
        &mut self,
        m: &EndpointModel,
        resolved: Arc<ResolvedPolicy>,
    ) -> (Arc<NetworkPolicy>, Resource) {
        if let Some(e) = self.npds.get(&m.id) {
            if Arc::ptr_eq(&e.resolved, &resolved)
                && e.ips == m.ips
                && e.endpoint_id == m.endpoint_id
                && e.named_ports == m.named_ports
            {
                return (e.np.clone(), e.resource.clone());
            }
        }
        let np = Arc::new(NetworkPolicy {
            endpoint_ips: m.ips.clone(),
            endpoint_id: m.endpoint_id,
            ingress_per_port_policies: npds::direction(&resolved.ingress, &m.named_ports),
            egress_per_port_policies: npds::direction(&resolved.egress, &self.npds_named),
        });
        let resource = Resource::new(NETWORK_POLICY, m.ips[0].clone(), &*np);
        self.npds.insert(
            m.id.clone(),
            NpdsEntry {
                resolved,
                ips: m.ips.clone(),
                endpoint_id: m.endpoint_id,
                named_ports: m.named_ports.clone(),
                np: np.clone(),
                resource: resource.clone(),
            },
        );
        (np, resource)
    }

    /// Translates the whole state into snapshots.
    pub fn translate(&mut self, state: &ClusterState) -> Translation {
        let mut out = Translation::default();
        let eps: Vec<(EndpointModel, &k8s::Pod)> = state
            .pods
            .iter()
            .filter(|p| !p.ips().is_empty())
            .map(|p| (endpoint_model(p, state), p))
            .collect();
        self.sync_engine(state, &eps, &mut out.errors);

        // NPHDS: identity → addresses.
        let mut hosts: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for (m, _) in &eps {
            if let Some(id) = self.engine.identity_of(&m.id) {
                hosts
                    .entry(u64::from(id.0))
                    .or_default()
                    .extend(m.ips.iter().cloned());
            }
        }
        for (net, id) in self.engine.cidr_identities() {
            hosts
                .entry(u64::from(id.0))
                .or_default()
                .insert(net.to_string());
        }
        for n in &state.nodes {
            for a in n.status.addresses.iter().filter(|a| a.kind == "InternalIP") {
                hosts
                    .entry(u64::from(Identity::HOST.0))
                    .or_default()
                    .insert(a.address.clone());
            }
        }
        let hosts: BTreeMap<u64, Vec<String>> = hosts
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        let nphds: Vec<Resource> = hosts
            .iter()
            .map(|(id, addrs)| match self.nphds.get(id) {
                Some((built, r)) if built == addrs => r.clone(),
                _ => {
                    let h = NetworkPolicyHosts {
                        policy: *id,
                        host_addresses: addrs.clone(),
                    };
                    let r = Resource::new(NETWORK_POLICY_HOSTS, id.to_string(), &h);
                    self.nphds.insert(*id, (addrs.clone(), r.clone()));
                    r
                }
            })
            .collect();
        self.nphds.retain(|id, _| hosts.contains_key(id));

        let services = service_models(state, &eps);
        if self.npds_named != *self.engine.cluster_named_ports() {
            self.npds.clear();
            self.npds_named = self.engine.cluster_named_ports().clone();
        }
        // Sets every snapshot shares, built once (Arc), not per sidecar.
        let nphds = TypeResources::shared(nphds);
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

        let mut inbound_cache = envoy::InboundCache::new();
        for (m, _) in &eps {
            let Some(resolved) = self.engine.resolved(&m.id) else {
                continue;
            };
            let (np, npds_res) = self.npds_for(m, resolved);
            shared.add(npds_res.clone());
            let key = pod_key(&m.namespace, &m.pod);
            out.keys.insert(key.clone());
            let input = content_hash(
                format!(
                    "{:x}|{:?}|{:?}|{}|{}|{}",
                    npds_res.hash,
                    m.ips,
                    m.tcp_ports,
                    nphds.version,
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
            b.add_set(NETWORK_POLICY_HOSTS, nphds.clone());
            b.add_set(CLUSTER, svc_clusters.clone());
            b.add_set(ENDPOINT, svc_clas.clone());
            match envoy::sidecar_inbound(m, &np, &hosts, &mut inbound_cache) {
                Ok(rs) => {
                    for r in rs {
                        b.add(r);
                    }
                }
                Err(e) => {
                    self.inputs.remove(&key);
                    out.errors.push(e);
                    continue;
                }
            }
            match b.build() {
                Ok(s) => {
                    self.inputs.insert(key.clone(), input);
                    out.snapshots.insert(key, s);
                }
                Err(error) => {
                    self.inputs.remove(&key);
                    out.errors.push(TranslateError::Snapshot { key, error });
                }
            }
        }
        self.inputs.retain(|k, _| out.keys.contains(k));
        self.npds.retain(|id, _| self.endpoints.contains_key(id));
        out.keys.insert(SHARED_KEY.to_string());
        match shared.build() {
            Ok(s) => {
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
pub(crate) mod tests {
    use super::*;
    use crate::resource::{LISTENER, ROUTE};
    use crate::source::dir::parse;
    use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_filter, HttpConnectionManager,
    };
    use prost::Message;

    /// Cilium's Star Wars demo: deathstar, tiefighter, xwing and the L7 rule.
    pub const STARWARS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, namespace: default, labels: {org: empire, class: deathstar}}
spec: {containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status: {podIP: 10.0.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: deathstar, namespace: default}
spec: {selector: {org: empire, class: deathstar}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
"#;

    #[test]
    fn header_match_secrets_are_named_with_their_namespace() {
        // Everything in namespace `shop`: a secret reference without a namespace means the
        // policy's, which the proxy cannot know, so NPDS always carries NAMESPACE/NAME.
        let text = STARWARS.replace("namespace: default", "namespace: shop").replace(
            "http: [{method: POST, path: /v1/request-landing}]",
            "http: [{headerMatches: [{name: x-a, secret: {name: tok}}, {name: x-b, secret: {name: tok, namespace: vault}}, {name: x-c, value: v}]}]",
        );
        let state = parse("sw.yaml", &text).unwrap().state;
        let out = Translator::new().translate(&state);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let np: NetworkPolicy = out.snapshots[SHARED_KEY]
            .resources(NETWORK_POLICY)
            .unwrap()
            .items["10.0.0.5"]
            .decode()
            .unwrap();
        let Some(crate::proto::port_network_policy_rule::L7::HttpRules(http)) =
            &np.ingress_per_port_policies[0].rules[0].l7
        else {
            panic!("no http rules: {np:?}");
        };
        let secrets: Vec<(&str, &str)> = http.http_rules[0]
            .header_matches
            .iter()
            .map(|m| (m.name.as_str(), m.value_sds_secret.as_str()))
            .collect();
        assert_eq!(
            secrets,
            vec![("x-a", "shop/tok"), ("x-b", "vault/tok"), ("x-c", "")]
        );
    }

    #[test]
    fn starwars_l7_policy_becomes_npds_nphds_and_rbac() {
        let state = parse("sw.yaml", STARWARS).unwrap().state;
        let mut t = Translator::new();
        let out = t.translate(&state);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let shared = &out.snapshots[SHARED_KEY];

        // NPHDS: each pod's identity maps to its IP.
        let hosts: BTreeMap<String, NetworkPolicyHosts> = shared
            .resources(NETWORK_POLICY_HOSTS)
            .unwrap()
            .items
            .iter()
            .map(|(k, r)| (k.clone(), r.decode().unwrap()))
            .collect();
        let id_of = |ip: &str| {
            hosts
                .values()
                .find(|h| h.host_addresses == vec![ip.to_string()])
                .map(|h| h.policy as u32)
                .unwrap_or_else(|| panic!("no identity for {ip}: {hosts:?}"))
        };
        let (tie, xwing, death) = (id_of("10.0.0.6"), id_of("10.0.0.7"), id_of("10.0.0.5"));
        assert!(tie >= 256 && xwing >= 256 && tie != xwing);

        // NPDS for the deathstar: port 80/TCP, empire identities, POST landing.
        let np: NetworkPolicy = shared.resources(NETWORK_POLICY).unwrap().items["10.0.0.5"]
            .decode()
            .unwrap();
        assert_eq!(np.endpoint_ips, vec!["10.0.0.5".to_string()]);
        let ingress = &np.ingress_per_port_policies;
        assert_eq!(ingress.len(), 1, "{ingress:?}");
        assert_eq!((ingress[0].port, ingress[0].protocol), (80, 0));
        let rule = &ingress[0].rules[0];
        let mut remotes = rule.remote_policies.clone();
        remotes.sort();
        let mut want = vec![tie, death];
        want.sort();
        assert_eq!(
            remotes, want,
            "org=empire selects deathstar and tiefighter, not xwing"
        );
        let Some(crate::proto::port_network_policy_rule::L7::HttpRules(http)) = &rule.l7 else {
            panic!("no http rules: {rule:?}");
        };
        let names: Vec<&str> = http.http_rules[0]
            .headers
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, vec![":method", ":path"]);
        // The xwing is not under policy for ingress: allow-all on port 0.
        let xw: NetworkPolicy = shared.resources(NETWORK_POLICY).unwrap().items["10.0.0.7"]
            .decode()
            .unwrap();
        assert!(xw
            .ingress_per_port_policies
            .iter()
            .all(|p| p.port == 0 && p.rules.is_empty()));

        // Sidecar snapshot: listener on the pod IP:80 with RBAC allowing the
        // tiefighter's address, not the xwing's.
        let side = &out.snapshots["sidecar/default/deathstar-1"];
        let l: Listener = side.resources(LISTENER).unwrap().items["inbound|80"]
            .decode()
            .unwrap();
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!()
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(http_filter::ConfigType::TypedConfig(rbac_any)) = &hcm.http_filters[0].config_type
        else {
            panic!()
        };
        let rbac = Rbac::decode(rbac_any.value.as_slice()).unwrap();
        let text = format!("{rbac:?}");
        assert!(
            text.contains("10.0.0.6") && text.contains("10.0.0.5"),
            "{text}"
        );
        assert!(!text.contains("10.0.0.7"), "{text}");
        assert!(
            text.contains("/v1/request-landing") && text.contains("POST"),
            "{text}"
        );
        assert!(side
            .resources(ROUTE)
            .unwrap()
            .items
            .contains_key("inbound|80"));
        // The service's EDS cluster points at the deathstar's named port.
        let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            shared.resources(crate::resource::ENDPOINT).unwrap().items
                ["outbound|80||deathstar.default.svc.cluster.local"]
                .decode()
                .unwrap();
        assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);

        // The references the translator declares are exactly what the
        // encoded resources say (the consistency check trusts them).
        for snap in out.snapshots.values() {
            for t in [LISTENER, ROUTE, crate::resource::CLUSTER] {
                for r in snap
                    .resources(t)
                    .map(|s| s.items.values())
                    .into_iter()
                    .flatten()
                {
                    let declared = r.refs.as_ref().expect("translator declares refs");
                    let decoded = crate::snapshot::decoded_refs(t, r).unwrap();
                    assert_eq!(declared.to_vec(), decoded, "{t} {}", r.name);
                }
            }
        }

        // Translating the same state again, or in a fresh translator (another
        // replica), yields the same versions: nothing is republished.
        let again = t.translate(&state);
        let fresh = Translator::new().translate(&state);
        assert_eq!(
            again.snapshots.keys().collect::<Vec<_>>(),
            vec![SHARED_KEY],
            "unchanged sidecar inputs are not rebuilt"
        );
        assert_eq!(again.keys, out.keys);
        assert_eq!(again.snapshots[SHARED_KEY].version, shared.version);
        for (key, snap) in &out.snapshots {
            assert_eq!(fresh.snapshots[key].version, snap.version, "{key}");
        }
    }

    #[test]
    fn a_policy_change_reencodes_only_what_it_selects_and_matches_a_fresh_translation() {
        let mut state = parse("sw.yaml", STARWARS).unwrap().state;
        let mut t = Translator::new();
        let before = t.translate(&state);
        let npds_of =
            |snap: &Snapshot, ip: &str| snap.resources(NETWORK_POLICY).unwrap().items[ip].clone();
        let old_shared = &before.snapshots[SHARED_KEY];

        // rule1 now allows PUT instead of POST: only the deathstar changes.
        let edited = STARWARS.replace("method: POST", "method: PUT");
        state.policies = parse("sw.yaml", &edited).unwrap().state.policies;
        let after = t.translate(&state);
        assert!(after.errors.is_empty(), "{:?}", after.errors);
        let new_shared = &after.snapshots[SHARED_KEY];
        let death: NetworkPolicy = npds_of(new_shared, "10.0.0.5").decode().unwrap();
        assert!(format!("{death:?}").contains("PUT"), "{death:?}");
        assert_ne!(
            npds_of(new_shared, "10.0.0.5").hash,
            npds_of(old_shared, "10.0.0.5").hash
        );
        // The tiefighter's resolution is untouched: its encoded resource is reused.
        assert!(Arc::ptr_eq(
            &npds_of(new_shared, "10.0.0.6").body,
            &npds_of(old_shared, "10.0.0.6").body
        ));
        assert_eq!(
            after.snapshots.keys().collect::<Vec<_>>(),
            vec!["shared", "sidecar/default/deathstar-1"],
            "only the deathstar's sidecar is rebuilt"
        );
        // What the caches produced is what a translator starting from scratch builds.
        let fresh = Translator::new().translate(&state);
        for (key, snap) in &after.snapshots {
            assert_eq!(fresh.snapshots[key].version, snap.version, "{key}");
        }

        // A pod's address changes: its NPDS and the identities' NPHDS follow.
        for p in &mut state.pods {
            if p.metadata.name == "tiefighter" {
                p.status.pod_ip = Some("10.0.0.9".into());
            }
        }
        let moved = t.translate(&state);
        let fresh = Translator::new().translate(&state);
        let shared = &moved.snapshots[SHARED_KEY];
        assert!(shared
            .resources(NETWORK_POLICY)
            .unwrap()
            .items
            .contains_key("10.0.0.9"));
        // Every key's latest snapshot, as the cache would hold it, equals a fresh build.
        let mut latest: BTreeMap<&String, &String> = BTreeMap::new();
        for out in [&before, &after, &moved] {
            latest.extend(out.snapshots.iter().map(|(k, s)| (k, &s.version)));
        }
        for (key, snap) in &fresh.snapshots {
            assert_eq!(latest[key], &snap.version, "{key}");
        }
    }
}
