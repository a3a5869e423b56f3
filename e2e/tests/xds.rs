//! membrane-proxy with its policy from a real `membrane-xds` (in-process; NPDS + NPHDS): the
//! Star Wars L7 policy is enforced for the deathstar's sidecar, live changes are followed,
//! a policy the proxy cannot enforce is NACKed (visible in the control plane's flight
//! recorder) while the last good one stays in force, enforcement survives the control
//! plane's death, readiness is 503 (everything denied) before the first policy, and
//! header matches against a secret named over NPDS are checked against `--secrets-dir`.

// The sidecar's own test harness (an echo backend, curl), shared rather than copied.
#[path = "../../proxy/tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use membrane_proxy::config::{Cli, Command as ProxyCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const DEATHSTAR: &str = "127.0.0.2";
const NODE: &str = "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local";

fn tiefighter() -> IpAddr {
    "127.0.0.3".parse().unwrap()
}
fn xwing() -> IpAddr {
    "127.0.0.4".parse().unwrap()
}

/// A control plane (`membrane_xds::app`, the binary's own wiring) running in this process
/// on a runtime and thread of its own: dropping it ends everything it runs, listeners and
/// open streams alike, as the death of its process would.
struct Xds {
    /// The xDS address: plaintext, or mTLS when started without --plaintext-xds.
    grpc: SocketAddr,
    debug: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Xds {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The control plane with plaintext xDS on `grpc`, explicitly opted in (a trusted local
/// path).
fn start_xds(dir: &Path, grpc: SocketAddr) -> Xds {
    start_xds_args(dir, &["--plaintext-xds", "--grpc-addr", &grpc.to_string()])
}

fn start_xds_args(dir: &Path, args: &[&str]) -> Xds {
    let dir = dir.to_str().unwrap();
    let mut argv = vec!["membrane-xds"];
    argv.extend_from_slice(args);
    argv.extend([
        "--debug-addr",
        "127.0.0.1:0",
        "--poll-ms",
        "50",
        "--source-dir",
        dir,
    ]);
    let cfg = membrane_xds::config::Config::try_parse_from(argv).unwrap();
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let running = membrane_xds::app::start(&cfg)
                .await
                .expect("membrane-xds starts");
            addrs_tx.send(running.addrs).unwrap();
            let _ = stopped.await;
            drop(running);
        });
        // No graceful shutdown: the runtime goes with every task and socket on it.
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    let addrs = addrs_rx.recv().expect("membrane-xds started");
    Xds {
        grpc: addrs.grpc.or(addrs.tls).expect("an xDS listener"),
        debug: addrs.debug,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn pods(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: deathstar-1, namespace: default, labels: {{org: empire, class: deathstar}}}}
spec: {{containers: [{{name: app, ports: [{{containerPort: {port}, name: http}}]}}]}}
status: {{podIP: {DEATHSTAR}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tiefighter, namespace: default, labels: {{org: empire, class: tiefighter}}}}
status: {{podIP: 127.0.0.3}}
---
apiVersion: v1
kind: Pod
metadata: {{name: xwing, namespace: default, labels: {{org: alliance, class: xwing}}}}
status: {{podIP: 127.0.0.4}}
"#
    )
}

/// manifests/examples/starwars' L7 policy on `port`, with `extra` appended to its HTTP rules.
fn cnp(port: u16, extra: &str) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1, namespace: default}}
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector: {{matchLabels: {{org: empire, class: deathstar}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
    toPorts:
    - ports: [{{port: "{port}", protocol: TCP}}]
      rules:
        http:
        - method: POST
          path: /v1/request-landing
{extra}"#
    )
}

const ALLOW_EXHAUST: &str = "        - method: PUT\n          path: /v1/exhaust-port\n";
/// Valid for the control plane, but no Secret can be named `a/b`: the proxy must NACK it.
const BAD_SECRET_RULE: &str =
    "        - method: GET\n          headerMatches: [{name: x-token, secret: {name: a/b}}]\n";
/// A header match against Secret `default/tok` (the policy's namespace).
const SECRET_RULE: &str = "        - method: GET\n          path: /v1/secured\n          headerMatches: [{name: x-token, secret: {name: tok}}]\n";

/// One HTTP/1.1 request from `src`; the status code.
async fn status_from(src: IpAddr, dst: SocketAddr, method: &str, path: &str) -> u16 {
    status_with(src, dst, method, path, "").await
}

/// [`status_from`] with `extra` header lines (each ending in CRLF).
async fn status_with(src: IpAddr, dst: SocketAddr, method: &str, path: &str, extra: &str) -> u16 {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(dst))
        .await
        .expect("connect in time")
        .expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: deathstar\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .into();
    (code, body)
}

/// Polls until `f` is true, for at most 10 s.
async fn within_10s<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out after 10s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_proxy(backend: SocketAddr, xds: SocketAddr) -> membrane_proxy::Running {
    start_proxy_with(backend, xds, &[]).await
}

async fn start_proxy_with(
    backend: SocketAddr,
    xds: SocketAddr,
    extra: &[&str],
) -> membrane_proxy::Running {
    let scheme = if extra.contains(&"--xds-ca") {
        "https"
    } else {
        "http"
    };
    let (backend, xds) = (backend.to_string(), format!("{scheme}://{xds}"));
    let mut args = vec![
        "membrane-proxy",
        "standalone",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--health",
        "127.0.0.1:0",
        "--upstream",
        &backend,
        "--xds-address",
        &xds,
        "--node-id",
        NODE,
        "--xds-backoff-initial",
        "50ms",
        "--xds-backoff-max",
        "300ms",
        "--access-log",
        "false",
    ];
    args.extend_from_slice(extra);
    let ProxyCommand::Standalone(cfg) = Cli::try_parse_from(args).unwrap().command;
    let deny = membrane_proxy::policy::deny_all("no policy from the control plane yet");
    membrane_proxy::start(&cfg, deny, None).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npds_policy_is_enforced_followed_and_kept_when_the_control_plane_dies() {
    let backend = common::start_backend().await;
    let port = backend.port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), pods(port)).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), cnp(port, "")).unwrap();

    // The proxy starts first, with its control plane not up yet.
    let grpc = free_port();
    let proxy = start_proxy(backend, grpc).await;
    let a = proxy.addrs;
    assert_eq!(get(a.admin, "/ready").await.0, 503);
    assert_eq!(get(a.health, "/healthz/ready").await.0, 503);
    // Deny everything before the first policy, even what the policy will allow.
    let landing = || status_from(tiefighter(), a.listen, "POST", "/v1/request-landing");
    assert_eq!(landing().await, 403);

    // The control plane comes up; the proxy reconnects and gets the Star Wars policy.
    let xds = start_xds(dir.path(), grpc);
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

    let xds = start_xds(dir.path(), free_port());
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
    let xds = start_xds(dir.path(), free_port());
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

/// Runs openssl in `dir`.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) in `dir`, and a certificate it signed: `NAME.pem`/`NAME.key` with
/// subjectAltName `san`.
fn issue(dir: &Path, name: &str, san: &str) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &format!("req -x509 {ec} -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem"),
        );
    }
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &format!("req {ec} -subj /CN={name} -keyout {name}.key -out {name}.csr"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
             -extfile {name}.ext -out {name}.pem"
        ),
    );
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
    issue(&pki, "server", "IP:127.0.0.1");
    issue(
        &pki,
        "deathstar",
        "URI:spiffe://cluster.local/ns/default/sa/deathstar",
    );
    issue(
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
