//! The channel under the etcd client: several endpoints, one in use, the next one when it
//! fails.
//!
//! etcd-client's own channel balances requests over every endpoint with tonic's balancer,
//! which never drops an endpoint whose server is gone: a killed member keeps getting its
//! share of requests, each failing with `tcp connect error`, so `membrane policy import`
//! and identity allocation failed one time in three with one member of three down. This
//! channel sends every request to one endpoint and, when that endpoint cannot be reached
//! or answers UNAVAILABLE (a member without a leader, or shutting down), moves on to the
//! next and sends the request there, as etcd's own Go client does.
//!
//! Only unary requests are sent again: their body is one message, read whole before it is
//! sent. The requests membrane sends are safe to repeat (puts of the same value, deletes,
//! and the identity transaction, whose compare fails harmlessly if the first attempt did
//! land). Watch and lease keep-alive streams are sent once; when one fails, the next
//! stream goes to the next endpoint, and their owners reopen them (the etcd source lists
//! and watches again, the registration takes a new lease).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tower::{BoxError, Service, ServiceExt};

/// The gRPC status UNAVAILABLE, as the `grpc-status` header carries it.
const UNAVAILABLE: &str = "14";
/// Client-streaming methods: their requests stay open and are never sent twice.
const STREAMING: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];
/// How many times each endpoint is tried for one request.
const ROUNDS: usize = 3;
/// The pause between rounds (a leader election takes about a second).
const ROUND_PAUSE: Duration = Duration::from_millis(300);

/// Builds the [`Failover`] channel for [`etcd_client::Client::connect_with_balanced_channel`].
pub(crate) struct Builder;

impl etcd_client::BalancedChannelBuilder for Builder {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            etcd_client::Channel,
            mpsc::Sender<Change<http::Uri, Endpoint>>,
        ),
        Self::Error,
    > {
        let (tx, rx) = mpsc::channel(buffer_size);
        let f = Failover {
            shared: Arc::new(Shared {
                changes: Mutex::new(rx),
                endpoints: Mutex::new(Vec::new()),
                current: AtomicUsize::new(0),
            }),
        };
        Ok((
            etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(f)),
            tx,
        ))
    }
}

struct Shared {
    /// Endpoints the client adds (it sends them all before its first request).
    changes: Mutex<mpsc::Receiver<Change<http::Uri, Endpoint>>>,
    /// Each endpoint with its own lazily connected channel, in the order given.
    endpoints: Mutex<Vec<(http::Uri, Channel)>>,
    /// The index of the endpoint in use.
    current: AtomicUsize,
}

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct Failover {
    shared: Arc<Shared>,
}

impl Shared {
    /// The endpoints, with the client's changes applied, starting at the one in use.
    fn rotation(&self) -> Vec<(usize, http::Uri, Channel)> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(c) = changes.try_recv() {
            match c {
                Change::Insert(uri, ep) => {
                    eps.retain(|(u, _)| *u != uri);
                    eps.push((uri, ep.connect_lazy()));
                }
                Change::Remove(uri) => eps.retain(|(u, _)| *u != uri),
            }
        }
        let n = eps.len();
        let start = self.current.load(Ordering::Relaxed);
        (0..n)
            .map(|i| {
                let k = (start + i) % n;
                (k, eps[k].0.clone(), eps[k].1.clone())
            })
            .collect()
    }

    /// Moves on from endpoint `k` (unless another request did already).
    fn fail(&self, k: usize, n: usize, uri: &http::Uri, why: &str) {
        if self
            .current
            .compare_exchange(k, (k + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(endpoint = %uri, error = why, "etcd endpoint failed; using the next one");
        }
    }
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each request waits for its endpoint's channel in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let endpoints = shared.rotation();
            let n = endpoints.len();
            if n == 0 {
                return Err("etcd: no endpoint".into());
            }
            if STREAMING.contains(&req.uri().path()) {
                let (k, uri, ch) = endpoints[0].clone();
                return match ch.oneshot(req).await {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        shared.fail(k, n, &uri, &e.to_string());
                        Err(e.into())
                    }
                };
            }
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let mut last: Option<Result<http::Response<Body>, BoxError>> = None;
            for round in 0..ROUNDS {
                if round > 0 {
                    tokio::time::sleep(ROUND_PAUSE).await;
                }
                // Each round starts at the endpoint in use then.
                let order = if round == 0 {
                    endpoints.clone()
                } else {
                    shared.rotation()
                };
                for (k, uri, ch) in order {
                    match ch.oneshot(copy(&parts, bytes.clone())).await {
                        Ok(r) if !unavailable(&r) => return Ok(r),
                        Ok(r) => {
                            shared.fail(k, n, &uri, "UNAVAILABLE");
                            last = Some(Ok(r));
                        }
                        Err(e) => {
                            shared.fail(k, n, &uri, &e.to_string());
                            last = Some(Err(e.into()));
                        }
                    }
                }
            }
            last.unwrap_or_else(|| Err("etcd: no endpoint".into()))
        })
    }
}

/// A trailers-only response with status UNAVAILABLE: the member could not serve it.
fn unavailable(r: &http::Response<Body>) -> bool {
    r.headers()
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == UNAVAILABLE.as_bytes())
}

/// The request again, with the body read before.
fn copy(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut r = http::Request::new(Body::new(Full::new(body)));
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r
}
