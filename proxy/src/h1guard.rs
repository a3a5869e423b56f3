//! Strict HTTP/1.1 framing in front of hyper's parser.
//!
//! hyper accepts some inputs that RFC 9112 lets a recipient accept but that a proxy must refuse,
//! because another parser on the path may read them differently (request smuggling):
//! bare LF line endings, `Content-Length` together with `Transfer-Encoding` (hyper drops the
//! length and continues), repeated `Content-Length`. This guard sits between the socket and
//! hyper, holds back each request head until it is complete, validates it and tracks the body's
//! framing so it knows where the next head starts. A bad head is replaced by bytes hyper's
//! parser always rejects, so hyper answers `400 Bad Request` and closes; a bad chunked body
//! becomes a read error, so the request is never completed upstream.
//!
//! Written by hand: no crate offers a streaming validator that composes with hyper's own I/O.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A framing rule a request head or chunked body broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A line ended with LF alone.
    #[error("bare LF line ending")]
    BareLf,
    /// A CR not followed by LF.
    #[error("bare CR")]
    BareCr,
    /// A NUL byte in the head.
    #[error("NUL in request head")]
    Nul,
    /// A header line starting with whitespace (obsolete line folding).
    #[error("obs-fold header continuation")]
    ObsFold,
    /// Both framing headers present.
    #[error("both Content-Length and Transfer-Encoding")]
    ClAndTe,
    /// More than one Content-Length header line or list value.
    #[error("repeated Content-Length")]
    DuplicateCl,
    /// A Content-Length that is not a decimal number.
    #[error("invalid Content-Length")]
    InvalidCl,
    /// Transfer-Encoding whose final coding is not `chunked`.
    #[error("Transfer-Encoding not ending in chunked")]
    BadTe,
    /// A malformed chunk size line or chunk terminator.
    #[error("malformed chunked body")]
    BadChunk,
}

/// What the guard learned from a valid head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Body length: `Some(n)` fixed, `None` chunked.
    pub body: Body,
    /// The connection switches protocol after this request if the upstream agrees; scanning
    /// stops there.
    pub upgrade: bool,
}

/// Request body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length: n` (or no body: 0).
    Fixed(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Validates one complete request head (request line through the empty line, CRLFs included).
pub fn validate_head(head: &[u8]) -> Result<Framing, Violation> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            0 => return Err(Violation::Nul),
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(Violation::BareLf),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(Violation::BareCr),
            _ => {}
        }
    }
    let text = head;
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let is_connect = request_line.starts_with(b"CONNECT ");
    let mut cl: Option<u64> = None;
    let mut te: Option<Vec<u8>> = None;
    let mut upgrade = is_connect;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(Violation::ObsFold);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue; // hyper rejects it with 400
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if cl.is_some() || value.contains(&b',') {
                return Err(Violation::DuplicateCl);
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(Violation::InvalidCl);
            }
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Violation::InvalidCl)?;
            cl = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let all = te.get_or_insert_with(Vec::new);
            if !all.is_empty() {
                all.push(b',');
            }
            all.extend_from_slice(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let body = match (cl, te) {
        (Some(_), Some(_)) => return Err(Violation::ClAndTe),
        (None, Some(te)) => {
            let last = te
                .rsplit(|&b| b == b',')
                .next()
                .map(trim)
                .unwrap_or_default();
            if !last.eq_ignore_ascii_case(b"chunked") {
                return Err(Violation::BadTe);
            }
            Body::Chunked
        }
        (Some(n), None) => Body::Fixed(n),
        (None, None) => Body::Fixed(0),
    };
    Ok(Framing { body, upgrade })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8, size: u64 },
    Ext { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    /// After an upgrade (or a head too large for us to hold: hyper answers 431 itself).
    Passthrough,
    /// A violation was found; the connection reads as closed from here.
    Poisoned,
}

/// When the request head currently being received started, so the connection can enforce
/// the header read timeout with one coarse timer instead of hyper's per-request timer (which
/// re-arms tokio's timer on every request and costs an eventfd wake-up each time).
#[derive(Debug)]
pub struct HeadClock {
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` + 1 at which the pending head began; 0: none pending.
    since: std::sync::atomic::AtomicU64,
}

impl Default for HeadClock {
    fn default() -> Self {
        HeadClock {
            epoch: std::time::Instant::now(),
            since: Default::default(),
        }
    }
}

impl HeadClock {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// How long the pending head has been arriving, if one is.
    pub fn pending_for(&self) -> Option<std::time::Duration> {
        use std::sync::atomic::Ordering;
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(std::time::Duration::from_millis(
                self.now().saturating_sub(t),
            )),
        }
    }

    fn update(&self, partial_head: bool) {
        use std::sync::atomic::Ordering;
        let cur = self.since.load(Ordering::Relaxed);
        if partial_head && cur == 0 {
            self.since.store(self.now(), Ordering::Relaxed);
        } else if !partial_head && cur != 0 {
            self.since.store(0, Ordering::Relaxed);
        }
    }
}

/// Bytes hyper's parser rejects in any position of a request head (NUL is not a token char).
const REJECT: &[u8] = b"\0 / HTTP/1.1\r\n\r\n";

pin_project_lite::pin_project! {
    /// The I/O hyper's HTTP/1 server reads through: see the module docs.
    pub struct H1Guard<T> {
        #[pin]
        inner: T,
        prefix: Bytes,
        state: State,
        upgrade_after_body: bool,
        head: Vec<u8>,
        out: BytesMut,
        max_head: usize,
        violation: Option<Violation>,
        clock: Option<std::sync::Arc<HeadClock>>,
    }
}

impl<T> H1Guard<T> {
    /// Wraps `inner`; `prefix` holds bytes already read from it (protocol sniffing).
    pub fn new(inner: T, prefix: Bytes, max_head: usize) -> Self {
        H1Guard {
            inner,
            prefix,
            state: State::Head,
            upgrade_after_body: false,
            head: Vec::new(),
            out: BytesMut::new(),
            max_head,
            violation: None,
            clock: None,
        }
    }

    /// Records head arrival times in `clock` (see [`HeadClock`]).
    pub fn with_clock(mut self, clock: std::sync::Arc<HeadClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// No validation: only replays `prefix` before reading `inner` (HTTP/2 after sniffing).
    pub fn passthrough(inner: T, prefix: Bytes) -> Self {
        let mut g = Self::new(inner, prefix, 0);
        g.state = State::Passthrough;
        g
    }
}

struct Scan<'a> {
    state: &'a mut State,
    upgrade_after_body: &'a mut bool,
    head: &'a mut Vec<u8>,
    out: &'a mut BytesMut,
    max_head: usize,
    violation: &'a mut Option<Violation>,
}

impl Scan<'_> {
    fn after_body(&mut self) {
        *self.state = if *self.upgrade_after_body {
            State::Passthrough
        } else {
            State::Head
        };
    }

    fn poison(&mut self, v: Violation, in_head: bool) {
        tracing::debug!(violation = %v, "rejecting HTTP/1 framing");
        *self.violation = Some(v);
        *self.state = State::Poisoned;
        self.head.clear();
        if in_head {
            self.out.extend_from_slice(REJECT);
        }
    }

    fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            match *self.state {
                State::Passthrough => {
                    self.out.extend_from_slice(&data[i..]);
                    return;
                }
                State::Poisoned => return,
                State::Head => {
                    let b = data[i];
                    i += 1;
                    self.head.push(b);
                    // Empty lines before a request line are allowed (RFC 9112 §2.2).
                    if self.head.as_slice() == b"\r\n" {
                        self.out.extend_from_slice(b"\r\n");
                        self.head.clear();
                        continue;
                    }
                    if self.head.as_slice() == b"\n" {
                        self.poison(Violation::BareLf, true);
                        continue;
                    }
                    if b == b'\n'
                        && (self.head.ends_with(b"\r\n\r\n") || self.head.ends_with(b"\n\n"))
                    {
                        match validate_head(self.head) {
                            Ok(f) => {
                                self.out.extend_from_slice(self.head);
                                self.head.clear();
                                *self.upgrade_after_body = f.upgrade;
                                match f.body {
                                    Body::Fixed(0) => self.after_body(),
                                    Body::Fixed(n) => *self.state = State::Fixed(n),
                                    Body::Chunked => {
                                        *self.state =
                                            State::Chunked(Chunk::Size { digits: 0, size: 0 })
                                    }
                                }
                            }
                            Err(v) => self.poison(v, true),
                        }
                    } else if self.head.len() > self.max_head {
                        // hyper enforces its own limit on what follows and answers 431.
                        self.out.extend_from_slice(self.head);
                        self.head.clear();
                        *self.state = State::Passthrough;
                    }
                }
                State::Fixed(n) => {
                    let take = (n.min((data.len() - i) as u64)) as usize;
                    self.out.extend_from_slice(&data[i..i + take]);
                    i += take;
                    if n == take as u64 {
                        self.after_body();
                    } else {
                        *self.state = State::Fixed(n - take as u64);
                    }
                }
                State::Chunked(Chunk::Data(n)) => {
                    let take = (n.min((data.len() - i) as u64)) as usize;
                    self.out.extend_from_slice(&data[i..i + take]);
                    i += take;
                    *self.state = State::Chunked(if n == take as u64 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(n - take as u64)
                    });
                }
                State::Chunked(c) => {
                    let b = data[i];
                    i += 1;
                    self.out.extend_from_slice(&[b]);
                    let next = match (c, b) {
                        (Chunk::Size { digits, size }, _) if b.is_ascii_hexdigit() => {
                            if digits >= 15 {
                                None
                            } else {
                                let d = u64::from((b as char).to_digit(16).unwrap_or(0) as u8);
                                Some(Chunk::Size {
                                    digits: digits + 1,
                                    size: size * 16 + d,
                                })
                            }
                        }
                        (Chunk::Size { digits, size }, b';' | b' ' | b'\t') if digits > 0 => {
                            Some(Chunk::Ext { size })
                        }
                        (Chunk::Size { digits, size }, b'\r') if digits > 0 => {
                            Some(Chunk::SizeLf { size })
                        }
                        (Chunk::Size { .. }, _) => None,
                        (Chunk::Ext { size }, b'\r') => Some(Chunk::SizeLf { size }),
                        (Chunk::Ext { .. }, b'\n' | 0) => None,
                        (Chunk::Ext { size }, _) => Some(Chunk::Ext { size }),
                        (Chunk::SizeLf { size: 0 }, b'\n') => Some(Chunk::TrailerStart),
                        (Chunk::SizeLf { size }, b'\n') => Some(Chunk::Data(size)),
                        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                        (Chunk::DataLf, b'\n') => Some(Chunk::Size { digits: 0, size: 0 }),
                        (Chunk::TrailerStart, b'\r') => Some(Chunk::FinalLf),
                        (Chunk::TrailerStart | Chunk::TrailerLine, b'\n' | 0) => None,
                        (Chunk::TrailerStart, b' ' | b'\t') => None,
                        (Chunk::TrailerLine, b'\r') => Some(Chunk::TrailerLf),
                        (Chunk::TrailerStart | Chunk::TrailerLine, _) => Some(Chunk::TrailerLine),
                        (Chunk::TrailerLf, b'\n') => Some(Chunk::TrailerStart),
                        (Chunk::FinalLf, b'\n') => {
                            self.after_body();
                            continue;
                        }
                        _ => None,
                    };
                    match next {
                        Some(c) => *self.state = State::Chunked(c),
                        None => self.poison(Violation::BadChunk, false),
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead> AsyncRead for H1Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            match *this.state {
                State::Poisoned => {
                    return match this.violation {
                        Some(v @ Violation::BadChunk) => {
                            Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, *v)))
                        }
                        _ => Poll::Ready(Ok(())),
                    };
                }
                State::Passthrough if this.prefix.is_empty() => {
                    return this.inner.poll_read(cx, buf)
                }
                _ => {}
            }
            let mut scan = Scan {
                state: this.state,
                upgrade_after_body: this.upgrade_after_body,
                head: this.head,
                out: this.out,
                max_head: *this.max_head,
                violation: this.violation,
            };
            if !this.prefix.is_empty() {
                let p = std::mem::take(this.prefix);
                scan.feed(&p);
                continue;
            }
            // Uninitialized: zeroing 8 KiB per read showed up in profiles.
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut rb = ReadBuf::uninit(&mut tmp);
            ready!(this.inner.as_mut().poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                // EOF: hand hyper whatever partial head there is; it reports it.
                if !scan.head.is_empty() {
                    let h = std::mem::take(scan.head);
                    scan.out.extend_from_slice(&h);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            scan.feed(got);
            if let Some(c) = this.clock.as_ref() {
                c.update(matches!(*this.state, State::Head) && !this.head.is_empty());
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for H1Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn heads() {
        let ok = validate_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            ok,
            Framing {
                body: Body::Fixed(0),
                upgrade: false
            }
        );
        let ok = validate_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(ok.body, Body::Fixed(5));
        let ok =
            validate_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(ok.body, Body::Chunked);
        let ok =
            validate_head(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
                .unwrap();
        assert!(ok.upgrade);
        let bad: &[(&[u8], Violation)] = &[
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", Violation::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\n\n", Violation::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", Violation::BareCr),
            (b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", Violation::Nul),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
                Violation::ObsFold,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Violation::ClAndTe,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                Violation::ClAndTe,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Violation::DuplicateCl,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n",
                Violation::DuplicateCl,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                Violation::InvalidCl,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
                Violation::InvalidCl,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Violation::BadTe,
            ),
        ];
        for (head, want) in bad {
            assert_eq!(
                validate_head(head),
                Err(*want),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    async fn through(input: &[u8], byte_at_a_time: bool) -> (Vec<u8>, Option<io::ErrorKind>) {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if byte_at_a_time {
                for b in input {
                    client.write_all(&[b]).await.unwrap();
                }
            } else {
                client.write_all(&input).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut g = H1Guard::new(server, Bytes::new(), 8192);
        let mut out = Vec::new();
        let err = g.read_to_end(&mut out).await.err().map(|e| e.kind());
        drop(writer.await.unwrap());
        (out, err)
    }

    #[tokio::test]
    async fn passes_valid_pipelines_unchanged() {
        let input: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        for slow in [false, true] {
            let (out, err) = through(input, slow).await;
            assert_eq!(err, None);
            assert_eq!(out, input);
        }
    }

    #[tokio::test]
    async fn replaces_a_bad_head_and_stops() {
        let input: &[u8] =
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\nX: y\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let (out, err) = through(input, false).await;
        assert_eq!(err, None);
        let mut want = b"GET /a HTTP/1.1\r\n\r\n".to_vec();
        want.extend_from_slice(REJECT);
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn bad_chunk_is_a_read_error() {
        for body in [
            &b"zz\r\n"[..],
            b"3\r\nabcX",
            b"\r\n",
            b"3\nabc\r\n",
            b"0\r\n x\r\n\r\n",
        ] {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(body);
            let (_, err) = through(&input, false).await;
            assert_eq!(
                err,
                Some(io::ErrorKind::InvalidData),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
