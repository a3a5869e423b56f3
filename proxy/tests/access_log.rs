//! The access log has a record for every outcome of a request, written as the request
//! leaves the stack: forwarded and answered, denied, rejected for its form, and also an
//! upstream that cannot be reached (503) or breaks the exchange (502), which get a
//! `Response` record with the status the client was sent and the rule that allowed it.
//! In process, with the records captured from the `access` tracing target as JSON.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};

/// The JSON lines written so far.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures the `access` target from now on (each test is its own process under
    /// nextest; under `cargo test` the first test's subscriber serves both, which is fine:
    /// records are told apart by path).
    fn install() -> Self {
        static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        CAPTURED
            .get_or_init(|| {
                let c = Captured::default();
                let writer = c.clone();
                let subscriber = tracing_subscriber::fmt()
                    .json()
                    .flatten_event(true)
                    .with_env_filter("access=info")
                    .with_writer(move || writer.clone())
                    .finish();
                tracing::subscriber::set_global_default(subscriber).unwrap();
                c
            })
            .clone()
    }

    /// The records for `path`.
    fn records(&self, path: &str) -> Vec<serde_json::Value> {
        let buf = self.0.lock().unwrap();
        String::from_utf8_lossy(&buf)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["path"] == path)
            .collect()
    }
}

/// A proxy with the access log on, in front of `upstream`.
async fn proxy(upstream: SocketAddr) -> membrane_proxy::Running {
    let mut cfg = config(upstream, &[]);
    cfg.access_log = true;
    let enforcer = membrane_proxy::policy::load(&cfg).expect("test policy loads");
    membrane_proxy::start(&cfg, enforcer, None).await.unwrap()
}

fn assert_upstream_failure(records: &[serde_json::Value], status: u64) {
    assert_eq!(
        records.len(),
        2,
        "a Request and a Response record: {records:?}"
    );
    assert_eq!(records[0]["type"], "Request");
    let r = &records[1];
    assert_eq!(r["type"], "Response", "{r}");
    assert_eq!(r["status"], status, "{r}");
    assert_eq!(r["method"], "GET", "{r}");
    assert!(
        r["decided_by"]
            .as_str()
            .unwrap()
            .contains("default/proxy-test"),
        "the allowing rule: {r}"
    );
    assert_eq!(r["src_identity"], 1, "loopback is reserved:host: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gets_a_response_record() {
    let captured = Captured::install();
    // Bound but not listening: the port stays ours and every connect is refused.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream = socket.local_addr().unwrap();
    let running = proxy(upstream).await;
    let url = format!("http://{}/v1/unreachable", running.addrs.listen);
    assert_eq!(curl(&[&url]).await.0, 503);
    assert_upstream_failure(&captured.records("/v1/unreachable"), 503);
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_breaks_the_exchange_gets_a_response_record() {
    let captured = Captured::install();
    // Accepts, reads the request head, and closes without answering.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        }
    });
    let running = proxy(upstream).await;
    let url = format!("http://{}/v1/broken", running.addrs.listen);
    assert_eq!(curl(&[&url]).await.0, 502);
    assert_upstream_failure(&captured.records("/v1/broken"), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_outcome_has_one_record() {
    let captured = Captured::install();
    let backend = start_backend().await;
    let running = proxy(backend).await;
    let base = format!("http://{}", running.addrs.listen);
    // Forwarded and answered.
    assert_eq!(curl(&[&format!("{base}/v1/answered")]).await.0, 200);
    let r = captured.records("/v1/answered");
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        (r[0]["type"].as_str(), r[1]["type"].as_str()),
        (Some("Request"), Some("Response"))
    );
    assert_eq!(r[1]["status"], 200);
    // Denied by policy.
    assert_eq!(
        curl(&["-X", "PUT", &format!("{base}/v1/denied")]).await.0,
        403
    );
    let r = captured.records("/v1/denied");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0]["type"].as_str(), r[0]["status"].as_u64()),
        (Some("Denied"), Some(403))
    );
    // Rejected for its form before the policy: the reason is what decided.
    assert_eq!(curl(&[&format!("{base}/v1/a%2Fb")]).await.0, 400);
    let r = captured.records("/v1/a%2Fb");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0]["type"].as_str(), r[0]["status"].as_u64()),
        (Some("Denied"), Some(400))
    );
    assert_eq!(r[0]["decided_by"], "percent-encoded path separator");
}
