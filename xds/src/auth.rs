//! Who a client of the mTLS xDS port (15012) is, and what it may fetch.
//!
//! The TLS layer has already verified the client's certificate chain against
//! the configured CA bundle (and its validity period). Here the leaf's
//! SPIFFE id (`spiffe://DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, its one URI
//! SAN) is read and the node id the client then presents is checked against
//! what the sources say: the pod the id names must exist in that namespace,
//! run as that service account and own the id's IP. A client that passes
//! gets its own pod's snapshot key, never the shared snapshot.
//!
//! A node agent presents `membrane-agent~NODE` with the certificate of the
//! agents' service account (`spiffe://DOMAIN/ns/kube-system/sa/membrane-agent`
//! by default, `--agent-service-account`), and gets that node's snapshot.
//! As with Cilium's agent, whose service account may read every node's
//! endpoints, the certificate authorises the role, not one node: every agent
//! of a DaemonSet runs as the same service account. Any other workload's
//! certificate is refused for an agent id, and the agents' certificate for a
//! sidecar id (no pod runs as it).
//!
//! The relay presents `membrane-relay~NAME` with its own certificate
//! (`spiffe://DOMAIN/ns/membrane-system/sa/membrane-relay` by default,
//! `--relay-service-account`) and gets the relay's snapshot only: the node
//! registry and the workload directory, none of an agent's or a sidecar's
//! resources. Its certificate is refused for an agent id, the agents' for a
//! relay id.
//!
//! No I/O here; the gRPC adapter (`server.rs`) calls it, the controller
//! keeps [`Workloads`] current.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;

use thiserror::Error;

use crate::node::{agent_key, agent_node, pod_key, relay_name, IstioNode, RELAY_KEY};
use crate::source::ClusterState;

/// Why a client of the mTLS port is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The connection carries no client certificate (not a TLS connection
    /// with client authentication).
    #[error(
        "no client certificate: the mTLS xDS port serves only clients with a workload certificate"
    )]
    NoCertificate,
    /// The leaf certificate does not parse.
    #[error("client certificate does not parse: {0}")]
    BadCertificate(String),
    /// The leaf has no SPIFFE id, or more than one URI SAN.
    #[error("client certificate: {0}; expected exactly one URI SAN spiffe://DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")]
    NoSpiffeId(String),
    /// The SPIFFE id is of another trust domain.
    #[error("client certificate {id}: trust domain {found:?}, expected {expected:?}")]
    TrustDomain {
        /// The SPIFFE id.
        id: String,
        /// Its trust domain.
        found: String,
        /// The configured trust domain.
        expected: String,
    },
    /// The node id is not an Istio sidecar id.
    #[error("{why}; an authenticated client must present its sidecar id sidecar~POD_IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local, or a node agent membrane-agent~NODE")]
    NodeId {
        /// The node id.
        id: String,
        /// What is wrong with it (naming the id).
        why: String,
    },
    /// The node id names a namespace other than the certificate's.
    #[error("node id {id:?} names namespace {node_ns:?}, but the client certificate {spiffe} is for namespace {cert_ns:?}")]
    Namespace {
        /// The node id.
        id: String,
        /// Its namespace.
        node_ns: String,
        /// The certificate's SPIFFE id.
        spiffe: String,
        /// The certificate's namespace.
        cert_ns: String,
    },
    /// The relay's id with a certificate that is not the relay's.
    #[error("node id {id:?} is the relay's, but the client certificate {spiffe} is not the relay's service account {expected}")]
    RelayAccount {
        /// The node id.
        id: String,
        /// The certificate's SPIFFE id.
        spiffe: String,
        /// The relay's SPIFFE id.
        expected: String,
    },
    /// A node agent's id with a certificate that is not the agents'.
    #[error("node id {id:?} is a node agent's, but the client certificate {spiffe} is not the agents' service account {expected}")]
    AgentAccount {
        /// The node id.
        id: String,
        /// The certificate's SPIFFE id.
        spiffe: String,
        /// The agents' SPIFFE id.
        expected: String,
    },
    /// The node id's pod is not known to the control plane.
    #[error("node id {id:?}: no pod {pod} is known to the control plane")]
    UnknownPod {
        /// The node id.
        id: String,
        /// `NAMESPACE/POD`.
        pod: String,
    },
    /// The pod runs as another service account than the certificate's.
    #[error("node id {id:?}: pod {pod} runs as service account {pod_sa:?}, but the client certificate {spiffe} is for {cert_sa:?}")]
    ServiceAccount {
        /// The node id.
        id: String,
        /// `NAMESPACE/POD`.
        pod: String,
        /// The pod's service account.
        pod_sa: String,
        /// The certificate's SPIFFE id.
        spiffe: String,
        /// The certificate's service account.
        cert_sa: String,
    },
    /// The node id's IP is not one of the pod's.
    #[error("node id {id:?}: {ip} is not an IP of pod {pod} ({known})")]
    Ip {
        /// The node id.
        id: String,
        /// The IP in the node id.
        ip: IpAddr,
        /// `NAMESPACE/POD`.
        pod: String,
        /// The pod's IPs, comma-separated.
        known: String,
    },
}

impl AuthError {
    /// A short, bounded label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::NoCertificate => "no_certificate",
            AuthError::BadCertificate(_) => "bad_certificate",
            AuthError::NoSpiffeId(_) => "no_spiffe_id",
            AuthError::TrustDomain { .. } => "trust_domain",
            AuthError::NodeId { .. } => "node_id",
            AuthError::Namespace { .. } => "namespace",
            AuthError::AgentAccount { .. } => "agent_account",
            AuthError::RelayAccount { .. } => "relay_account",
            AuthError::UnknownPod { .. } => "unknown_pod",
            AuthError::ServiceAccount { .. } => "service_account",
            AuthError::Ip { .. } => "ip",
        }
    }
}

/// A workload identity: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// Trust domain (`cluster.local` by default, as Istio).
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

impl SpiffeId {
    /// Parses Istio's Kubernetes form of a SPIFFE id: a SPIFFE id by the specification
    /// (`membrane_api::spiffe`, the parser the sidecar uses too) whose path is
    /// `/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    pub fn parse(uri: &str) -> Result<Self, AuthError> {
        let id = membrane_api::spiffe::SpiffeId::parse(uri)
            .map_err(|e| AuthError::NoSpiffeId(format!("URI SAN {e}")))?;
        let (ns, sa) = id.workload().ok_or_else(|| {
            AuthError::NoSpiffeId(format!(
                "URI SAN {uri:?} is not a workload SPIFFE id (spiffe://TD/ns/NAMESPACE/sa/ACCOUNT)"
            ))
        })?;
        Ok(SpiffeId {
            trust_domain: id.trust_domain().to_string(),
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        })
    }

    /// The URI form.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The SPIFFE id of a leaf certificate (DER): its single URI SAN.
    pub fn from_leaf(der: &[u8]) -> Result<Self, AuthError> {
        let uris = membrane_api::spiffe::uri_sans(der).map_err(AuthError::BadCertificate)?;
        match uris.as_slice() {
            [one] => SpiffeId::parse(one),
            [] => Err(AuthError::NoSpiffeId("no URI SAN".into())),
            many => Err(AuthError::NoSpiffeId(format!(
                "{} URI SANs ({})",
                many.len(),
                many.join(", ")
            ))),
        }
    }
}

/// What the control plane knows of one pod, for authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Workload {
    ips: Vec<IpAddr>,
    service_account: String,
}

/// Every pod the sources know, by namespace and name: the ground truth a
/// node id is checked against. The controller replaces it on every pass
/// that translated a new state.
#[derive(Debug, Default)]
pub struct Workloads {
    pods: RwLock<HashMap<(String, String), Workload>>,
}

impl Workloads {
    /// An empty directory (every node id is unknown until the first pass).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the directory with the pods of `state`.
    pub fn update(&self, state: &ClusterState) {
        let pods = state
            .pods
            .iter()
            .map(|p| {
                (
                    (p.metadata.ns().to_string(), p.metadata.name.clone()),
                    Workload {
                        ips: p.ips().iter().filter_map(|ip| ip.parse().ok()).collect(),
                        service_account: p.service_account().to_string(),
                    },
                )
            })
            .collect();
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = pods;
    }

    fn get(&self, namespace: &str, pod: &str) -> Option<Workload> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), pod.to_string()))
            .cloned()
    }
}

/// The service account node agents run as by default (`NAMESPACE/NAME`).
pub const DEFAULT_AGENT_ACCOUNT: &str = "kube-system/membrane-agent";

/// The service account the relay runs as by default (`NAMESPACE/NAME`).
pub const DEFAULT_RELAY_ACCOUNT: &str = "membrane-system/membrane-relay";

/// Decides whether an authenticated peer may be the node it claims to be.
#[derive(Debug)]
pub struct Authorizer {
    trust_domain: String,
    workloads: std::sync::Arc<Workloads>,
    /// The node agents' service account: (namespace, name).
    agent_account: (String, String),
    /// The relay's service account: (namespace, name).
    relay_account: (String, String),
}

impl Authorizer {
    /// Accepts SPIFFE ids of `trust_domain` for the pods in `workloads`, and
    /// node agents running as [`DEFAULT_AGENT_ACCOUNT`].
    pub fn new(trust_domain: impl Into<String>, workloads: std::sync::Arc<Workloads>) -> Self {
        let (ns, sa) = DEFAULT_AGENT_ACCOUNT
            .split_once('/')
            .unwrap_or(("kube-system", "membrane-agent"));
        let (rns, rsa) = DEFAULT_RELAY_ACCOUNT
            .split_once('/')
            .unwrap_or(("membrane-system", "membrane-relay"));
        Authorizer {
            trust_domain: trust_domain.into(),
            workloads,
            agent_account: (ns.to_string(), sa.to_string()),
            relay_account: (rns.to_string(), rsa.to_string()),
        }
    }

    /// The relay runs as the service account `namespace`/`name` instead.
    pub fn with_relay_account(mut self, namespace: &str, name: &str) -> Self {
        self.relay_account = (namespace.to_string(), name.to_string());
        self
    }

    /// Node agents run as the service account `namespace`/`name` instead.
    pub fn with_agent_account(mut self, namespace: &str, name: &str) -> Self {
        self.agent_account = (namespace.to_string(), name.to_string());
        self
    }

    /// A node agent's id (`membrane-agent~NODE`) may be presented by the
    /// agents' service account only; it watches that node's snapshot.
    fn authorize_agent(
        &self,
        node_id: &str,
        node: &str,
        peer: &SpiffeId,
    ) -> Result<String, AuthError> {
        let (ns, sa) = &self.agent_account;
        if &peer.namespace != ns || &peer.service_account != sa {
            return Err(AuthError::AgentAccount {
                id: node_id.to_string(),
                spiffe: peer.uri(),
                expected: format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain),
            });
        }
        Ok(agent_key(node))
    }

    /// The trust domain of the identities accepted (and issued).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The peer's identity from its verified certificate chain (leaf first).
    pub fn peer(&self, chain: Option<&[impl AsRef<[u8]>]>) -> Result<SpiffeId, AuthError> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(AuthError::NoCertificate)?;
        let id = SpiffeId::from_leaf(leaf.as_ref())?;
        if id.trust_domain != self.trust_domain {
            return Err(AuthError::TrustDomain {
                id: id.uri(),
                found: id.trust_domain,
                expected: self.trust_domain.clone(),
            });
        }
        Ok(id)
    }

    /// Checks `node_id` against `peer` and the known pods; returns the
    /// snapshot key the client may watch (its own pod's, or a node agent's
    /// node's).
    pub fn authorize(&self, node_id: &str, peer: &SpiffeId) -> Result<String, AuthError> {
        if let Some(node) = agent_node(node_id) {
            return self.authorize_agent(node_id, node, peer);
        }
        if relay_name(node_id).is_some() {
            let (ns, sa) = &self.relay_account;
            if &peer.namespace != ns || &peer.service_account != sa {
                return Err(AuthError::RelayAccount {
                    id: node_id.to_string(),
                    spiffe: peer.uri(),
                    expected: format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain),
                });
            }
            return Ok(RELAY_KEY.to_string());
        }
        let node = IstioNode::parse(node_id).map_err(|e| AuthError::NodeId {
            id: node_id.to_string(),
            why: e.to_string(),
        })?;
        if node.kind != "sidecar" {
            return Err(AuthError::NodeId {
                id: node_id.to_string(),
                why: format!("node id {node_id:?}: type {:?} is not sidecar", node.kind),
            });
        }
        if node.namespace != peer.namespace {
            return Err(AuthError::Namespace {
                id: node_id.to_string(),
                node_ns: node.namespace,
                spiffe: peer.uri(),
                cert_ns: peer.namespace.clone(),
            });
        }
        let w = self
            .workloads
            .get(&node.namespace, &node.pod)
            .ok_or_else(|| AuthError::UnknownPod {
                id: node_id.to_string(),
                pod: format!("{}/{}", node.namespace, node.pod),
            })?;
        if w.service_account != peer.service_account {
            return Err(AuthError::ServiceAccount {
                id: node_id.to_string(),
                pod: format!("{}/{}", node.namespace, node.pod),
                pod_sa: w.service_account,
                spiffe: peer.uri(),
                cert_sa: peer.service_account.clone(),
            });
        }
        if !w.ips.contains(&node.ip) {
            return Err(AuthError::Ip {
                id: node_id.to_string(),
                ip: node.ip,
                pod: format!("{}/{}", node.namespace, node.pod),
                known: w
                    .ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        Ok(pod_key(&node.namespace, &node.pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::dir::parse;
    use std::sync::Arc;

    #[test]
    fn spiffe_ids_parse_only_in_the_workload_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/deathstar").unwrap();
        assert_eq!(
            (
                id.trust_domain.as_str(),
                id.namespace.as_str(),
                id.service_account.as_str()
            ),
            ("cluster.local", "default", "deathstar")
        );
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/default/sa/deathstar");
        for bad in [
            "https://cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://cluster.local/sa/x/ns/default",
            "spiffe://cluster.local/ns/default/sa/x/extra",
            // The specification's rules, from the shared parser.
            "spiffe://Cluster.Local/ns/default/sa/x",
            "spiffe://cluster.local:443/ns/default/sa/x",
            "spiffe://cluster.local/ns/default/sa/x?y",
            "spiffe://cluster.local/ns/../sa/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    fn authorizer() -> Authorizer {
        let contents = parse(
            "pods.yaml",
            r#"apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, namespace: default}
spec: {serviceAccountName: deathstar}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default}
status: {podIP: 10.0.0.4}
"#,
        )
        .unwrap();
        let w = Arc::new(Workloads::new());
        w.update(&contents.state);
        Authorizer::new("cluster.local", w)
    }

    #[test]
    fn a_node_id_must_match_the_pod_the_certificate_may_be() {
        let a = authorizer();
        let ds = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/deathstar").unwrap();
        let default_sa = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/default").unwrap();
        let id = |ip: &str, pod: &str, ns: &str| {
            format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local")
        };
        assert_eq!(
            a.authorize(&id("10.0.0.2", "deathstar-1", "default"), &ds),
            Ok("sidecar/default/deathstar-1".into())
        );
        // A pod without serviceAccountName runs as `default`.
        assert_eq!(
            a.authorize(&id("10.0.0.4", "xwing", "default"), &default_sa),
            Ok("sidecar/default/xwing".into())
        );
        let reason = |node: String, who: &SpiffeId| a.authorize(&node, who).unwrap_err().reason();
        assert_eq!(
            reason(id("10.0.0.4", "xwing", "default"), &ds),
            "service_account"
        );
        assert_eq!(reason(id("10.0.0.9", "deathstar-1", "default"), &ds), "ip");
        assert_eq!(
            reason(id("10.0.0.2", "deathstar-2", "default"), &ds),
            "unknown_pod"
        );
        assert_eq!(
            reason(id("10.0.0.2", "deathstar-1", "other"), &ds),
            "namespace"
        );
        assert_eq!(reason("grpc-client".into(), &ds), "node_id");
        assert_eq!(
            reason(
                "router~10.0.0.2~deathstar-1.default~default.svc.cluster.local".into(),
                &ds
            ),
            "node_id"
        );
        // Node agents: the agents' service account only, for any node name.
        let agent =
            SpiffeId::parse("spiffe://cluster.local/ns/kube-system/sa/membrane-agent").unwrap();
        assert_eq!(
            a.authorize("membrane-agent~node-1", &agent),
            Ok("agent/node-1".into())
        );
        assert_eq!(reason("membrane-agent~node-1".into(), &ds), "agent_account");
        let elsewhere =
            SpiffeId::parse("spiffe://cluster.local/ns/default/sa/membrane-agent").unwrap();
        assert_eq!(
            reason("membrane-agent~node-1".into(), &elsewhere),
            "agent_account"
        );
        assert_eq!(
            reason(id("10.0.0.2", "deathstar-1", "default"), &agent),
            "namespace"
        );
        let custom = authorizer().with_agent_account("membrane", "agent");
        let theirs = SpiffeId::parse("spiffe://cluster.local/ns/membrane/sa/agent").unwrap();
        assert_eq!(
            custom.authorize("membrane-agent~n", &theirs),
            Ok("agent/n".into())
        );
        assert!(custom.authorize("membrane-agent~n", &agent).is_err());
        // The relay: its own service account, for the relay's snapshot only; its
        // certificate is no agent's, the agents' no relay's.
        let relay =
            SpiffeId::parse("spiffe://cluster.local/ns/membrane-system/sa/membrane-relay").unwrap();
        assert_eq!(
            a.authorize("membrane-relay~relay-0", &relay),
            Ok("relay".into())
        );
        assert_eq!(
            reason("membrane-relay~relay-0".into(), &agent),
            "relay_account"
        );
        assert_eq!(
            reason("membrane-agent~node-1".into(), &relay),
            "agent_account"
        );
        assert_eq!(
            reason(id("10.0.0.2", "deathstar-1", "default"), &relay),
            "namespace"
        );
        let custom = authorizer().with_relay_account("obs", "relay");
        let theirs = SpiffeId::parse("spiffe://cluster.local/ns/obs/sa/relay").unwrap();
        assert_eq!(
            custom.authorize("membrane-relay~r", &theirs),
            Ok("relay".into())
        );
        assert!(custom.authorize("membrane-relay~r", &relay).is_err());
        let msg = a
            .authorize(&id("10.0.0.4", "xwing", "default"), &ds)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("default/xwing")
                && msg.contains("\"default\"")
                && msg.contains("sa/deathstar"),
            "{msg}"
        );
    }
}
