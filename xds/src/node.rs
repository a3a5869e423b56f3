//! Istio node ids: `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`.

use std::net::IpAddr;

use thiserror::Error;

/// Why a node id is not an Istio sidecar/router id.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NodeIdError {
    /// Not four `~`-separated fields.
    #[error("node id {0:?}: expected TYPE~IP~POD.NAMESPACE~DOMAIN (4 fields separated by '~')")]
    Fields(String),
    /// The type is not `sidecar` or `router`.
    #[error("node id {id:?}: type {found:?} is not sidecar or router")]
    Type {
        /// The full id.
        id: String,
        /// The type field found.
        found: String,
    },
    /// The IP field does not parse.
    #[error("node id {id:?}: {found:?} is not an IP address")]
    Ip {
        /// The full id.
        id: String,
        /// The IP field found.
        found: String,
    },
    /// The workload field is not `POD.NAMESPACE`.
    #[error("node id {id:?}: {found:?} is not POD.NAMESPACE")]
    Workload {
        /// The full id.
        id: String,
        /// The workload field found.
        found: String,
    },
}

/// A parsed Istio proxy node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioNode {
    /// `sidecar` or `router`.
    pub kind: String,
    /// The pod IP the proxy serves.
    pub ip: IpAddr,
    /// The pod name.
    pub pod: String,
    /// The pod namespace.
    pub namespace: String,
    /// The DNS domain (`NAMESPACE.svc.cluster.local`).
    pub domain: String,
}

impl IstioNode {
    /// Parses an Istio node id.
    pub fn parse(id: &str) -> Result<Self, NodeIdError> {
        let fields: Vec<&str> = id.split('~').collect();
        let [kind, ip, workload, domain] = fields.as_slice() else {
            return Err(NodeIdError::Fields(id.to_string()));
        };
        if *kind != "sidecar" && *kind != "router" {
            return Err(NodeIdError::Type {
                id: id.to_string(),
                found: kind.to_string(),
            });
        }
        let ip: IpAddr = ip.parse().map_err(|_| NodeIdError::Ip {
            id: id.to_string(),
            found: ip.to_string(),
        })?;
        // Pod names never contain '.', namespaces never do either (DNS labels).
        let (pod, namespace) = workload
            .split_once('.')
            .filter(|(p, n)| !p.is_empty() && !n.is_empty() && !n.contains('.'))
            .ok_or_else(|| NodeIdError::Workload {
                id: id.to_string(),
                found: workload.to_string(),
            })?;
        Ok(IstioNode {
            kind: kind.to_string(),
            ip,
            pod: pod.to_string(),
            namespace: namespace.to_string(),
            domain: domain.to_string(),
        })
    }

    /// The canonical id a sidecar of this pod presents.
    pub fn sidecar_id(ip: IpAddr, pod: &str, namespace: &str) -> String {
        format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
    }
}

/// The snapshot-cache key for a node: sidecars get their own snapshot
/// (`sidecar/NAMESPACE/POD`); every other client (proxyless gRPC, the agent,
/// tools) shares the mesh-wide snapshot [`SHARED_KEY`].
pub fn cache_key(node_id: &str) -> String {
    match IstioNode::parse(node_id) {
        Ok(n) if n.kind == "sidecar" => pod_key(&n.namespace, &n.pod),
        _ => SHARED_KEY.to_string(),
    }
}

/// The cache key of a pod's sidecar.
pub fn pod_key(namespace: &str, pod: &str) -> String {
    format!("sidecar/{namespace}/{pod}")
}

/// The key of the snapshot shared by every non-sidecar client.
pub const SHARED_KEY: &str = "shared";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_sidecar_ids_and_rejects_others() {
        let n = IstioNode::parse("sidecar~10.0.0.5~deathstar-1.default~default.svc.cluster.local")
            .unwrap();
        assert_eq!(n.ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            (n.pod.as_str(), n.namespace.as_str()),
            ("deathstar-1", "default")
        );
        assert_eq!(
            IstioNode::sidecar_id(n.ip, &n.pod, &n.namespace),
            "sidecar~10.0.0.5~deathstar-1.default~default.svc.cluster.local"
        );
        let v6 = IstioNode::parse("sidecar~fd00::1~a.b~b.svc.cluster.local").unwrap();
        assert!(v6.ip.is_ipv6());

        for (id, want) in [
            ("grpc-client", "4 fields"),
            ("proxy~1.2.3.4~a.b~b.svc", "not sidecar or router"),
            ("sidecar~1.2.3~a.b~b.svc", "not an IP"),
            ("sidecar~1.2.3.4~nodot~b.svc", "POD.NAMESPACE"),
            ("sidecar~1.2.3.4~a.b.c~b.svc", "POD.NAMESPACE"),
        ] {
            let err = IstioNode::parse(id).unwrap_err().to_string();
            assert!(err.contains(want), "{id}: {err}");
        }
        assert_eq!(
            cache_key("sidecar~10.0.0.5~deathstar-1.default~default.svc.cluster.local"),
            "sidecar/default/deathstar-1"
        );
        assert_eq!(cache_key("grpc-client"), SHARED_KEY);
    }
}
