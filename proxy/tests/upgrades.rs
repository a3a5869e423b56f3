//! Upgrades: only the protocols `--upgrade-types` lists are tunnelled (`websocket` by default;
//! `h2c` never); any other `Upgrade` is stripped and the request forwarded as plain HTTP.
//! A tunnel holds its connection slot and closes after `--stream-idle-timeout` without bytes.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO_UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_lowercase()
}

async fn tunnel(p: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(ECHO_UPGRADE).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_upgrade_is_forwarded_as_plain_http() {
    let p = start_proxy().await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(ECHO_UPGRADE).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("x-seen-connection"),
        "the upgrade reached the backend: {head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_never_tunnelled() {
    let p = start_proxy().await;
    // curl --http2 on http:// asks for `Upgrade: h2c` with HTTP2-Settings.
    let (code, headers, _) = curl(&["--http2", &p.url("/v1/x")]).await;
    assert_eq!(code, 200, "{headers}");
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(
        !headers.contains("x-seen-connection"),
        "Connection: upgrade reached the backend: {headers}"
    );
    // Nor can it be configured.
    let cfg = config(p.backend, &["--upgrade-types", "websocket,h2c"]);
    let err = membrane_proxy::start(&cfg, membrane_proxy::policy::load(&cfg).unwrap(), None)
        .await
        .err()
        .expect("h2c refused");
    assert!(err.to_string().contains("--upgrade-types"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_upgrade_is_tunnelled() {
    let p = start_proxy_with(&["--upgrade-types", "websocket,echo"]).await;
    drop(tunnel(&p).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_hold_their_connection_slot() {
    let p = start_proxy_with(&["--max-connections", "1", "--upgrade-types", "echo"]).await;
    let mut t = tunnel(&p).await;
    let mut second = TcpStream::connect(p.addr()).await.unwrap();
    let _ = second
        .write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a second connection was served while a tunnel held the only slot: {:?}",
        r.map(|r| r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
    );
    // The tunnel itself still works.
    t.write_all(b"pong").await.unwrap();
    let mut got = [0u8; 4];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed() {
    let p = start_proxy_with(&["--upgrade-types", "echo", "--stream-idle-timeout", "300ms"]).await;
    let mut t = tunnel(&p).await;
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(3), t.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "an idle tunnel stayed open"
    );
}
