//! Sources of cluster state: a watched directory of Kubernetes-shaped YAML
//! (the embedded default), etcd, the Kubernetes API, and the others behind
//! the same [`Source`] trait.
//! Each source yields a [`ClusterState`]; the controller merges them.

pub mod dir;
pub mod etcd;
pub mod k8s;
#[cfg(feature = "kube")]
pub mod kube;

use std::sync::Arc;

use membrane_policy::CompiledPolicy;
use serde_json::Value;

/// A source of cluster state, polled by the controller.
///
/// `scan` must be cheap when nothing changed: sources that learn about
/// changes asynchronously (watches) keep their latest good state behind a
/// lock and report here whether it moved since the last scan.
pub trait Source: Send + std::fmt::Debug {
    /// A short name for metrics and status (`dir`, `etcd`, `kube`).
    fn name(&self) -> &'static str;
    /// Looks once; says whether the good state changed and what was rejected.
    fn scan(&mut self) -> ScanReport;
    /// The current good state.
    fn state(&self) -> ClusterState;
    /// What the source holds, and its current rejections, for `/debug/sourcez`.
    fn status(&self) -> Value;
    /// Whether the source has read its input once. Until every source has, the
    /// controller publishes nothing: a partial state (pods without the policies etcd
    /// holds) would be put in force by every sidecar that connects, among them those
    /// reconnecting to a restarted control plane with a good policy in force.
    fn synced(&self) -> bool {
        true
    }
}

/// What a scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The merged good state changed.
    pub changed: bool,
    /// Inputs rejected in this scan (newly or again after an edit).
    pub rejected: Vec<String>,
}

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
    /// Istio PeerAuthentication objects, checked (`crate::peerauth`).
    pub peer_authentications: Vec<Arc<crate::peerauth::PeerAuthentication>>,
    /// membrane's PrefilterDenyList objects, checked (`crate::prefilter`).
    pub prefilter_deny_lists: Vec<Arc<crate::prefilter::DenyList>>,
}

impl ClusterState {
    /// Adds everything in `other` to this state.
    pub fn extend(&mut self, other: ClusterState) {
        self.policies.extend(other.policies);
        self.pods.extend(other.pods);
        self.namespaces.extend(other.namespaces);
        self.services.extend(other.services);
        self.slices.extend(other.slices);
        self.nodes.extend(other.nodes);
        self.peer_authentications.extend(other.peer_authentications);
        self.prefilter_deny_lists.extend(other.prefilter_deny_lists);
    }
}
