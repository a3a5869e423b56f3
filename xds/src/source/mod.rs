//! Sources of cluster state. Today: a watched directory of Kubernetes-shaped
//! YAML (the embedded default). Each source yields a [`ClusterState`].

pub mod dir;
pub mod k8s;

use std::sync::Arc;

use membrane_policy::CompiledPolicy;

/// Everything the sources know: the input of translation.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Valid policies (CNP and CCNP), compiled.
    pub policies: Vec<Arc<CompiledPolicy>>,
    /// Pods.
    pub pods: Vec<k8s::Pod>,
    /// Namespaces.
    pub namespaces: Vec<k8s::Namespace>,
    /// Services.
    pub services: Vec<k8s::Service>,
    /// EndpointSlices.
    pub slices: Vec<k8s::EndpointSlice>,
    /// Nodes.
    pub nodes: Vec<k8s::Node>,
}
