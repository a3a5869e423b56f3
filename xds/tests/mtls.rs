//! xDS over mTLS (15012): the authenticated default. A sidecar whose
//! workload certificate (SPIFFE id in the URI SAN) may be the pod its node id
//! names gets that pod's policy and nothing else; every other client is
//! refused: no certificate, a certificate of another CA, an expired one, one
//! without a SPIFFE id or of another trust domain, and a valid one presented
//! with another pod's node id. A node agent's id (`membrane-agent~NODE`) is
//! served to the agents' service account only, and that certificate is no
//! sidecar's. The relay's id (`membrane-relay~NAME`) is served to the relay's
//! service account only, and gets the node registry and the workload directory,
//! none of an agent's or a sidecar's types; its certificate is no agent's.
//! Certificates are real, made with openssl.

mod common;

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use membrane_xds::proto::NetworkPolicy;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use common::*;

/// The Star Wars pods with service accounts: deathstar-1 runs as
/// `deathstar`, xwing as `xwing`, tiefighter as `default` (none given).
fn pods() -> String {
    r#"apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, namespace: default, labels: {org: empire, class: deathstar}}
spec: {serviceAccountName: deathstar, containers: [{name: app, ports: [{containerPort: 8080}]}]}
status: {podIP: 127.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status: {podIP: 127.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
spec: {serviceAccountName: xwing}
status: {podIP: 127.0.0.4}
"#
    .into()
}

fn node_id(ip: &str, pod: &str) -> String {
    format!("sidecar~{ip}~{pod}.default~default.svc.cluster.local")
}

const DEATHSTAR: (&str, &str) = ("127.0.0.2", "deathstar-1");
const XWING: (&str, &str) = ("127.0.0.4", "xwing");

async fn channel(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    addr: std::net::SocketAddr,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("membrane-xds.test");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// The first NPDS response for `node`, or why there is none (a transport
/// error, or the gRPC status).
async fn first_npds(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    addr: std::net::SocketAddr,
    node: &str,
) -> Result<DiscoveryResponse, String> {
    let r = first_npds_on(channel(ca, identity, addr).await?, node).await;
    if let Err(e) = &r {
        eprintln!("{node}: refused: {e}");
    }
    r
}

fn endpoint_ips(r: &DiscoveryResponse) -> Vec<String> {
    let mut ips: Vec<String> = r
        .resources
        .iter()
        .flat_map(|a| {
            NetworkPolicy::decode(a.value.as_slice())
                .unwrap()
                .endpoint_ips
        })
        .collect();
    ips.sort();
    ips
}

fn setup() -> (tempfile::TempDir, Pki, Xds) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("cluster.yaml"), pods()).unwrap();
    std::fs::write(
        src.join("policy.yaml"),
        starwars::l7(8080, "/v1/request-landing"),
    )
    .unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), "membrane-test-ca");
    let xds = start_xds_mtls(&src, &pki, &[]);
    (tmp, pki, xds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_certificate_gets_its_own_pods_policy_and_nothing_else() {
    let (_tmp, pki, xds) = setup();
    assert!(
        !xds.line.contains("grpc="),
        "no plaintext xDS without --plaintext-xds: {}",
        xds.line
    );
    let (cert, key) = pki.workload("deathstar", "default", "deathstar");
    let me = Some((cert.as_path(), key.as_path()));
    let r = first_npds(
        &pki.ca,
        me,
        xds.tls().unwrap(),
        &node_id(DEATHSTAR.0, DEATHSTAR.1),
    )
    .await
    .expect("deathstar's sidecar is served");
    assert_eq!(
        endpoint_ips(&r),
        vec!["127.0.0.2".to_string()],
        "only deathstar-1's own NetworkPolicy"
    );

    // The same certificate under a non-sidecar id would have been the
    // shared snapshot (every endpoint's policy) on the plaintext port.
    let err = first_npds(&pki.ca, me, xds.tls().unwrap(), "membrane-agent~node-1")
        .await
        .unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");

    // Debug types (every client's config) are not answered either.
    let ch = channel(&pki.ca, me, xds.tls().unwrap()).await.unwrap();
    let (tx, rx) = mpsc::channel(2);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node_id(DEATHSTAR.0, DEATHSTAR.1),
            ..Default::default()
        }),
        type_url: "istio.io/debug/syncz".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = AggregatedDiscoveryServiceClient::new(ch)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    if let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(2), s.message()).await {
        assert!(
            r.resources.is_empty(),
            "syncz over mTLS disclosed {} client configs",
            r.resources.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_agent_is_served_with_the_agents_certificate_only() {
    let (_tmp, pki, xds) = setup();
    let addr = xds.tls().unwrap();
    let (cert, key) = pki.workload("agent", "kube-system", "membrane-agent");
    let agent = Some((cert.as_path(), key.as_path()));

    // Allowed: the agent's snapshot, which holds every endpoint's NPDS (no pod
    // here names a node, so none of its own) and its own types.
    let r = first_npds(&pki.ca, agent, addr, "membrane-agent~node-1")
        .await
        .expect("the agent is served");
    assert_eq!(
        endpoint_ips(&r),
        vec!["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    );

    // Refused: the same certificate as a sidecar (no pod runs as the agents'
    // account), and the agents' account name in another namespace.
    let err = first_npds(&pki.ca, agent, addr, &node_id(DEATHSTAR.0, DEATHSTAR.1))
        .await
        .unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");
    let (c, k) = pki.workload("impostor", "default", "membrane-agent");
    let err = first_npds(&pki.ca, Some((&c, &k)), addr, "membrane-agent~node-1")
        .await
        .unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("kube-system/sa/membrane-agent"),
        "{err}"
    );
    let metrics = debug_get(xds.debug(), "/metrics").await;
    assert!(
        metrics.contains("reason=\"agent_account\""),
        "the refusal is counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_an_acceptable_certificate_or_node_id_are_refused() {
    let (tmp, pki, xds) = setup();
    let ds = node_id(DEATHSTAR.0, DEATHSTAR.1);
    let ca = pki.ca.clone();

    // No client certificate: the handshake fails.
    let err = first_npds(&ca, None, xds.tls().unwrap(), &ds)
        .await
        .unwrap_err();
    assert!(
        !err.starts_with("PermissionDenied"),
        "handshake, not RPC: {err}"
    );

    // A valid-looking certificate from a CA the control plane does not trust.
    let rogue = Pki::new(&tmp.path().join("rogue"), "rogue-ca");
    let (c, k) = rogue.workload("deathstar", "default", "deathstar");
    let err = first_npds(&ca, Some((&c, &k)), xds.tls().unwrap(), &ds)
        .await
        .unwrap_err();
    assert!(
        !err.starts_with("PermissionDenied"),
        "handshake, not RPC: {err}"
    );

    // Expired.
    let (c, k) = pki.issue(
        "expired",
        "URI:spiffe://cluster.local/ns/default/sa/deathstar",
        Validity::Expired,
    );
    let err = first_npds(&ca, Some((&c, &k)), xds.tls().unwrap(), &ds)
        .await
        .unwrap_err();
    assert!(
        !err.starts_with("PermissionDenied"),
        "handshake, not RPC: {err}"
    );

    let mut denied = Vec::new();
    // A certificate without a SPIFFE id (a DNS name only).
    let (c, k) = pki.issue("dns-only", "DNS:deathstar.default.svc", Validity::Days(1));
    denied.push(("no SPIFFE id", c, k, ds.clone(), "URI SAN"));
    // Another trust domain.
    let (c, k) = pki.issue(
        "other-domain",
        "URI:spiffe://evil.example/ns/default/sa/deathstar",
        Validity::Days(1),
    );
    denied.push(("other trust domain", c, k, ds.clone(), "trust domain"));
    // xwing's valid certificate with deathstar's node id.
    let (c, k) = pki.workload("xwing", "default", "xwing");
    denied.push(("another pod's node id", c, k, ds.clone(), "service account"));
    // deathstar's certificate with its pod name but another IP.
    let (c, k) = pki.workload("deathstar", "default", "deathstar");
    denied.push((
        "wrong IP",
        c.clone(),
        k.clone(),
        node_id(XWING.0, DEATHSTAR.1),
        "is not an IP of pod default/deathstar-1",
    ));
    // A pod that does not exist.
    denied.push((
        "unknown pod",
        c,
        k,
        node_id(DEATHSTAR.0, "deathstar-9"),
        "no pod default/deathstar-9",
    ));
    for (what, c, k, node, says) in &denied {
        let err = first_npds(&ca, Some((c, k)), xds.tls().unwrap(), node)
            .await
            .expect_err(what);
        assert!(
            err.starts_with("PermissionDenied") && err.contains(says),
            "{what}: {err}"
        );
    }
    // xwing is still served as itself.
    let (c, k) = pki.workload("xwing2", "default", "xwing");
    let r = first_npds(
        &ca,
        Some((&c, &k)),
        xds.tls().unwrap(),
        &node_id(XWING.0, XWING.1),
    )
    .await
    .expect("xwing as itself");
    assert!(endpoint_ips(&r).iter().all(|ip| ip == "127.0.0.4"));

    // Refusals are counted by reason.
    let metrics = debug_get(xds.debug(), "/metrics").await;
    for reason in [
        "no_spiffe_id",
        "trust_domain",
        "service_account",
        "ip",
        "unknown_pod",
    ] {
        assert!(
            metrics.contains(&format!(
                "membrane_xds_auth_denied_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
}

/// The first SotW ADS response of `type_url` for `node` on `ch`: `Ok(None)` when none
/// comes within 3 s (the type is not in the node's snapshot), `Err` with the gRPC status.
async fn first_ads(
    ch: Channel,
    node: &str,
    type_url: &str,
) -> Result<Option<DiscoveryResponse>, String> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let answer = async {
        let mut s = AggregatedDiscoveryServiceClient::new(ch)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
            .into_inner();
        match s.message().await {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => Err("stream ended".to_string()),
            Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(3), answer)
        .await
        .unwrap_or(Ok(None));
    drop(tx);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_gets_the_node_registry_and_workloads_with_its_own_certificate_only() {
    use membrane_api::agent::proto;
    use membrane_xds::resource::{
        AGENT_ENDPOINT, AGENT_NODE, AGENT_PREFILTER, AGENT_SERVICE, AGENT_WORKLOAD, LISTENER,
        NETWORK_POLICY_HOSTS,
    };
    let (tmp, pki, xds) = setup();
    std::fs::write(
        tmp.path().join("src/nodes.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
         status: {addresses: [{type: InternalIP, address: 192.168.79.1}]}\n\
         ---\napiVersion: membrane.io/v1alpha1\nkind: PrefilterDenyList\n\
         metadata: {name: edge}\nspec: {cidrs: [192.0.2.0/24]}\n",
    )
    .unwrap();
    let addr = xds.tls().unwrap();
    let (rc, rk) = pki.workload("relay", "membrane-system", "membrane-relay");
    let relay = Some((rc.as_path(), rk.as_path()));
    let (ac, ak) = pki.workload("agent", "kube-system", "membrane-agent");
    let agent = Some((ac.as_path(), ak.as_path()));
    const RELAY: &str = "membrane-relay~relay-0";

    // The node registry, once the source holds the node.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let r = first_ads(
            channel(&pki.ca, relay, addr).await.unwrap(),
            RELAY,
            AGENT_NODE,
        )
        .await
        .expect("the relay is served the node registry")
        .expect("an answer");
        if !r.resources.is_empty() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n = proto::Node::decode(nodes.resources[0].value.as_slice()).unwrap();
    assert_eq!(
        (n.name.as_str(), n.addresses.as_slice()),
        ("node-1", &["192.168.79.1".to_string()][..])
    );
    // The workload directory: every pod with its addresses.
    let w = first_ads(
        channel(&pki.ca, relay, addr).await.unwrap(),
        RELAY,
        AGENT_WORKLOAD,
    )
    .await
    .unwrap()
    .expect("the workload directory");
    let mut pods: Vec<(String, Vec<String>)> = w
        .resources
        .iter()
        .map(|a| {
            let w = proto::Workload::decode(a.value.as_slice()).unwrap();
            (format!("{}/{}", w.namespace, w.pod), w.ips)
        })
        .collect();
    pods.sort();
    assert_eq!(
        pods,
        [
            (
                "default/deathstar-1".to_string(),
                vec!["127.0.0.2".to_string()]
            ),
            (
                "default/tiefighter".to_string(),
                vec!["127.0.0.3".to_string()]
            ),
            ("default/xwing".to_string(), vec!["127.0.0.4".to_string()]),
        ]
    );
    // Nothing an agent or a sidecar gets: no policy, ipcache, service, deny list or
    // listener comes to the relay's id.
    for t in [
        NPDS,
        NETWORK_POLICY_HOSTS,
        AGENT_ENDPOINT,
        AGENT_SERVICE,
        AGENT_PREFILTER,
        LISTENER,
    ] {
        let r = first_ads(channel(&pki.ca, relay, addr).await.unwrap(), RELAY, t).await;
        match r {
            Ok(None) => {}
            Ok(Some(r)) => assert!(r.resources.is_empty(), "{t}: {r:?}"),
            Err(e) => panic!("{t}: {e}"),
        }
    }
    // The agents' deny list does reach an agent (the types are served, to agents).
    let r = first_ads(
        channel(&pki.ca, agent, addr).await.unwrap(),
        "membrane-agent~node-1",
        AGENT_PREFILTER,
    )
    .await
    .unwrap()
    .expect("the agent's deny lists");
    assert_eq!(r.resources.len(), 1, "{r:?}");

    // Refused: the relay's certificate as an agent, the agents' as the relay, and the
    // relay's account name in another namespace.
    let err = first_ads(
        channel(&pki.ca, relay, addr).await.unwrap(),
        "membrane-agent~node-1",
        AGENT_NODE,
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("kube-system/sa/membrane-agent"),
        "{err}"
    );
    let err = first_ads(
        channel(&pki.ca, agent, addr).await.unwrap(),
        RELAY,
        AGENT_NODE,
    )
    .await
    .unwrap_err();
    assert!(
        err.starts_with("PermissionDenied") && err.contains("membrane-system/sa/membrane-relay"),
        "{err}"
    );
    let (c, k) = pki.workload("impostor", "default", "membrane-relay");
    let impostor = Some((c.as_path(), k.as_path()));
    let err = first_ads(
        channel(&pki.ca, impostor, addr).await.unwrap(),
        RELAY,
        AGENT_NODE,
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");
    let metrics = debug_get(xds.debug(), "/metrics").await;
    assert!(
        metrics.contains("reason=\"relay_account\""),
        "the refusal is counted: {metrics}"
    );
}
