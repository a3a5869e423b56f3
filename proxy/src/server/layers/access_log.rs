//! The access log: one record for every outcome of a request (forwarded and answered,
//! denied, rejected for its form, or failed upstream), written here and nowhere else, with
//! the `membrane_requests_total` count beside it. The `Request` record of a request about to
//! go upstream is written by [`write`] too, from [`super::Forward`].

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tower::{Layer, Service};

use super::{Error, Exchange, Outcome, Record, Rejected};
use crate::access_log::AccessLog as Sink;
use crate::metrics::Verdict;

/// Makes [`AccessLog`] services.
#[derive(Clone)]
pub(crate) struct AccessLogLayer;

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// Records each outcome of the stack below (in the listener's access log, when it has one).
#[derive(Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
}

impl<S> Service<Exchange> for AccessLog<S>
where
    S: Service<Exchange, Response = super::Answer, Error = Rejected>,
{
    type Response = super::Answer;
    type Error = Rejected;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejected>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ex: Exchange) -> Self::Future {
        AccessLogFuture {
            inner: self.inner.call(ex),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`AccessLog`]'s future.
    pub(crate) struct AccessLogFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = Outcome>> Future for AccessLogFuture<F> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        let (rec, verdict, status) = match &outcome {
            Ok(a) => (&a.rec, Verdict::Allowed, a.resp.status().as_u16()),
            Err(Rejected { error, rec }) => (rec, error.verdict(), error.status().as_u16()),
        };
        rec.conn
            .shared
            .metrics
            .request(verdict, status, rec.started.elapsed());
        if let Some(log) = &rec.conn.shared.access_log {
            let (kind, decided_by) = match &outcome {
                Ok(a) => (Kind::Response, Cow::Borrowed(a.rec.decided_by.as_str())),
                // Allowed and sent, then failed: the response the client got.
                Err(Rejected { error, rec }) if error.forwarded() => {
                    (Kind::Response, Cow::Borrowed(rec.decided_by.as_str()))
                }
                Err(Rejected {
                    error: Error::Denied(d),
                    ..
                }) => (Kind::Denied, Cow::Borrowed(d.decided_by.as_str())),
                // Rejected for its form: the reason is what decided.
                Err(Rejected { error, .. }) => (Kind::Denied, Cow::Owned(error.to_string())),
            };
            write(log, rec, kind, status, &decided_by);
        }
        Poll::Ready(outcome)
    }
}

/// The `type` of an access-log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A request about to be forwarded.
    Request,
    /// What the client was answered, from upstream or after an upstream failure.
    Response,
    /// Denied by policy, or rejected before the policy was asked.
    Denied,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "Request",
            Kind::Response => "Response",
            Kind::Denied => "Denied",
        }
    }
}

/// Writes one access-log record for `rec` to `log` (`status` 0 and `decided_by` empty for
/// a [`Kind::Request`]). The fields and their order are the line's format: keep them.
pub(crate) fn write(log: &Sink, rec: &Record, kind: Kind, status: u16, decided_by: &str) {
    let conn = &*rec.conn;
    log.record(|l| {
        l.str("type", kind.as_str())
            .display("src", conn.peer)
            .display("dst", conn.route.target)
            .u64("src_identity", rec.identities.0.into())
            .str(
                "downstream_peer_uri_san",
                conn.mesh_peer
                    .as_deref()
                    .map_or("", |p| p.spiffe_id.as_str()),
            )
            .u64("dst_identity", rec.identities.1.into())
            .str("method", rec.method.as_str())
            .str("path", rec.path.as_str())
            .str("host", rec.host.as_deref().unwrap_or(""))
            .u64("status", status.into())
            .str("decided_by", decided_by)
            .u64("duration_us", rec.started.elapsed().as_micros() as u64);
    });
}
