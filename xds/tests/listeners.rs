//! The webhook and debug listeners against clients that hold connections
//! or send slowly, over real sockets to the real binary: connections past
//! the cap are closed at once and counted, a request head or body
//! trickled a byte at a time is cut off, and the listener keeps serving.
//! Settings go in as `MEMBRANE_*` variables (see `common::launch`).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::*;

/// Reads what the server sends until it closes, for at most `limit`;
/// `None` when it is still open then.
async fn until_closed<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut buf)).await {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(_) => None,
    }
}

/// Sends `head` then `trickle` one byte every 300 ms; returns how long the
/// server took to close the connection (and what it answered), or `None`
/// when it was still open after `limit`.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: &str,
    trickle: &str,
    limit: Duration,
) -> Option<(Duration, String)> {
    let start = Instant::now();
    s.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    for b in trickle.bytes().cycle() {
        if start.elapsed() > limit {
            return None;
        }
        if s.write_all(&[b]).await.is_err() || s.flush().await.is_err() {
            return Some((
                start.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            ));
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    start.elapsed(),
                    String::from_utf8_lossy(&answer).into_owned(),
                ))
            }
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    unreachable!("cycle never ends")
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn debug_env() -> [(&'static str, &'static str); 2] {
    [
        ("MEMBRANE_DEBUG_MAX_CONNECTIONS", "3"),
        ("MEMBRANE_HTTP_HEAD_TIMEOUT_MS", "1000"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_listener_closes_connections_past_its_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let xds = start_xds_env(tmp.path(), &[], &debug_env(), "membrane_xds=debug");
    let dbg = xds.debug();
    // Three idle connections fill the listener; a fourth is closed at once
    // without an answer.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(dbg).await.unwrap());
    }
    let mut fourth = TcpStream::connect(dbg).await.unwrap();
    let _ = fourth
        .write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let answer = until_closed(&mut fourth, Duration::from_millis(700)).await;
    assert_eq!(
        answer.as_deref(),
        Some(""),
        "a connection past the cap of 3 is closed unanswered"
    );
    // Room again once one goes; the refusal is counted (and so is each attempt made before
    // the listener saw the held connections close).
    drop(held);
    let mut early = 0;
    let text = loop {
        match request("127.0.0.1".parse().unwrap(), dbg, "GET", "/metrics").await {
            Ok((200, text)) => break text,
            other => {
                early += 1;
                assert!(
                    early < 100,
                    "no room again after the held connections went: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        metric(
            &text,
            "membrane_xds_connections_refused_total{listener=\"debug\"}"
        ),
        1 + early,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_listener_cuts_a_slow_request_head() {
    let tmp = tempfile::tempdir().unwrap();
    let xds = start_xds_env(tmp.path(), &[], &debug_env(), "membrane_xds=debug");
    // A head trickled a byte every 300 ms is cut at the 1 s deadline.
    let mut slow = TcpStream::connect(xds.debug()).await.unwrap();
    let cut = trickle(
        &mut slow,
        "GET /ready HTTP/1.1\r\nx-slow: ",
        "a",
        Duration::from_secs(6),
    )
    .await;
    let (after, _) = cut.expect("the slow head is still being read after 6 s");
    assert!(after < Duration::from_secs(3), "cut after {after:?}");
    // Still serving, and the cut is counted. The count is taken when the connection's
    // task ends, just after the socket closed, so the client can see the close first.
    let counted = |text: &str| {
        metric(
            text,
            "membrane_xds_connections_timed_out_total{listener=\"debug\"}",
        )
    };
    let text = membrane_test_support::eventually(
        Duration::from_secs(5),
        "the cut counted in /metrics",
        || async {
            let text = debug_get(xds.debug(), "/metrics").await;
            (counted(&text) >= 1).then_some(text)
        },
    )
    .await;
    assert_eq!(counted(&text), 1, "{text}");
}

struct Webhook {
    xds: Xds,
    tls: TlsConnector,
    _dir: tempfile::TempDir,
}

impl Webhook {
    fn start(env: &[(&str, &str)]) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        make_certs(&certs);
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
        let args = webhook_args(&cert, &key);
        let xds = start_xds_env(&src, &args, env, "membrane_xds=debug");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Webhook {
            xds,
            tls: TlsConnector::from(Arc::new(cfg)),
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.xds.webhook().expect("webhook served")
    }

    async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr()).await?;
        let name = ServerName::try_from("membrane-xds.test").unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.tls.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))?
    }
}

fn webhook_env() -> [(&'static str, &'static str); 3] {
    [
        ("MEMBRANE_WEBHOOK_MAX_CONNECTIONS", "2"),
        ("MEMBRANE_HTTP_HEAD_TIMEOUT_MS", "1000"),
        ("MEMBRANE_HTTP_BODY_TIMEOUT_MS", "1500"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_closes_connections_past_its_cap() {
    let hook = Webhook::start(&webhook_env());
    // Two connections that never start TLS hold both places; a third is
    // closed during its handshake.
    let held = [
        TcpStream::connect(hook.addr()).await.unwrap(),
        TcpStream::connect(hook.addr()).await.unwrap(),
    ];
    let third = hook.connect().await;
    assert!(
        third.is_err(),
        "a connection past the cap of 2 completed its TLS handshake"
    );
    drop(held);
    // Room again once the listener has seen them close; an attempt made before is refused
    // (and counted) like the third.
    let mut early = 0;
    while let Err(e) = hook.connect().await {
        early += 1;
        assert!(
            early < 100,
            "no room again after the held connections went: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = debug_get(hook.xds.debug(), "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "membrane_xds_connections_refused_total{listener=\"webhook\"}"
        ),
        1 + early,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_cuts_a_slow_request_head() {
    let hook = Webhook::start(&webhook_env());
    // A request head trickled a byte every 300 ms: cut at the 1 s deadline
    // (it was 10 s, fixed).
    let mut slow = hook.connect().await.unwrap();
    let cut = trickle(
        &mut slow,
        "POST /inject HTTP/1.1\r\nhost: x\r\nx-slow: ",
        "a",
        Duration::from_secs(6),
    )
    .await;
    let (after, _) = cut.expect("the slow head is still being read after 6 s");
    assert!(after < Duration::from_secs(3), "head cut after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answers_a_slow_body_with_408() {
    let hook = Webhook::start(&webhook_env());
    // A body trickled a byte every 300 ms: 408 at the 1.5 s deadline.
    let mut slow = hook.connect().await.unwrap();
    let cut = trickle(
        &mut slow,
        "POST /inject HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 100000\r\n\r\n",
        " ",
        Duration::from_secs(6),
    )
    .await;
    let (after, answer) = cut.expect("the slow body is still being read after 6 s");
    assert!(after < Duration::from_secs(4), "body cut after {after:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let text = debug_get(hook.xds.debug(), "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "membrane_xds_connections_timed_out_total{listener=\"webhook\"}"
        ),
        1,
        "{text}"
    );
}
