//! The type URLs of the resources membrane serves over xDS that are its own (Cilium's);
//! Envoy's are the control plane's business.

/// Cilium `NetworkPolicy` (NPDS), one per endpoint, named by endpoint IP.
pub const NETWORK_POLICY: &str = "type.googleapis.com/cilium.NetworkPolicy";
/// Cilium `NetworkPolicyHosts` (NPHDS), one per identity, named by the identity in decimal.
pub const NETWORK_POLICY_HOSTS: &str = "type.googleapis.com/cilium.NetworkPolicyHosts";

/// membrane's node-agent `Endpoint`, one per pod of the agent's node, named `NAMESPACE/POD`.
pub const AGENT_ENDPOINT: &str = "type.googleapis.com/membrane.agent.v1.Endpoint";
/// membrane's node-agent `Service`, one per frontend, named `NAMESPACE/NAME:PORT/PROTOCOL`.
pub const AGENT_SERVICE: &str = "type.googleapis.com/membrane.agent.v1.Service";
/// membrane's node registry `Node`, one per node, named by the node's name.
pub const AGENT_NODE: &str = "type.googleapis.com/membrane.agent.v1.Node";
/// membrane's cluster-wide prefilter deny list, one per `PrefilterDenyList` object (served
/// to every agent), named by the object's name.
pub const AGENT_PREFILTER: &str = "type.googleapis.com/membrane.agent.v1.PrefilterDenyList";
/// membrane's workload directory `Workload` (the relay's only), one per pod with an
/// address, named `NAMESPACE/POD`.
pub const AGENT_WORKLOAD: &str = "type.googleapis.com/membrane.agent.v1.Workload";

/// membrane's sidecar `MeshTls` (the effective PeerAuthentication mTLS mode), one per
/// sidecar, named `NAMESPACE/POD`.
pub const MESH_TLS: &str = "type.googleapis.com/membrane.mesh.v1.MeshTls";
