//! NPDS end to end: the Star Wars policy from the control plane enforced, followed live and
//! kept through the control plane's death; NACKs; policy-named TLS and header secrets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npds_policy_is_enforced_followed_and_kept_when_the_control_plane_dies() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), pods(port)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, "")).unwrap();

    // The proxy starts first, with its control plane not up yet.
    let reserved = Reserved::new();
    let grpc = reserved.addr();
    let proxy = start_proxy(backend, grpc).await;
    let a = proxy.addrs;
    assert_eq!(get(a.admin, "/ready").await.0, 503);
    assert_eq!(get(a.health, "/healthz/ready").await.0, 503);
    // Deny everything before the first policy, even what the policy will allow.
    let landing = || status_from(tiefighter(), a.listen, "POST", "/v1/request-landing");
    assert_eq!(landing().await, 403);

    // The control plane comes up; the proxy reconnects and gets the Star Wars policy.
    let xds = reserved.start_xds(dir.path());
    within_10s("readiness after the first policy", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(get(a.health, "/healthz/ready").await.0, 200);
    assert_eq!(landing().await, 200);
    let exhaust = |src| status_from(src, a.listen, "PUT", "/v1/exhaust-port");
    assert_eq!(exhaust(tiefighter()).await, 403);
    // The xwing is no empire member: not even the landing.
    assert_eq!(
        status_from(xwing(), a.listen, "POST", "/v1/request-landing").await,
        403
    );
    let (_, dump) = get(a.admin, "/config_dump").await;
    assert!(dump.contains("\"npds_version\""), "{dump}");

    // The control plane recorded our ACK.
    let flight = format!("/debug/flightz?proxyID={NODE}");
    let (code, body) = get(xds.debug, &flight).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let npds = &v["types"]["type.googleapis.com/cilium.NetworkPolicy"];
    assert!(npds["last_nack"].is_null(), "{body}");

    // A live change: the exhaust port opens.
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, ALLOW_EXHAUST)).unwrap();
    within_10s("the proxy to follow the live change", || async {
        exhaust(tiefighter()).await == 200
    })
    .await;
    assert_eq!(exhaust(xwing()).await, 403);

    // The control plane dies: the last good policy stays in force, no allow-all window.
    drop(xds);
    for _ in 0..10 {
        assert_eq!(landing().await, 200);
        assert_eq!(exhaust(tiefighter()).await, 200);
        assert_eq!(exhaust(xwing()).await, 403);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(a.admin, "/ready").await.0, 200);

    // It comes back (same address) with the exhaust port closed again: followed after
    // the reconnect.
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, "")).unwrap();
    let _xds = start_xds(dir.path(), grpc);
    within_10s("the proxy to reconnect and follow", || async {
        exhaust(tiefighter()).await == 403
    })
    .await;
    assert_eq!(landing().await, 200);
    proxy.drain(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_proxy_cannot_enforce_is_nacked_and_the_last_good_one_stays() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), pods(port)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, "")).unwrap();
    let xds = start_xds(dir.path(), "127.0.0.1:0".parse().unwrap());
    let proxy = start_proxy(backend, xds.grpc).await;
    let a = proxy.addrs;
    within_10s("readiness", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(
        status_from(tiefighter(), a.listen, "POST", "/v1/request-landing").await,
        200
    );

    // A rule with an impossible secret name (and the exhaust port opened alongside it).
    std::fs::write(
        dir.path().join("policy.yaml"),
        cnp(port, &format!("{ALLOW_EXHAUST}{BAD_SECRET_RULE}")),
    )
    .unwrap();
    let flight = format!("/debug/flightz?proxyID={NODE}");
    let start = Instant::now();
    let nack = loop {
        let (_, body) = get(xds.debug, &flight).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let nack = &v["types"]["type.googleapis.com/cilium.NetworkPolicy"]["last_nack"];
        if nack.is_object() {
            break nack.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no NACK recorded within 10s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = nack["error"].as_str().unwrap();
    assert!(
        error.contains(
            "ingress_per_port_policies[0].rules[0].http_rules[2].header_matches[0].value_sds_secret: \"default/a/b\" is not a secret name"
        ),
        "{error}"
    );
    // Nothing of the rejected update is in force: the exhaust port stays closed.
    assert_eq!(
        status_from(tiefighter(), a.listen, "PUT", "/v1/exhaust-port").await,
        403
    );
    assert_eq!(
        status_from(tiefighter(), a.listen, "POST", "/v1/request-landing").await,
        200
    );
    assert_eq!(get(a.admin, "/ready").await.0, 200);
    proxy.drain(Duration::from_secs(1)).await;
}

/// The L7 rule behind TLS: the control plane carries serverNames and the terminating
/// secret's name over NPDS; the proxy takes the certificate from its own secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npds_carried_tls_context_terminates_with_the_named_secret() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), pods(port)).unwrap();
    let policy = format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
    toPorts:
    - ports: [{{port: "{port}", protocol: TCP}}]
      serverNames: [deathstar.test]
      terminatingTLS: {{secret: {{name: deathstar-tls}}}}
      rules:
        http:
        - method: POST
          path: /v1/request-landing
"#
    );
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    // A self-signed certificate for deathstar.test, as a Secret with stringData.
    let (crt, key) = (secrets.path().join("c.pem"), secrets.path().join("k.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=deathstar.test"])
        .args(["-addext", "subjectAltName=DNS:deathstar.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let indent = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    std::fs::write(
        secrets.path().join("deathstar-tls.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: deathstar-tls, namespace: default}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&crt),
            indent(&key)
        ),
    )
    .unwrap();

    let xds = start_xds(dir.path(), "127.0.0.1:0".parse().unwrap());
    let s = secrets.path().display().to_string();
    let proxy = start_proxy_with(backend, xds.grpc, &["--secrets-dir", &s]).await;
    let a = proxy.addrs;
    within_10s("the first policy", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;
    let (c, lport) = (crt.display().to_string(), a.listen.port());
    let curl_from = |src: &'static str, method: &'static str, path: &'static str| {
        let c = c.clone();
        async move {
            common::curl(&[
                "--interface",
                src,
                "--cacert",
                &c,
                "--resolve",
                &format!("deathstar.test:{lport}:127.0.0.1"),
                "-X",
                method,
                &format!("https://deathstar.test:{lport}{path}"),
            ])
            .await
            .0
        }
    };
    assert_eq!(
        curl_from("127.0.0.3", "POST", "/v1/request-landing").await,
        200
    );
    assert_eq!(curl_from("127.0.0.3", "PUT", "/v1/exhaust-port").await, 403);
    // The xwing is not admitted: refused before any certificate is shown.
    assert_eq!(
        curl_from("127.0.0.4", "POST", "/v1/request-landing").await,
        0
    );
    let (_, dump) = get(a.admin, "/config_dump").await;
    assert!(dump.contains("secret default/deathstar-tls"), "{dump}");
    assert!(dump.contains("deathstar.test"), "{dump}");
    proxy.drain(Duration::from_secs(1)).await;
}

/// A header match against a secret: the control plane sends only its name
/// (`value_sds_secret`), the proxy ACKs and compares with the value in its own
/// `--secrets-dir`, following changes on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npds_header_match_secret_is_checked_against_the_secrets_dir() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), pods(port)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, SECRET_RULE)).unwrap();
    let write_secret = |value: &str| {
        let tmp = secrets.path().join(".tok.tmp");
        std::fs::write(
            &tmp,
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: tok, namespace: default}}\nstringData: {{token: {value}}}\n"),
        )
        .unwrap();
        std::fs::rename(tmp, secrets.path().join("tok.yaml")).unwrap();
    };
    write_secret("first-token");
    let xds = start_xds(dir.path(), "127.0.0.1:0".parse().unwrap());
    let s = secrets.path().display().to_string();
    let proxy = start_proxy_with(
        backend,
        xds.grpc,
        &["--secrets-dir", &s, "--secrets-poll-interval", "100ms"],
    )
    .await;
    let a = proxy.addrs;
    within_10s("the first policy", || async {
        get(a.admin, "/ready").await.0 == 200
    })
    .await;
    let (_, body) = get(xds.debug, &format!("/debug/flightz?proxyID={NODE}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["types"]["type.googleapis.com/cilium.NetworkPolicy"]["last_nack"].is_null(),
        "{body}"
    );
    let secured = |token: &'static str| {
        let header = if token.is_empty() {
            String::new()
        } else {
            format!("x-token: {token}\r\n")
        };
        async move { status_with(tiefighter(), a.listen, "GET", "/v1/secured", &header).await }
    };
    assert_eq!(secured("first-token").await, 200);
    assert_eq!(secured("wrong-token").await, 403);
    assert_eq!(secured("").await, 403);
    // Still only for peers the rule admits.
    assert_eq!(
        status_with(
            xwing(),
            a.listen,
            "GET",
            "/v1/secured",
            "x-token: first-token\r\n"
        )
        .await,
        403
    );
    // The secret rotates on disk; no new policy is pushed.
    write_secret("second-token");
    within_10s("the rotated secret", || async {
        secured("second-token").await == 200
    })
    .await;
    assert_eq!(secured("first-token").await, 403);
    proxy.drain(Duration::from_secs(1)).await;
}
