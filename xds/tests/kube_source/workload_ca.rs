//! membrane-xds as the workload CA: Istio's `CreateCertificate` on the mTLS port, the
//! caller's token checked by the recorded API server's TokenReview (or its workload
//! certificate, for renewal). Asserted: a pod's token gets a certificate for its own
//! service account only, chained to the CA and opening xDS as that pod; a CSR for another
//! identity, with an extra SAN, with a bad, expired, non-service-account or other-audience
//! token, without credentials or with too long a lifetime is refused, each saying why;
//! renewal with the issued certificate; the per-identity rate limit; xDS still refuses a
//! connection without a client certificate; the counts in /metrics.

use super::*;

use membrane_api::istioca::istio_certificate_service_client::IstioCertificateServiceClient;
use membrane_api::istioca::IstioCertificateRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

/// The deathstar pods run as the namespace's `default` service account (the recorded
/// pods), which the recorded TokenReview names for the deathstar's token.
const DEATHSTAR_ID: &str = "spiffe://cluster.local/ns/default/sa/default";

/// A CSR for `sans` (openssl-like `URI:...`/`DNS:...`) with a fresh P-256 key.
fn csr(sans: &[&str]) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans
        .iter()
        .map(|s| match s.split_once(':').unwrap() {
            ("URI", u) => rcgen::SanType::URI(u.try_into().unwrap()),
            ("DNS", d) => rcgen::SanType::DnsName(d.try_into().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key)
}

async fn ca_channel(pki: &Pki, addr: std::net::SocketAddr, identity: Option<Identity>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
        .domain_name("membrane-xds.test");
    if let Some(i) = identity {
        tls = tls.identity(i);
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn ask(
    ch: &Channel,
    token: Option<&str>,
    csr: &str,
    ttl_secs: i64,
) -> Result<Vec<String>, tonic::Status> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: ttl_secs,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req.metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    IstioCertificateServiceClient::new(ch.clone())
        .create_certificate(req)
        .await
        .map(|r| r.into_inner().cert_chain)
}

fn refused(r: Result<Vec<String>, tonic::Status>, code: Code, needles: &[&str]) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    for n in needles {
        assert!(e.message().contains(n), "{n:?} not in {:?}", e.message());
    }
}

/// The one URI SAN and the lifetime of a PEM certificate.
fn inspect(pem: &str) -> (Vec<String>, i64, String) {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let uris = membrane_api::spiffe::uri_sans(&der).unwrap();
    let v = c.validity();
    let life = v.not_after.timestamp() - v.not_before.timestamp();
    (uris, life, c.issuer().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_ca_signs_only_the_callers_own_identity() {
    let api = FakeApi::load();
    let tmp = tempfile::tempdir().unwrap();
    let (kube_ca, cert, key) = certificates(tmp.path());
    let addr = api.clone().serve(&cert, &key).await;
    let kc = kubeconfig(tmp.path(), addr, &kube_ca);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let pki_dir = tmp.path().join("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let pki = Pki::new(&pki_dir, "membrane-mesh-root");
    let xds = start_xds_mtls(
        &empty,
        &pki,
        &[
            "--kube".as_ref(),
            "--kubeconfig".as_ref(),
            kc.as_os_str(),
            "--ca-key".as_ref(),
            pki.ca_key.as_os_str(),
            "--ca-requests-per-minute".as_ref(),
            "8".as_ref(),
        ],
    );
    let tls = xds.tls().expect("mTLS port");
    let anonymous = ca_channel(&pki, tls, None).await;

    // A pod's token: a certificate for its own service account, Istio's shape.
    let (mine, my_key) = csr(&[&format!("URI:{DEATHSTAR_ID}")]);
    let chain = ask(&anonymous, Some("deathstar-istio-token"), &mine, 3600)
        .await
        .expect("issued");
    assert_eq!(chain.len(), 2, "leaf and root: {chain:?}");
    let (uris, life, issuer) = inspect(&chain[0]);
    assert_eq!(uris, [DEATHSTAR_ID]);
    assert!((3600..=3600 + 60).contains(&life), "lifetime {life}s");
    assert!(issuer.contains("membrane-mesh-root"), "{issuer}");
    assert_eq!(
        chain[1].trim(),
        std::fs::read_to_string(&pki.ca).unwrap().trim(),
        "the chain ends with the root"
    );
    // The API server was asked with the token and Istio's audience.
    let review = api
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/tokenreviews"))
        .expect("a TokenReview");
    let body: Value = serde_json::from_str(&review.body).unwrap();
    assert_eq!(body["spec"]["token"], "deathstar-istio-token");
    assert_eq!(body["spec"]["audiences"], json!(["istio-ca"]));

    // The issued certificate opens xDS as the deathstar's sidecar.
    let leaf_identity = Identity::from_pem(chain.concat(), my_key.serialize_pem());
    let renewing = ca_channel(&pki, tls, Some(leaf_identity)).await;
    let npds = first_npds_on(renewing.clone(), SIDECAR).await;
    assert!(npds.is_ok(), "{npds:?}");
    // Without a client certificate xDS still refuses, though the handshake is open.
    let refused_xds = first_npds_on(anonymous.clone(), SIDECAR).await.unwrap_err();
    assert!(
        refused_xds.contains("no client certificate"),
        "{refused_xds}"
    );

    // Another pod's identity with the deathstar's token: refused, both named.
    let (theirs, _) = csr(&["URI:spiffe://cluster.local/ns/empire/sa/tiefighter"]);
    refused(
        ask(&anonymous, Some("deathstar-istio-token"), &theirs, 3600).await,
        Code::PermissionDenied,
        &[
            "spiffe://cluster.local/ns/empire/sa/tiefighter",
            DEATHSTAR_ID,
        ],
    );
    // Its own identity plus a DNS name: refused.
    let (extra, _) = csr(&[&format!("URI:{DEATHSTAR_ID}"), "DNS:deathstar.default.svc"]);
    refused(
        ask(&anonymous, Some("deathstar-istio-token"), &extra, 3600).await,
        Code::PermissionDenied,
        &["DNS:deathstar.default.svc"],
    );
    // Longer than the longest lifetime: refused.
    refused(
        ask(
            &anonymous,
            Some("deathstar-istio-token"),
            &mine,
            365 * 86400,
        )
        .await,
        Code::InvalidArgument,
        &["validity_duration", "longer than the longest allowed"],
    );
    // Renewal: the workload certificate alone proves the identity, for itself only.
    let (renew, _) = csr(&[&format!("URI:{DEATHSTAR_ID}")]);
    let chain2 = ask(&renewing, None, &renew, 0).await.expect("renewed");
    let (uris, life, _) = inspect(&chain2[0]);
    assert_eq!(uris, [DEATHSTAR_ID]);
    assert!(
        (86400..=86400 + 60).contains(&life),
        "no lifetime asked: the default 24h, got {life}s"
    );
    refused(
        ask(&renewing, None, &theirs, 3600).await,
        Code::PermissionDenied,
        &["tiefighter"],
    );

    // Bad credentials, each named.
    refused(
        ask(&anonymous, Some("expired-istio-token"), &mine, 3600).await,
        Code::Unauthenticated,
        &["token refused", "service account token has expired"],
    );
    refused(
        ask(&anonymous, Some("forged"), &mine, 3600).await,
        Code::Unauthenticated,
        &["token lookup failed"],
    );
    refused(
        ask(&anonymous, Some("kubectl-user-token"), &mine, 3600).await,
        Code::Unauthenticated,
        &["\"kubernetes-admin\" is not a service account"],
    );
    refused(
        ask(&anonymous, Some("other-audience-token"), &theirs, 3600).await,
        Code::Unauthenticated,
        &["not meant for this CA", "istio-ca"],
    );
    refused(
        ask(&anonymous, None, &mine, 3600).await,
        Code::Unauthenticated,
        &["no credential"],
    );
    refused(
        ask(&anonymous, Some("deathstar-istio-token"), "not a csr", 3600).await,
        Code::InvalidArgument,
        &["csr: not a signed PKCS#10 request"],
    );

    // Eight requests a minute per identity: the deathstar has made seven.
    let mut limited = None;
    for _ in 0..3 {
        if let Err(e) = ask(&anonymous, Some("deathstar-istio-token"), &mine, 3600).await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("rate limited");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains(DEATHSTAR_ID), "{}", e.message());

    let metrics = debug_get(xds.debug(), "/metrics").await;
    for reason in [
        "issued",
        "identity",
        "token_refused",
        "no_credential",
        "rate_limited",
    ] {
        assert!(
            metrics.contains(&format!(
                "membrane_xds_ca_requests_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
}
