//! The node agents' snapshots (`agent/NODE`, for the node id `membrane-agent~NODE`): what
//! the agent of one node needs to keep its kernel maps equal to what the cluster says.
//!
//! Each holds every type of the shared snapshot (NPHDS, the ipcache, among them; NPHDS in
//! the node's own view, where its addresses are the host, see `hosts.rs`) plus the
//! node agent's own types (`membrane.agent.v1`): the `Endpoint` of every pod whose
//! `spec.nodeName` is the node, with its identity and its L3/L4 policy as map entries
//! ([`membrane_api::agent::policy`], from the same engine resolution as the pod's NPDS),
//! every `Service` frontend with its backends, every `Node`, and every cluster-wide
//! `PrefilterDenyList` (`crate::prefilter`; the same for every node). A pod without a
//! `nodeName` is served to no agent: no node runs it yet.
//!
//! Beside them the relay's snapshot (`relay`, for `membrane-relay~NAME`): the same node
//! registry and a `Workload` per pod with an address (name, addresses, node, identity), so
//! that the relay names both ends of any node's flows. Nothing else: a relay is served no
//! policy, service or ipcache.
//!
//! Incremental as NPDS is: an endpoint whose resolution and fields did not change keeps
//! its encoded resource, and an agent snapshot whose inputs did not change is not rebuilt.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use membrane_api::agent::policy::endpoint_policy;
use membrane_api::agent::proto;
use membrane_policy::identity::Identity;
use membrane_policy::resolve::{NamedPorts, ResolvedPolicy};

use super::{EndpointModel, ServiceModel, TranslateError, Translation, Translator};
use crate::node::{agent_key, RELAY_KEY};
use crate::resource::{
    content_hash, Resource, AGENT_ENDPOINT, AGENT_NODE, AGENT_PREFILTER, AGENT_SERVICE,
    AGENT_WORKLOAD, NETWORK_POLICY_HOSTS,
};
use crate::snapshot::{Snapshot, SnapshotBuilder, SnapshotError, TypeResources};
use crate::source::k8s;
use crate::source::ClusterState;

// Istio's annotation on a pod that got a sidecar: what injection leaves.
use crate::inject::STATUS_ANNOTATION;

/// One pod on a node, as an agent sees it: the translation's model of it and what only the
/// agent needs.
#[derive(Debug)]
pub(super) struct AgentEndpoint<'a> {
    /// The translation's model.
    pub model: &'a EndpointModel,
    /// The node it runs on.
    pub node: &'a str,
    /// It has a membrane sidecar.
    pub sidecar: bool,
    /// Its security identity.
    pub identity: Identity,
    /// Its resolved policy.
    pub resolved: Arc<ResolvedPolicy>,
}

impl<'a> AgentEndpoint<'a> {
    /// The agent's view of `model` (the pod `pod`), if it runs on a node.
    pub fn of(
        model: &'a EndpointModel,
        pod: &'a k8s::Pod,
        identity: Identity,
        resolved: Arc<ResolvedPolicy>,
    ) -> Option<Self> {
        let node = pod.spec.node_name.as_deref().filter(|n| !n.is_empty())?;
        Some(AgentEndpoint {
            model,
            node,
            sidecar: pod.metadata.annotations.contains_key(STATUS_ANNOTATION),
            identity,
            resolved,
        })
    }

    /// A hash of the fields the resource carries besides the resolution.
    fn fields_hash(&self) -> u64 {
        let m = self.model;
        content_hash(
            format!(
                "{:?}|{}|{}|{:?}|{}",
                m.ips, self.identity.0, m.labels, m.named_ports, self.sidecar
            )
            .as_bytes(),
        )
    }
}

/// An endpoint's resource as last built, with what it was built from.
#[derive(Debug)]
struct Built {
    /// Held so that pointer equality means "the same resolution" (the engine hands out the
    /// same `Arc` until it re-resolves the endpoint).
    resolved: Arc<ResolvedPolicy>,
    fields: u64,
    resource: Resource,
}

/// What the agents' snapshots were built from, kept between translations.
#[derive(Debug, Default)]
pub(super) struct AgentCache {
    endpoints: HashMap<String, Built>,
    /// The cluster-wide named ports the cached entries resolved egress names with.
    named: NamedPorts,
    /// Per agent key, a hash of everything its snapshot is built from.
    inputs: BTreeMap<String, u64>,
    /// The same for the relay's snapshot.
    relay_input: Option<u64>,
}

/// The `Endpoint` resource of the pod `model` (ingress named ports resolve against its
/// own, egress named ports against `egress_named`, as in its NPDS).
pub fn endpoint_resource(
    model: &EndpointModel,
    identity: Identity,
    sidecar: bool,
    resolved: &ResolvedPolicy,
    egress_named: &NamedPorts,
) -> Resource {
    let named_ports = model
        .named_ports
        .iter()
        .filter_map(|(name, ports)| ports.iter().next().map(|p| (name.clone(), u32::from(*p))))
        .collect();
    let ep = proto::Endpoint {
        namespace: model.namespace.clone(),
        pod: model.pod.clone(),
        ips: model.ips.clone(),
        identity: identity.0,
        labels: model.labels.iter().map(ToString::to_string).collect(),
        named_ports,
        sidecar,
        policy: Some(endpoint_policy(resolved, &model.named_ports, egress_named)),
    };
    Resource::new(AGENT_ENDPOINT, model.id.clone(), &ep)
}

/// IANA number of a Service port protocol (`TCP` when unknown: Kubernetes' default).
fn protocol_number(p: &str) -> (u32, &'static str) {
    match p.to_ascii_uppercase().as_str() {
        "UDP" => (17, "UDP"),
        "SCTP" => (132, "SCTP"),
        _ => (6, "TCP"),
    }
}

/// The `Service` resources of `s`, one per port, named `NAMESPACE/NAME:PORT/PROTOCOL`. A
/// service without a ClusterIP (headless) has no frontend to balance: none.
pub fn service_resources(s: &ServiceModel) -> Vec<Resource> {
    let Some(ip) = &s.cluster_ip else {
        return Vec::new();
    };
    s.ports
        .iter()
        .map(|p| {
            let (protocol, proto_name) = protocol_number(&p.protocol);
            let msg = proto::Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                address: ip.clone(),
                port: u32::from(p.port),
                protocol,
                backends: p
                    .backends
                    .iter()
                    .map(|b| proto::Backend {
                        address: b.ip.clone(),
                        port: u32::from(b.port),
                    })
                    .collect(),
                node_port: u32::from(p.node_port),
                external_traffic_local: s.external_local,
            };
            let name = format!("{}/{}:{}/{proto_name}", s.namespace, s.name, p.port);
            Resource::new(AGENT_SERVICE, name, &msg)
        })
        .collect()
}

/// The `Node` resource of `n`: its InternalIP addresses and pod CIDRs.
pub fn node_resource(n: &k8s::Node) -> Resource {
    let mut pod_cidrs: Vec<String> = n.spec.pod_cidrs.clone();
    if let Some(c) = &n.spec.pod_cidr {
        if !pod_cidrs.contains(c) {
            pod_cidrs.insert(0, c.clone());
        }
    }
    let msg = proto::Node {
        name: n.metadata.name.clone(),
        addresses: n
            .status
            .addresses
            .iter()
            .filter(|a| a.kind == "InternalIP")
            .map(|a| a.address.clone())
            .collect(),
        pod_cidrs,
    };
    Resource::new(AGENT_NODE, n.metadata.name.clone(), &msg)
}

/// The `PrefilterDenyList` resource of `d`, named by the object.
pub fn prefilter_resource(d: &crate::prefilter::DenyList) -> Resource {
    Resource::new(AGENT_PREFILTER, d.name.clone(), &d.to_proto())
}

/// The relay's `Workload` of the pod `model` (on `node`, `""` while unscheduled).
pub fn workload_resource(model: &EndpointModel, node: &str, identity: Identity) -> Resource {
    let w = proto::Workload {
        namespace: model.namespace.clone(),
        pod: model.pod.clone(),
        ips: model.ips.clone(),
        node: node.to_owned(),
        identity: identity.0,
    };
    Resource::new(AGENT_WORKLOAD, model.id.clone(), &w)
}

/// What one translation gives the agents.
#[derive(Debug, Default)]
pub(super) struct AgentSnapshots {
    /// Rebuilt snapshots by key (`agent/NODE`).
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Every node that has an agent snapshot now.
    pub keys: BTreeSet<String>,
    /// The snapshot of a node with no endpoint (or not known yet): what an agent of any
    /// other node is served.
    pub template: Option<Snapshot>,
    /// Snapshots that failed their check, by key.
    pub errors: Vec<(String, SnapshotError)>,
    /// The node registry, for the relay's snapshot.
    pub node_set: Option<Arc<TypeResources>>,
}

impl AgentCache {
    /// The resource of `e`, cached while its resolution and fields stay the same.
    fn endpoint(&mut self, e: &AgentEndpoint<'_>, egress_named: &NamedPorts) -> Resource {
        let fields = e.fields_hash();
        if let Some(b) = self.endpoints.get(&e.model.id) {
            if Arc::ptr_eq(&b.resolved, &e.resolved) && b.fields == fields {
                return b.resource.clone();
            }
        }
        let resource = endpoint_resource(e.model, e.identity, e.sidecar, &e.resolved, egress_named);
        self.endpoints.insert(
            e.model.id.clone(),
            Built {
                resolved: e.resolved.clone(),
                fields,
                resource: resource.clone(),
            },
        );
        resource
    }

    /// The agents' snapshots: for each node of `state` (and each node an endpoint runs on),
    /// `shared`'s types plus its endpoints, `services`, the node registry and the deny
    /// lists, with the node's own NPHDS view (`node_hosts`: its addresses as the host)
    /// where it has one.
    pub fn build(
        &mut self,
        shared: &Snapshot,
        node_hosts: &dyn Fn(&str) -> Option<Arc<TypeResources>>,
        endpoints: &[AgentEndpoint<'_>],
        services: &[ServiceModel],
        state: &ClusterState,
        egress_named: &NamedPorts,
    ) -> AgentSnapshots {
        let (nodes, deny_lists) = (&state.nodes, &state.prefilter_deny_lists);
        if self.named != *egress_named {
            self.endpoints.clear();
            self.named = egress_named.clone();
        }
        let mut by_node: BTreeMap<&str, Vec<Resource>> = nodes
            .iter()
            .map(|n| (n.metadata.name.as_str(), Vec::new()))
            .collect();
        for e in endpoints {
            let r = self.endpoint(e, egress_named);
            by_node.entry(e.node).or_default().push(r);
        }
        let live: BTreeSet<&str> = endpoints.iter().map(|e| e.model.id.as_str()).collect();
        self.endpoints.retain(|id, _| live.contains(id.as_str()));

        let service_set = TypeResources::shared(services.iter().flat_map(service_resources));
        let node_set = TypeResources::shared(nodes.iter().map(node_resource));
        let relay_nodes = node_set.clone();
        let prefilter_set = TypeResources::shared(deny_lists.iter().map(|d| prefilter_resource(d)));
        let build = |own: Vec<Resource>, hosts: Option<Arc<TypeResources>>| {
            let mut b = SnapshotBuilder::from_snapshot(shared);
            if let Some(h) = hosts {
                b.add_set(NETWORK_POLICY_HOSTS, h);
            }
            b.add_set(AGENT_SERVICE, service_set.clone());
            b.add_set(AGENT_NODE, node_set.clone());
            b.add_set(AGENT_PREFILTER, prefilter_set.clone());
            b.add_set(AGENT_ENDPOINT, TypeResources::shared(own));
            b.build()
        };
        let mut out = AgentSnapshots::default();
        match build(Vec::new(), None) {
            Ok(t) => out.template = Some(t),
            Err(e) => out.errors.push((agent_key("*"), e)),
        }
        for (node, own) in by_node {
            let key = agent_key(node);
            out.keys.insert(key.clone());
            let hosts = node_hosts(node);
            let mut text = format!(
                "{}|{}|{}|{}|{}",
                shared.version,
                service_set.version,
                node_set.version,
                prefilter_set.version,
                hosts.as_ref().map_or("", |h| h.version.as_str())
            );
            for r in &own {
                text.push_str(&format!("|{}:{:x}", r.name, r.hash));
            }
            let input = content_hash(text.as_bytes());
            if self.inputs.get(&key) == Some(&input) {
                continue;
            }
            match build(own, hosts) {
                Ok(s) => {
                    self.inputs.insert(key.clone(), input);
                    out.snapshots.insert(key, s);
                }
                Err(e) => {
                    self.inputs.remove(&key);
                    out.errors.push((key, e));
                }
            }
        }
        self.inputs.retain(|k, _| out.keys.contains(k));
        out.node_set = Some(relay_nodes);
        out
    }

    /// The relay's snapshot (`relay`): the node registry and the workload directory, and
    /// nothing else (no policy, no service, no ipcache). `None` when its inputs did not
    /// change since the last one built.
    pub fn relay(
        &mut self,
        nodes: Arc<TypeResources>,
        workloads: Vec<Resource>,
    ) -> Option<Result<Snapshot, SnapshotError>> {
        let workloads = TypeResources::shared(workloads);
        let input = content_hash(format!("{}|{}", nodes.version, workloads.version).as_bytes());
        if self.relay_input == Some(input) {
            return None;
        }
        let mut b = SnapshotBuilder::new();
        b.add_set(AGENT_NODE, nodes);
        b.add_set(AGENT_WORKLOAD, workloads);
        let built = b.build();
        self.relay_input = built.is_ok().then_some(input);
        Some(built)
    }
}

impl Translator {
    /// The node agents' snapshots, on top of the shared one (see the module docs).
    pub(super) fn translate_agents(
        &mut self,
        state: &ClusterState,
        eps: &[(EndpointModel, &k8s::Pod)],
        services: &[ServiceModel],
        shared: &Snapshot,
        hosts: &super::hosts::Hosts,
        out: &mut Translation,
    ) {
        let endpoints: Vec<AgentEndpoint<'_>> = eps
            .iter()
            .filter_map(|(m, pod)| {
                let id = self.engine.identity_of(&m.id)?;
                let resolved = self.engine.resolved(&m.id)?;
                AgentEndpoint::of(m, pod, id, resolved)
            })
            .collect();
        let built = self.agents.build(
            shared,
            &|node| hosts.nodes.get(node).map(|v| v.set.clone()),
            &endpoints,
            services,
            state,
            self.engine.cluster_named_ports(),
        );
        out.keys.extend(built.keys);
        out.snapshots.extend(built.snapshots);
        out.agent_template = built.template;
        // The relay's: every pod with an address, scheduled or not.
        let workloads = eps
            .iter()
            .filter_map(|(m, pod)| {
                let id = self.engine.identity_of(&m.id)?;
                let node = pod.spec.node_name.as_deref().unwrap_or("");
                Some(workload_resource(m, node, id))
            })
            .collect();
        if let Some(nodes) = built.node_set {
            out.keys.insert(RELAY_KEY.to_string());
            match self.agents.relay(nodes, workloads) {
                Some(Ok(s)) => {
                    out.snapshots.insert(RELAY_KEY.to_string(), s);
                }
                Some(Err(error)) => out.errors.push(TranslateError::Snapshot {
                    key: RELAY_KEY.to_string(),
                    error,
                }),
                None => {}
            }
        }
        out.errors.extend(
            built
                .errors
                .into_iter()
                .map(|(key, error)| TranslateError::Snapshot { key, error }),
        );
    }
}
