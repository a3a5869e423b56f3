//! The node agents' resources from the real membrane-xds, read by a delta ADS client as
//! `membrane-agent run` reads them (one stream, wildcard subscriptions, ACK per response):
//! an agent sees exactly its node's endpoints, with the identities NPHDS gives their
//! addresses and the engine's policy as map entries; a policy edit reaches the affected
//! endpoints only; a broken file leaves the last good resources; a pod that moves to
//! another node moves between the agents; SotW and an unknown node are served too, and
//! `/debug/syncz` tells the agents from the sidecars.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use membrane_api::agent::proto::{Direction, Endpoint, PolicyEntry, Service, Verdict};
use membrane_xds::proto::NetworkPolicyHosts;
use membrane_xds::resource::{AGENT_ENDPOINT, AGENT_NODE, AGENT_SERVICE, NETWORK_POLICY_HOSTS};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use common::*;

const LIMIT: Duration = Duration::from_secs(20);

/// Two nodes, the Star Wars pods spread over them, one pod not scheduled yet, the
/// deathstar service. `{TIE_NODE}` is where the tiefighter runs.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.0.1.0/24]}
status: {addresses: [{type: InternalIP, address: 10.10.0.1}, {type: Hostname, address: n1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.0.2.0/24}
status: {addresses: [{type: InternalIP, address: 10.10.0.2}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: deathstar-1
  namespace: default
  labels: {org: empire, class: deathstar}
  annotations: {sidecar.istio.io/status: '{"containers":["membrane-proxy"]}'}
spec: {nodeName: node-1, containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: deathstar-2, namespace: default, labels: {org: empire, class: deathstar}}
spec: {nodeName: node-2, containers: [{name: app, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
spec: {nodeName: {TIE_NODE}}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
spec: {nodeName: node-2}
status: {podIP: 10.0.2.4}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: default, labels: {org: alliance, class: xwing}}
status: {podIP: 10.0.9.9}
---
apiVersion: v1
kind: Service
metadata: {name: deathstar, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {class: deathstar}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: deathstar-np, namespace: default}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.11
  selector: {class: deathstar}
  ports: [{port: 80, targetPort: http, nodePort: 30080}, {port: 53, protocol: UDP, targetPort: 53, nodePort: 30053}]
---
apiVersion: v1
kind: Service
metadata: {name: stale-node-port, namespace: default}
spec: {clusterIP: 10.96.0.12, selector: {class: deathstar}, ports: [{port: 80, nodePort: 30081}]}
"#;

fn cluster(tie_node: &str) -> String {
    CLUSTER.replace("{TIE_NODE}", tie_node)
}

/// The types an agent watches.
const TYPES: [&str; 4] = [
    AGENT_ENDPOINT,
    AGENT_SERVICE,
    AGENT_NODE,
    NETWORK_POLICY_HOSTS,
];

/// A delta ADS client holding what it was sent, per type and name.
struct Agent {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    state: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Agent {
    async fn connect(url: &str, node: &str) -> Agent {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        for (i, t) in TYPES.iter().enumerate() {
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| Node {
                    id: node.into(),
                    ..Default::default()
                }),
                type_url: t.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("delta stream")
            .into_inner();
        Agent {
            tx,
            rx,
            state: BTreeMap::new(),
        }
    }

    /// The next response, applied and ACKed.
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        let r = tokio::time::timeout(LIMIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open");
        let set = self.state.entry(r.type_url.clone()).or_default();
        for res in &r.resources {
            let body = res.resource.as_ref().expect("a resource body");
            assert_eq!(body.type_url, r.type_url);
            set.insert(res.name.clone(), body.value.clone());
        }
        for name in &r.removed_resources {
            set.remove(name);
        }
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        r
    }

    /// Reads responses until `done` holds for the state; returns the responses read.
    async fn until(
        &mut self,
        what: &str,
        done: impl Fn(&Agent) -> bool,
    ) -> Vec<DeltaDiscoveryResponse> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !done(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            seen.push(self.next().await);
        }
        seen
    }

    fn names(&self, t: &str) -> BTreeSet<String> {
        self.state
            .get(t)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn get<M: Message + Default>(&self, t: &str, name: &str) -> Option<M> {
        let bytes = self.state.get(t)?.get(name)?;
        Some(M::decode(bytes.as_slice()).expect("decodes"))
    }

    fn endpoint(&self, name: &str) -> Endpoint {
        self.get(AGENT_ENDPOINT, name)
            .unwrap_or_else(|| panic!("no endpoint {name}"))
    }

    /// Address → identity, from the ipcache (NPHDS).
    fn ipcache(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for bytes in self
            .state
            .get(NETWORK_POLICY_HOSTS)
            .into_iter()
            .flat_map(|s| s.values())
        {
            let h = NetworkPolicyHosts::decode(bytes.as_slice()).unwrap();
            for a in h.host_addresses {
                out.insert(a, u32::try_from(h.policy).unwrap());
            }
        }
        out
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The kernel's lookup (agent.proto): the identity's entry, else any identity's, else DENY.
fn lookup(
    entries: &[PolicyEntry],
    dir: Direction,
    remote: u32,
    protocol: u32,
    port: u32,
) -> Verdict {
    let holding = |id: u32| {
        entries.iter().find(|e| {
            e.direction == dir as i32
                && e.remote_identity == id
                && e.protocol == protocol
                && (e.port..=e.end_port).contains(&port)
        })
    };
    holding(remote)
        .or_else(|| holding(0))
        .map_or(Verdict::Deny, |e| Verdict::try_from(e.verdict).unwrap())
}

fn all_endpoints_served(a: &Agent, want: &BTreeSet<String>) -> bool {
    a.names(AGENT_ENDPOINT) == *want
        && !a.names(AGENT_SERVICE).is_empty()
        && a.names(AGENT_NODE).len() == 2
        && a.ipcache().len() >= 5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_their_nodes_endpoints_follow_edits_and_moves_and_keep_the_last_good() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), cluster("node-1")).unwrap();
    std::fs::write(tmp.path().join("policy.yaml"), starwars::L3_L4).unwrap();
    let xds = start_xds_with(tmp.path(), &["--poll-ms".as_ref(), "600000".as_ref()]);
    let url = format!("http://{}", xds.grpc());

    let mut one = Agent::connect(&url, "membrane-agent~node-1").await;
    let mut two = Agent::connect(&url, "membrane-agent~node-2").await;
    let one_eps = names(&["default/deathstar-1", "default/tiefighter"]);
    let two_eps = names(&["default/deathstar-2", "default/xwing"]);
    one.until("node-1's endpoints", |a| all_endpoints_served(a, &one_eps))
        .await;
    two.until("node-2's endpoints", |a| all_endpoints_served(a, &two_eps))
        .await;

    // Identities are the ipcache's; the sidecar flag and named ports are the pod's.
    let ipc = one.ipcache();
    let death = one.endpoint("default/deathstar-1");
    let tie = one.endpoint("default/tiefighter");
    let xwing = two.endpoint("default/xwing");
    assert_eq!(death.ips, vec!["10.0.1.2"]);
    assert_eq!(death.identity, ipc["10.0.1.2"]);
    assert_eq!(tie.identity, ipc["10.0.1.3"]);
    assert_eq!(xwing.identity, ipc["10.0.2.4"]);
    assert_eq!(
        two.endpoint("default/deathstar-2").identity,
        death.identity,
        "same labels, same identity"
    );
    assert!(death.sidecar && !tie.sidecar);
    assert_eq!(
        death.named_ports,
        std::collections::HashMap::from([("http".to_string(), 80)])
    );
    assert!(death.labels.contains(&"k8s:class=deathstar".to_string()));
    // The node's hosts are the host identity in the ipcache.
    assert_eq!(ipc["10.10.0.1"], 1);

    // The L3/L4 policy as map entries: the empire on TCP 80, nobody else, egress open.
    let pol = death.policy.clone().expect("a policy");
    assert!(pol.ingress_enforced && !pol.egress_enforced);
    assert_eq!(
        pol.ingress_selected_by,
        vec!["CiliumNetworkPolicy/default/rule1"]
    );
    let e = &pol.entries;
    assert_eq!(
        lookup(e, Direction::Ingress, tie.identity, 6, 80),
        Verdict::Allow
    );
    assert_eq!(
        lookup(e, Direction::Ingress, tie.identity, 6, 81),
        Verdict::Deny
    );
    assert_eq!(
        lookup(e, Direction::Ingress, tie.identity, 17, 80),
        Verdict::Deny
    );
    assert_eq!(
        lookup(e, Direction::Ingress, xwing.identity, 6, 80),
        Verdict::Deny
    );
    assert_eq!(
        lookup(e, Direction::Egress, xwing.identity, 6, 443),
        Verdict::Allow
    );
    let tie_pol = tie.policy.clone().unwrap();
    // Neither direction enforced: an allow-all entry per direction and protocol.
    assert!(!tie_pol.ingress_enforced);
    assert_eq!(
        tie_pol.entries.len(),
        2 * membrane_api::agent::policy::PROTOCOLS.len()
    );

    // Services and nodes.
    let svc: Service = one.get(AGENT_SERVICE, "default/deathstar:80/TCP").unwrap();
    assert_eq!(
        (svc.address.as_str(), svc.port, svc.protocol),
        ("10.96.0.10", 80, 6)
    );
    let backends: BTreeSet<(String, u32)> = svc
        .backends
        .iter()
        .map(|b| (b.address.clone(), b.port))
        .collect();
    assert_eq!(
        backends,
        BTreeSet::from([("10.0.1.2".into(), 80), ("10.0.2.2".into(), 80)])
    );
    assert_eq!((svc.node_port, svc.external_traffic_local), (0, false));
    // Type NodePort: every port carries its node port and the traffic policy.
    let np: Service = one
        .get(AGENT_SERVICE, "default/deathstar-np:80/TCP")
        .unwrap();
    assert_eq!((np.node_port, np.external_traffic_local), (30080, true));
    let np_udp: Service = one
        .get(AGENT_SERVICE, "default/deathstar-np:53/UDP")
        .unwrap();
    assert_eq!(
        (np_udp.node_port, np_udp.protocol, np_udp.backends.len()),
        (30053, 17, 2)
    );
    // A ClusterIP service's stray nodePort opens nothing (Kubernetes ignores it too).
    let plain: Service = one
        .get(AGENT_SERVICE, "default/stale-node-port:80/TCP")
        .unwrap();
    assert_eq!(plain.node_port, 0);
    let n1: membrane_api::agent::proto::Node = one.get(AGENT_NODE, "node-1").unwrap();
    assert_eq!(
        (n1.addresses, n1.pod_cidrs),
        (
            vec!["10.10.0.1".to_string()],
            vec!["10.0.1.0/24".to_string()]
        )
    );
    let n2: membrane_api::agent::proto::Node = two.get(AGENT_NODE, "node-2").unwrap();
    assert_eq!(n2.pod_cidrs, vec!["10.0.2.0/24"]);

    // /debug/syncz lists the agents as agents, with what they ACKed.
    let v = eventually(LIMIT, "the agents in /debug/syncz", || async {
        let v = debug_json(xds.debug(), "/debug/syncz").await;
        let agents: Vec<serde_json::Value> = v
            .as_array()?
            .iter()
            .filter(|p| p["proxy_type"] == "agent" && p["agent_endpoint_acked_version"].is_string())
            .cloned()
            .collect();
        (agents.len() == 2).then_some(agents)
    })
    .await;
    let nodes: BTreeSet<&str> = v.iter().filter_map(|p| p["node_name"].as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["node-1", "node-2"]));

    // A policy edit (L7 on the same port): only the deathstars' endpoints are sent again,
    // each to its own node's agent, now redirecting the empire to the sidecar.
    std::fs::write(tmp.path().join("policy.yaml"), starwars::L3_L4_L7).unwrap();
    let redirected = |a: &Agent, name: &str, tie: u32| {
        a.get::<Endpoint>(AGENT_ENDPOINT, name)
            .and_then(|e| e.policy)
            .is_some_and(|p| {
                lookup(&p.entries, Direction::Ingress, tie, 6, 80) == Verdict::Redirect
            })
    };
    let tie_id = tie.identity;
    let seen = one
        .until("the L7 policy on node-1", |a| {
            redirected(a, "default/deathstar-1", tie_id)
        })
        .await;
    let sent: Vec<&str> = seen
        .iter()
        .filter(|r| r.type_url == AGENT_ENDPOINT)
        .flat_map(|r| r.resources.iter().map(|x| x.name.as_str()))
        .collect();
    assert_eq!(
        sent,
        vec!["default/deathstar-1"],
        "only the affected endpoint"
    );
    let seen = two
        .until("the L7 policy on node-2", |a| {
            redirected(a, "default/deathstar-2", tie_id)
        })
        .await;
    assert!(seen
        .iter()
        .filter(|r| r.type_url == AGENT_ENDPOINT)
        .all(|r| r.resources.iter().all(|x| x.name == "default/deathstar-2")));
    assert_eq!(
        one.endpoint("default/tiefighter"),
        tie,
        "the tiefighter was not touched"
    );

    // A broken policy file is rejected and the last good policy stays...
    std::fs::write(
        tmp.path().join("policy.yaml"),
        starwars::L3_L4_L7.replace("port: \"80\"", "port: \"99999\""),
    )
    .unwrap();
    eventually(LIMIT, "the rejection in /debug/sourcez", || async {
        let v = debug_json(xds.debug(), "/debug/sourcez").await;
        v["last_rejections"]
            .as_array()
            .filter(|r| {
                r.iter()
                    .any(|x| x.as_str().is_some_and(|s| s.contains("policy.yaml")))
            })
            .map(|_| ())
    })
    .await;

    // ... while the tiefighter moves to node-2: it leaves node-1's agent for node-2's,
    // with the same identity, and the deathstar-1 still redirects (the L7 policy).
    std::fs::write(tmp.path().join("cluster.yaml"), cluster("node-2")).unwrap();
    let seen = one
        .until("the tiefighter leaving node-1", |a| {
            !a.names(AGENT_ENDPOINT).contains("default/tiefighter")
        })
        .await;
    assert!(seen.iter().any(|r| r
        .removed_resources
        .contains(&"default/tiefighter".to_string())));
    two.until("the tiefighter on node-2", |a| {
        a.names(AGENT_ENDPOINT).contains("default/tiefighter")
    })
    .await;
    assert_eq!(two.endpoint("default/tiefighter").identity, tie_id);
    assert!(
        redirected(&one, "default/deathstar-1", tie_id),
        "the last good policy"
    );
    assert_eq!(one.names(AGENT_ENDPOINT), names(&["default/deathstar-1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_gets_no_endpoints_and_sotw_clients_are_served_too() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), cluster("node-1")).unwrap();
    std::fs::write(tmp.path().join("policy.yaml"), starwars::L3_L4).unwrap();
    let xds = start_xds(tmp.path());
    let url = format!("http://{}", xds.grpc());

    // A node no source names yet: services, nodes and the ipcache, no endpoint.
    let mut nine = Agent::connect(&url, "membrane-agent~node-9").await;
    nine.until("node-9's snapshot", |a| {
        !a.names(AGENT_SERVICE).is_empty() && a.names(AGENT_NODE).len() == 2
    })
    .await;
    assert!(nine.names(AGENT_ENDPOINT).is_empty());

    // ... until a pod is scheduled there.
    let moved = cluster("node-9");
    std::fs::write(tmp.path().join("cluster.yaml"), &moved).unwrap();
    nine.until("the tiefighter on node-9", |a| {
        a.names(AGENT_ENDPOINT) == names(&["default/tiefighter"])
    })
    .await;

    // State of the world, wildcard: node-2's endpoints in one response.
    let mut client = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "membrane-agent~node-2".into(),
            ..Default::default()
        }),
        type_url: AGENT_ENDPOINT.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(LIMIT, s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let got: BTreeSet<String> = r
        .resources
        .iter()
        .map(|a| Endpoint::decode(a.value.as_slice()).unwrap())
        .map(|e| format!("{}/{}", e.namespace, e.pod))
        .collect();
    assert_eq!(got, names(&["default/deathstar-2", "default/xwing"]));
    drop(tx);
}
