//! The node agent's resources (`membrane.agent.v1`, `proto/membrane/agent/v1/agent.proto`):
//! what membrane-xds serves `membrane-agent` so that it keeps the kernel's maps equal to
//! what the cluster says — the node's endpoints with their L3/L4 policy as map entries,
//! the services, the node registry. The ipcache is Cilium's `NetworkPolicyHosts`.
//!
//! [`policy`] turns the policy engine's resolution into the per-endpoint map entries, from
//! the same resolution NPDS is encoded from, so the agent and the sidecar cannot disagree.
//! [`prefilter`] parses the prefilter's deny entries for the control plane, the agent and
//! the CLI alike.

pub mod policy;
pub mod prefilter;

/// Generated node-agent types (package `membrane.agent.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("membrane.agent.v1");
}
