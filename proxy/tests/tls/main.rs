//! TLS termination: curl over HTTPS with ALPN h2 and http/1.1, policy enforced on the
//! decrypted requests, and certificate reload without restart.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_tls_terminates_by_sni_enforces_and_originates_verified() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let front = make_ca(dir, "front-ca");
    let back = make_ca(dir, "back-ca");
    let other = make_ca(dir, "other-ca");
    let (a_crt, a_key) = issue(dir, &front, "a", "/CN=a.test", &["a.test", "u.test"]);
    let (b_crt, b_key) = issue(dir, &front, "b", "/CN=b.test", &["b.test"]);
    let (be_crt, be_key) = issue(
        dir,
        &back,
        "be",
        "/CN=backend",
        &["a.test", "b.test", "u.test"],
    );
    write_secret(
        &secrets,
        "a.yaml",
        "a-cert",
        &[("tls.crt", &a_crt), ("tls.key", &a_key)],
    );
    write_secret(
        &secrets,
        "b.yaml",
        "b-cert",
        &[("tls.crt", &b_crt), ("tls.key", &b_key)],
    );
    write_secret(
        &secrets,
        "back.yaml",
        "backend-ca",
        &[("ca.crt", &back.files.cert)],
    );
    write_secret(
        &secrets,
        "other.yaml",
        "other-ca",
        &[("ca.crt", &other.files.cert)],
    );
    let backend = start_tls_backend(&be_crt, &be_key).await;
    let running = start_policy_proxy(backend, SNI_POLICY, &secrets).await;
    let port = running.addrs.listen.port();
    let ca = front.files.cert.display().to_string();
    let get = |name: &'static str, path: &'static str, extra: &'static [&'static str]| {
        let ca = ca.clone();
        async move {
            let resolve = format!("{name}:{port}:127.0.0.1");
            let url = format!("https://{name}:{port}{path}");
            let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
            args.extend_from_slice(extra);
            args.push(&url);
            curl(&args).await
        }
    };

    // Allowed: terminated with a.test's certificate (curl verifies it), the rule's HTTP
    // rules applied, re-encrypted to the backend verified against backend-ca, with the
    // client's SNI.
    let (code, h, _) = get("a.test", "/v1/x", &["--http1.1"]).await;
    assert_eq!(code, 200, "{h}");
    assert!(h.contains("x-seen-tls: true"), "{h}");
    assert!(h.contains("x-seen-sni: a.test"), "{h}");
    assert!(h.contains("x-seen-version: http/1.1"), "{h}");
    // Denied inside TLS.
    let (code, _, body) = get("a.test", "/v1/x", &["-X", "PUT"]).await;
    assert_eq!((code, body.as_str()), (403, "Access denied\r\n"));
    // h2 over TLS (ALPN), and h2 upstream.
    let (code, h, _) = get("a.test", "/v1/x", &["--http2"]).await;
    assert_eq!(code, 200, "{h}");
    assert!(h.starts_with("http/2 200"), "{h}");
    assert!(h.contains("x-seen-version: http/2.0"), "{h}");
    // The other SNI gets its own certificate and its own rule's HTTP rules.
    let (code, h, _) = get("b.test", "/b/x", &[]).await;
    assert_eq!(code, 200, "{h}");
    assert!(h.contains("x-seen-sni: b.test"), "{h}");
    assert_eq!(get("b.test", "/v1/x", &[]).await.0, 403);
    assert!(served_subject(port, "b.test").await.contains("b.test"));
    // An SNI no rule admits is refused at the handshake; so is no SNI, and plaintext.
    assert_eq!(get("c.test", "/v1/x", &["-k"]).await.0, 0);
    assert_eq!(
        curl(&["-k", &format!("https://127.0.0.1:{port}/v1/x")])
            .await
            .0,
        0
    );
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/v1/x")]).await.0, 0);
    // Origination verifies the backend: a CA that did not sign it means no upstream.
    assert_eq!(get("u.test", "/v1/x", &[]).await.0, 503);
    // Wrong SNI, no SNI and plaintext: no rule admits them.
    let prom = running.metrics.encode_prometheus();
    assert!(
        prom.contains("membrane_tls_refused_total{reason=\"denied\"} 3"),
        "{prom}"
    );
    running.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_tls_certificates_reload_and_bad_secrets_keep_the_last_good_one() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let front = make_ca(dir, "front-ca");
    let back = make_ca(dir, "back-ca");
    let (g1_crt, g1_key) = issue(
        dir,
        &front,
        "g1",
        "/CN=a.test/O=gen1",
        &["a.test", "u.test"],
    );
    let (g2_crt, g2_key) = issue(
        dir,
        &front,
        "g2",
        "/CN=a.test/O=gen2",
        &["a.test", "u.test"],
    );
    let (b_crt, b_key) = issue(dir, &front, "b", "/CN=b.test", &["b.test"]);
    let (be_crt, be_key) = issue(dir, &back, "be", "/CN=backend", &["a.test", "b.test"]);
    write_secret(
        &secrets,
        "a.yaml",
        "a-cert",
        &[("tls.crt", &g1_crt), ("tls.key", &g1_key)],
    );
    write_secret(
        &secrets,
        "back.yaml",
        "backend-ca",
        &[("ca.crt", &back.files.cert)],
    );
    let backend = start_tls_backend(&be_crt, &be_key).await;
    let running = start_policy_proxy(backend, SNI_POLICY, &secrets).await;
    let port = running.addrs.listen.port();
    let ca = front.files.cert.display().to_string();
    let status = |name: &'static str| {
        let ca = ca.clone();
        async move {
            curl(&[
                "--cacert",
                &ca,
                "--resolve",
                &format!("{name}:{port}:127.0.0.1"),
                &format!("https://{name}:{port}/v1/x"),
            ])
            .await
            .0
        }
    };
    let subject_becomes = |want: &'static str| async move {
        for _ in 0..100 {
            if served_subject(port, "a.test").await.contains(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("served certificate never became {want}");
    };
    subject_becomes("gen1").await;
    assert_eq!(status("a.test").await, 200);

    // A secret that never existed: its SNI's handshakes are refused, nothing falls back.
    assert_eq!(served_subject(port, "b.test").await, "");
    // It appears: picked up without a restart.
    write_secret(
        &secrets,
        "b.yaml",
        "b-cert",
        &[("tls.crt", &b_crt), ("tls.key", &b_key)],
    );
    for _ in 0..100 {
        if served_subject(port, "b.test").await.contains("b.test") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_subject(port, "b.test").await.contains("b.test"));

    // A new certificate in the secret: new handshakes use it.
    write_secret(
        &secrets,
        "a.yaml",
        "a-cert",
        &[("tls.crt", &g2_crt), ("tls.key", &g2_key)],
    );
    subject_becomes("gen2").await;
    assert_eq!(status("a.test").await, 200);

    // A secret whose key does not match its certificate, then a file that is not YAML:
    // both rejected, gen2 keeps serving.
    write_secret(
        &secrets,
        "a.yaml",
        "a-cert",
        &[("tls.crt", &g1_crt), ("tls.key", &g2_key)],
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(served_subject(port, "a.test").await.contains("gen2"));
    std::fs::write(secrets.join("a.yaml"), "kind: Secret\nmetadata: [oops\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(served_subject(port, "a.test").await.contains("gen2"));
    assert_eq!(status("a.test").await, 200);
    // What the poller rejected, a fresh read reports by file name.
    let (_, errors) = membrane_proxy::secrets::SecretStore::new(Some(secrets.clone()));
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().contains("a.yaml: document 0: not YAML/JSON")),
        "{errors:?}"
    );
    running.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_without_termination_check_the_client_hello_and_pass_tls_through() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let back = make_ca(dir, "back-ca");
    let (be_crt, be_key) = issue(dir, &back, "be", "/CN=backend", &["a.test", "c.test"]);
    let backend = start_tls_backend(&be_crt, &be_key).await;
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: sni-only, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "PORT", protocol: TCP}]
      serverNames: [a.test]
"#;
    let running = start_policy_proxy(backend, policy, &secrets).await;
    let port = running.addrs.listen.port();
    let ca = back.files.cert.display().to_string();
    let get = |name: &str| {
        let ca = ca.clone();
        let name = name.to_owned();
        async move {
            curl(&[
                "--cacert",
                &ca,
                "--resolve",
                &format!("{name}:{port}:127.0.0.1"),
                &format!("https://{name}:{port}/anything"),
            ])
            .await
        }
    };
    // Admitted: the backend's own certificate reaches the client (end-to-end TLS).
    let (code, h, _) = get("a.test").await;
    assert_eq!(code, 200, "{h}");
    assert!(h.contains("x-seen-sni: a.test"), "{h}");
    // Another name, although the backend has a certificate for it: refused.
    assert_eq!(get("c.test").await.0, 0);
    // serverNames require TLS.
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/anything")])
            .await
            .0,
        0
    );
    running.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_context_with_a_ca_requires_client_certificates() {
    // Removed on drop, also when the test fails.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let front = make_ca(dir, "front-ca");
    let clients = make_ca(dir, "client-ca");
    let strangers = make_ca(dir, "stranger-ca");
    let (a_crt, a_key) = issue(dir, &front, "a", "/CN=a.test", &["a.test"]);
    let (c_crt, c_key) = issue_for(dir, &clients, "c", "/CN=client", &["client"], Usage::Client);
    let (s_crt, s_key) = issue_for(
        dir,
        &strangers,
        "s",
        "/CN=stranger",
        &["stranger"],
        Usage::Client,
    );
    write_secret(
        &secrets,
        "a.yaml",
        "a-cert",
        &[
            ("tls.crt", &a_crt),
            ("tls.key", &a_key),
            ("ca.crt", &clients.files.cert),
        ],
    );
    let backend = start_backend().await;
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mtls, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "PORT", protocol: TCP}]
      terminatingTLS: {secret: {name: a-cert}}
      rules: {http: [{method: GET, path: "/v1/.*"}]}
"#;
    let running = start_policy_proxy(backend, policy, &secrets).await;
    let port = running.addrs.listen.port();
    let (ca, resolve, url) = (
        front.files.cert.display().to_string(),
        format!("a.test:{port}:127.0.0.1"),
        format!("https://a.test:{port}/v1/x"),
    );
    let with = |cert: Option<(&Path, &Path)>| {
        let mut args: Vec<String> = vec![
            "--cacert".into(),
            ca.clone(),
            "--resolve".into(),
            resolve.clone(),
        ];
        if let Some((c, k)) = cert {
            args.extend([
                "--cert".into(),
                c.display().to_string(),
                "--key".into(),
                k.display().to_string(),
            ]);
        }
        args.push(url.clone());
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&refs).await
        }
    };
    // No serverNames: any SNI; the backend here is plaintext (no originatingTLS).
    let (code, h, _) = with(Some((&c_crt, &c_key))).await;
    assert_eq!(code, 200, "{h}");
    assert!(!h.contains("x-seen-tls"), "{h}");
    assert_eq!(with(None).await.0, 0, "no client certificate");
    assert_eq!(
        with(Some((&s_crt, &s_key))).await.0,
        0,
        "certificate from another CA"
    );
    let prom = running.metrics.encode_prometheus();
    assert!(
        prom.contains("membrane_tls_refused_total{reason=\"handshake_failed\"} 2"),
        "{prom}"
    );
    running.drain(Duration::from_secs(1)).await;
}
