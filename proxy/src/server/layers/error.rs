//! Why a request got no response from upstream: one error type for the whole stack, what
//! each error answers (status, metrics verdict) and the local reply for it. The one layer
//! that turns errors into responses is [`super::Recover`].

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{full, ResponseBody};
use crate::metrics::Verdict;
use crate::normalize::NormalizeError;

/// A request the policy denied: answered 403 `Access denied` (gRPC: status 7).
#[derive(Debug, thiserror::Error)]
#[error("{decided_by}")]
pub(crate) struct Denied {
    /// The policy and rule, or why nothing allowed it.
    pub decided_by: String,
}

/// What went wrong with an upstream exchange, which decides its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamCause {
    /// The client broke the request body (bad chunk, reset): 400.
    ClientBody,
    /// The request body did not arrive within the request timeout: 408.
    BodyTimeout,
    /// The upstream could not be reached: 503.
    Connect,
    /// The upstream exchange failed: 502.
    Failed,
}

/// Why a request is answered by the proxy rather than the upstream. Each message is what
/// the access log records as `decided_by` for a request rejected before it went upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// CONNECT is not proxied: 405.
    #[error("CONNECT")]
    Connect,
    /// No Host on HTTP/1.1, or more than one: 400.
    #[error("missing or repeated Host")]
    Host,
    /// The path cannot be normalized: 400.
    #[error(transparent)]
    Path(#[from] NormalizeError),
    /// The policy denied it: 403.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// No upstream URI can be built for it: 400.
    #[error("unforwardable target")]
    Unforwardable,
    /// The upstream exchange failed.
    #[error("upstream request failed: {source}")]
    Upstream {
        /// What failed, which decides the status.
        cause: UpstreamCause,
        /// Every HTTP/2 connection slot was busy (the reply says so, as Envoy's circuit
        /// breaker does).
        overloaded: bool,
        /// The client's error.
        source: hyper_util::client::legacy::Error,
    },
    /// The upstream answered 101 to a request that asked for no (allowed) upgrade: passing
    /// it on would leave client and upstream disagreeing about the protocol. 502.
    #[error("upstream switched protocols unasked")]
    UnaskedSwitch,
}

impl Error {
    /// The status the client is answered with (and the access log and metrics record;
    /// a gRPC denial is sent as 200 with grpc-status 7 but recorded as 403).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Error::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Error::Host | Error::Path(_) | Error::Unforwardable => StatusCode::BAD_REQUEST,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::Upstream { cause, .. } => match cause {
                UpstreamCause::ClientBody => StatusCode::BAD_REQUEST,
                UpstreamCause::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
                UpstreamCause::Connect => StatusCode::SERVICE_UNAVAILABLE,
                UpstreamCause::Failed => StatusCode::BAD_GATEWAY,
            },
            Error::UnaskedSwitch => StatusCode::BAD_GATEWAY,
        }
    }

    /// The verdict `membrane_requests_total` counts it under.
    pub(crate) fn verdict(&self) -> Verdict {
        match self {
            Error::Denied(_) => Verdict::Denied,
            Error::Upstream {
                cause: UpstreamCause::Connect | UpstreamCause::Failed,
                ..
            }
            | Error::UnaskedSwitch => Verdict::Allowed,
            _ => Verdict::Invalid,
        }
    }

    /// The request was allowed and sent upstream before it failed.
    pub(crate) fn forwarded(&self) -> bool {
        matches!(self, Error::Upstream { .. } | Error::UnaskedSwitch)
    }

    /// The local reply: `grpc` for a gRPC client, `h2` for an HTTP/2 one, `deny_detail`
    /// to name the deciding rule in a header of a denial.
    pub(crate) fn response(
        &self,
        grpc: bool,
        h2: bool,
        deny_detail: bool,
    ) -> Response<ResponseBody> {
        let status = self.status();
        let detail = match self {
            Error::Denied(d) if deny_detail => Some(d.decided_by.as_str()),
            _ => None,
        };
        let mut r = local_reply(status, grpc, detail);
        if !h2
            && matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT
            )
        {
            // The client's framing, target or body was unreadable: do not trust the rest
            // of its stream.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Error::Upstream {
            overloaded: true, ..
        } = self
        {
            // As Envoy marks a circuit breaker's overflow.
            r.headers_mut()
                .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        r
    }
}

fn local_reply(
    status: StatusCode,
    grpc: bool,
    deny_detail: Option<&str>,
) -> Response<ResponseBody> {
    if grpc && status == StatusCode::FORBIDDEN {
        // Trailers-only response: status in the headers of the only HEADERS frame.
        let mut r = Response::new(full(Bytes::new()));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert("grpc-message", HeaderValue::from_static("Access denied"));
        if let Some(d) = deny_detail.and_then(|d| HeaderValue::from_str(d).ok()) {
            h.insert("x-membrane-denied-by", d);
        }
        return r;
    }
    let body: &'static [u8] = match status {
        StatusCode::FORBIDDEN => b"Access denied\r\n",
        StatusCode::BAD_REQUEST => b"Bad request\r\n",
        StatusCode::METHOD_NOT_ALLOWED => b"Method not allowed\r\n",
        StatusCode::SERVICE_UNAVAILABLE => b"Upstream unavailable\r\n",
        _ => b"Upstream error\r\n",
    };
    let mut r = Response::new(full(Bytes::from_static(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(d) = deny_detail.and_then(|d| HeaderValue::from_str(d).ok()) {
        r.headers_mut().insert("x-membrane-denied-by", d);
    }
    r
}
