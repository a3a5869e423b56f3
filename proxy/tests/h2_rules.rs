//! RFC 9113 request rules on HTTP/2, checked with hand-built frames (clients refuse to send
//! malformed requests): each malformed request must be refused (RST_STREAM or GOAWAY with
//! PROTOCOL_ERROR, or a 400), and never reach the backend.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header field without indexing, new name (RFC 7541 §6.2.2), short strings.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// `GET /v1/x` (method, scheme, path from the static table) plus `extra` header block bytes.
fn request_block(extra: &[u8]) -> Vec<u8> {
    // :method GET (2), :scheme http (6), :path / is 4 but we want /v1/x: literal with indexed name 4.
    let mut b = vec![0x82, 0x86, 0x04, 5];
    b.extend_from_slice(b"/v1/x");
    b.extend_from_slice(&[0x01, 1, b'a']); // :authority "a" (indexed name 1)
    b.extend_from_slice(extra);
    b
}

/// Frame types seen in reply, with (type, error code for RST_STREAM/GOAWAY, or :status byte).
async fn exchange(p: &Proxy, frames: &[Vec<u8>]) -> Vec<(u8, u32)> {
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    for f in frames {
        s.write_all(f).await.unwrap();
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // Stop once the stream or connection is finished.
                    if parse(&buf)
                        .iter()
                        .any(|(t, _)| *t == 0x3 || *t == 0x7 || *t == 0x1)
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    parse(&buf)
}

fn parse(mut buf: &[u8]) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    while buf.len() >= 9 {
        let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
        if buf.len() < 9 + len {
            break;
        }
        let kind = buf[3];
        let p = &buf[9..9 + len];
        let code = match kind {
            0x3 if p.len() >= 4 => u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            0x7 if p.len() >= 8 => u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            // HEADERS: the first byte of the block; 0x88 is the indexed ":status 200".
            0x1 => u32::from(p.first().copied().unwrap_or(0)),
            _ => 0,
        };
        out.push((kind, code));
        buf = &buf[9 + len..];
    }
    out
}

fn refused(frames: &[(u8, u32)]) -> bool {
    frames
        .iter()
        .any(|(t, c)| (*t == 0x3 || *t == 0x7) && *c == 0x1)
        || frames.iter().any(|(t, c)| *t == 0x1 && *c != 0x88)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_request_gets_200() {
    let p = start_proxy().await;
    let got = exchange(&p, &[frame(0x1, 0x5, 1, &request_block(&[]))]).await;
    assert!(
        got.contains(&(0x1, 0x88)),
        "expected :status 200, got {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    let p = start_proxy().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "connection-specific header",
            request_block(&literal("connection", "keep-alive")),
        ),
        (
            "te other than trailers",
            request_block(&literal("te", "gzip")),
        ),
        (
            "upper-case header name",
            request_block(&literal("X-Upper", "1")),
        ),
        ("pseudo-header after regular header", {
            let mut b = request_block(&literal("x-a", "1"));
            b.extend_from_slice(&literal(":foo", "bar"));
            b
        }),
        (
            "unknown pseudo-header",
            request_block(&literal(":foo", "bar")),
        ),
        ("missing :path", vec![0x82, 0x86, 0x01, 1, b'a']),
    ];
    for (name, block) in cases {
        let got = exchange(&p, &[frame(0x1, 0x5, 1, &block)]).await;
        assert!(refused(&got), "{name}: not refused: {got:?}");
    }
    // content-length that disagrees with the DATA sent.
    let block = request_block(&literal("content-length", "10"));
    let got = exchange(
        &p,
        &[frame(0x1, 0x4, 1, &block), frame(0x0, 0x1, 1, b"abc")],
    )
    .await;
    assert!(
        refused(&got),
        "content-length mismatch: not refused: {got:?}"
    );
}
