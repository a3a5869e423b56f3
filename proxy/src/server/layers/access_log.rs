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
        let shared = &rec.conn.shared;
        if shared.access_log.is_some() || shared.records.is_some() {
            // `policy`: the policy's verdict decided (else the request's form did).
            let (kind, decided_by, policy) = match &outcome {
                Ok(a) => (
                    Kind::Response,
                    Cow::Borrowed(a.rec.decided_by.as_str()),
                    true,
                ),
                // Allowed and sent, then failed: the response the client got.
                Err(Rejected { error, rec }) if error.forwarded() => {
                    (Kind::Response, Cow::Borrowed(rec.decided_by.as_str()), true)
                }
                Err(Rejected {
                    error: Error::Denied(d),
                    ..
                }) => (Kind::Denied, Cow::Borrowed(d.decided_by.as_str()), true),
                // Rejected for its form: the reason is what decided.
                Err(Rejected { error, .. }) => (Kind::Denied, Cow::Owned(error.to_string()), false),
            };
            if let Some(log) = &shared.access_log {
                write(log, rec, kind, status, &decided_by);
            }
            if let Some(r) = &shared.records {
                report(r, rec, kind, status, &decided_by, policy && rec.by_rule);
            }
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

/// Hands the same record to the reporter for the node agent (an `l7` monitor event).
fn report(
    r: &crate::records::Reporter,
    rec: &Record,
    kind: Kind,
    status: u16,
    decided_by: &str,
    by_rule: bool,
) {
    let conn = &*rec.conn;
    r.record(&crate::records::Entry {
        ingress: conn.route.dir == crate::policy::Direction::Ingress,
        http: match rec.version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => 0,
            http::Version::HTTP_2 => 2,
            _ => 1,
        },
        // A response after the upstream failed was still allowed by the policy.
        allowed: kind == Kind::Response,
        by_rule,
        status,
        src: conn.peer,
        dst: conn.route.target,
        identities: rec.identities,
        method: rec.method.as_str(),
        path: rec.path.as_str(),
        host: rec.host.as_deref(),
        decided_by,
        peer_spiffe_id: conn.mesh_peer.as_deref().map(|p| p.spiffe_id.as_str()),
    });
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
