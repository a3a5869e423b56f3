//! The few fields of core Kubernetes objects the control plane reads. Every
//! other field is ignored, so real `kubectl get -o yaml` output loads.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Namespace (empty: `default` for namespaced kinds).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Meta {
    /// The namespace, `default` when unset.
    pub fn ns(&self) -> &str {
        self.namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }
}

/// A container port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    pub container_port: u16,
    /// `TCP` (default), `UDP`, `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A container (ports only).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Container {
    /// Container name.
    #[serde(default)]
    pub name: String,
    /// Declared ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// `Pod.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Node it runs on.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// The pod's service account (Kubernetes defaults it to `default`);
    /// the workload identity an mTLS xDS client must present.
    #[serde(default)]
    pub service_account_name: Option<String>,
}

/// One pod IP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// `Pod.status`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Primary IP.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// All IPs (dual stack).
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

/// A Pod.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Pod {
    /// Metadata.
    pub metadata: Meta,
    /// Spec.
    #[serde(default)]
    pub spec: PodSpec,
    /// Status.
    #[serde(default)]
    pub status: PodStatus,
}

impl Pod {
    /// The service account the pod runs as: `spec.serviceAccountName`,
    /// `default` when unset (as the API server fills it in).
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }

    /// Every IP, primary first, deduplicated.
    pub fn ips(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for ip in self
            .status
            .pod_ip
            .iter()
            .chain(self.status.pod_ips.iter().map(|p| &p.ip))
        {
            if !ip.is_empty() && !out.contains(ip) {
                out.push(ip.clone());
            }
        }
        out
    }
}

/// A Namespace.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Namespace {
    /// Metadata (labels matter).
    pub metadata: Meta,
}

/// A service port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Service port.
    pub port: u16,
    /// Target port: a number or a container port name.
    #[serde(default)]
    pub target_port: Option<serde_json::Value>,
    /// `TCP` (default).
    #[serde(default)]
    pub protocol: Option<String>,
    /// The port every node answers on for this service port (types `NodePort` and
    /// `LoadBalancer`; Kubernetes allocates it, a file source spells it out).
    #[serde(default)]
    pub node_port: Option<u16>,
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pod selector (equality only, as Kubernetes).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Cluster IP.
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `Cluster` (default) or `Local`: NodePort traffic only to backends on the node
    /// that received it.
    #[serde(default)]
    pub external_traffic_policy: Option<String>,
}

/// A Service.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Service {
    /// Metadata.
    pub metadata: Meta,
    /// Spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// One EndpointSlice endpoint.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Zone (becomes the EDS locality zone).
    #[serde(default)]
    pub zone: Option<String>,
}

/// An EndpointSlice port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct SlicePort {
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Port number.
    #[serde(default)]
    pub port: Option<u16>,
}

/// An EndpointSlice (endpoints of services without selectors).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct EndpointSlice {
    /// Metadata; `kubernetes.io/service-name` names the service.
    pub metadata: Meta,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<SlicePort>,
}

/// A node address.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct NodeAddress {
    /// `InternalIP`, `Hostname`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The address.
    pub address: String,
}

/// `Node.status`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
}

/// `Node.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The node's pod CIDR (the first of `podCIDRs`).
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// The node's pod CIDRs (one per address family).
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
}

/// A Node.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Node {
    /// Metadata.
    pub metadata: Meta,
    /// Spec (pod CIDRs).
    #[serde(default)]
    pub spec: NodeSpec,
    /// Status.
    #[serde(default)]
    pub status: NodeStatus,
}
