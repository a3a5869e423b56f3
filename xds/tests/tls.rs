//! xDS over TLS (15012 in production): a client that trusts the server's CA
//! and presents a workload certificate gets NPHDS over rustls; a plaintext
//! client on the TLS port gets nothing. (tests/mtls.rs: who is refused.)

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use common::*;

fn request() -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            // tiefighter runs as the `default` service account.
            id: "sidecar~127.0.0.3~tiefighter.default~default.svc.cluster.local".into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/cilium.NetworkPolicyHosts".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_tls_serves_a_client_that_trusts_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), "membrane-test-ca");
    let (ca, cert, key) = (&pki.ca, &pki.server_cert, &pki.server_key);
    let (wcert, wkey) = pki.workload("tiefighter", "default", "default");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("cluster.yaml"), starwars::pods(8080)).unwrap();
    let xds = start_xds_with(
        &src,
        &[
            OsStr::new("--tls-cert"),
            cert.as_os_str(),
            OsStr::new("--tls-key"),
            key.as_os_str(),
            OsStr::new("--ca-cert"),
            ca.as_os_str(),
        ],
    );
    let tls = xds.tls().expect("the TLS port is served");

    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(&wcert).unwrap(),
            std::fs::read(&wkey).unwrap(),
        ))
        .domain_name("membrane-xds.test");
    let channel = Channel::from_shared(format!("https://{tls}"))
        .unwrap()
        .tls_config(tls_config)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(1);
    tx.send(request()).await.unwrap();
    let mut s = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        r.resources.len(),
        3,
        "one NetworkPolicyHosts per pod identity"
    );

    // Plaintext HTTP/2 on the TLS port fails.
    let mut plain = AggregatedDiscoveryServiceClient::connect(format!("http://{tls}"))
        .await
        .expect("TCP connects");
    let (tx, rx) = mpsc::channel(1);
    tx.send(request()).await.unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        plain.stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("fails in time");
    assert!(res.is_err(), "plaintext must not be served on the TLS port");
}
