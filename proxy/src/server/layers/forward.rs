//! Forward: the request in the version the upstream speaks (HTTP/2 kept as HTTP/2 when
//! configured, else HTTP/1.1 with the authority as Host; ALPN decides over TLS), its body
//! watched for the client's failures and the request timeout, sent on the route's pooled
//! client; then the response, or a 101 and the tunnel after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Body as _;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::ResponseFuture;
use tower::Service;

use super::access_log::{self, Kind};
use super::error::UpstreamCause;
use super::headers::strip_hop_by_hop;
use super::{Answer, Error, Exchange, Outcome, Record, Rejected};
use crate::body::{failure, UpstreamBody, WatchedBody};
use crate::connwatch::UpgradeVerdict;
use crate::server::upgrade::tunnel;
use crate::server::InFlight;
use crate::upstream::H2Busy;

/// The innermost service: see the module docs.
#[derive(Clone, Copy)]
pub(crate) struct Forward;

impl Service<Exchange> for Forward {
    type Response = Answer;
    type Error = Rejected;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Rejected>> {
        // The pools queue or dial per request; nothing here is ever not ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ex: Exchange) -> ForwardFuture {
        let Exchange {
            mut req,
            rec,
            in_flight,
            upgrade,
            tunnel,
            authority,
            ..
        } = ex;
        let conn = &*rec.conn;
        let s = &conn.shared.settings;
        let use_h2 = rec.h2 && s.h2_upstream;
        // HTTP/2 over TLS: ALPN decides between h2 and HTTP/1.1 (the request goes out as
        // HTTP/1.1 unless the connection negotiated h2; the client adds Host on HTTP/1.1).
        // Mesh mTLS: Istio's ALPN says "in mesh", not the protocol; HTTP/2 goes as HTTP/2.
        let negotiate = use_h2 && conn.route.https && conn.route.mesh.is_none();
        let downstream_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.version = if use_h2 && !negotiate {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        if use_h2 {
            parts.headers.remove(header::HOST);
        } else if rec.h2 || !parts.headers.contains_key(header::HOST) {
            // HTTP/2 downstream to HTTP/1.1 upstream: the authority the policy matched
            // becomes Host.
            if let Ok(v) = HeaderValue::from_str(&authority) {
                parts.headers.insert(header::HOST, v);
            }
        }
        if !use_h2
            && !tunnel
            && !body.is_end_stream()
            && body.size_hint().exact().is_none()
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            // A body of unknown length goes upstream chunked, whatever the method: hyper's
            // client would otherwise drop it from a GET, changing what the request means.
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let body_failed = Arc::new(AtomicU8::new(failure::NONE));
        let body = if tunnel {
            WatchedBody::empty()
        } else {
            let deadline = s
                .request_timeout
                .map(|t| tokio::time::Instant::from_std(rec.started) + t);
            WatchedBody::new(body, body_failed.clone(), deadline)
        };
        let upstream_req = Request::from_parts(parts, body);
        // HTTP/2 clients' requests keep their connection busy until the response body
        // ends, so the connection bound never closes one that is in use.
        let upstreams = &conn.route.upstreams;
        let h2_busy =
            (negotiate || use_h2).then(|| upstreams.h2_busy(negotiate, upstream_req.uri()));
        if let Some(log) = &conn.shared.access_log {
            access_log::write(log, &rec, Kind::Request, 0, "");
        }
        let sent = if negotiate {
            upstreams.negotiated.request(upstream_req)
        } else if use_h2 {
            upstreams.http2.request(upstream_req)
        } else {
            upstreams.http1.request(upstream_req)
        };
        ForwardFuture {
            sent,
            state: Some(Pending {
                rec,
                body_failed,
                downstream_upgrade,
                upgrade,
                h2_busy,
                in_flight,
            }),
        }
    }
}

/// What the response needs once it arrives.
struct Pending {
    rec: Record,
    body_failed: Arc<AtomicU8>,
    downstream_upgrade: Option<OnUpgrade>,
    upgrade: UpgradeVerdict,
    h2_busy: Option<H2Busy>,
    in_flight: Option<InFlight>,
}

/// [`Forward`]'s future: the upstream exchange, then the response or its error.
pub(crate) struct ForwardFuture {
    // The client's future is already boxed (and `Unpin`) inside hyper-util.
    sent: ResponseFuture,
    state: Option<Pending>,
}

impl Future for ForwardFuture {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let sent = ready!(Pin::new(&mut self.sent).poll(cx));
        let p = self
            .state
            .take()
            .expect("ForwardFuture polled after completion");
        Poll::Ready(match sent {
            Ok(resp) => respond(resp, p),
            Err(e) => Err(failed(e, p)),
        })
    }
}

/// The upstream exchange failed: whose fault, and what the client is told.
fn failed(e: hyper_util::client::legacy::Error, p: Pending) -> Rejected {
    let metrics = &p.rec.conn.shared.metrics;
    let overloaded = is_h2_overflow(&e);
    let cause = match p.body_failed.load(Ordering::Relaxed) {
        failure::CLIENT => UpstreamCause::ClientBody,
        failure::TIMEOUT => UpstreamCause::BodyTimeout,
        _ if e.is_connect() => {
            metrics.upstream_error();
            UpstreamCause::Connect
        }
        _ => {
            metrics.upstream_error();
            UpstreamCause::Failed
        }
    };
    tracing::debug!(peer = %p.rec.conn.peer, error = %e, "upstream request failed");
    Rejected {
        error: Error::Upstream {
            cause,
            overloaded,
            source: e,
        },
        rec: p.rec,
    }
}

/// The upstream answered: a 101 opens the tunnel (only for an upgrade the client asked
/// for and the settings allow); the response goes down with its hop-by-hop headers
/// removed and its body holding the request's in-flight mark.
fn respond(mut resp: http::Response<hyper::body::Incoming>, mut p: Pending) -> Outcome {
    let conn = &*p.rec.conn;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(down) = p.downstream_upgrade.take() else {
            // A 101 nobody asked for (the Upgrade was removed, or HTTP/2).
            conn.shared.metrics.upstream_error();
            tracing::debug!(peer = %conn.peer, "upstream switched protocols unasked");
            return Err(Rejected {
                error: Error::UnaskedSwitch,
                rec: p.rec,
            });
        };
        let up = hyper::upgrade::on(&mut resp);
        let watch = conn.watch.clone();
        let idle = conn.shared.settings.stream_idle_timeout;
        let tunnel = tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => tunnel(d, u, &watch, idle).await,
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        if let Ok(mut t) = conn.tunnel.lock() {
            *t = Some(tunnel);
        }
        p.upgrade.upgraded();
    } else {
        drop(p.upgrade);
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    let (busy, in_flight) = (p.h2_busy, p.in_flight);
    Ok(Answer {
        resp: resp.map(|b| Either::Left(UpstreamBody::new(b, busy, in_flight))),
        rec: p.rec,
    })
}

/// Whether an upstream request failed because every HTTP/2 connection slot was busy.
fn is_h2_overflow(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<crate::upstream::H2Overflow>() {
            return true;
        }
        cur = err.source();
    }
    false
}
