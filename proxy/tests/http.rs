//! End-to-end behaviour with real clients over loopback: curl (HTTP/1.1 and h2c), h2load,
//! a hyper HTTP/2 client for trailers, and raw sockets for framing attacks.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_allow_is_forwarded_and_deny_is_403() {
    let p = start_proxy().await;
    let (code, headers, body) = curl(&[&p.url("/v1/x?y=1")]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-path: /v1/x?y=1"), "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");
    assert_eq!(body, "");

    let (code, headers, body) = curl(&["-X", "PUT", &p.url("/v1/exhaust-port")]).await;
    assert_eq!(code, 403);
    assert!(headers.contains("content-type: text/plain"), "{headers}");
    assert!(
        !headers.contains("x-seen-path"),
        "denied request reached the backend: {headers}"
    );
    assert_eq!(body, "Access denied\r\n");

    let (code, _, body) = curl(&["-X", "POST", "-d", "land", &p.url("/v1/request-landing")]).await;
    assert_eq!((code, body.as_str()), (200, "land"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keepalive_and_chunked_bodies_on_one_connection() {
    let p = start_proxy().await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(
        b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
GET /v1/second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.contains("hello world"), "{out}");
    assert!(
        out.to_lowercase().contains("x-seen-path: /v1/second"),
        "{out}"
    );
    assert_eq!(
        p.running
            .metrics
            .encode_envoy_stats()
            .lines()
            .find(|l| l.contains("cx_total")),
        Some("http.inbound.downstream_cx_total: 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_allow_and_deny() {
    let p = start_proxy().await;
    let (code, headers, _) = curl(&["--http2-prior-knowledge", &p.url("/v1/x")]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.starts_with("http/2 200"), "{headers}");
    assert!(
        headers.contains("x-seen-version: http/2.0"),
        "upstream should get h2: {headers}"
    );
    let (code, headers, body) = curl(&[
        "--http2-prior-knowledge",
        "-X",
        "PUT",
        &p.url("/v1/exhaust-port"),
    ])
    .await;
    assert_eq!(code, 403, "{headers}");
    assert_eq!(body, "Access denied\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_to_http1_upstream_when_configured() {
    let p = start_proxy_with(&["--upstream-protocol", "http1"]).await;
    let (code, headers, _) = curl(&["--http2-prior-knowledge", &p.url("/v1/x")]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.contains("x-seen-version: http/1.1"), "{headers}");
    assert!(
        headers.contains(&format!("x-seen-host: {}", p.addr())),
        "authority becomes Host: {headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_many_streams_all_succeed() {
    let p = start_proxy().await;
    let out = tokio::process::Command::new("h2load")
        .args(["-n", "400", "-c", "4", "-m", "10", &p.url("/v1/load")])
        .output()
        .await
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("400 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 400 2xx"), "{text}");
    let out = tokio::process::Command::new("h2load")
        .args([
            "-n",
            "100",
            "-c",
            "2",
            "-m",
            "10",
            "-m",
            "5",
            "-H",
            ":method: PUT",
            &p.url("/v1/exhaust-port"),
        ])
        .output()
        .await
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 2xx, 0 3xx, 100 4xx"), "{text}");
}

async fn h2_client(p: &Proxy) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(p.addr()).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn grpc_request(p: &Proxy, path: &str) -> http::Request<Full<Bytes>> {
    // A length-prefixed gRPC message: flag 0, length 3, "abc".
    http::Request::post(format!("http://{}{path}", p.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x03abc")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_through_and_denial_is_trailers_only_status_7() {
    let p = start_proxy().await;
    let mut send = h2_client(&p).await;
    let resp = send
        .send_request(grpc_request(&p, "/grpc.test.Svc/Call"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-seen-te"], "trailers");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "seen");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x03abc");

    let resp = send
        .send_request(grpc_request(&p, "/grpc.test.Other/Call"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert!(
        resp.body().is_end_stream_hint(),
        "trailers-only: END_STREAM on the HEADERS frame"
    );
}

trait EndHint {
    fn is_end_stream_hint(&self) -> bool;
}
impl EndHint for hyper::body::Incoming {
    fn is_end_stream_hint(&self) -> bool {
        hyper::body::Body::is_end_stream(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_tunnelled_when_allowed_and_denied_otherwise() {
    let p = start_proxy_with(&["--upgrade-types", "echo"]).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut got = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping through the tunnel");

    let out = raw(
        p.addr(),
        b"GET /not-ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalized_before_matching_and_forwarded_normalized() {
    let p = start_proxy().await;
    // Matched and forwarded as normalized.
    for (sent, forwarded) in [
        ("/v1/a/../b", "/v1/b"),
        ("/v1/./x", "/v1/x"),
        ("/%76%31/x", "/v1/x"),
        ("/v1/%7Euser", "/v1/~user"),
        ("/admin/%2e%2e/v1/x", "/v1/x"),
    ] {
        let (code, headers, _) = curl(&["--path-as-is", &p.url(sent)]).await;
        assert_eq!(code, 200, "{sent}: {headers}");
        assert!(
            headers.contains(&format!("x-seen-path: {forwarded}\r\n")),
            "{sent}: {headers}"
        );
    }
    // Normalization moves the request out of the allowed prefix: denied.
    for sent in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/.%2E/admin"] {
        let (code, _, _) = curl(&["--path-as-is", &p.url(sent)]).await;
        assert_eq!(code, 403, "{sent}");
    }
    // Cannot be normalized safely: 400, never forwarded.
    for sent in [
        "/v1/..%2fadmin",
        "/v1/a%2Fb",
        "/v1/%00",
        "/v1/%zz",
        "/v1/%5c..%5cadmin",
    ] {
        let (code, headers, _) = curl(&["--path-as-is", &p.url(sent)]).await;
        assert_eq!(code, 400, "{sent}: {headers}");
        assert!(!headers.contains("x-seen-path"), "{sent}");
    }
    // HTTP/2 gets the same treatment.
    let (code, headers, _) = curl(&[
        "--http2-prior-knowledge",
        "--path-as-is",
        &p.url("/v1/a/../b"),
    ])
    .await;
    assert_eq!(code, 200);
    assert!(headers.contains("x-seen-path: /v1/b\r\n"), "{headers}");
    let (code, _, _) = curl(&[
        "--http2-prior-knowledge",
        "--path-as-is",
        &p.url("/v1/a%2fb"),
    ])
    .await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_slashes_option() {
    let p = start_proxy_with(&["--merge-slashes", "true"]).await;
    let (code, headers, _) = curl(&["--path-as-is", &p.url("//v1///x")]).await;
    assert_eq!(code, 200);
    assert!(headers.contains("x-seen-path: /v1/x\r\n"), "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_http1_framing_is_rejected_with_400_and_not_forwarded() {
    let p = start_proxy().await;
    let cases: &[(&str, &[u8])] = &[
        ("CL+TE", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE+CL", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
        ("duplicate CL", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
        ("conflicting CL", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx"),
        ("CL list", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\nx"),
        ("invalid CL", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
        ("CL sign", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx"),
        ("TE not chunked", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
        ("bad chunk size", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("chunk size overflow", b"POST /v1/request-landing HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n"),
        ("bare LF", b"GET /v1/x HTTP/1.1\nHost: a\n\n"),
        ("bare LF in header", b"GET /v1/x HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"),
        ("obs-fold", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("NUL in value", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"),
        ("CR in value", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
        ("space in name", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX Y: a\r\n\r\n"),
        ("space before colon", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n"),
        ("invalid method", b"G@T /v1/x HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("missing host", b"GET /v1/x HTTP/1.1\r\n\r\n"),
        ("two hosts", b"GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("bad version", b"GET /v1/x HTTP/9.9\r\nHost: a\r\n\r\n"),
    ];
    let mut failed = vec![];
    for (name, bytes) in cases {
        let out = raw(p.addr(), bytes, Duration::from_secs(3)).await;
        if !out.starts_with("HTTP/1.1 400") {
            failed.push(*name);
            continue;
        }
        assert!(
            !out.to_lowercase().contains("x-seen-path"),
            "{name}: forwarded: {out:?}"
        );
    }
    assert!(failed.is_empty(), "not rejected: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_size_limit_gives_431() {
    let p = start_proxy_with(&["--max-header-bytes", "2048"]).await;
    let big = "a".repeat(4096);
    let (code, _, _) = curl(&["-H", &format!("X-Big: {big}"), &p.url("/v1/x")]).await;
    assert_eq!(code, 431);
    let (code, _, _) = curl(&["-H", "X-Small: b", &p.url("/v1/x")]).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let p = start_proxy_with(&["--header-read-timeout", "300ms"]).await;
    // Nothing at all.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    // A head that never completes.
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    // A prompt client is unaffected.
    let (code, _, _) = curl(&[&p.url("/v1/x")]).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let p = start_proxy_with(&["--idle-timeout", "300ms"]).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = std::time::Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "idle connection stayed open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_closes_the_excess() {
    let p = start_proxy_with(&["--max-connections", "1"]).await;
    let mut first = TcpStream::connect(p.addr()).await.unwrap();
    first
        .write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(p.addr()).await.unwrap();
    let _ = second
        .write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert!(closed_within(&mut second, Duration::from_secs(3)).await);
    assert!(p
        .running
        .metrics
        .encode_envoy_stats()
        .contains("downstream_cx_overflow: 1"));
    drop(first);
    // The slot frees up once the first connection is gone.
    let mut ok = false;
    for _ in 0..50 {
        let (code, _, _) = curl(&[&p.url("/v1/x")]).await;
        if code == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_concurrent_stream_limit_is_advertised() {
    let p = start_proxy_with(&["--max-concurrent-streams", "7"]).await;
    let out = tokio::process::Command::new("nghttp")
        .args(["-nv", &p.url("/v1/x")])
        .output()
        .await
        .expect("nghttp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "{text}"
    );
    assert!(text.contains(":status: 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_503() {
    let p = start_proxy().await;
    // A port nothing listens on: bound and held (never listening, so connects are refused)
    // for the whole test, so no other test can take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = held.local_addr().unwrap();
    let cfg = config(dead, &[]);
    let running = membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .unwrap();
    let (code, _, body) = curl(&[&format!("http://{}/v1/x", running.addrs.listen)]).await;
    assert_eq!((code, body.as_str()), (503, "Upstream unavailable\r\n"));
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_forwarded() {
    // The HTTP/1.1 upstream answers with `connection: x-hop`, `x-hop` and `keep-alive`; no
    // client may see them, over HTTP/1.1 or HTTP/2 (where they would be malformed).
    let p = start_proxy_with(&["--upstream-protocol", "http1"]).await;
    let (code, headers, _) = curl(&["-H", "x-send-hop: 1", &p.url("/v1/x")]).await;
    assert_eq!(code, 200);
    assert!(headers.contains("x-seen-path: /v1/x"), "{headers}");
    for h in ["x-hop:", "keep-alive:", "connection: x-hop"] {
        assert!(
            !headers.contains(h),
            "{h} forwarded over HTTP/1.1: {headers}"
        );
    }
    let mut send = h2_client(&p).await;
    let req = http::Request::get(format!("http://{}/v1/x", p.addr()))
        .header("x-send-hop", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    for h in ["connection", "x-hop", "keep-alive"] {
        assert!(resp.headers().get(h).is_none(), "{h} forwarded over HTTP/2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_detail_header_is_opt_in() {
    let p = start_proxy().await;
    let (_, headers, _) = curl(&["-X", "PUT", &p.url("/v1/exhaust-port")]).await;
    assert!(!headers.contains("x-membrane-denied-by"), "{headers}");
    let p = start_proxy_with(&["--deny-detail-header", "true"]).await;
    let (code, headers, _) = curl(&["-X", "PUT", &p.url("/v1/exhaust-port")]).await;
    assert_eq!(code, 403);
    assert!(
        headers.contains("x-membrane-denied-by: ciliumnetworkpolicy default/proxy-test"),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_with_path_parameters_are_refused() {
    let p = start_proxy().await;
    // Tomcat and Spring drop `;params` from each segment before resolving dot segments, so
    // `/v1/..;/admin` is `/admin` to them while it looked like `/v1/...` to the policy.
    for sent in [
        "/v1/..;/admin",
        "/v1/..;x=1/admin",
        "/v1/.;/x",
        "/v1/%2e%2e;/admin",
        "/v1/a/..;",
    ] {
        let (code, headers, _) = curl(&["--path-as-is", &p.url(sent)]).await;
        assert_eq!(code, 400, "{sent}: {headers}");
        assert!(!headers.contains("x-seen-path"), "{sent}: forwarded");
    }
    // Parameters on ordinary segments are left alone.
    let (code, headers, _) = curl(&["--path-as-is", &p.url("/v1/a;jsessionid=1/b")]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(
        headers.contains("x-seen-path: /v1/a;jsessionid=1/b\r\n"),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_http1_host_is_the_authority_matched() {
    let p = start_proxy_with(&["--upstream-protocol", "http1"]).await;
    let mut send = h2_client(&p).await;
    let req = http::Request::get(format!("http://{}/v1/x", p.addr()))
        .header("host", "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-seen-host"],
        p.addr().to_string().as_str(),
        "the upstream got a Host other than the :authority the policy saw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_second_host_is_refused() {
    let p = start_proxy().await;
    let out = raw(
        p.addr(),
        b"GET /v1/x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    assert!(out.starts_with("HTTP/1.0 400"), "{out}");
    assert!(!out.to_lowercase().contains("x-seen-path"), "{out}");
}
