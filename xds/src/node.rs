//! Node ids: Istio's `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local` for
//! sidecars, `membrane-agent~NODE` for node agents, `membrane-relay~NAME` for the relay,
//! and the snapshot key each gets.

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

/// The proxy's id as Istio names it (`Proxy.ID`, what `istioctl
/// proxy-status` lists and `/debug/config_dump?proxyID=` takes):
/// `POD.NAMESPACE` for a sidecar or router id, the node id itself otherwise
/// (node agents, proxyless clients, tools).
pub fn istio_proxy_id(node_id: &str) -> String {
    match IstioNode::parse(node_id) {
        Ok(n) => format!("{}.{}", n.pod, n.namespace),
        Err(_) => node_id.to_string(),
    }
}

/// The snapshot-cache key for a node: sidecars get their own snapshot
/// (`sidecar/NAMESPACE/POD`), node agents their node's (`agent/NODE`, see
/// [`agent_node`]); every other client (proxyless gRPC, tools) shares the
/// mesh-wide snapshot [`SHARED_KEY`].
pub fn cache_key(node_id: &str) -> String {
    if let Some(node) = agent_node(node_id) {
        return agent_key(node);
    }
    if relay_name(node_id).is_some() {
        return RELAY_KEY.to_string();
    }
    match IstioNode::parse(node_id) {
        Ok(n) if n.kind == "sidecar" => pod_key(&n.namespace, &n.pod),
        _ => SHARED_KEY.to_string(),
    }
}

/// The node id prefix of a node agent: `membrane-agent~NODE_NAME`.
pub const AGENT_ID_PREFIX: &str = "membrane-agent~";

/// The prefix of the node agents' cache keys (`agent/NODE`).
pub const AGENT_KEY_PREFIX: &str = "agent/";

/// The node a node agent's id names: `membrane-agent~NODE` with NODE a
/// Kubernetes node name (a DNS subdomain: lowercase letters, digits, `-` and
/// `.`, at most 253 bytes). `None` for any other id; a malformed agent id is
/// no agent's and gets the shared snapshot, as before agents had their own.
pub fn agent_node(node_id: &str) -> Option<&str> {
    node_id
        .strip_prefix(AGENT_ID_PREFIX)
        .filter(|n| dns_subdomain(n))
}

fn dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// The node id prefix of the relay: `membrane-relay~NAME` (NAME: the replica, e.g. its
/// pod name; every replica gets the same snapshot).
pub const RELAY_ID_PREFIX: &str = "membrane-relay~";

/// The relay's cache key: the node registry and the cluster's workload directory, nothing
/// an agent or a sidecar is served.
pub const RELAY_KEY: &str = "relay";

/// The name a relay's id carries (`membrane-relay~NAME`, NAME a DNS subdomain); `None`
/// for any other id.
pub fn relay_name(node_id: &str) -> Option<&str> {
    node_id
        .strip_prefix(RELAY_ID_PREFIX)
        .filter(|n| dns_subdomain(n))
}

/// The cache key of a node's agent.
pub fn agent_key(node: &str) -> String {
    format!("{AGENT_KEY_PREFIX}{node}")
}

/// The node id a node's agent presents.
pub fn agent_id(node: &str) -> String {
    format!("{AGENT_ID_PREFIX}{node}")
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

    #[test]
    fn agents_get_their_nodes_key_and_malformed_agent_ids_the_shared_one() {
        assert_eq!(cache_key("membrane-agent~node-1"), "agent/node-1");
        assert_eq!(
            cache_key(&agent_id("ip-10-0-0-1.ec2.internal")),
            "agent/ip-10-0-0-1.ec2.internal"
        );
        assert_eq!(agent_node("membrane-agent~node-1"), Some("node-1"));
        for bad in [
            "membrane-agent~",
            "membrane-agent~Node1",
            "membrane-agent~a/b",
            "membrane-agent~-a",
            "membrane-agent~a~b",
            "agent~node-1",
        ] {
            assert_eq!(agent_node(bad), None, "{bad}");
            assert_eq!(cache_key(bad), SHARED_KEY, "{bad}");
        }
    }

    #[test]
    fn relays_get_the_relay_key() {
        assert_eq!(cache_key("membrane-relay~relay-0"), RELAY_KEY);
        assert_eq!(relay_name("membrane-relay~relay-0"), Some("relay-0"));
        for bad in ["membrane-relay~", "membrane-relay~A", "relay~x"] {
            assert_eq!(relay_name(bad), None, "{bad}");
            assert_eq!(cache_key(bad), SHARED_KEY, "{bad}");
        }
    }
}
