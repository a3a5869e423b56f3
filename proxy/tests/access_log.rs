//! The access log has a record for every outcome of a request, written as the request
//! leaves the stack: forwarded and answered, denied, rejected for its form, and also an
//! upstream that cannot be reached (503) or breaks the exchange (502), which get a
//! `Response` record with the status the client was sent and the rule that allowed it.
//! In process, with the access log written to a file (`--access-log-path`) and read back
//! after the proxy was told to flush it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};

/// A proxy with the access log on, in front of `upstream`, and its log file.
struct Logged {
    running: membrane_proxy::Running,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Logged {
    /// The records for `path` written so far (every request answered so far has its
    /// records recorded: they are made before the response leaves).
    fn records(&self, path: &str) -> Vec<serde_json::Value> {
        let log = self
            .running
            .access_log
            .as_ref()
            .expect("the access log is on");
        assert!(log.flush(Duration::from_secs(5)), "the access log flushes");
        std::fs::read_to_string(&self.file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["path"] == path)
            .collect()
    }
}

/// A proxy with the access log on, in front of `upstream`.
async fn proxy(upstream: SocketAddr) -> Logged {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let mut cfg = config(upstream, &["--access-log-path", file.to_str().unwrap()]);
    cfg.access_log = true;
    let enforcer = membrane_proxy::policy::load(&cfg).expect("test policy loads");
    let running = membrane_proxy::start(&cfg, enforcer, None).await.unwrap();
    Logged {
        running,
        file,
        _dir: dir,
    }
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
    // Bound but not listening: the port stays ours and every connect is refused.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream = socket.local_addr().unwrap();
    let logged = proxy(upstream).await;
    let url = format!("http://{}/v1/unreachable", logged.running.addrs.listen);
    assert_eq!(curl(&[&url]).await.0, 503);
    assert_upstream_failure(&logged.records("/v1/unreachable"), 503);
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_breaks_the_exchange_gets_a_response_record() {
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
    let logged = proxy(upstream).await;
    let url = format!("http://{}/v1/broken", logged.running.addrs.listen);
    assert_eq!(curl(&[&url]).await.0, 502);
    assert_upstream_failure(&logged.records("/v1/broken"), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_outcome_has_one_record() {
    let backend = start_backend().await;
    let logged = proxy(backend).await;
    let base = format!("http://{}", logged.running.addrs.listen);
    // Forwarded and answered.
    assert_eq!(curl(&[&format!("{base}/v1/answered")]).await.0, 200);
    let r = logged.records("/v1/answered");
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
    let r = logged.records("/v1/denied");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0]["type"].as_str(), r[0]["status"].as_u64()),
        (Some("Denied"), Some(403))
    );
    // Rejected for its form before the policy: the reason is what decided.
    assert_eq!(curl(&[&format!("{base}/v1/a%2Fb")]).await.0, 400);
    let r = logged.records("/v1/a%2Fb");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0]["type"].as_str(), r[0]["status"].as_u64()),
        (Some("Denied"), Some(400))
    );
    assert_eq!(r[0]["decided_by"], "percent-encoded path separator");
}

/// A timer that writes the timestamp a record already has.
struct At(String);

impl tracing_subscriber::fmt::time::FormatTime for At {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&self.0)
    }
}

/// `r` as the proxy wrote it before it had its own sink: through `tracing`'s JSON formatter,
/// with the event it used to emit.
fn as_tracing_wrote_it(r: &serde_json::Value) -> String {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_timer(At(r["timestamp"].as_str().unwrap().to_owned()))
        .with_writer(move || out.clone())
        .finish();
    let s = |k: &str| r[k].as_str().unwrap().to_owned();
    let n = |k: &str| r[k].as_u64().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(
            target: "access",
            r#type = s("type"),
            src = %s("src"),
            dst = %s("dst"),
            src_identity = n("src_identity") as u32,
            downstream_peer_uri_san = s("downstream_peer_uri_san"),
            dst_identity = n("dst_identity") as u32,
            method = s("method"),
            path = s("path"),
            host = s("host"),
            status = n("status") as u16,
            decided_by = s("decided_by"),
            duration_us = n("duration_us"),
        );
    });
    let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_the_line_the_tracing_formatter_wrote() {
    let backend = start_backend().await;
    let logged = proxy(backend).await;
    let base = format!("http://{}", logged.running.addrs.listen);
    assert_eq!(curl(&[&format!("{base}/v1/same?q=%22x%22")]).await.0, 200);
    assert_eq!(
        curl(&["-X", "PUT", &format!("{base}/v1/same-denied")])
            .await
            .0,
        403
    );
    assert_eq!(logged.records("/v1/same?q=%22x%22").len(), 2);
    let text = std::fs::read_to_string(&logged.file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("/v1/same")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in lines {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(format!("{line}\n"), as_tracing_wrote_it(&r));
    }
}
