//! The error layer: the one place an [`Error`](super::Error) becomes a response (403
//! `Access denied` or a gRPC status 7, 400, 405, 408, 502, 503), so every layer below can
//! simply fail.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use tower::{Layer, Service};

use super::{Exchange, Outcome, Rejected};
use crate::body::ResponseBody;

/// Makes [`Recover`] services.
#[derive(Clone)]
pub(crate) struct RecoverLayer {
    deny_detail: bool,
}

impl RecoverLayer {
    /// `deny_detail`: name the deciding rule in a header of each denial.
    pub(crate) fn new(deny_detail: bool) -> Self {
        RecoverLayer { deny_detail }
    }
}

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;

    fn layer(&self, inner: S) -> Recover<S> {
        Recover {
            inner,
            deny_detail: self.deny_detail,
        }
    }
}

/// Answers every request: the response from below, or the local reply for its error.
#[derive(Clone)]
pub(crate) struct Recover<S> {
    inner: S,
    deny_detail: bool,
}

impl<S> Service<Exchange> for Recover<S>
where
    S: Service<Exchange, Response = super::Answer, Error = Rejected>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = RecoverFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Nothing below refuses readiness ([`super::Forward`] is always ready; limits are
        // per connection and in the upstream pools), so there is no error to answer here.
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) | Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, ex: Exchange) -> Self::Future {
        RecoverFuture {
            inner: self.inner.call(ex),
            deny_detail: self.deny_detail,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Recover`]'s future.
    pub(crate) struct RecoverFuture<F> {
        #[pin]
        inner: F,
        deny_detail: bool,
    }
}

impl<F: Future<Output = Outcome>> Future for RecoverFuture<F> {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(answer) => answer.resp,
            Err(Rejected { error, rec }) => error.response(rec.grpc, rec.h2, *this.deny_detail),
        }))
    }
}
