//! Write coalescing for HTTP/2 connections: the frames a connection writes while its task
//! is polled leave in one system call, when that poll returns (or one poll later).
//!
//! h2 encodes frames into a write buffer, but writes that buffer to the socket whenever a
//! DATA frame above 256 bytes is queued (it keeps the payload aside, to write the two with
//! one `writev`) and again at the end of every poll of its connection. Two costs came of
//! it on the sidecar's request path (`strace`, gRPC unary at 1,000 requests per second):
//! a gRPC response (HEADERS, DATA, trailing HEADERS) went downstream in two writes, and a
//! request with a body went upstream in two: a new client stream gets no flow-control
//! capacity until the connection's task has sent its HEADERS, so the body's DATA follows
//! in the task's next poll. Each write is a TCP segment with `TCP_NODELAY`, a wake-up of
//! the peer, and, between pods or on loopback, the receiver's network stack run inside
//! the sender's system call. Nothing in h2 or tokio writes "at the end of the poll" (a
//! `BufWriter` writes on every flush, and h2 flushes within its poll), hence this module.
//!
//! [`Coalesced`] wraps a connection's socket. Inside a [`scope`] (the downstream
//! connection's future) or a task spawned by [`Exec`] (the upstream HTTP/2 clients'
//! connection tasks), its writes go to a buffer of its own and its flushes only register
//! it with the scope, which writes the buffer out when the poll returns: at once for
//! [`scope`]; for [`Exec`], when what is buffered ends with a request's HEADERS that do not
//! end its stream, one poll later (the task wakes itself), so that the body the request's
//! pipe sends in between joins them. Outside any scope (a connection's
//! handshakes, run by whichever task dials it) it writes through like the socket itself.
//! Bytes go out in the order they were written; past [`LIMIT`] buffered bytes a write
//! first drains the buffer and waits for the socket when it is full (backpressure stays the
//! peer's); a shutdown writes out what is buffered first; a failed write fails every later
//! write and flush.
//!
//! The buffer sits behind a mutex because the scope holds it too; only the connection's own
//! task ever locks it (the request tasks reach a connection through h2's stream state, never
//! its I/O), so the lock is never contended.

use std::cell::RefCell;
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

thread_local! {
    /// While a scope's future is polled: the writers that put their flush off until the
    /// poll returns.
    static LISTED: RefCell<Option<Vec<Arc<dyn Drain>>>> = const { RefCell::new(None) };
}

/// A writer a scope writes out after the poll.
trait Drain: Send + Sync {
    /// Writes out what is buffered, as far as the socket takes it (registering the task to
    /// be woken when it has room); a failure is kept for the writer's next write or flush.
    /// True when bytes are left for the socket's room.
    fn drain(&self, cx: &mut Context<'_>) -> bool;
    /// What is buffered ends with a request head whose body is to follow: worth one more
    /// poll of the task.
    fn awaits_body(&self) -> bool;
    /// Listed again from the next poll on.
    fn unlist(&self);
}

struct State<T> {
    io: T,
    buf: BytesMut,
    /// A flush was asked for since the buffer was last written out: the inner stream's own
    /// flush runs then (TLS writes its records on flush).
    flush: bool,
    /// In the current scope's list.
    listed: bool,
    /// What is buffered ends a HEADERS frame that does not end its stream: a request
    /// head whose body is about to follow (see [`open_head`]).
    open_head: bool,
    /// The inner stream failed a write: every later write or flush fails alike.
    failed: Option<(io::ErrorKind, String)>,
}

impl<T: AsyncWrite + Unpin> State<T> {
    fn error(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    /// Writes out the buffer, then flushes the inner stream when a flush was asked for.
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
        self.open_head = false;
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

impl<T: AsyncWrite + Unpin + Send + 'static> Drain for Mutex<State<T>> {
    fn drain(&self, cx: &mut Context<'_>) -> bool {
        let Ok(mut s) = self.lock() else {
            return false;
        };
        if !s.buf.is_empty() || s.flush {
            match s.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                // The socket wakes the task when it has room: the scope drains again then,
                // whether or not the connection writes anything in that poll.
                Poll::Pending => return true,
                // The connection learns of it on its next write or flush: poll it again.
                Poll::Ready(Err(_)) => cx.waker().wake_by_ref(),
            }
        }
        false
    }

    fn unlist(&self) {
        if let Ok(mut s) = self.lock() {
            s.listed = false;
        }
    }

    fn awaits_body(&self) -> bool {
        self.lock().is_ok_and(|s| s.open_head && !s.buf.is_empty())
    }
}

/// Whether the HTTP/2 frames in `chunks` (one write: h2 writes whole frames, a DATA
/// payload as a slice of its own after its header) end with a HEADERS frame without
/// END_STREAM. Anything that does not walk as whole frames (a client's preface, a write
/// split at [`LIMIT`]) is `None`: no guess is made.
fn open_head(chunks: &[&[u8]]) -> Option<bool> {
    const HEADERS: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let byte = |mut i: usize| {
        for c in chunks {
            if i < c.len() {
                return c[i];
            }
            i -= c.len();
        }
        0
    };
    let (mut pos, mut last) = (0, None);
    while pos + 9 <= total {
        let len = (usize::from(byte(pos)) << 16)
            | (usize::from(byte(pos + 1)) << 8)
            | usize::from(byte(pos + 2));
        last = Some(byte(pos + 3) == HEADERS && byte(pos + 4) & END_STREAM == 0);
        pos += 9 + len;
    }
    if pos == total {
        last
    } else {
        None
    }
}

/// A connection's socket whose writes are coalesced per poll (see the module docs).
pub struct Coalesced<T>(Arc<Mutex<State<T>>>);

impl<T> Coalesced<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Coalesced(Arc::new(Mutex::new(State {
            io,
            buf: BytesMut::new(),
            flush: false,
            listed: false,
            open_head: false,
            failed: None,
        })))
    }

    /// `f` of the wrapped stream (`None` if a panic poisoned it).
    pub fn with_inner<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.0.lock().ok().map(|s| f(&s.io))
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, State<T>>> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("coalescing writer poisoned"))
    }
}

/// Whether a scope is being polled on this thread.
fn in_scope() -> bool {
    LISTED.with(|l| l.borrow().is_some())
}

impl<T: AsyncWrite + Unpin + Send + 'static> Coalesced<T> {
    /// Puts this writer on the current scope's list (once per poll).
    fn list(&self, s: &mut State<T>) {
        if s.listed {
            return;
        }
        LISTED.with(|l| {
            if let Some(list) = l.borrow_mut().as_mut() {
                list.push(self.0.clone());
                s.listed = true;
            }
        });
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.lock()?;
        Pin::new(&mut s.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.lock()?;
        if !in_scope() {
            // Nobody writes the buffer out later: through, after what is buffered.
            ready!(s.poll_drain(cx))?;
            return Pin::new(&mut s.io).poll_write(cx, data);
        }
        let room = ready!(s.poll_room(cx))?;
        let n = data.len().min(room);
        s.buf.extend_from_slice(&data[..n]);
        s.open_head = open_head(&[&data[..n]]).unwrap_or(false);
        self.list(&mut s);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.lock()?;
        if !in_scope() {
            ready!(s.poll_drain(cx))?;
            return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
        }
        let mut room = ready!(s.poll_room(cx))?;
        let mut n = 0;
        let mut taken: [&[u8]; 4] = [&[]; 4];
        for (i, b) in bufs.iter().enumerate() {
            let take = b.len().min(room);
            s.buf.extend_from_slice(&b[..take]);
            if let Some(t) = taken.get_mut(i) {
                *t = &b[..take];
            }
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        // h2 writes at most two slices (its buffer, a DATA payload); more: no guess.
        s.open_head = bufs.len() <= taken.len() && open_head(&taken).unwrap_or(false);
        self.list(&mut s);
        Poll::Ready(Ok(n))
    }

    /// Copying a few slices into the buffer is what this writer is for: h2 then keeps its
    /// DATA payloads aside rather than copying them into its own buffer first.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Inside a scope: put off until the poll returns.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock()?;
        if let Some(e) = s.error() {
            return Poll::Ready(Err(e));
        }
        s.flush = true;
        if in_scope() {
            self.list(&mut s);
            return Poll::Ready(Ok(()));
        }
        s.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock()?;
        s.flush = true;
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

/// Restores the enclosing scope's list (none, mostly) when a poll ends, even by a panic.
struct Enter(Option<Option<Vec<Arc<dyn Drain>>>>);

impl Enter {
    fn new() -> Self {
        Enter(Some(LISTED.with(|l| l.replace(Some(Vec::new())))))
    }

    /// Ends the poll: the writers listed during it.
    fn leave(mut self) -> Vec<Arc<dyn Drain>> {
        let outer = self.0.take().unwrap_or_default();
        LISTED.with(|l| l.replace(outer)).unwrap_or_default()
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        if let Some(outer) = self.0.take() {
            LISTED.with(|l| *l.borrow_mut() = outer);
        }
    }
}

pin_project_lite::pin_project! {
    /// A future whose [`Coalesced`] writers are written out after each poll (see
    /// [`scope`] and [`Exec`]).
    pub struct Scope<F> {
        #[pin]
        inner: F,
        // Write out one poll later (a task of `Exec`).
        defer: bool,
        // Writers put off by the last poll, or left with bytes the socket had no room for.
        held: Vec<Arc<dyn Drain>>,
    }
}

/// `fut` (a connection, or a future that polls one), its [`Coalesced`] writers written out
/// whenever a poll of it returns.
pub fn scope<F: Future>(fut: F) -> Scope<F> {
    Scope {
        inner: fut,
        defer: false,
        held: Vec::new(),
    }
}

impl<F> Scope<F> {
    /// The future inside (to ask a connection for a graceful shutdown).
    pub fn inner(self: Pin<&mut Self>) -> Pin<&mut F> {
        self.project().inner
    }
}

impl<F: Future> Future for Scope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let enter = Enter::new();
        let out = this.inner.poll(cx);
        let listed = enter.leave();
        let due = std::mem::take(this.held);
        let mut wake = false;
        let mut now = Vec::new();
        for w in listed {
            w.unlist();
            if due.iter().any(|d| Arc::ptr_eq(d, &w)) {
                continue;
            }
            if *this.defer && out.is_pending() && w.awaits_body() {
                this.held.push(w);
                wake = true;
            } else {
                now.push(w);
            }
        }
        for w in due.into_iter().chain(now) {
            if w.drain(cx) && out.is_pending() {
                this.held.push(w);
            }
        }
        if wake {
            cx.waker().wake_by_ref();
        }
        out
    }
}

/// The executor of the upstream HTTP/2 clients: tokio's, each task in a deferring
/// [`Scope`], so a connection task's frames go out one poll after it wrote them, together
/// with what the tasks it woke sent meanwhile (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Scope {
            inner: fut,
            defer: true,
            held: Vec::new(),
        });
    }
}

#[cfg(test)]
mod tests;
