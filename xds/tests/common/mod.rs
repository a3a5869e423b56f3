//! Helpers shared by the xds integration tests: the real `membrane-xds` binary (launched
//! through `membrane-test-support`, which reads back the ports it bound), raw HTTP/1.1 over
//! loopback, the control plane's test PKI, and an etcd client for the shared etcd launcher.

#![allow(dead_code, unused_imports)]

use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use membrane_test_support::pki::{Ca, Leaf, Validity};
pub use membrane_test_support::xds::Xds;
pub use membrane_test_support::{eventually, starwars, ChildGuard, Etcd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const BIN: &str = env!("CARGO_BIN_EXE_membrane-xds");

/// Starts the binary on loopback ephemeral ports, in its own process group, with the
/// plaintext xDS port explicitly opted in (the trusted local path these tests speak).
pub fn start_xds(source_dir: &Path) -> Xds {
    start_xds_with(source_dir, &[])
}

/// [`start_xds`] with extra flags; `--log membrane_xds=debug`, and `--poll-ms 50` unless
/// `extra` sets it.
pub fn start_xds_with(source_dir: &Path, extra: &[&OsStr]) -> Xds {
    let mut args: Vec<&OsStr> = membrane_test_support::xds::PLAINTEXT
        .iter()
        .map(OsStr::new)
        .collect();
    args.extend_from_slice(extra);
    launch(source_dir, &args)
}

/// Starts the binary with mTLS on a loopback port (`--tls-cert`, `--tls-key`, `--ca-cert`
/// from `pki`) and without `--plaintext-xds`.
pub fn start_xds_mtls(source_dir: &Path, pki: &Pki, extra: &[&OsStr]) -> Xds {
    let mut args: Vec<&OsStr> = vec![
        "--tls-cert".as_ref(),
        pki.server_cert.as_os_str(),
        "--tls-key".as_ref(),
        pki.server_key.as_os_str(),
        "--ca-cert".as_ref(),
        pki.ca.as_os_str(),
    ];
    args.extend_from_slice(extra);
    launch(source_dir, &args)
}

fn launch(source_dir: &Path, extra: &[&OsStr]) -> Xds {
    let mut cmd = membrane_test_support::xds::command(BIN);
    cmd.args(extra).args(["--log", "membrane_xds=debug"]);
    if !extra.iter().any(|a| *a == "--poll-ms") {
        cmd.args(["--poll-ms", "50"]);
    }
    membrane_test_support::xds::spawn(cmd, source_dir)
}

/// Settings given as `MEMBRANE_*` variables reach a new binary and are ignored by an older
/// one, so a test can run against both: the plaintext binary with `args`, `env` and
/// `--log log` (no `--poll-ms`).
pub fn start_xds_env(source_dir: &Path, args: &[&OsStr], env: &[(&str, &str)], log: &str) -> Xds {
    let mut cmd = membrane_test_support::xds::command(BIN);
    cmd.args(membrane_test_support::xds::PLAINTEXT)
        .args(["--log", log])
        .args(args)
        .envs(env.iter().copied());
    membrane_test_support::xds::spawn(cmd, source_dir)
}

/// The flags that serve the injection webhook on loopback port 0 with `cert` and `key`.
pub fn webhook_args<'a>(cert: &'a Path, key: &'a Path) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("--webhook-addr"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--webhook-cert"),
        cert.as_os_str(),
        OsStr::new("--webhook-key"),
        key.as_os_str(),
    ]
}

/// One HTTP/1.1 request from `src` to `dst`; returns (status, body).
pub async fn request(
    src: IpAddr,
    dst: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), sock.connect(dst)).await??;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: deathstar\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// GET `path` from the debug endpoint; returns the body.
pub async fn debug_get(debug: SocketAddr, path: &str) -> String {
    let (status, body) = request("127.0.0.1".parse().unwrap(), debug, "GET", path)
        .await
        .expect("debug request");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GET a JSON document from the debug endpoint.
pub async fn debug_json(debug: SocketAddr, path: &str) -> serde_json::Value {
    let body = debug_get(debug, path).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A tiny HTTP/1.1 backend answering 200 with `backend: METHOD PATH`.
pub async fn start_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests carry no body here (content-length: 0).
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let line: Vec<&str> = head.lines().next().unwrap_or("").split(' ').collect();
                    let body = format!("backend: {} {}\n", line[0], line.get(1).unwrap_or(&""));
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A client of the shared etcd launcher's server, through the control plane's own connect
/// (etcd answers once it has elected itself; retried briefly).
pub async fn etcd_client(etcd: &Etcd) -> etcd_client::Client {
    etcd_client_tls(etcd, None).await
}

/// [`etcd_client`] over TLS with `tls`.
pub async fn etcd_client_tls(
    etcd: &Etcd,
    tls: Option<&membrane_xds::kvstore::EtcdTls>,
) -> etcd_client::Client {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = membrane_xds::kvstore::connect_tls(&[etcd.url()], tls).await {
            if c.status().await.is_ok() {
                return c;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd does not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CA (`DIR/ca.pem`) and a server certificate it signed for `membrane-xds.test` and
/// 127.0.0.1 (`DIR/cert.pem`, `DIR/key.pem`).
pub fn make_certs(dir: &Path) {
    let ca = Ca::new("membrane-test-ca", &dir.join("ca.pem"), &dir.join("ca.key"));
    ca.issue(
        &Leaf::new("membrane-xds").san("DNS:membrane-xds.test,IP:127.0.0.1"),
        &dir.join("cert.pem"),
        &dir.join("key.pem"),
    );
}

/// The control plane's test PKI: a CA (`ca.pem`), the control plane's certificate for
/// `membrane-xds.test` and 127.0.0.1, and workload certificates issued on demand.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    authority: Ca,
}

impl Pki {
    /// A new CA named `name` in `dir` (created), and the server certificate.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let authority = Ca::in_dir(dir, "ca", name);
        let server = authority.issue_in(
            dir,
            "membrane-xds",
            &Leaf::new("membrane-xds").san("DNS:membrane-xds.test,IP:127.0.0.1"),
        );
        Pki {
            dir: dir.to_path_buf(),
            ca: authority.files.cert.clone(),
            ca_key: authority.files.key.clone(),
            server_cert: server.cert,
            server_key: server.key,
            authority,
        }
    }

    /// A leaf certificate with subjectAltName `san` (openssl syntax, e.g.
    /// `URI:spiffe://cluster.local/ns/default/sa/x`), as `NAME.pem` and `NAME.key`.
    pub fn issue(&self, name: &str, san: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let f = self.authority.issue_in(
            &self.dir,
            name,
            &Leaf::new(name).san(san).validity(validity),
        );
        (f.cert, f.key)
    }

    /// A workload certificate for `spiffe://cluster.local/ns/NS/sa/SA`.
    pub fn workload(&self, name: &str, ns: &str, sa: &str) -> (PathBuf, PathBuf) {
        self.issue(
            name,
            &format!("URI:spiffe://cluster.local/ns/{ns}/sa/{sa}"),
            Validity::Days(1),
        )
    }
}

/// Cilium's NPDS type URL.
pub const NPDS: &str = "type.googleapis.com/cilium.NetworkPolicy";

/// Opens an NPDS stream on `ch` as `node` and returns the first response, or why there
/// is none (the gRPC status, the stream's end, or 10 s without an answer).
pub async fn first_npds_on(
    ch: tonic::transport::Channel,
    node: &str,
) -> Result<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse, String> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use membrane_xds::proto::network_policy_discovery_service_client::NetworkPolicyDiscoveryServiceClient;

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: NPDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let answer = async {
        let mut s = NetworkPolicyDiscoveryServiceClient::new(ch)
            .stream_network_policies(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
            .into_inner();
        match s.message().await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("stream ended".to_string()),
            Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| "no answer in 10s".to_string())?;
    drop(tx);
    r
}
