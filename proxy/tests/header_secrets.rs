//! `headerMatches` whose value comes from a Kubernetes Secret in `--secrets-dir`, checked
//! with curl over loopback: the right value passes, a wrong or missing one gets 403, and a
//! secret that is created, changed or removed on disk is enforced without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{curl, start_backend};

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: token-gate
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEntities:
    - all
    toPorts:
    - ports:
      - port: "PORT"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: /gated
          headerMatches:
          - name: X-Token
            secret:
              name: api-token
        - method: GET
          path: /inject
          headerMatches:
          - name: X-Replaced
            secret:
              name: upstream-cred
              namespace: vault
            mismatch: REPLACE
"#;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "membrane-header-secrets-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("secrets")).unwrap();
    d
}

/// Writes Secret `namespace/name` with `entries` (base64 `data`) as `file`, atomically.
fn write_secret(dir: &Path, file: &str, namespace: &str, name: &str, entries: &[(&str, &str)]) {
    let entries: Vec<(&str, &[u8])> = entries.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    common::write_secret(dir, file, (namespace, name), None, &entries);
}

async fn start(backend: std::net::SocketAddr, dir: &Path) -> membrane_proxy::Running {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY.replace("PORT", &backend.port().to_string())).unwrap();
    common::start_with_secrets(
        backend,
        &policy,
        "k8s:app=backend,k8s:io.kubernetes.pod.namespace=shop",
        &dir.join("secrets"),
    )
    .await
}

/// GET `path` with `header` (if any); returns the status code and response headers, and
/// checks that a denial is the plain 403 that reveals nothing.
async fn get(p: &membrane_proxy::Running, path: &str, header: Option<&str>) -> (u16, String) {
    let url = format!("http://{}{path}", p.addrs.listen);
    let mut args = vec![url.as_str()];
    if let Some(h) = header {
        args.extend(["-H", h]);
    }
    let (code, headers, body) = curl(&args).await;
    if code == 403 {
        assert_eq!(body, "Access denied\r\n");
        assert!(
            !headers.contains("x-seen-path"),
            "reached the backend: {headers}"
        );
    }
    (code, headers)
}

/// Polls until `path` with `header` gets `want` (the proxy re-scans secrets every 100ms).
async fn until(p: &membrane_proxy::Running, path: &str, header: Option<&str>, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = get(p, path, header).await;
        if code == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} {header:?}: still {code}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_follows_the_secret_on_disk() {
    let dir = tmpdir("gate");
    let secrets = dir.join("secrets");
    // No namespace in the reference: the policy's (shop).
    write_secret(
        &secrets,
        "token.yaml",
        "shop",
        "api-token",
        &[("token", "first-value")],
    );
    // The same name in another namespace is not the one the rule means.
    write_secret(
        &secrets,
        "decoy.yaml",
        "default",
        "api-token",
        &[("token", "decoy")],
    );
    let backend = start_backend().await;
    let p = start(backend, &dir).await;

    let (code, headers) = get(&p, "/gated", Some("X-Token: first-value")).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-path: /gated"), "{headers}");
    for wrong in [
        Some("X-Token: wrong-value"),
        Some("X-Token: first-valu"),
        Some("X-Token: decoy"),
        Some("X-Other: first-value"),
        None,
    ] {
        assert_eq!(get(&p, "/gated", wrong).await.0, 403, "{wrong:?}");
    }

    // Rotated on disk: the new value is enforced from the next scan, the old one refused.
    write_secret(
        &secrets,
        "token.yaml",
        "shop",
        "api-token",
        &[("token", "second-value")],
    );
    until(&p, "/gated", Some("X-Token: second-value"), 200).await;
    assert_eq!(get(&p, "/gated", Some("X-Token: first-value")).await.0, 403);

    // Not exactly one entry: the match fails for every value.
    write_secret(
        &secrets,
        "token.yaml",
        "shop",
        "api-token",
        &[("token", "second-value"), ("other", "second-value")],
    );
    until(&p, "/gated", Some("X-Token: second-value"), 403).await;

    // Back to one entry, then removed: removal fails the match too.
    write_secret(
        &secrets,
        "token.yaml",
        "shop",
        "api-token",
        &[("token", "third")],
    );
    until(&p, "/gated", Some("X-Token: third"), 200).await;
    std::fs::remove_file(secrets.join("token.yaml")).unwrap();
    until(&p, "/gated", Some("X-Token: third"), 403).await;

    p.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_on_mismatch_injects_the_secret_once_it_exists() {
    let dir = tmpdir("inject");
    let secrets = dir.join("secrets");
    let backend = start_backend().await;
    let p = start(backend, &dir).await;

    // No secret and no inline value: nothing to put in the header, so the rule does not
    // match and the request is refused rather than forwarded without the credential.
    assert_eq!(get(&p, "/inject", Some("X-Replaced: mine")).await.0, 403);

    // The secret appears: the client's value is replaced by the secret's on the way to
    // the backend (which echoes what it got as x-seen-x-replaced).
    write_secret(
        &secrets,
        "cred.yaml",
        "vault",
        "upstream-cred",
        &[("k", "injected-cred")],
    );
    until(&p, "/inject", Some("X-Replaced: mine"), 200).await;
    let (_, headers) = get(&p, "/inject", Some("X-Replaced: mine")).await;
    assert!(
        headers.contains("x-seen-x-replaced: injected-cred"),
        "{headers}"
    );
    let (code, headers) = get(&p, "/inject", None).await;
    assert_eq!(code, 200);
    assert!(
        headers.contains("x-seen-x-replaced: injected-cred"),
        "{headers}"
    );

    // A trailing newline (a secret made from a file) cannot be a header value: refused,
    // never forwarded with a broken or missing credential.
    write_secret(
        &secrets,
        "cred.yaml",
        "vault",
        "upstream-cred",
        &[("k", "cred\n")],
    );
    until(&p, "/inject", Some("X-Replaced: mine"), 403).await;

    p.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
