//! Body wrappers: streaming passthrough, no buffering.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// A downstream request body on its way upstream that remembers whether the *client* broke
/// it (bad chunk, reset), so a failed upstream exchange can be answered 400 rather than 502.
pub struct WatchedBody {
    inner: Option<Incoming>,
    failed: Arc<AtomicBool>,
}

impl WatchedBody {
    /// Wraps `inner`; `failed` is set when it yields an error.
    pub fn new(inner: Incoming, failed: Arc<AtomicBool>) -> Self {
        WatchedBody {
            inner: Some(inner),
            failed,
        }
    }

    /// An empty body (upgrade requests, whose body is the upgraded stream).
    pub fn empty() -> Self {
        WatchedBody {
            inner: None,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e)))
            }
            other => other,
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
}

impl UpstreamBody {
    /// Wraps `inner`, holding `busy` until the body is done or dropped.
    pub fn new(inner: Incoming, busy: Option<crate::upstream::H2Busy>) -> Self {
        UpstreamBody { inner, _busy: busy }
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
