//! Slow clients cannot hold a connection and an upstream forever: the head timeout counts from
//! the first byte (also for bytes read while sniffing for the HTTP/2 preface), a trickled or
//! stalled request body is cut off by `--request-timeout` / `--stream-idle-timeout`, and so is
//! a client that stops reading its response. Real sockets, short configured timeouts, bounded
//! waits; nothing here asserts how fast anything is.

mod common;
mod rawhttp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rawhttp::RawBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start_with_backend(
    backend: std::net::SocketAddr,
    extra: &[&str],
) -> membrane_proxy::Running {
    let cfg = config(backend, extra);
    membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .unwrap()
}

/// Waits until every upstream connection the backend saw is closed.
async fn upstream_released(b: &RawBackend, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let conns = b.conns();
        if !conns.is_empty() && conns.iter().all(|c| c.closed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_timeout_counts_from_the_first_byte_when_the_sniff_read_it() {
    let p = start_proxy_with(&["--header-read-timeout", "300ms"]).await;
    // Shorter than the HTTP/2 preface: all of it is read while sniffing.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /v1/x HTTP/1.1\r\n").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "a head whose first bytes came with the sniff was never cut off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_h2_preface_is_cut_off() {
    let p = start_proxy_with(&["--header-read-timeout", "300ms"]).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_body_is_cut_off_and_the_upstream_released() {
    let backend = RawBackend::start().await;
    let running = start_with_backend(
        backend.addr,
        &["--request-timeout", "600ms", "--stream-idle-timeout", "10s"],
    )
    .await;
    let mut s = TcpStream::connect(running.addrs.listen).await.unwrap();
    s.write_all(b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
        .await
        .unwrap();
    // One byte every 100 ms: never idle, never complete.
    let mut reply = Vec::new();
    let mut cut = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"x").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        cut || reply.starts_with("HTTP/1.1 408"),
        "a trickled body held the connection for 4 s: {reply:?}"
    );
    assert!(
        upstream_released(&backend, Duration::from_secs(3)).await,
        "the upstream connection is still held: {:?}",
        backend.conns()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_hits_the_stream_idle_timeout() {
    let backend = RawBackend::start().await;
    let running = start_with_backend(backend.addr, &["--stream-idle-timeout", "500ms"]).await;
    let mut s = TcpStream::connect(running.addrs.listen).await.unwrap();
    s.write_all(
        b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(4)).await,
        "a stalled body held the connection"
    );
    assert!(
        upstream_released(&backend, Duration::from_secs(3)).await,
        "the upstream connection is still held: {:?}",
        backend.conns()
    );
}

/// A backend that answers every connection with an endless body and notes when the proxy
/// stopped taking it.
async fn endless_backend() -> (std::net::SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut head = [0u8; 4096];
        let _ = s.read(&mut head).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
            .await;
        let zeros = vec![0u8; 64 * 1024];
        // Bounded: 1 GiB at most, far more than any socket buffers hold.
        for _ in 0..16 * 1024 {
            if s.write_all(&zeros).await.is_err() {
                break;
            }
        }
        r.store(true, Ordering::Relaxed);
    });
    (addr, released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_cut_off_and_the_upstream_released() {
    let (backend, released) = endless_backend().await;
    let running = start_with_backend(
        backend,
        &[
            "--stream-idle-timeout",
            "500ms",
            "--upstream-protocol",
            "http1",
        ],
    )
    .await;
    let mut s = TcpStream::connect(running.addrs.listen).await.unwrap();
    s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Never read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while !released.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        released.load(Ordering::Relaxed),
        "a client that does not read held the upstream for 6 s"
    );
    drop(s);
}

/// A request body that sends one byte and then nothing, never ending.
struct Stall(bool);
impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Pending;
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(b"x")))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stalled_request_body_gets_408() {
    let p = start_proxy_with(&["--request-timeout", "500ms"]).await;
    let s = TcpStream::connect(p.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/v1/request-landing", p.addr()))
        .body(Stall(false))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(4), send.send_request(req))
        .await
        .expect("an HTTP/2 stream with a stalled body was never answered");
    match resp {
        Ok(r) => assert_eq!(r.status(), 408),
        // A reset stream also releases it.
        Err(e) => eprintln!("stream reset: {e}"),
    }
}
