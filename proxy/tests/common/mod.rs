//! Shared harness: an in-test hyper backend, an in-process proxy on ephemeral ports, and
//! helpers to drive real clients (curl, h2load) and raw sockets against it.
#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use membrane_proxy::config::{Cli, Command, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `rel` under this package, looked up when the test runs rather than baked in
/// when it is built: a target directory shared by two checkouts (CI's clone and
/// a working tree) would otherwise point one checkout's tests at the other's files.
pub fn package_path(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(rel)
}

pub fn test_policy() -> std::path::PathBuf {
    package_path("tests/data/cnp-l7-test.yaml")
}

/// The test policy with its port set to `port`, written to a fresh temp file.
pub fn policy_file(port: u16) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let text = std::fs::read_to_string(test_policy())
        .unwrap()
        .replace("PORT", &port.to_string());
    let path = std::env::temp_dir().join(format!(
        "membrane-proxy-test-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The backend echoes what it received in `x-seen-*` headers and the body. A request with
/// `content-type: application/grpc` gets the body back followed by trailers
/// `grpc-status: 0`, `x-trailer: seen`. `Upgrade: echo` switches protocol and echoes bytes.
async fn backend_handle(mut req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let mut h = HeaderMap::new();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    h.insert("x-seen-path", HeaderValue::from_str(&pq).unwrap());
    h.insert(
        "x-seen-method",
        HeaderValue::from_str(req.method().as_str()).unwrap(),
    );
    h.insert(
        "x-seen-version",
        HeaderValue::from_str(&format!("{:?}", req.version())).unwrap(),
    );
    let host = req
        .headers()
        .get("host")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    h.insert("x-seen-host", HeaderValue::from_str(&host).unwrap());
    for name in ["x-added", "x-replaced", "te", "connection", "x-hop"] {
        if let Some(v) = req.headers().get(name) {
            h.insert(
                http::HeaderName::from_bytes(format!("x-seen-{name}").as_bytes()).unwrap(),
                v.clone(),
            );
        }
    }
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", HeaderValue::from_static("echo"));
        r.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        return Ok(r);
    }
    if let Some(ms) = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let send_hop = req.headers().contains_key("x-send-hop");
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut r = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-trailer", HeaderValue::from_static("seen"));
        let mut r = Response::new(
            WithTrailers {
                data: Some(body),
                trailers: Some(trailers),
            }
            .boxed(),
        );
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        r
    } else {
        Response::new(Full::new(body).boxed())
    };
    r.headers_mut().extend(h);
    if send_hop {
        // Hop-by-hop headers a proxy must not pass on: `connection` names `x-hop`.
        r.headers_mut()
            .insert("connection", HeaderValue::from_static("x-hop"));
        r.headers_mut()
            .insert("x-hop", HeaderValue::from_static("1"));
        r.headers_mut()
            .insert("keep-alive", HeaderValue::from_static("timeout=5"));
    }
    Ok(r)
}

/// Data then trailers: what a unary gRPC response looks like on the wire.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// A CiliumNetworkPolicy `name` for the pods labelled `app: backend`: ingress from
/// `org: empire` on `port`/TCP with `rules` (what follows `rules:` in YAML, inline or as
/// indented lines; empty for an L4-only port). Written to a temporary file, removed on
/// drop.
pub fn empire_policy(name: &str, port: u16, rules: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let mut text = [
        "apiVersion: cilium.io/v2",
        "kind: CiliumNetworkPolicy",
        &format!("metadata: {{name: {name}, namespace: default}}"),
        "spec:",
        "  endpointSelector: {matchLabels: {app: backend}}",
        "  ingress:",
        "  - fromEndpoints: [{matchLabels: {org: empire}}]",
        "    toPorts:",
        &format!("    - ports: [{{port: \"{port}\", protocol: TCP}}]"),
    ]
    .join("\n");
    if !rules.is_empty() {
        text.push_str(&format!("\n      rules:{rules}"));
    }
    std::fs::write(file.path(), text).unwrap();
    file
}

/// A TCP echo server on loopback (a non-HTTP upstream); its address.
pub async fn tcp_echo() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

pub async fn start_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = b
                    .serve_connection_with_upgrades(TokioIo::new(s), service_fn(backend_handle))
                    .await;
            });
        }
    });
    addr
}

pub struct Proxy {
    pub running: membrane_proxy::Running,
    pub backend: SocketAddr,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.addrs.listen, path)
    }
    pub fn addr(&self) -> SocketAddr {
        self.running.addrs.listen
    }
}

/// The proxy's own listeners (traffic, admin, metrics, health) on loopback port 0: the
/// proxy binds them and reports the addresses (`Running::addrs`, or the binary's log).
pub const LOOPBACK_LISTENERS: [&str; 8] = [
    "--listen",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    "--metrics",
    "127.0.0.1:0",
    "--health",
    "127.0.0.1:0",
];

/// A `standalone` config for `backend` with ephemeral listeners plus `extra` flags.
pub fn config(backend: SocketAddr, extra: &[&str]) -> Config {
    config_for(
        backend,
        &policy_file(backend.port()),
        "k8s:app=backend",
        extra,
    )
}

/// As [`config`], with the policy file `policy` and the endpoint's `labels`.
pub fn config_for(
    backend: SocketAddr,
    policy: &std::path::Path,
    labels: &str,
    extra: &[&str],
) -> Config {
    let policy = policy.display().to_string();
    let backend = backend.to_string();
    let mut args = vec!["membrane-proxy", "standalone"];
    args.extend(LOOPBACK_LISTENERS);
    args.extend([
        "--upstream",
        &backend,
        "--policy",
        &policy,
        "--endpoint-labels",
        labels,
        "--access-log",
        "false",
    ]);
    args.extend_from_slice(extra);
    let Command::Standalone(c) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!("a standalone command line")
    };
    *c
}

pub async fn start_proxy_with(extra: &[&str]) -> Proxy {
    let backend = start_backend().await;
    let cfg = config(backend, extra);
    let enforcer = membrane_proxy::policy::load(&cfg).expect("test policy loads");
    let running = membrane_proxy::start(&cfg, enforcer, None).await.unwrap();
    Proxy { running, backend }
}

pub async fn start_proxy() -> Proxy {
    start_proxy_with(&[]).await
}

/// Runs curl with `args`; returns (status code, response headers, body).
pub async fn curl(args: &[&str]) -> (u16, String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-D",
            "/dev/stderr",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
    (code.trim().parse().unwrap_or(0), headers, body.to_owned())
}

/// Sends raw bytes and reads until the proxy closes or `wait` passes; returns what came back.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The same backend behind TLS (ALPN h2 and http/1.1); responses carry `x-seen-tls: true`
/// and the SNI the client sent in `x-seen-sni`.
pub async fn start_tls_backend(cert: &std::path::Path, key: &std::path::Path) -> SocketAddr {
    start_tls_backend_alpn(cert, key, &[b"h2", b"http/1.1"]).await
}

/// As [`start_tls_backend`], offering only the ALPN protocols `alpn`.
pub async fn start_tls_backend_alpn(
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&[u8]],
) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let svc = service_fn(move |req| {
                    let sni = sni.clone();
                    async move {
                        let mut r = backend_handle(req).await?;
                        let h = r.headers_mut();
                        h.insert("x-seen-tls", HeaderValue::from_static("true"));
                        if let Ok(v) = HeaderValue::from_str(&sni) {
                            h.insert("x-seen-sni", v);
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = b
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// True if the peer closed `s` (or the connection failed) within `d`; what it sent meanwhile
/// is read and dropped.
pub async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The Envoy-style stat `name` of a running proxy.
pub fn stat(p: &membrane_proxy::Running, name: &str) -> u64 {
    let stats = p.metrics.encode_envoy_stats();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
        .parse()
        .unwrap()
}

/// A proxy for `backend` enforcing the policy file `policy` for an endpoint with `labels`,
/// with Secrets from `secrets` polled every 100ms.
pub async fn start_with_secrets(
    backend: SocketAddr,
    policy: &std::path::Path,
    labels: &str,
    secrets: &std::path::Path,
) -> membrane_proxy::Running {
    let secrets = secrets.display().to_string();
    let cfg = config_for(
        backend,
        policy,
        labels,
        &[
            "--secrets-dir",
            &secrets,
            "--secrets-poll-interval",
            "100ms",
        ],
    );
    let enforcer = membrane_proxy::policy::load(&cfg).expect("policy loads");
    membrane_proxy::start(&cfg, enforcer, None).await.unwrap()
}

/// Writes a Kubernetes Secret manifest `file` (Secret `namespace/name`, of `kind` if given)
/// with `entries` as base64 `data`: written then renamed, as a controller would, so the
/// poller never sees half a file.
pub fn write_secret(
    dir: &std::path::Path,
    file: &str,
    (namespace, name): (&str, &str),
    kind: Option<&str>,
    entries: &[(&str, &[u8])],
) {
    use base64::Engine as _;
    let mut text = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    );
    if let Some(k) = kind {
        text.push_str(&format!("type: {k}\n"));
    }
    text.push_str("data:\n");
    for (k, v) in entries {
        let b = base64::engine::general_purpose::STANDARD.encode(v);
        text.push_str(&format!("  {k}: {b}\n"));
    }
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, dir.join(file)).unwrap();
}
