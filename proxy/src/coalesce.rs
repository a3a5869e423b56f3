//! Write coalescing for HTTP/2 connections: the frames a connection writes while its task
//! is polled once leave in one system call, when that poll returns.
//!
//! h2 encodes frames into a write buffer, but it writes that buffer to the socket whenever
//! a DATA frame above 256 bytes is queued (it keeps the payload aside, to write the two
//! with one `writev`) and again at the end of every poll. A gRPC response (HEADERS, DATA,
//! trailing HEADERS) therefore took two writes, two TCP segments with `TCP_NODELAY`, and
//! the peer was woken twice for one answer; each write on a path between pods also runs
//! the receiver's network stack in the sender's system call. Nothing in h2 or tokio
//! writes "at the end of the poll" (a `BufWriter` writes on every flush, and h2 flushes
//! within its poll), hence this module: [`Coalesced`] takes every write into a buffer of
//! its own and lets h2's flushes return at once, and [`FlushAfterPoll`], around the
//! connection's future, writes the buffer out when the future's poll returns. Bytes go
//! out in the order they were written; past [`LIMIT`] buffered bytes a write first
//! drains the buffer and waits for the socket when it is full (backpressure stays the
//! peer's); a shutdown writes out what is buffered first.
//!
//! Both halves share the connection's I/O behind a mutex: only the connection's own task
//! ever locks it (the request tasks reach the connection through h2's stream state, never
//! its I/O), so the lock is never contended.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes buffered before a write waits for the socket: four of h2's own 16 KiB write
/// buffers, and the server's `max_send_buf_size` per stream.
pub const LIMIT: usize = 64 * 1024;

struct State<T> {
    io: T,
    buf: BytesMut,
    /// A flush was asked for since the buffer was last written out: the inner stream's own
    /// flush runs then (TLS writes its records on flush).
    flush: bool,
    /// The inner stream failed a write: every later write or flush fails alike.
    failed: Option<(io::ErrorKind, String)>,
}

impl<T: AsyncWrite + Unpin> State<T> {
    fn error(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    /// Writes out the buffer, then flushes the inner stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.error() {
            return Poll::Ready(Err(e));
        }
        let r = self.poll_drain_inner(cx);
        if let Poll::Ready(Err(e)) = &r {
            self.failed = Some((e.kind(), e.to_string()));
        }
        r
    }

    fn poll_drain_inner(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf.advance(n);
        }
        if self.flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Room for more bytes: the buffer is under [`LIMIT`], or was drained to make room.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Some(e) = self.error() {
            return Poll::Ready(Err(e));
        }
        if self.buf.len() >= LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(LIMIT - self.buf.len()))
    }
}

type Shared<T> = Arc<Mutex<State<T>>>;

fn lock<T>(s: &Shared<T>) -> io::Result<MutexGuard<'_, State<T>>> {
    s.lock()
        .map_err(|_| io::Error::other("coalescing writer poisoned"))
}

/// The I/O half: give it to the connection (see the module docs).
pub struct Coalesced<T>(Shared<T>);

/// The flushing half: wrap the connection's future with [`Flusher::after_poll`].
pub struct Flusher<T>(Shared<T>);

/// Splits `io` into the connection's I/O and the flusher that writes what it buffered.
pub fn pair<T>(io: T) -> (Coalesced<T>, Flusher<T>) {
    let s = Arc::new(Mutex::new(State {
        io,
        buf: BytesMut::new(),
        flush: false,
        failed: None,
    }));
    (Coalesced(s.clone()), Flusher(s))
}

impl<T> Flusher<T> {
    /// `fut` (the connection using the [`Coalesced`] half, or a step of it such as its
    /// handshake), writing out after every poll. When `fut` completes, what its last poll
    /// buffered is written as far as the socket takes it at once: a connection that ends
    /// shuts its I/O down, which writes out the rest first.
    pub fn after_poll<F: Future>(&self, fut: F) -> FlushAfterPoll<F, T> {
        FlushAfterPoll {
            inner: fut,
            state: self.0.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's future that writes out its [`Coalesced`] I/O's buffer whenever a poll
    /// of the connection returns.
    pub struct FlushAfterPoll<F, T> {
        #[pin]
        inner: F,
        state: Shared<T>,
    }
}

impl<F, T> FlushAfterPoll<F, T> {
    /// The connection inside (to ask it for a graceful shutdown).
    pub fn connection(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future, T: AsyncWrite + Unpin> Future for FlushAfterPoll<F, T> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = this.inner.poll(cx);
        if let Ok(mut s) = this.state.lock() {
            if (!s.buf.is_empty() || s.flush) && s.failed.is_none() {
                // Pending: the socket is full and wakes this task when it has room, which
                // polls the connection and then comes back here.
                if let Poll::Ready(Err(_)) = s.poll_drain(cx) {
                    // The connection learns of it on its next write or flush.
                    if out.is_pending() {
                        cx.waker().wake_by_ref();
                    }
                }
            }
        }
        out
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0)?;
        Pin::new(&mut s.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.0)?;
        let room = ready!(s.poll_room(cx))?;
        let n = data.len().min(room);
        s.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.0)?;
        let mut room = ready!(s.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room);
            s.buf.extend_from_slice(&b[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Copying a few slices into the buffer is what this writer is for: h2 then keeps its
    /// DATA payloads aside rather than copying them into its own buffer first.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Deferred to the end of the poll ([`FlushAfterPoll`]).
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0)?;
        if let Some(e) = s.error() {
            return Poll::Ready(Err(e));
        }
        s.flush = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0)?;
        s.flush = true;
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
