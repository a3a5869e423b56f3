//! membrane-proxy with its policy from a real `membrane-xds` (in-process; NPDS + NPHDS): the
//! Star Wars L7 policy is enforced for the deathstar's sidecar, live changes are followed,
//! a policy the proxy cannot enforce is NACKed (visible in the control plane's flight
//! recorder) while the last good one stays in force, enforcement survives the control
//! plane's death, readiness is 503 (everything denied) before the first policy, and
//! header matches against a secret named over NPDS are checked against `--secrets-dir`;
//! a sidecar upgraded (hot restart) takes over only once it has its policy.

// The sidecar's own test harness (an echo backend, curl), shared rather than copied.
#[path = "../../../proxy/tests/common/mod.rs"]
mod common;
mod etcd_cluster;
mod handover;
mod load;
mod mtls;
mod npds;
mod restart;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use membrane_proxy::config::{Cli, Command as ProxyCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The deathstar's sidecar (the pod at 127.0.0.2 in `starwars::pods`).
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
    // The test bed's pods live on loopback addresses, which the sidecar's ipcache calls
    // the host when NPHDS does not name them; allow-localhost (the default) would admit
    // exactly the unknown peers these tests expect to be refused.
    argv.extend([
        "--allow-localhost",
        "policy",
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

/// A loopback address held for a control plane that is not up yet: bound, never
/// listening, so a proxy's connects are refused and no other test can take the port; the
/// control plane binds it when [`Reserved::start_xds`] gives it up.
struct Reserved(TcpSocket);

impl Reserved {
    fn new() -> Reserved {
        let s = TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Reserved(s)
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    /// The control plane on the held address.
    fn start_xds(self, dir: &Path) -> Xds {
        let addr = self.addr();
        drop(self);
        start_xds(dir, addr)
    }
}
use membrane_test_support::starwars::pods;

/// manifests/examples/starwars' L7 policy on `port`, with `extra` appended to its HTTP rules.
fn cnp(port: u16, extra: &str) -> String {
    let policy = membrane_test_support::starwars::l7(port, "/v1/request-landing");
    format!("{}\n{extra}", policy.trim_end())
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

/// Polls until `f` is true, for at most 10 s (the shared bounded wait).
async fn within_10s<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    membrane_test_support::eventually(Duration::from_secs(10), what, || {
        let done = f();
        async move { done.await.then_some(()) }
    })
    .await
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
    let ProxyCommand::Standalone(cfg) = Cli::try_parse_from(args).unwrap().command else {
        unreachable!("a standalone command line")
    };
    let deny = membrane_proxy::policy::deny_all("no policy from the control plane yet");
    membrane_proxy::start(&cfg, deny, None).await.unwrap()
}
