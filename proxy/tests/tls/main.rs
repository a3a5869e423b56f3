//! TLS termination: curl over HTTPS with ALPN h2 and http/1.1, policy enforced on the
//! decrypted requests, and certificate reload without restart.

#[path = "../common/mod.rs"]
mod common;

mod policy_tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use membrane_test_support::pki::{self, Ca, Leaf, Usage};

/// A self-signed certificate for `name`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let f = pki::self_signed(
        &Leaf::new(name).dns(&[name]),
        &dir.join(format!("{name}.crt")),
        &dir.join(format!("{name}.key")),
    );
    (f.cert, f.key)
}

/// A CA and a server certificate for `name` it signed (webpki refuses a CA certificate as a
/// server's own); returns (ca cert, leaf cert, leaf key).
fn ca_and_leaf(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new("membrane test CA", &dir.join("ca.crt"), &dir.join("ca.key"));
    let leaf = ca.issue(
        &Leaf::new(name).dns(&[name]).usage(Usage::Server),
        &dir.join("leaf.crt"),
        &dir.join("leaf.key"),
    );
    (ca.files.cert.clone(), leaf.cert, leaf.key)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("membrane-proxy-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_alpn_h2_and_http1_enforces_policy() {
    let dir = tmpdir("alpn");
    let (cert, key) = self_signed(&dir, "backend.test");
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let p = start_proxy_with(&["--tls-cert", &c, "--tls-key", &k]).await;
    let port = p.addr().port();
    let resolve = format!("backend.test:{port}:127.0.0.1");
    let url = |path: &str| format!("https://backend.test:{port}{path}");

    let (code, headers, _) = curl(&[
        "--cacert",
        &c,
        "--resolve",
        &resolve,
        "--http1.1",
        &url("/v1/x"),
    ])
    .await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");

    let (code, headers, _) = curl(&[
        "--cacert",
        &c,
        "--resolve",
        &resolve,
        "--http2",
        &url("/v1/x"),
    ])
    .await;
    assert_eq!(code, 200, "{headers}");
    assert!(
        headers.starts_with("http/2 200"),
        "ALPN h2 expected: {headers}"
    );
    assert!(headers.contains("x-seen-version: http/2.0"), "{headers}");

    let (code, _, body) = curl(&[
        "--cacert",
        &c,
        "--resolve",
        &resolve,
        "-X",
        "PUT",
        &url("/v1/exhaust-port"),
    ])
    .await;
    assert_eq!((code, body.as_str()), (403, "Access denied\r\n"));

    // Plain HTTP on a TLS listener gets nothing.
    let (code, _, _) = curl(&[&format!("http://127.0.0.1:{port}/v1/x")]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_takes_effect_and_a_bad_pair_is_rejected() {
    let dir = tmpdir("reload");
    let (cert, key) = self_signed(&dir, "backend.test");
    let live_cert = dir.join("live.crt");
    let live_key = dir.join("live.key");
    std::fs::copy(&cert, &live_cert).unwrap();
    std::fs::copy(&key, &live_key).unwrap();
    let (lc, lk) = (
        live_cert.display().to_string(),
        live_key.display().to_string(),
    );
    let p = start_proxy_with(&["--tls-cert", &lc, "--tls-key", &lk]).await;
    let port = p.addr().port();
    let resolve = format!("backend.test:{port}:127.0.0.1");
    let url = format!("https://backend.test:{port}/v1/x");
    let first = cert.display().to_string();
    assert_eq!(
        curl(&["--cacert", &first, "--resolve", &resolve, &url])
            .await
            .0,
        200
    );

    // A new certificate for the same name, signed by a different key.
    let (cert2, key2) = self_signed(&tmpdir("reload2"), "backend.test");
    let second = cert2.display().to_string();
    std::fs::copy(&cert2, &live_cert).unwrap();
    std::fs::copy(&key2, &live_key).unwrap();
    let store = p.running.tls.as_ref().expect("TLS configured");
    store.reload().unwrap();
    assert_eq!(
        curl(&["--cacert", &second, "--resolve", &resolve, &url])
            .await
            .0,
        200
    );
    assert_eq!(
        curl(&["--cacert", &first, "--resolve", &resolve, &url])
            .await
            .0,
        0,
        "old cert still served"
    );

    // A broken key is refused and the current certificate stays.
    std::fs::write(&live_key, "not a key").unwrap();
    assert!(store.reload().is_err());
    assert_eq!(
        curl(&["--cacert", &second, "--resolve", &resolve, &url])
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A standalone proxy originating TLS to `backend`, verified against `ca` as
/// `backend.test`.
async fn originating_proxy(backend: std::net::SocketAddr, ca: &str) -> membrane_proxy::Running {
    let cfg = config(
        backend,
        &[
            "--upstream-tls",
            "true",
            "--upstream-ca",
            ca,
            "--upstream-server-name",
            "backend.test",
        ],
    );
    membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_origination_with_alpn() {
    let dir = tmpdir("origin");
    let (ca, cert, key) = ca_and_leaf(&dir, "backend.test");
    let backend = start_tls_backend(&cert, &key).await;
    let ca = ca.display().to_string();
    let running = originating_proxy(backend, &ca).await;
    let url = format!("http://{}/v1/x", running.addrs.listen);
    let (code, headers, _) = curl(&[&url]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-tls: true"), "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");
    assert!(
        headers.contains(&format!("x-seen-host: {}", running.addrs.listen)),
        "Host kept: {headers}"
    );
    // h2c downstream becomes h2 over TLS (ALPN h2) upstream.
    let (code, headers, _) = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-version: http/2.0"), "{headers}");
    assert!(headers.contains("x-seen-tls: true"), "{headers}");

    // An upstream that does not negotiate h2 gets HTTP/1.1 from an h2 client, not an
    // HTTP/2 preface it would never answer.
    let h1_only = start_tls_backend_alpn(&cert, &key, &[b"http/1.1"]).await;
    let to_h1 = originating_proxy(h1_only, &ca).await;
    let url_h1 = format!("http://{}/v1/x", to_h1.addrs.listen);
    let (code, headers, _) = curl(&["--max-time", "10", "--http2-prior-knowledge", &url_h1]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");

    // An upstream whose certificate the CA does not vouch for is not talked to.
    let (other, _, _) = ca_and_leaf(&tmpdir("origin-other"), "backend.test");
    let other = other.display().to_string();
    let untrusted = originating_proxy(backend, &other).await;
    let (code, _, _) = curl(&[&format!("http://{}/v1/x", untrusted.addrs.listen)]).await;
    assert_eq!(code, 503);
}

// ---- Policy-driven TLS: terminatingTLS / originatingTLS / serverNames from the policy,
// certificates from Kubernetes Secret manifests in --secrets-dir.

/// A test CA `DIR/TAG.crt`, `DIR/TAG.key`.
fn make_ca(dir: &Path, tag: &str) -> Ca {
    Ca::new(
        &format!("membrane test CA {tag}"),
        &dir.join(format!("{tag}.crt")),
        &dir.join(format!("{tag}.key")),
    )
}

/// A server certificate signed by `ca` for `sans`, with `subject`; returns (cert, key).
fn issue(dir: &Path, ca: &Ca, file: &str, subject: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    issue_for(dir, ca, file, subject, sans, Usage::Server)
}

/// [`issue`] with the given extended key usage.
fn issue_for(
    dir: &Path,
    ca: &Ca,
    file: &str,
    subject: &str,
    sans: &[&str],
    usage: Usage,
) -> (PathBuf, PathBuf) {
    let f = ca.issue(
        &Leaf::new(subject).dns(sans).usage(usage),
        &dir.join(format!("{file}.crt")),
        &dir.join(format!("{file}.key")),
    );
    (f.cert, f.key)
}

/// Writes a Kubernetes Secret manifest `file` (namespace default) with base64 `data`.
fn write_secret(dir: &Path, file: &str, name: &str, items: &[(&str, &Path)]) {
    let data: Vec<(&str, Vec<u8>)> = items
        .iter()
        .map(|(k, p)| (*k, std::fs::read(p).unwrap()))
        .collect();
    let entries: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    common::write_secret(
        dir,
        file,
        ("default", name),
        Some("kubernetes.io/tls"),
        &entries,
    );
}

/// A proxy in front of `backend` enforcing `policy` (PORT = the backend's port), with
/// secrets from `secrets` polled every 100ms.
async fn start_policy_proxy(
    backend: std::net::SocketAddr,
    policy: &str,
    secrets: &Path,
) -> membrane_proxy::Running {
    let file = secrets
        .parent()
        .unwrap()
        .join(format!("policy-{}.yaml", backend.port()));
    std::fs::write(&file, policy.replace("PORT", &backend.port().to_string())).unwrap();
    start_with_secrets(backend, &file, "k8s:app=backend", secrets).await
}

/// The subject of the certificate the proxy serves for `sni`, as `openssl s_client` sees
/// it ("" when the handshake is refused).
async fn served_subject(port: u16, sni: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null | openssl x509 -noout -subject 2>/dev/null"
        ))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const SNI_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tls-inspection, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "PORT", protocol: TCP}]
      serverNames: [a.test]
      terminatingTLS: {secret: {name: a-cert}}
      originatingTLS: {secret: {name: backend-ca}}
      rules: {http: [{method: GET, path: "/v1/.*"}]}
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "PORT", protocol: TCP}]
      serverNames: [b.test]
      terminatingTLS: {secret: {name: b-cert}}
      originatingTLS: {secret: {name: backend-ca}}
      rules: {http: [{method: GET, path: "/b/.*"}]}
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "PORT", protocol: TCP}]
      serverNames: [u.test]
      terminatingTLS: {secret: {name: a-cert}}
      originatingTLS: {secret: {name: other-ca}}
      rules: {http: [{method: GET, path: "/v1/.*"}]}
"#;
