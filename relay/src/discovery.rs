//! Finding the agents: the relay is a client of membrane-xds for the node registry
//! (`membrane.agent.v1.Node`, a wildcard delta subscription of that one type), and keeps
//! the map of node name → address current. A response with a node that has no usable
//! address is NACKed with the node named, and the last good map stays in force.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node as XdsNode;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use membrane_api::agent::proto::Node;
use membrane_api::type_url::AGENT_NODE;
use membrane_xds_client::XdsTls;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// gRPC status code INVALID_ARGUMENT, carried in a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Node name → the address its agent is reached at.
pub type Nodes = BTreeMap<String, IpAddr>;

/// How the relay reaches the node registry.
#[derive(Debug, Clone)]
pub struct XdsSource {
    /// `http://HOST:PORT` or `https://HOST:PORT` of membrane-xds.
    pub address: String,
    /// The node id presented (`membrane-agent~NAME`: membrane-xds serves every agent the
    /// whole node registry).
    pub node_id: String,
    /// mTLS to membrane-xds.
    pub tls: Option<XdsTls>,
    /// First reconnect delay.
    pub backoff: Duration,
    /// Reconnect delay ceiling.
    pub backoff_max: Duration,
}

/// The first address of `n` that parses, IPv4 before IPv6 (the underlay is IPv4).
fn address(n: &Node) -> Option<IpAddr> {
    let ips: Vec<IpAddr> = n.addresses.iter().filter_map(|a| a.parse().ok()).collect();
    ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
}

/// Applies one response to `nodes`: all of it or, on a bad resource, none of it.
pub fn apply(nodes: &Nodes, resp: &DeltaDiscoveryResponse) -> Result<Nodes, String> {
    if resp.type_url != AGENT_NODE {
        return Err(format!("type {:?}: not subscribed", resp.type_url));
    }
    let mut next = nodes.clone();
    for (i, r) in resp.resources.iter().enumerate() {
        let body = r
            .resource
            .as_ref()
            .ok_or_else(|| format!("resources[{i}] ({:?}): no resource body", r.name))?;
        let n = Node::decode(body.value.as_slice())
            .map_err(|e| format!("resources[{i}] ({:?}): {e}", r.name))?;
        let ip = address(&n).ok_or_else(|| {
            format!(
                "resources[{i}] Node {:?}: addresses {:?}: no IP address",
                n.name, n.addresses
            )
        })?;
        next.insert(n.name, ip);
    }
    for gone in &resp.removed_resources {
        next.remove(gone);
    }
    Ok(next)
}

/// Follows the node registry into `out` until every receiver is gone.
pub async fn run(src: XdsSource, out: watch::Sender<Nodes>) {
    let mut attempt = 0u32;
    loop {
        match session(&src, &out).await {
            Ok(true) => attempt = 0,
            Ok(false) => {}
            Err(e) => tracing::warn!(address = %src.address, "node registry stream failed: {e}"),
        }
        if out.is_closed() {
            return;
        }
        let d = membrane_xds_client::backoff(src.backoff, src.backoff_max, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = out.closed() => return,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn session(src: &XdsSource, out: &watch::Sender<Nodes>) -> Result<bool, BoxError> {
    let conn = membrane_xds_client::connect(&src.address, src.tls.as_ref()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(XdsNode {
            id: src.node_id.clone(),
            ..Default::default()
        }),
        type_url: AGENT_NODE.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = AggregatedDiscoveryServiceClient::new(conn.channel.clone())
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // A new stream starts from nothing: the first response is the whole registry.
    let mut held: Option<Nodes> = None;
    let rotated = conn.rotated();
    tokio::pin!(rotated);
    let mut got_one = false;
    loop {
        let resp = tokio::select! {
            m = stream.message() => match m? { Some(r) => r, None => return Ok(got_one) },
            _ = &mut rotated => return Ok(got_one),
            _ = out.closed() => return Ok(got_one),
        };
        got_one = true;
        let base = held.clone().unwrap_or_default();
        let error_detail = match apply(&base, &resp) {
            Ok(next) => {
                tracing::info!(nodes = ?next, "node registry");
                out.send_replace(next.clone());
                held = Some(next);
                None
            }
            Err(message) => {
                tracing::error!(error = %message, "node registry update rejected (NACK); the last good one stays");
                Some(Status {
                    code: INVALID_ARGUMENT,
                    message,
                    details: vec![],
                })
            }
        };
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        })
        .await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    fn resource(name: &str, addresses: &[&str]) -> Resource {
        let n = Node {
            name: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            pod_cidrs: vec![],
        };
        Resource {
            name: name.into(),
            resource: Some(Any {
                type_url: AGENT_NODE.into(),
                value: n.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_are_added_and_removed_and_a_bad_one_changes_nothing() {
        let resp = DeltaDiscoveryResponse {
            type_url: AGENT_NODE.into(),
            resources: vec![
                resource("node-1", &["fd00::1", "192.168.50.1"]),
                resource("node-2", &["192.168.50.2"]),
            ],
            ..Default::default()
        };
        let nodes = apply(&Nodes::new(), &resp).unwrap();
        assert_eq!(nodes["node-1"].to_string(), "192.168.50.1");
        let gone = DeltaDiscoveryResponse {
            type_url: AGENT_NODE.into(),
            removed_resources: vec!["node-1".into()],
            ..Default::default()
        };
        let nodes = apply(&nodes, &gone).unwrap();
        assert_eq!(nodes.keys().collect::<Vec<_>>(), vec!["node-2"]);
        let bad = DeltaDiscoveryResponse {
            type_url: AGENT_NODE.into(),
            resources: vec![
                resource("node-3", &["10.0.0.3"]),
                resource("node-4", &["nowhere"]),
            ],
            ..Default::default()
        };
        let e = apply(&nodes, &bad).unwrap_err();
        assert!(
            e.contains("Node \"node-4\"") && e.contains("nowhere"),
            "{e}"
        );
    }
}
