//! Cilium's own services over gRPC: an NPDS/NPHDS client (the generated tonic
//! client, as a Cilium proxy or the node agent would use it) receives the
//! Star Wars policy, follows a live policy change, and its NACK is recorded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use membrane_xds::proto::network_policy_discovery_service_client::NetworkPolicyDiscoveryServiceClient;
use membrane_xds::proto::network_policy_hosts_discovery_service_client::NetworkPolicyHostsDiscoveryServiceClient;
use membrane_xds::proto::{port_network_policy_rule::L7, NetworkPolicy, NetworkPolicyHosts};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use common::*;

const AGENT: &str = "membrane-agent~node-1";

fn req(version: &str, nonce: &str, error: Option<&str>, first: bool) -> DiscoveryRequest {
    DiscoveryRequest {
        node: first.then(|| Node {
            id: AGENT.into(),
            ..Default::default()
        }),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| Status {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    }
}

async fn next(s: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("response in time")
        .expect("stream ok")
        .expect("stream open")
}

type NpdsClient = NetworkPolicyDiscoveryServiceClient<tonic::transport::Channel>;

/// An NPDS stream to the control plane at `url`, opened with `first`: the client (for more
/// streams on its connection), the request sender and the response stream.
async fn npds_stream(
    url: String,
    first: DiscoveryRequest,
) -> (
    NpdsClient,
    mpsc::Sender<DiscoveryRequest>,
    Streaming<DiscoveryResponse>,
) {
    let mut client = NetworkPolicyDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let s = client
        .stream_network_policies(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (client, tx, s)
}

fn policies(r: &DiscoveryResponse) -> Vec<NetworkPolicy> {
    r.resources
        .iter()
        .map(|a| NetworkPolicy::decode(a.value.as_slice()).unwrap())
        .collect()
}

fn http_rules_of(np: &NetworkPolicy) -> usize {
    np.ingress_per_port_policies
        .iter()
        .flat_map(|p| &p.rules)
        .filter_map(|r| match &r.l7 {
            Some(L7::HttpRules(h)) => Some(h.http_rules.len()),
            _ => None,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npds_and_nphds_clients_get_policy_follow_changes_and_nacks_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    starwars::write_source(tmp.path(), 8080);
    // Polling effectively off: changes must arrive through file-system events.
    let xds = start_xds_with(tmp.path(), &["--poll-ms".as_ref(), "600000".as_ref()]);
    let url = format!("http://{}", xds.grpc());

    // NPHDS: every pod's identity with its address.
    let mut hosts_client = NetworkPolicyHostsDiscoveryServiceClient::connect(url.clone())
        .await
        .unwrap();
    let (htx, hrx) = mpsc::channel(8);
    htx.send(req("", "", None, true)).await.unwrap();
    let mut hs = hosts_client
        .stream_network_policy_hosts(ReceiverStream::new(hrx))
        .await
        .unwrap()
        .into_inner();
    let r = next(&mut hs).await;
    assert_eq!(r.type_url, "type.googleapis.com/cilium.NetworkPolicyHosts");
    let mut addrs: Vec<String> = r
        .resources
        .iter()
        .flat_map(|a| {
            NetworkPolicyHosts::decode(a.value.as_slice())
                .unwrap()
                .host_addresses
        })
        .collect();
    addrs.sort();
    assert_eq!(addrs, vec!["127.0.0.2", "127.0.0.3", "127.0.0.4"]);

    // NPDS: the deathstar's policy has the L7 rule on 8080.
    let (mut client, tx, mut s) = npds_stream(url, req("", "", None, true)).await;
    let r1 = next(&mut s).await;
    let nps = policies(&r1);
    let death = nps
        .iter()
        .find(|p| p.endpoint_ips == vec!["127.0.0.2".to_string()])
        .expect("deathstar policy");
    assert_eq!(death.ingress_per_port_policies[0].port, 8080);
    assert_eq!(http_rules_of(death), 1);
    tx.send(req(&r1.version_info, &r1.nonce, None, false))
        .await
        .unwrap();

    // A live change: allow GET /v1/.* too. The client gets it pushed.
    let changed = Instant::now();
    let text = starwars::l7(8080, "/v1/request-landing").replace(
        "          path: '/v1/request-landing'",
        "          path: '/v1/request-landing'\n        - method: GET\n          path: '/v1/.*'",
    );
    assert_ne!(text, starwars::l7(8080, "/v1/request-landing"));
    std::fs::write(tmp.path().join("policy.yaml"), text).unwrap();
    let r2 = next(&mut s).await;
    let took = changed.elapsed();
    assert_ne!(r2.version_info, r1.version_info);
    let death = policies(&r2)
        .into_iter()
        .find(|p| p.endpoint_ips == vec!["127.0.0.2".to_string()])
        .unwrap();
    assert_eq!(http_rules_of(&death), 2);
    eprintln!("policy change reached the NPDS client in {took:?}");

    // NACK it: the flight recorder and /debug/stalez carry our error.
    tx.send(req(
        &r1.version_info,
        &r2.nonce,
        Some("test: cannot apply"),
        false,
    ))
    .await
    .unwrap();
    let nack = eventually(Duration::from_secs(10), "the NPDS NACK", || async {
        let v = debug_json(xds.debug(), &format!("/debug/flightz?proxyID={AGENT}")).await;
        v["types"]["type.googleapis.com/cilium.NetworkPolicy"]["last_nack"]
            .as_object()
            .cloned()
    })
    .await;
    assert_eq!(nack["error"], "test: cannot apply");
    assert_eq!(nack["version"], r2.version_info.as_str());
    let stalez = debug_json(xds.debug(), "/debug/stalez").await;
    assert!(stalez["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["proxy"] == AGENT && p["nack_error"] == "test: cannot apply"));
    let adsz = debug_json(xds.debug(), "/debug/adsz").await;
    assert!(adsz["totalClients"].as_u64().unwrap() >= 2, "{adsz}");

    // The wrong type on a single-type stream is refused.
    let (wtx, wrx) = mpsc::channel(1);
    let mut wrong = req("", "", None, true);
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    wtx.send(wrong).await.unwrap();
    let mut ws = client
        .stream_network_policies(ReceiverStream::new(wrx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(10), ws.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // A first request without a node id is refused too, and the server
    // keeps serving everyone else: the NPDS stream above still gets pushes.
    let (ntx, nrx) = mpsc::channel(1);
    ntx.send(DiscoveryRequest::default()).await.unwrap();
    let mut ns = client
        .stream_network_policies(ReceiverStream::new(nrx))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(10), ns.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.message().contains("node.id"), "{err}");
    std::fs::write(tmp.path().join("policy.yaml"), starwars::l7(8080, "/v2/.*")).unwrap();
    let r3 = next(&mut s).await;
    assert_ne!(r3.version_info, r2.version_info);
}

/// `istioctl proxy-status --xds-address` asks ADS for `istio.io/debug/syncz`
/// and reads one `ClientConfig` per proxy with a status per type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_debug_syncz_reports_synced_and_nacked_types_per_proxy() {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::status::v3::{ClientConfig, ConfigStatus};

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), starwars::pods(8080)).unwrap();
    let xds = start_xds(tmp.path());
    let url = format!("http://{}", xds.grpc());

    // One proxy ACKs NPDS, another NACKs it.
    let mut streams = Vec::new();
    for (node, nack) in [("agent-good", false), ("agent-bad", true)] {
        let mut first = req("", "", None, true);
        first.node.as_mut().unwrap().id = node.into();
        let (_client, tx, mut s) = npds_stream(url.clone(), first).await;
        let r = next(&mut s).await;
        let error = nack.then_some("rejected");
        tx.send(req(&r.version_info, &r.nonce, error, false))
            .await
            .unwrap();
        streams.push((tx, s));
    }
    let ads = AggregatedDiscoveryServiceClient::connect(url)
        .await
        .unwrap();
    let configs = eventually(Duration::from_secs(10), "both proxies' status", || {
        let mut ads = ads.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(DiscoveryRequest {
                node: Some(Node {
                    id: "istioctl".into(),
                    ..Default::default()
                }),
                type_url: "istio.io/debug/syncz".into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut s = ads
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let r = next(&mut s).await;
            let configs: Vec<ClientConfig> = r
                .resources
                .iter()
                .map(|a| ClientConfig::decode(a.value.as_slice()).unwrap())
                .collect();
            let status = |id: &str| {
                configs
                    .iter()
                    .find(|c| c.node.as_ref().is_some_and(|n| n.id == id))
                    .and_then(|c| c.generic_xds_configs.first())
                    .map(|g| g.config_status)
            };
            (status("agent-good") == Some(ConfigStatus::Synced as i32)
                && status("agent-bad") == Some(ConfigStatus::Error as i32))
            .then_some(configs)
        }
    })
    .await;
    let good = configs
        .iter()
        .find(|c| c.node.as_ref().unwrap().id == "agent-good")
        .unwrap();
    assert_eq!(
        good.generic_xds_configs[0].type_url,
        "type.googleapis.com/cilium.NetworkPolicy"
    );
    drop(streams);
}

/// A policy file rewritten in place by a slow writer is read once the write
/// is complete: proxies never see the half-written (empty) state, which
/// would mean "no policy" for a moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_written_is_not_read_half_way() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    starwars::write_source(tmp.path(), 8080);
    let policy = tmp.path().join("policy.yaml");
    let xds = start_xds_with(tmp.path(), &["--poll-ms".as_ref(), "600000".as_ref()]);
    let (_client, tx, mut s) =
        npds_stream(format!("http://{}", xds.grpc()), req("", "", None, true)).await;
    let r1 = next(&mut s).await;
    tx.send(req(&r1.version_info, &r1.nonce, None, false))
        .await
        .unwrap();

    // Truncate, pause, then write the new policy and close.
    let text = starwars::l7(8080, "/v2/request-landing");
    let mut f = std::fs::File::create(&policy).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.write_all(text.as_bytes()).unwrap();
    drop(f);

    let r2 = next(&mut s).await;
    let death = policies(&r2)
        .into_iter()
        .find(|p| p.endpoint_ips == vec!["127.0.0.2".to_string()])
        .unwrap();
    assert_eq!(
        http_rules_of(&death),
        1,
        "the first push after the edit is the complete policy: {death:?}"
    );
    let path = format!("{death:?}");
    assert!(path.contains("/v2/request-landing"), "{path}");
}

/// The `membrane-xds` binary's `--unenforced-l7`: by default a Kafka rule reaches NPDS
/// clients with its parser and no allowed message (fail closed), never as an L4 allow;
/// only `l4-only` sends it without L7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rules_reach_npds_fail_closed_unless_the_binary_is_told_l4_only() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), starwars::pods(8080)).unwrap();
    std::fs::write(
        tmp.path().join("policy.yaml"),
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: deathstar-plans}]
"#,
    )
    .unwrap();
    for (extra, fail_closed) in [
        (&[][..], true),
        (&["--unenforced-l7".as_ref(), "l4-only".as_ref()][..], false),
    ] {
        let xds = start_xds_with(tmp.path(), extra);
        let (_client, _tx, mut s) =
            npds_stream(format!("http://{}", xds.grpc()), req("", "", None, true)).await;
        let nps = policies(&next(&mut s).await);
        let death = nps
            .iter()
            .find(|p| p.endpoint_ips == vec!["127.0.0.2".to_string()])
            .expect("deathstar policy");
        let port = death
            .ingress_per_port_policies
            .iter()
            .find(|p| p.port == 9092)
            .unwrap_or_else(|| panic!("no 9092: {death:?}"));
        for r in &port.rules {
            if fail_closed {
                assert!(
                    matches!(&r.l7, Some(L7::L7Rules(l)) if l.l7_allow_rules.is_empty())
                        && r.l7_proto == "kafka",
                    "{r:?}"
                );
            } else {
                assert_eq!((&r.l7, r.l7_proto.as_str()), (&None, ""), "{r:?}");
            }
        }
    }
}

/// `/debug/syncz` has the shape of istiod's Go `SyncStatus` list, field by
/// field (the JSON names of `pilot/pkg/xds/debug.go`: `cluster_id`,
/// `proxy`, `proxy_type`, `proxy_version`, `istio_version`, the
/// `{cluster,listener,route,endpoint,extensionconfig}_{sent,acked}` nonces,
/// and `resources` by type URL with `sent`, `acked`, `sentTime`,
/// `lastError`), for real NPDS clients that ACK and NACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_syncz_is_istiods_sync_status_field_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), starwars::pods(8080)).unwrap();
    let xds = start_xds(tmp.path());
    let url = format!("http://{}", xds.grpc());
    let sidecar = "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local";
    let mut streams = Vec::new();
    for (node, nack) in [(sidecar, false), ("membrane-agent~node-1", true)] {
        let mut first = req("", "", None, true);
        first.node.as_mut().unwrap().id = node.into();
        let (_client, tx, mut s) = npds_stream(url.clone(), first).await;
        let r = next(&mut s).await;
        let error = nack.then_some("rejected by the test");
        tx.send(req(&r.version_info, &r.nonce, error, false))
            .await
            .unwrap();
        streams.push((tx, s));
    }
    let npds = "type.googleapis.com/cilium.NetworkPolicy";
    let list = eventually(Duration::from_secs(10), "both proxies in syncz", || async {
        let v = debug_json(xds.debug(), "/debug/syncz").await;
        let list = v.as_array()?.clone();
        let done = |p: &serde_json::Value| {
            let r = &p["resources"][npds];
            r["acked"].is_string() || r["lastError"].is_string()
        };
        (list.len() == 2 && list.iter().all(done)).then_some(list)
    })
    .await;
    // Go's field names; membrane adds only the agent fields Go ignores.
    let go: BTreeSet<&str> = [
        "cluster_id",
        "proxy",
        "proxy_type",
        "proxy_version",
        "istio_version",
        "cluster_sent",
        "cluster_acked",
        "listener_sent",
        "listener_acked",
        "route_sent",
        "route_acked",
        "endpoint_sent",
        "endpoint_acked",
        "extensionconfig_sent",
        "extensionconfig_acked",
        "resources",
    ]
    .into();
    let go_resource: BTreeSet<&str> = ["sent", "acked", "sentTime", "lastError"].into();
    for p in &list {
        for key in p.as_object().unwrap().keys() {
            let extra = key == "node_name" || key.ends_with("_acked_version");
            assert!(
                go.contains(key.as_str()) || extra,
                "{key} is not a SyncStatus field: {p}"
            );
        }
        for (t, r) in p["resources"].as_object().unwrap() {
            for key in r.as_object().unwrap().keys() {
                assert!(go_resource.contains(key.as_str()), "{t}: {key}: {p}");
            }
            // Go's time.Time JSON: RFC 3339 (with fractional seconds).
            let at = r["sentTime"].as_str().unwrap();
            humantime::parse_rfc3339_weak(at.trim_end_matches('Z'))
                .unwrap_or_else(|e| panic!("sentTime {at}: {e}"));
        }
        assert_eq!(p["cluster_id"], "Kubernetes");
        assert!(p["istio_version"]
            .as_str()
            .unwrap()
            .starts_with("membrane-"));
    }
    // The sidecar under Istio's proxy id (POD.NAMESPACE), synced: the nonce
    // sent is the nonce ACKed.
    let side = list
        .iter()
        .find(|p| p["proxy"] == "deathstar-1.default")
        .unwrap();
    assert_eq!(side["proxy_type"], "sidecar");
    let r = &side["resources"][npds];
    assert_eq!(r["sent"], r["acked"], "{side}");
    assert!(r.get("lastError").is_none(), "{side}");
    // The agent NACKed: its error, and no ACK of the nonce sent.
    let agent = list
        .iter()
        .find(|p| p["proxy"] == "membrane-agent~node-1")
        .unwrap();
    assert_eq!(agent["proxy_type"], "agent");
    let r = &agent["resources"][npds];
    assert_eq!(r["lastError"], "rejected by the test", "{agent}");
    assert_ne!(r["acked"], r["sent"], "{agent}");
    // The config dump takes the Istio id as istioctl passes it.
    let dump = debug_json(
        xds.debug(),
        "/debug/config_dump?proxyID=deathstar-1.default",
    )
    .await;
    assert!(dump["configs"].is_array(), "{dump}");
    drop(streams);
}
