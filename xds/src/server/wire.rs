//! The streaming xDS methods served without tonic's generated glue.
//!
//! tonic's generated services encode each response into a per-stream buffer
//! that keeps the largest message a stream ever sent allocated for the life of
//! the stream, and re-encode every resource for every stream. At 10,000
//! streams both dominate. [`Wire`] answers the streaming paths itself: requests
//! are decoded with a small buffer, and responses go to HTTP/2 as the frames of
//! [`crate::wire`] (a whole type set's encoding shared by every stream), freed
//! as soon as the socket has them. The unary paths (fetch) go to the generated
//! service it wraps.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, Streaming};
use tonic::server::NamedService;
use tonic::Status;
use tonic_prost::ProstDecoder;

use super::{Machine, XdsServer};
use crate::resource::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};
use crate::wire::Frames;

/// Bytes a stream's request decoder starts with (an ACK is ~100 bytes; it
/// grows for a larger request).
const REQUEST_BUFFER: usize = 512;
/// Largest request accepted (tonic's default).
const MAX_REQUEST: usize = 4 << 20;

const ADS_SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const ADS_DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const NPDS_SOTW: &str = "/cilium.NetworkPolicyDiscoveryService/StreamNetworkPolicies";
const NPDS_DELTA: &str = "/cilium.NetworkPolicyDiscoveryService/DeltaNetworkPolicies";
const NPHDS_SOTW: &str = "/cilium.NetworkPolicyHostsDiscoveryService/StreamNetworkPolicyHosts";
const NPHDS_DELTA: &str = "/cilium.NetworkPolicyHostsDiscoveryService/DeltaNetworkPolicyHosts";

type HttpResponse = http::Response<tonic::body::Body>;
type BoxFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

/// A generated service `S` whose streaming methods [`XdsServer`] answers on the wire path.
#[derive(Debug, Clone)]
pub struct Wire<S> {
    inner: S,
    xds: XdsServer,
}

impl<S> Wire<S> {
    /// Wraps `inner`; its streaming paths are served by `xds`.
    pub fn new(inner: S, xds: XdsServer) -> Self {
        Wire { inner, xds }
    }
}

impl<S: NamedService> NamedService for Wire<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Wire<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = HttpResponse,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> BoxFuture {
        let x = &self.xds;
        let resp = match req.uri().path() {
            ADS_SOTW => x.open::<DiscoveryRequest, _>(x.sotw(None), req),
            ADS_DELTA => x.open::<DeltaDiscoveryRequest, _>(x.delta(None), req),
            NPDS_SOTW => x.open::<DiscoveryRequest, _>(x.sotw(Some(NETWORK_POLICY)), req),
            NPDS_DELTA => x.open::<DeltaDiscoveryRequest, _>(x.delta(Some(NETWORK_POLICY)), req),
            NPHDS_SOTW => x.open::<DiscoveryRequest, _>(x.sotw(Some(NETWORK_POLICY_HOSTS)), req),
            NPHDS_DELTA => {
                x.open::<DeltaDiscoveryRequest, _>(x.delta(Some(NETWORK_POLICY_HOSTS)), req)
            }
            _ => return Box::pin(self.inner.call(req)),
        };
        Box::pin(std::future::ready(Ok(resp)))
    }
}

impl XdsServer {
    /// Starts the stream of `machine` for `req` and answers with its response body.
    fn open<Q, M>(&self, machine: M, req: http::Request<tonic::body::Body>) -> HttpResponse
    where
        M: Machine<Req = Q>,
        M::Resp: Frames,
        Q: prost::Message + Default + Send + 'static,
    {
        let (parts, body) = req.into_parts();
        let request = tonic::Request::from_http(http::Request::from_parts(parts, ()));
        let who = match self.authenticate(&request) {
            Ok(who) => who,
            Err(status) => return status.into_http(),
        };
        let decoder = ProstDecoder::<Q>::new(BufferSettings::new(REQUEST_BUFFER, 32 * 1024));
        let inbound = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST));
        let rx = self.spawn(machine, inbound, request.remote_addr(), who);
        let mut resp = http::Response::new(tonic::body::Body::new(WireBody {
            rx,
            queue: Vec::new().into_iter(),
            done: false,
        }));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

/// A stream's response body: each response's frames, then the status as trailers.
struct WireBody<R> {
    rx: mpsc::Receiver<Result<Box<R>, Status>>,
    queue: std::vec::IntoIter<Bytes>,
    done: bool,
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    // Only fails for a message that is not a valid header value, which
    // add_header percent-encodes; the code alone still goes out.
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    Frame::trailers(map)
}

impl<R: Frames + Send + 'static> http_body::Body for WireBody<R> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(b) = this.queue.next() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(resp))) => {
                this.queue = resp.frames().into_iter();
                match this.queue.next() {
                    Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    None => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                Poll::Ready(Some(Ok(trailers(&status))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Ok(trailers(&Status::ok("")))))
            }
        }
    }
}
