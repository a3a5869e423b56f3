//! Finding the agents and naming the pods: the relay is a client of membrane-xds as
//! `membrane-relay~NAME` (with the relay's own certificate on mTLS, which membrane-xds
//! admits for the relay's snapshot only), with wildcard delta subscriptions to the node
//! registry (`membrane.agent.v1.Node`) and the workload directory
//! (`membrane.agent.v1.Workload`: every pod with its addresses). It keeps the map of node
//! name → address and the map of address → pod current. A response with a node that has
//! no usable address, or a workload with an address that does not parse, is NACKed naming
//! it, and the last good map stays in force.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node as XdsNode;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use membrane_api::agent::proto::{Node, Workload};
use membrane_api::monitor::Event;
use membrane_api::observer::{end_ip, Filter};
use membrane_api::type_url::{AGENT_NODE, AGENT_WORKLOAD};
use membrane_xds_client::XdsTls;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// gRPC status code INVALID_ARGUMENT, carried in a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Node name → the address its agent is reached at.
pub type Nodes = BTreeMap<String, IpAddr>;

/// Every pod of the cluster with an address: `NAMESPACE/POD` → its addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    pods: BTreeMap<String, Vec<IpAddr>>,
    by_ip: BTreeMap<IpAddr, String>,
}

impl Directory {
    /// The pod holding `ip`, `NAMESPACE/POD`.
    pub fn pod_of(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// How many pods it names.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// It names no pod.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    fn rebuild(&mut self) {
        self.by_ip = self
            .pods
            .iter()
            .flat_map(|(pod, ips)| ips.iter().map(move |ip| (*ip, pod.clone())))
            .collect();
    }

    /// Names the ends of `e` the writer (an agent, which knows its own node's pods only)
    /// left unnamed: a pod of another node gets its name here. A name the writer gave is
    /// kept.
    pub fn name(&self, e: &mut Event) {
        let of = |addr: &Option<String>| {
            let ip = end_ip(addr.as_deref()?)?;
            self.pod_of(ip).map(str::to_owned)
        };
        if e.src_pod.is_none() {
            e.src_pod = of(&e.src);
        }
        if e.dst_pod.is_none() {
            e.dst_pod = of(&e.dst);
        }
    }

    /// The addresses of the pods `f`'s `pod` and `namespace` lists pick, each with the
    /// name [`Directory::name`] gives it: what an agent needs in its filter's `names` to
    /// match, before the relay names them, the events it holds about other nodes' pods.
    /// Empty when `f` selects no pod.
    pub fn names_for(&self, f: &Filter) -> HashMap<String, String> {
        if !f.selects_pods() {
            return HashMap::new();
        }
        self.by_ip
            .iter()
            .filter(|(_, pod)| f.picks(pod))
            .map(|(ip, pod)| (ip.to_string(), pod.clone()))
            .collect()
    }
}

/// How the relay reaches the node registry.
#[derive(Debug, Clone)]
pub struct XdsSource {
    /// `http://HOST:PORT` or `https://HOST:PORT` of membrane-xds.
    pub address: String,
    /// The node id presented (`membrane-relay~NAME`: membrane-xds serves the relay the node
    /// registry and the workload directory; on mTLS only to the relay's certificate).
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

/// Applies one `Workload` response to `dir`: all of it or, on a bad resource, none of it.
pub fn apply_workloads(
    dir: &Directory,
    resp: &DeltaDiscoveryResponse,
) -> Result<Directory, String> {
    if resp.type_url != AGENT_WORKLOAD {
        return Err(format!("type {:?}: not subscribed", resp.type_url));
    }
    let mut next = dir.clone();
    for (i, r) in resp.resources.iter().enumerate() {
        let body = r
            .resource
            .as_ref()
            .ok_or_else(|| format!("resources[{i}] ({:?}): no resource body", r.name))?;
        let w = Workload::decode(body.value.as_slice())
            .map_err(|e| format!("resources[{i}] ({:?}): {e}", r.name))?;
        let name = format!("{}/{}", w.namespace, w.pod);
        if name != r.name {
            return Err(format!(
                "resources[{i}] Workload {:?}: namespace/pod {name:?} is not the resource's name",
                r.name
            ));
        }
        let ips = w
            .ips
            .iter()
            .enumerate()
            .map(|(j, a)| {
                a.parse::<IpAddr>().map_err(|_| {
                    format!(
                        "resources[{i}] Workload {name:?}: ips[{j}]: {a:?} is not an IP address"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        next.pods.insert(name, ips);
    }
    for gone in &resp.removed_resources {
        next.pods.remove(gone);
    }
    next.rebuild();
    Ok(next)
}

/// Applies one `Node` response to `nodes`: all of it or, on a bad resource, none of it.
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

/// Follows the node registry into `out` and the workload directory into `dir` until every
/// receiver of `out` is gone.
pub async fn run(src: XdsSource, out: watch::Sender<Nodes>, dir: watch::Sender<Directory>) {
    let mut attempt = 0u32;
    loop {
        match session(&src, &out, &dir).await {
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

async fn session(
    src: &XdsSource,
    out: &watch::Sender<Nodes>,
    dir: &watch::Sender<Directory>,
) -> Result<bool, BoxError> {
    let conn = membrane_xds_client::connect(&src.address, src.tls.as_ref()).await?;
    let (tx, rx) = mpsc::channel(4);
    for type_url in [AGENT_NODE, AGENT_WORKLOAD] {
        tx.send(DeltaDiscoveryRequest {
            node: Some(XdsNode {
                id: src.node_id.clone(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await?;
    }
    let mut stream = AggregatedDiscoveryServiceClient::new(conn.channel.clone())
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // A new stream starts from nothing: the first response of each type is all of it.
    let mut held: Option<Nodes> = None;
    let mut held_dir: Option<Directory> = None;
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
        let result = if resp.type_url == AGENT_WORKLOAD {
            let base = held_dir.clone().unwrap_or_default();
            apply_workloads(&base, &resp).map(|next| {
                tracing::debug!(pods = next.len(), "workload directory");
                dir.send_replace(next.clone());
                held_dir = Some(next);
            })
        } else {
            let base = held.clone().unwrap_or_default();
            apply(&base, &resp).map(|next| {
                tracing::info!(nodes = ?next, "node registry");
                out.send_replace(next.clone());
                held = Some(next);
            })
        };
        let error_detail = match result {
            Ok(()) => None,
            Err(message) => {
                tracing::error!(type_url = %resp.type_url, error = %message, "node registry update rejected (NACK); the last good one stays");
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

#[cfg(test)]
mod directory_tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    fn workload(ns: &str, pod: &str, ips: &[&str]) -> Resource {
        let w = Workload {
            namespace: ns.into(),
            pod: pod.into(),
            ips: ips.iter().map(|a| a.to_string()).collect(),
            node: "node-2".into(),
            identity: 300,
        };
        Resource {
            name: format!("{ns}/{pod}"),
            resource: Some(Any {
                type_url: AGENT_WORKLOAD.into(),
                value: w.encode_to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_directory_names_unnamed_ends_and_a_bad_workload_changes_nothing() {
        let resp = DeltaDiscoveryResponse {
            type_url: AGENT_WORKLOAD.into(),
            resources: vec![
                workload("default", "server2", &["10.202.0.2", "fd00::2"]),
                workload("default", "client2", &["10.202.0.1"]),
            ],
            ..Default::default()
        };
        let dir = apply_workloads(&Directory::default(), &resp).unwrap();
        let mut e = Event {
            src: Some("10.201.0.1:40000".into()),
            src_pod: Some("default/client".into()),
            dst: Some("10.202.0.2:9090".into()),
            ..Event::default()
        };
        dir.name(&mut e);
        assert_eq!(e.dst_pod.as_deref(), Some("default/server2"));
        assert_eq!(e.src_pod.as_deref(), Some("default/client"), "kept");
        let mut v6 = Event {
            dst: Some("[fd00::2]:80".into()),
            src: Some("10.9.9.9:1".into()),
            ..Event::default()
        };
        dir.name(&mut v6);
        assert_eq!(v6.dst_pod.as_deref(), Some("default/server2"));
        assert_eq!(v6.src_pod, None, "nobody holds 10.9.9.9");

        // What an agent is sent to match, before naming, a filter on another node's pod.
        let by = |pod: &[&str], ns: &[&str]| {
            let f = membrane_api::observer::proto::Filter {
                pod: pod.iter().map(|p| p.to_string()).collect(),
                namespace: ns.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            };
            let mut v: Vec<(String, String)> = dir
                .names_for(&Filter::new(&f).unwrap())
                .into_iter()
                .collect();
            v.sort();
            v
        };
        let server2 = vec![
            ("10.202.0.2".to_owned(), "default/server2".to_owned()),
            ("fd00::2".to_owned(), "default/server2".to_owned()),
        ];
        assert_eq!(by(&["server2"], &[]), server2);
        assert_eq!(by(&["default/server2"], &[]), server2);
        assert_eq!(by(&[], &["default"]).len(), 3);
        assert!(by(&[], &["prod"]).is_empty());
        assert!(by(&[], &[]).is_empty(), "no pod filter, no names");

        let gone = DeltaDiscoveryResponse {
            type_url: AGENT_WORKLOAD.into(),
            removed_resources: vec!["default/server2".into()],
            ..Default::default()
        };
        let dir = apply_workloads(&dir, &gone).unwrap();
        assert_eq!(dir.pod_of("10.202.0.2".parse().unwrap()), None);
        assert_eq!(dir.len(), 1);
        let bad = DeltaDiscoveryResponse {
            type_url: AGENT_WORKLOAD.into(),
            resources: vec![
                workload("default", "a", &["10.0.0.3"]),
                workload("default", "b", &["nowhere"]),
            ],
            ..Default::default()
        };
        let e = apply_workloads(&dir, &bad).unwrap_err();
        assert!(
            e.contains("Workload \"default/b\": ips[0]: \"nowhere\""),
            "{e}"
        );
    }
}
