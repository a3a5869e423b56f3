//! Type URLs and the one resource representation the cache and the server share.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// Envoy `Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Envoy `RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Envoy `Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Envoy `ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Cilium `NetworkPolicy` (NPDS) and `NetworkPolicyHosts` (NPHDS), defined with the protos.
pub use membrane_api::type_url::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};

/// The node agent's `Endpoint`, `Service`, `Node` and `PrefilterDenyList`, and the
/// relay's `Workload` (membrane.agent.v1).
pub use membrane_api::type_url::{
    AGENT_ENDPOINT, AGENT_NODE, AGENT_PREFILTER, AGENT_SERVICE, AGENT_WORKLOAD,
};

/// The sidecar's effective PeerAuthentication mode (membrane.mesh.v1).
pub use membrane_api::type_url::MESH_TLS;

/// Every type this server knows, in the order Envoy wants them applied
/// (clusters before endpoints, listeners before routes).
pub const ALL_TYPES: [&str; 12] = [
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    NETWORK_POLICY,
    NETWORK_POLICY_HOSTS,
    AGENT_ENDPOINT,
    AGENT_SERVICE,
    AGENT_NODE,
    AGENT_PREFILTER,
    AGENT_WORKLOAD,
    MESH_TLS,
];

/// A short, stable name for a type URL (`cds`, `eds`, …) for metrics and debug output.
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "lds",
        ROUTE => "rds",
        CLUSTER => "cds",
        ENDPOINT => "eds",
        NETWORK_POLICY => "npds",
        NETWORK_POLICY_HOSTS => "nphds",
        AGENT_ENDPOINT => "agent_endpoint",
        AGENT_SERVICE => "agent_service",
        AGENT_NODE => "agent_node",
        AGENT_PREFILTER => "agent_prefilter",
        AGENT_WORKLOAD => "agent_workload",
        MESH_TLS => "mesh_tls",
        _ => "other",
    }
}

/// One named, already-encoded xDS resource. Encoded once when the snapshot is
/// built and shared (`Arc`) by every stream that sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource name (listener name, cluster name, endpoint IP, identity…).
    pub name: String,
    /// The encoded message, with its type URL.
    pub body: Arc<Any>,
    /// A content hash, used as the per-resource version in delta xDS.
    pub hash: u64,
    /// The resources this one refers to (type URL, name), when its builder
    /// declared them; the consistency check then need not decode it.
    pub refs: Option<Arc<[(&'static str, String)]>>,
}

impl Resource {
    /// Encodes `msg` under `type_url`.
    pub fn new<M: Message>(type_url: &str, name: impl Into<String>, msg: &M) -> Self {
        let value = msg.encode_to_vec();
        let hash = content_hash(&value);
        Resource {
            name: name.into(),
            body: Arc::new(Any {
                type_url: type_url.to_string(),
                value,
            }),
            hash,
            refs: None,
        }
    }

    /// Declares what this resource refers to (see [`Resource::refs`]).
    pub fn with_refs(mut self, refs: Vec<(&'static str, String)>) -> Self {
        self.refs = Some(refs.into());
        self
    }

    /// Decodes the body back into `M` (debug output, consistency checks).
    pub fn decode<M: Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.body.value.as_slice())
    }
}

/// XXH3: a fast content hash that is stable across processes, platforms and
/// replicas, so versions survive restarts and two control planes agree; a
/// cryptographic hash is not needed here.
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
