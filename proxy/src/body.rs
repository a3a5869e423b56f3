//! Body wrappers: streaming passthrough, no buffering.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Why a request body ended early, as recorded by [`WatchedBody`].
pub mod failure {
    /// The body is fine (so far).
    pub const NONE: u8 = 0;
    /// The client broke it (bad chunk, reset): 400.
    pub const CLIENT: u8 = 1;
    /// It did not arrive within the request timeout: 408.
    pub const TIMEOUT: u8 = 2;
}

/// The request body did not arrive within `--request-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within the request timeout")]
pub struct RequestTimeout;

/// A downstream request body on its way upstream that remembers whether the *client* broke
/// it (bad chunk, reset) or was too slow, so a failed upstream exchange can be answered 400
/// or 408 rather than 502. Past its deadline it fails, which aborts the upstream request.
pub struct WatchedBody {
    inner: Option<Incoming>,
    failed: Arc<AtomicU8>,
    deadline: Option<tokio::time::Instant>,
    /// Armed only once the body has had to wait, so a body that arrives with its head
    /// (the common case) costs no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WatchedBody {
    /// Wraps `inner`; `failed` records why it ended early (see [`failure`]); past `deadline`
    /// it fails with [`RequestTimeout`].
    pub fn new(
        inner: Incoming,
        failed: Arc<AtomicU8>,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        WatchedBody {
            inner: Some(inner),
            failed,
            deadline,
            sleep: None,
        }
    }

    /// An empty body (upgrade requests, whose body is the upgraded stream).
    pub fn empty() -> Self {
        WatchedBody {
            inner: None,
            failed: Arc::new(AtomicU8::new(failure::NONE)),
            deadline: None,
            sleep: None,
        }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed.store(failure::CLIENT, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                let Some(deadline) = this.deadline else {
                    return Poll::Pending;
                };
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.failed.store(failure::TIMEOUT, Ordering::Relaxed);
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(RequestTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// What the proxy answers downstream: the upstream's body, streamed, or a local reply.
pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

/// An upstream response body, streamed, holding what must live as long as the exchange:
/// for HTTP/2 upstreams, the mark that keeps its connection from counting as idle.
pub struct UpstreamBody {
    inner: Incoming,
    _busy: Option<crate::upstream::H2Busy>,
    _in_flight: Option<crate::server::InFlight>,
}

impl UpstreamBody {
    /// Wraps `inner`, holding `busy` and `in_flight` until the body is done or dropped.
    pub(crate) fn new(
        inner: Incoming,
        busy: Option<crate::upstream::H2Busy>,
        in_flight: Option<crate::server::InFlight>,
    ) -> Self {
        UpstreamBody {
            inner,
            _busy: busy,
            _in_flight: in_flight,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A local reply body.
pub fn full(b: impl Into<Bytes>) -> ResponseBody {
    Either::Right(Full::new(b.into()))
}
