//! The upstream side: pooled hyper clients that always dial the configured upstream address.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::WatchedBody;

/// A connector that ignores the request URI's host and dials the one upstream, so the URI can
/// carry the request's original authority (`:authority` / `Host`) unchanged.
#[derive(Clone)]
pub struct FixedConnector {
    inner: HttpConnector,
    target: Uri,
}

impl FixedConnector {
    /// Dials `addr` for every request, with TCP_NODELAY and a connect timeout.
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(connect_timeout));
        inner.enforce_http(false);
        let target = Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        FixedConnector { inner, target }
    }
}

impl tower_service::Service<Uri> for FixedConnector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        self.inner.call(self.target.clone())
    }
}

/// The pooled client type forwarding uses.
pub type UpstreamClient = Client<FixedConnector, WatchedBody>;

/// Clients for each upstream protocol; both keep idle connections for reuse.
#[derive(Clone)]
pub struct Upstreams {
    /// HTTP/1.1 (keep-alive pool).
    pub http1: UpstreamClient,
    /// HTTP/2 with prior knowledge (one multiplexed connection per authority).
    pub http2: UpstreamClient,
}

impl Upstreams {
    /// Builds both clients for `addr`.
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let connector = FixedConnector::new(addr, connect_timeout);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .build(connector);
        Upstreams { http1, http2 }
    }
}
