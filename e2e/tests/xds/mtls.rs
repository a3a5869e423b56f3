//! The sidecar's mTLS to the control plane: refused with the wrong workload certificate,
//! followed through rotations of its Secret without a restart.

use std::path::Path;
use std::time::Duration;

use membrane_test_support::pki::{Ca, Leaf};

use super::*;

/// A certificate signed by `ca`: `NAME.pem`/`NAME.key` in `dir`, with subjectAltName `san`
/// (openssl syntax).
fn issue(ca: &Ca, dir: &Path, name: &str, san: &str) {
    ca.issue_in(dir, name, &Leaf::new(name).san(san));
}

/// Puts `NAME`'s pair where the proxy reads its workload certificate, each file replaced
/// atomically (as a Secret volume update swaps its files).
fn install(dir: &Path, name: &str) {
    for (from, to) in [
        (format!("{name}.pem"), "cert-chain.pem"),
        (format!("{name}.key"), "key.pem"),
    ] {
        let tmp = dir.join(format!("{to}.new"));
        std::fs::copy(dir.join(from), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("certs").join(to)).unwrap();
    }
}

async fn denied(debug: SocketAddr, reason: &str) -> u64 {
    let (_, m) = get(debug, "/metrics").await;
    m.lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "membrane_xds_auth_denied_total{{reason=\"{reason}\"}} "
            ))
        })
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_the_control_plane_follows_rotated_workload_certificates() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(src.clone()).unwrap();
    std::fs::create_dir_all(pki.join("certs")).unwrap();
    // deathstar-1 runs as service account `deathstar`.
    let pods = pods(port).replacen(
        "spec: {containers",
        "spec: {serviceAccountName: deathstar, containers",
        1,
    );
    std::fs::write(src.join("cluster.yaml"), pods).unwrap();
    std::fs::write(src.join("policy.yaml"), cnp(port, "")).unwrap();
    let ca = Ca::in_dir(&pki, "ca", "test-ca");
    issue(&ca, &pki, "server", "IP:127.0.0.1");
    issue(
        &ca,
        &pki,
        "deathstar",
        "URI:spiffe://cluster.local/ns/default/sa/deathstar",
    );
    issue(
        &ca,
        &pki,
        "xwing",
        "URI:spiffe://cluster.local/ns/default/sa/xwing",
    );
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let xds = start_xds_args(
        &src,
        &[
            "--tls-addr",
            "127.0.0.1:0",
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--ca-cert",
            &p("ca.pem"),
        ],
    );

    // The sidecar starts with the wrong workload's certificate: refused, nothing allowed.
    install(&pki, "xwing");
    let (ca, cert, key) = (p("ca.pem"), p("certs/cert-chain.pem"), p("certs/key.pem"));
    let tls = [
        "--xds-ca",
        &ca,
        "--xds-cert",
        &cert,
        "--xds-key",
        &key,
        "--xds-cert-poll",
        "100ms",
    ];
    let proxy = start_proxy_with(backend, xds.grpc, &tls).await;
    let a = proxy.addrs;
    within_10s(
        "the control plane to refuse the xwing certificate",
        || async { denied(xds.debug, "service_account").await >= 1 },
    )
    .await;
    let landing = || status_from(tiefighter(), a.listen, "POST", "/v1/request-landing");
    assert_eq!(landing().await, 403);
    assert_eq!(get(a.admin, "/ready").await.0, 503);

    // The Secret is rotated to deathstar's own certificate: picked up without a restart.
    install(&pki, "deathstar");
    within_10s("the policy over mTLS after the rotation", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(landing().await, 200);
    assert_eq!(
        status_from(tiefighter(), a.listen, "PUT", "/v1/exhaust-port").await,
        403
    );

    // Rotated again (to a pair the control plane refuses): the open stream is replaced by
    // a connection with the new pair, which is refused; the last good policy stays.
    let before = denied(xds.debug, "service_account").await;
    install(&pki, "xwing");
    within_10s("a new connection with the rotated pair", || async {
        denied(xds.debug, "service_account").await > before
    })
    .await;
    assert_eq!(landing().await, 200);
    proxy.drain(Duration::from_secs(1)).await;
}
