//! The upstream side: pooled hyper clients that always dial the configured upstream address.
//!
//! The pools are bounded: each pool key (scheme and authority of the upstream request URI)
//! keeps at most [`PoolSettings::max_idle_per_key`] idle connections; one that becomes idle
//! beyond that is closed at once, and idle connections are closed after
//! [`PoolSettings::idle_timeout`]. HTTP/2 multiplexes every request for one key over one
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
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

/// The pooled client type forwarding uses: plain HTTP, or TLS when the URI scheme is https.
pub type UpstreamClient = Client<HttpsConnector<FixedConnector>, WatchedBody>;

/// Clients for each upstream protocol; both keep idle connections for reuse.
#[derive(Clone)]
pub struct Upstreams {
    /// HTTP/1.1 (keep-alive pool; ALPN http/1.1 over TLS).
    pub http1: UpstreamClient,
    /// HTTP/2 with prior knowledge, or ALPN h2 over TLS (one multiplexed connection per authority).
    pub http2: UpstreamClient,
    /// Over TLS, offers ALPN `h2` and `http/1.1` and speaks what the upstream picks: HTTP/2
    /// requests to an upstream that may not speak HTTP/2 (one that does not negotiate `h2`
    /// gets HTTP/1.1 instead of an HTTP/2 preface it would never answer).
    pub negotiated: UpstreamClient,
}

/// Bounds on the idle upstream connections each client keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Idle connections kept per pool key; further ones are closed when they become idle
    /// (0: no reuse, every request dials).
    pub max_idle_per_key: usize,
    /// An idle connection is closed after this long unused (checked every `idle_timeout`, so
    /// one may linger up to twice as long).
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_idle_per_key: 64,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Upstream TLS origination settings.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Trust anchors for the upstream's certificate.
    pub roots: Arc<rustls::RootCertStore>,
    /// Client certificate presented to the upstream, if any.
    pub client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// Loads PEM trust anchors for `--upstream-ca`.
pub fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, crate::tls::TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let err = |m: String| crate::tls::TlsError::Cert {
        path: path.display().to_string(),
        message: m,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        roots
            .add(c.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    Ok(roots)
}

/// ALPN is set by the connector builder (`enable_http1` / `enable_http2`).
fn client_config(tls: Option<&UpstreamTls>) -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = tls
        .map(|t| (*t.roots).clone())
        .unwrap_or_else(rustls::RootCertStore::empty);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match tls.and_then(|t| t.client_cert.clone()) {
        Some(key) => {
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    })
}

impl Upstreams {
    /// Builds both clients for `addr`, pooled within `pool`. TLS is used for requests whose
    /// URI scheme is https (the server sets it when `tls` is configured); without `tls` no
    /// request is https.
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
        pool: &PoolSettings,
    ) -> Result<Self, rustls::Error> {
        let connector = FixedConnector::new(addr, connect_timeout);
        let h1 = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector.clone());
        let h2 = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector.clone());
        let either = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_key)
            .build(h1);
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_key)
            .http2_only(true)
            .build(h2);
        let negotiated = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_key)
            .build(either);
        Ok(Upstreams {
            http1,
            http2,
            negotiated,
        })
    }
}
