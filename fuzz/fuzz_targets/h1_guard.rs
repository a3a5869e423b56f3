//! Arbitrary bytes through the sidecar's HTTP/1 framing guard and path normalization.
//! Nothing may panic, and:
//! - the guard reaches the same verdict whether the bytes arrive in one read or split at an
//!   arbitrary point or one byte per read, and when it finds nothing wrong it passes the
//!   bytes through unchanged;
//! - a normalized path is a fixed point of normalization and holds no dot segment, with or
//!   without `;parameters`.

#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use membrane_proxy::h1guard::{validate_head, H1Guard, Violation};
use membrane_proxy::normalize::normalize_path;
use tokio::io::{AsyncRead, ReadBuf};

/// Yields its input in reads of at most `step` bytes.
struct Reads<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Reads<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Everything the guard hands on until it ends or blocks (an upgrade request waits for a
/// verdict that no handler gives here), and the violation it found.
fn run(data: &[u8], step: usize) -> (Vec<u8>, Option<Violation>) {
    let mut g = H1Guard::new(Reads { data, step }, Bytes::new(), 1024);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    // Bounded: every Ready either moves bytes or ends.
    for _ in 0..data.len() * 2 + 16 {
        let mut b = [0u8; 512];
        let mut rb = ReadBuf::new(&mut b);
        match Pin::new(&mut g).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    (out, g.violation())
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let _ = validate_head(data);

    let (whole, v_whole) = run(data, usize::MAX);
    let split = (usize::from(ctl) % 64).max(1);
    let (parts, v_parts) = run(data, split);
    let (bytes, v_bytes) = run(data, 1);
    assert_eq!(v_whole, v_parts, "verdict depends on read boundaries");
    assert_eq!(v_whole, v_bytes, "verdict depends on read boundaries");
    if v_whole.is_none() {
        assert_eq!(whole, parts);
        assert_eq!(whole, bytes);
        assert!(data.starts_with(&whole), "guard changed valid bytes");
    }

    let path = String::from_utf8_lossy(data);
    let merge = ctl & 0x80 != 0;
    if let Ok(p) = normalize_path(&path, merge) {
        assert!(p == "*" || p.starts_with('/'), "{p:?}");
        assert_eq!(
            normalize_path(&p, merge).as_deref(),
            Ok(&*p),
            "not a fixed point"
        );
        for seg in p.split('/').skip(1) {
            let name = seg.split(';').next().unwrap_or(seg);
            assert!(name != "." && name != "..", "dot segment left in {p:?}");
        }
    }
});
