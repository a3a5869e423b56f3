//! Policy-driven TLS: terminatingTLS, originatingTLS and serverNames from the policy,
//! certificates from Kubernetes Secret manifests in --secrets-dir, reloaded without a
//! restart.

use super::*;

/// A temporary directory (removed on drop, also when the test fails) with an empty
/// `secrets/` for `--secrets-dir`; the directory and the secrets path.
fn secrets_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    (tmp, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_tls_terminates_by_sni_enforces_and_originates_verified() {
    let (tmp, secrets) = secrets_dir();
    let dir = tmp.path();
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
    let (tmp, secrets) = secrets_dir();
    let dir = tmp.path();
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
    subject_becomes("gen2").await;
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
    let (tmp, secrets) = secrets_dir();
    let dir = tmp.path();
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
    let (tmp, secrets) = secrets_dir();
    let dir = tmp.path();
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
