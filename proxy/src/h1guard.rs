//! Strict HTTP/1.1 framing in front of hyper's parser.
//!
//! hyper accepts some inputs that RFC 9112 lets a recipient accept but that a proxy must refuse,
//! because another parser on the path may read them differently (request smuggling):
//! bare LF line endings, `Content-Length` together with `Transfer-Encoding` (hyper drops the
//! length and continues), repeated `Content-Length`. This guard sits between the socket and
//! hyper, holds back each request head until it is complete, validates it and tracks the body's
//! framing so it knows where the next head starts. A bad head is replaced by bytes hyper's
//! parser always rejects, so hyper answers `400 Bad Request` and closes. A bad chunked body
//! found in the same read as its head replaces that head the same way, so nothing of the
//! request reaches the upstream; found later, it becomes a read error and the request is
//! never completed upstream.
//!
//! After a request that may switch protocols (`Upgrade:` or CONNECT) the guard holds the
//! rest of the stream back until the handler decides ([`crate::connwatch::ConnWatch`]): only
//! when a 101 is sent do the bytes pass unchecked; otherwise checking resumes with them.
//!
//! Written by hand: no crate offers a streaming validator that composes with hyper's own I/O.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connwatch::ConnWatch;

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
    /// Transfer-Encoding other than exactly one `chunked` (a repeated `chunked` and other
    /// codings included: the proxy forwards bodies decoded, so another coding would change
    /// what the body means).
    #[error("Transfer-Encoding other than a single chunked")]
    BadTe,
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1: faulty framing).
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    Http10Te,
    /// `Content_Length` or `Transfer_Encoding`: CGI-style servers fold `_` into `-`.
    #[error("framing header name spelled with an underscore")]
    AmbiguousName,
    /// A malformed chunk size line, chunk extension, chunk terminator or trailer field.
    #[error("malformed chunked body")]
    BadChunk,
}

/// What the guard learned from a valid head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Body length: `Some(n)` fixed, `None` chunked.
    pub body: Body,
    /// The connection may switch protocol after this request (`Upgrade:` or CONNECT): the
    /// bytes after it wait for the handler's verdict.
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
    let http10 = request_line.ends_with(b" HTTP/1.0");
    let mut cl: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
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
            // One line, one coding, `chunked`: anything else is refused rather than
            // interpreted (a repeated or second coding means something else to someone).
            if te.is_some() || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Violation::BadTe);
            }
            te = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if framing_alias(name) {
            return Err(Violation::AmbiguousName);
        }
    }
    let body = match (cl, te) {
        (_, Some(_)) if http10 => return Err(Violation::Http10Te),
        (Some(_), Some(_)) => return Err(Violation::ClAndTe),
        (None, Some(_)) => Body::Chunked,
        (Some(n), None) => Body::Fixed(n),
        (None, None) => Body::Fixed(0),
    };
    Ok(Framing { body, upgrade })
}

/// `Content_Length` / `Transfer_Encoding` (any case): read as the framing header by servers
/// that map header names to variables (CGI, WSGI, PHP), ignored by the rest.
fn framing_alias(name: &[u8]) -> bool {
    fn folded_eq(name: &[u8], want: &[u8]) -> bool {
        name.len() == want.len()
            && name.contains(&b'_')
            && name
                .iter()
                .zip(want)
                .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
    }
    folded_eq(name, b"content-length") || folded_eq(name, b"transfer-encoding")
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One trailer field line (without CRLF): `name: value`, a token name, no control bytes, and
/// not a field that frames or routes the message (RFC 9110 §6.5.1).
fn valid_trailer(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && !value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        && !framing_alias(name)
        && !["content-length", "transfer-encoding", "host", "trailer"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
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
    Size {
        digits: u8,
        size: u64,
    },
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeWs {
        size: u64,
    },
    Ext {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    /// A trailer field line, collected in `head` until its CRLF.
    TrailerLine,
    TrailerLf,
    FinalLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    Chunked(Chunk),
    /// After a request that may switch protocols: later bytes are held, unchecked, until
    /// the handler's verdict.
    AwaitUpgrade,
    /// After a 101 (or a head too large for us to hold: hyper answers 431 itself).
    Passthrough,
    /// A violation was found; the connection reads as closed from here.
    Poisoned,
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
        held: BytesMut,
        max_head: usize,
        violation: Option<Violation>,
        // The violation's bytes replaced a head: hyper answers 400, then sees EOF.
        rejected: bool,
        watch: Arc<ConnWatch>,
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
            held: BytesMut::new(),
            max_head,
            violation: None,
            rejected: false,
            watch: Default::default(),
        }
    }

    /// Shares head timing, progress and the upgrade verdict through `watch`.
    pub fn with_watch(mut self, watch: Arc<ConnWatch>) -> Self {
        self.watch = watch;
        self
    }

    /// No validation: only replays `prefix` before reading `inner` (HTTP/2 after sniffing).
    pub fn passthrough(inner: T, prefix: Bytes) -> Self {
        let mut g = Self::new(inner, prefix, 0);
        g.state = State::Passthrough;
        g
    }

    /// The violation that stopped this connection, if one did.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }
}

struct Scan<'a> {
    state: &'a mut State,
    upgrade_after_body: &'a mut bool,
    head: &'a mut Vec<u8>,
    out: &'a mut BytesMut,
    held: &'a mut BytesMut,
    max_head: usize,
    violation: &'a mut Option<Violation>,
    rejected: &'a mut bool,
    watch: &'a ConnWatch,
    /// Where in `out` the head of the request being scanned starts, when that head came in
    /// this same read (so hyper has not seen it yet and it can still be withdrawn).
    head_at: Option<usize>,
}

impl Scan<'_> {
    fn after_body(&mut self) {
        *self.state = if *self.upgrade_after_body {
            State::AwaitUpgrade
        } else {
            State::Head
        };
    }

    fn poison(&mut self, v: Violation, in_head: bool) {
        tracing::debug!(violation = %v, "rejecting HTTP/1 framing");
        *self.violation = Some(v);
        *self.state = State::Poisoned;
        self.head.clear();
        if !in_head {
            // A bad body whose head is still ours: withdraw the head, so not one byte of
            // the request reaches the upstream.
            match self.head_at.take() {
                Some(at) => self.out.truncate(at),
                None => return,
            }
        }
        self.out.extend_from_slice(REJECT);
        *self.rejected = true;
    }

    fn feed(&mut self, data: &[u8]) {
        self.head_at = None;
        let mut i = 0;
        while i < data.len() {
            match *self.state {
                State::Passthrough => {
                    self.out.extend_from_slice(&data[i..]);
                    return;
                }
                State::AwaitUpgrade => {
                    self.held.extend_from_slice(&data[i..]);
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
                                self.head_at = Some(self.out.len());
                                self.out.extend_from_slice(self.head);
                                self.head.clear();
                                *self.upgrade_after_body = f.upgrade;
                                if f.upgrade {
                                    // Before hyper can see the head, so the handler's verdict
                                    // always finds the gate waiting.
                                    self.watch.hold_for_upgrade();
                                }
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
                        (Chunk::Size { digits, size }, b';') if digits > 0 => {
                            Some(Chunk::Ext { size })
                        }
                        (Chunk::Size { digits, size }, b' ' | b'\t') if digits > 0 => {
                            Some(Chunk::SizeWs { size })
                        }
                        (Chunk::Size { digits, size }, b'\r') if digits > 0 => {
                            Some(Chunk::SizeLf { size })
                        }
                        (Chunk::Size { .. }, _) => None,
                        (Chunk::SizeWs { size }, b' ' | b'\t') => Some(Chunk::SizeWs { size }),
                        (Chunk::SizeWs { size }, b';') => Some(Chunk::Ext { size }),
                        (Chunk::SizeWs { .. }, _) => None,
                        (Chunk::Ext { size }, b'\r') => Some(Chunk::SizeLf { size }),
                        // Extension text: visible characters, spaces, tabs and obs-text only.
                        (Chunk::Ext { size }, b'\t' | 0x20..=0x7e | 0x80..=0xff) => {
                            Some(Chunk::Ext { size })
                        }
                        (Chunk::Ext { .. }, _) => None,
                        (Chunk::SizeLf { size: 0 }, b'\n') => Some(Chunk::TrailerStart),
                        (Chunk::SizeLf { size }, b'\n') => Some(Chunk::Data(size)),
                        (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                        (Chunk::DataLf, b'\n') => Some(Chunk::Size { digits: 0, size: 0 }),
                        (Chunk::TrailerStart, b'\r') => Some(Chunk::FinalLf),
                        (Chunk::TrailerStart, _) if is_tchar(b) => {
                            self.head.push(b);
                            Some(Chunk::TrailerLine)
                        }
                        (Chunk::TrailerStart, _) => None,
                        (Chunk::TrailerLine, b'\r') => Some(Chunk::TrailerLf),
                        (Chunk::TrailerLine, b'\n' | 0) => None,
                        (Chunk::TrailerLine, _) if self.head.len() < self.max_head => {
                            self.head.push(b);
                            Some(Chunk::TrailerLine)
                        }
                        (Chunk::TrailerLf, b'\n') if valid_trailer(self.head) => {
                            self.head.clear();
                            Some(Chunk::TrailerStart)
                        }
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
                        Some(v) if !*this.rejected => {
                            Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, *v)))
                        }
                        _ => Poll::Ready(Ok(())),
                    };
                }
                State::Passthrough if this.prefix.is_empty() => {
                    let before = buf.filled().len();
                    ready!(this.inner.as_mut().poll_read(cx, buf))?;
                    if buf.filled().len() > before {
                        this.watch.moved();
                    }
                    return Poll::Ready(Ok(()));
                }
                State::AwaitUpgrade => match this.watch.poll_gate(cx.waker()) {
                    // Nothing more is read until the handler has decided.
                    crate::connwatch::Gate::Waiting => return Poll::Pending,
                    crate::connwatch::Gate::Upgraded => {
                        *this.state = State::Passthrough;
                        let held = this.held.split().freeze();
                        this.out.extend_from_slice(&held);
                        continue;
                    }
                    crate::connwatch::Gate::Refused => {
                        this.watch.clear_gate();
                        *this.state = State::Head;
                        // Checked as if just read: the next loop feeds them.
                        *this.prefix = this.held.split().freeze();
                        continue;
                    }
                },
                _ => {}
            }
            let mut scan = Scan {
                state: this.state,
                upgrade_after_body: this.upgrade_after_body,
                head: this.head,
                out: this.out,
                held: this.held,
                max_head: *this.max_head,
                violation: this.violation,
                rejected: this.rejected,
                watch: this.watch,
                head_at: None,
            };
            if !this.prefix.is_empty() {
                let p = std::mem::take(this.prefix);
                scan.feed(&p);
                this.watch
                    .head_partial(matches!(*this.state, State::Head) && !this.head.is_empty());
                continue;
            }
            // Uninitialized: zeroing 8 KiB per read showed up in profiles.
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut rb = ReadBuf::uninit(&mut tmp);
            ready!(this.inner.as_mut().poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                // EOF: hand hyper whatever partial head there is; it reports it.
                if !scan.head.is_empty() && matches!(*scan.state, State::Head) {
                    let h = std::mem::take(scan.head);
                    scan.out.extend_from_slice(&h);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            this.watch.moved();
            scan.feed(got);
            this.watch
                .head_partial(matches!(*this.state, State::Head) && !this.head.is_empty());
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for H1Guard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.moved();
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.watch.moved();
        }
        r
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
mod tests;
