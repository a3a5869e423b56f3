//! The request path: a stack of tower layers, each with one job, built once per connection
//! and driven by hyper through [`HttpService`]. Outermost first:
//!
//! | layer | job | fails with |
//! |---|---|---|
//! | [`Recover`] | turns every error into its response (403, 400, 405, 408, 502, 503) | never |
//! | [`AccessLog`] | one access-log record and one `membrane_requests_total` count per outcome | — |
//! | [`HostCheck`] | the authority the client addressed; CONNECT and Host count | 405, 400 |
//! | [`Normalize`] | the path the policy sees and the upstream gets | 400 |
//! | [`PolicyCheck`] | the verdict of the snapshot in force | [`Denied`] (403) |
//! | [`Target`] | the upstream URI (its authority is the pool key) | 400 |
//! | [`HeaderActions`] | hop-by-hop headers, Content-Length, the rule's header actions | — |
//! | [`Forward`] | version translation, the upstream exchange, upgrades | 400, 408, 502, 503 |
//!
//! A request travels as an [`Exchange`]: the request plus the [`Record`] the layers fill in
//! (the authority, the normalized path, the identities, the deciding rule). The record comes
//! back up with the response ([`Answer`]) or the error ([`Rejected`]), so the access log and
//! the error layer see every outcome in one place. Layer types are static (no boxing), the
//! layers hold only settings, and a step that needs nothing after the inner service answers
//! returns the inner future itself (see [`Step`]).

#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use http::{header, HeaderMap, Method, Request, Response, Version};
use hyper::body::Incoming;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use super::{ConnState, InFlight, ListenerSettings, MeshSide};
use crate::body::ResponseBody;
use crate::connwatch::UpgradeVerdict;
use crate::policy::HeaderAction;

mod access_log;
mod error;
mod forward;
mod headers;
mod host;
mod normalize;
mod policy;
mod recover;
mod target;

pub(super) use access_log::{AccessLog, AccessLogLayer};
pub(super) use error::{Denied, Error};
pub(super) use forward::Forward;
pub(super) use headers::HeaderActions;
pub(super) use host::HostCheck;
pub(super) use normalize::Normalize;
pub(super) use policy::PolicyCheck;
pub(super) use recover::{Recover, RecoverLayer};
pub(super) use target::Target;

/// A request on its way through the stack, with what the layers have learnt about it.
pub(crate) struct Exchange {
    /// The request, as the next layer gets it.
    req: Request<Incoming>,
    /// What the access log and the error layer need; comes back with the outcome.
    rec: Record,
    /// Moved into the response body, so the request counts until its response is sent.
    in_flight: Option<InFlight>,
    /// For an HTTP/1 request that may switch protocols: resumes the guard unless a 101 is
    /// returned.
    upgrade: UpgradeVerdict,
    /// What the allowing rule asks to change (set by [`PolicyCheck`]).
    header_actions: Vec<HeaderAction>,
    /// The request is an upgrade that will be tunnelled (set by [`HeaderActions`]).
    tunnel: bool,
    /// The authority the client addressed, or the target's address: the Host an HTTP/1.1
    /// upstream gets (set by [`Target`]).
    authority: String,
}

/// What the layers learn about a request, for the access log and the error layer.
pub(crate) struct Record {
    /// The connection (peer, target, listener state).
    conn: Arc<ConnState>,
    started: Instant,
    /// The client speaks gRPC (denials are answered with a gRPC status).
    grpc: bool,
    /// HTTP/2 downstream.
    h2: bool,
    /// The request's HTTP version (the L7 record's protocol).
    version: Version,
    method: Method,
    /// `:authority` or Host (set by [`HostCheck`]).
    host: Option<String>,
    /// The normalized path and query (set by [`Normalize`]); for a request rejected
    /// before the policy saw it, the path as received.
    path: String,
    /// (source, destination) identities (set by [`PolicyCheck`]).
    identities: (u32, u32),
    /// The rule that allowed the request (set by [`PolicyCheck`]).
    decided_by: String,
    /// The policy's `decided_by` (here or in the denial) names a rule (set by
    /// [`PolicyCheck`]).
    by_rule: bool,
}

/// A response from below, with the request's record.
pub(crate) struct Answer {
    resp: Response<ResponseBody>,
    rec: Record,
}

/// Why there is no response from below, with the request's record.
pub(crate) struct Rejected {
    error: Error,
    rec: Record,
}

/// What the layers below [`Recover`] return.
type Outcome = Result<Answer, Rejected>;
// Both sides of an `Outcome` are a `Record` plus a little, and the error side is no larger
// than the response side: boxing it (as clippy's `result_large_err` suggests) would only add
// an allocation to every rejection.

impl Exchange {
    fn new(req: Request<Incoming>, conn: &Arc<ConnState>) -> Self {
        let started = Instant::now();
        let in_flight = InFlight::start(conn, started);
        // The HTTP/1 guard holds back everything after a request that may switch protocols
        // until the stack decides; any outcome but a 101 resumes its checking.
        let upgrade = UpgradeVerdict::new(
            (conn.http1
                && (req.method() == Method::CONNECT
                    || req.headers().contains_key(header::UPGRADE)))
            .then(|| conn.watch.clone()),
        );
        let mut req = req;
        mesh_xfcc(&mut req, conn);
        mesh_peer_metadata(&mut req, conn);
        Exchange {
            rec: Record {
                conn: conn.clone(),
                started,
                grpc: is_grpc(req.headers()),
                h2: req.version() == Version::HTTP_2,
                version: req.version(),
                method: req.method().clone(),
                host: None,
                path: String::new(),
                identities: (0, 0),
                decided_by: String::new(),
                by_rule: false,
            },
            req,
            in_flight: Some(in_flight),
            upgrade,
            header_actions: Vec::new(),
            tunnel: false,
            authority: String::new(),
        }
    }

    /// Ends the exchange with `error`. A request rejected for its form is logged with the
    /// path as received; one the policy denied, with the path it was judged on.
    fn reject(self, error: Error) -> Rejected {
        let mut rec = self.rec;
        if !matches!(error, Error::Denied(_)) {
            rec.path = self.req.uri().path().to_owned();
        }
        Rejected { error, rec }
    }
}

/// `x-forwarded-client-cert` as Istio's sidecars set it, before anything reads the
/// request (the policy sees what the app will): inbound, appended with the verified mesh
/// peer's element on mTLS and removed on plaintext (no client can forge it); outbound to a
/// meshed destination, removed (Envoy's default, SANITIZE).
fn mesh_xfcc(req: &mut Request<Incoming>, conn: &ConnState) {
    const XFCC: &str = "x-forwarded-client-cert";
    match (conn.route.mesh, conn.mesh_peer.as_deref()) {
        (Some(MeshSide::Inbound), Some(peer)) => {
            let mut value = req
                .headers()
                .get_all(XFCC)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            if !value.is_empty() {
                value.push(',');
            }
            value.push_str(&peer.xfcc);
            match header::HeaderValue::from_str(&value) {
                Ok(v) => {
                    req.headers_mut().insert(XFCC, v);
                }
                // Not a header value (a forwarded element with control bytes): ours alone.
                Err(_) => {
                    if let Ok(v) = header::HeaderValue::from_str(&peer.xfcc) {
                        req.headers_mut().insert(XFCC, v);
                    }
                }
            }
        }
        (Some(_), _) => {
            req.headers_mut().remove(XFCC);
        }
        (None, _) => {}
    }
}

/// Istio's metadata-exchange headers: istio-proxy reads and removes them before the app
/// and writes its own workload's on the way out. membrane-proxy neither reads nor writes
/// them, so on a meshed connection it removes them in both directions, as Istio's
/// sidecars would: an app never gets a peer's (or a client's forged) metadata, and a peer
/// never gets metadata an app made up about the workload it runs in.
fn mesh_peer_metadata(req: &mut Request<Incoming>, conn: &ConnState) {
    if conn.route.mesh.is_some() {
        let h = req.headers_mut();
        h.remove("x-envoy-peer-metadata");
        h.remove("x-envoy-peer-metadata-id");
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// One layer's job done on the way in, with nothing to do on the way out: check or change
/// the exchange, or end it with an error.
pub(crate) trait Step: Clone {
    /// Does the job on `ex`; an error ends the exchange.
    fn step(&self, ex: &mut Exchange) -> Result<(), Error>;
}

/// A [`Step`] as a tower layer.
#[derive(Clone)]
pub(crate) struct StepLayer<T>(T);

impl<T: Step, S> Layer<S> for StepLayer<T> {
    type Service = Stepped<T, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stepped {
            step: self.0.clone(),
            inner,
        }
    }
}

/// A [`Step`] in front of the rest of the stack.
#[derive(Clone)]
pub(crate) struct Stepped<T, S> {
    step: T,
    inner: S,
}

impl<T, S> Service<Exchange> for Stepped<T, S>
where
    T: Step,
    S: Service<Exchange, Response = Answer, Error = Rejected>,
{
    type Response = Answer;
    type Error = Rejected;
    // The rejection, or the inner service's own future: nothing is boxed or wrapped.
    type Future = Either<Ready<Outcome>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejected>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ex: Exchange) -> Self::Future {
        match self.step.step(&mut ex) {
            Ok(()) => Either::Right(self.inner.call(ex)),
            Err(e) => Either::Left(ready(Err(ex.reject(e)))),
        }
    }
}

/// The whole request stack, as a type (see the module docs for the order).
pub(crate) type Stack = Recover<
    AccessLog<
        Stepped<
            HostCheck,
            Stepped<
                Normalize,
                Stepped<PolicyCheck, Stepped<Target, Stepped<HeaderActions, Forward>>>,
            >,
        >,
    >,
>;

/// The request stack for a connection of a listener with settings `s`.
pub(crate) fn stack(s: &ListenerSettings) -> Stack {
    ServiceBuilder::new()
        .layer(RecoverLayer::new(s.deny_detail_header))
        .layer(AccessLogLayer)
        .layer(StepLayer(HostCheck))
        .layer(StepLayer(Normalize::new(s.merge_slashes)))
        .layer(StepLayer(PolicyCheck))
        .layer(StepLayer(Target))
        .layer(StepLayer(HeaderActions))
        .service(Forward)
}

/// The request stack as hyper serves it on one connection.
#[derive(Clone)]
pub(crate) struct HttpService {
    stack: Stack,
    conn: Arc<ConnState>,
}

impl HttpService {
    /// The stack for requests on `conn`.
    pub(crate) fn new(conn: Arc<ConnState>) -> Self {
        HttpService {
            stack: stack(&conn.shared.settings),
            conn,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for HttpService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = CloseAfter<Oneshot<Stack, Exchange>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let close = self.conn.closing.load(std::sync::atomic::Ordering::Relaxed);
        // The layers hold only settings, so a clone per request costs no allocation.
        CloseAfter {
            inner: self.stack.clone().oneshot(Exchange::new(req, &self.conn)),
            close,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response future; `close`: the connection is draining lazily (HTTP/1.1 after a
    /// handover), so the response tells the client to reconnect, and hyper closes the
    /// connection once it is sent.
    pub(crate) struct CloseAfter<F> {
        #[pin]
        inner: F,
        close: bool,
    }
}

impl<F> std::future::Future for CloseAfter<F>
where
    F: std::future::Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &mut out {
            // Not on a 101: the connection is the tunnel's now.
            if *this.close && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(out)
    }
}
