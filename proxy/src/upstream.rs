//! The upstream side: pooled hyper clients that always dial the configured upstream address.
//!
//! The pools are bounded: each pool key (scheme and authority of the upstream request URI)
//! keeps at most [`PoolSettings::max_idle_per_key`] idle connections; one that becomes idle
//! beyond that is closed at once, and idle connections are closed after
//! [`PoolSettings::idle_timeout`]. HTTP/2 multiplexes every request for one key over one
//! connection.
//!
//! Because HTTP/2 keys are the request's authority, a client cycling through authorities
//! would otherwise open one connection per authority without end. [`H2Limit`] bounds the
//! connections of the HTTP/2 clients of the whole process: a new one beyond the bound
//! closes the least recently used idle one (no request in flight on its pool key), and
//! when every one is busy the request waits for one to become idle or close, up to the
//! connect timeout, then fails with 503 and `x-envoy-overloaded: true` (what Envoy's
//! `max_connections` circuit breaker users see when requests overflow). hyper-util's pool
//! has no global bound, so this is enforced at the connector: each connection it makes
//! holds a slot and can be closed from outside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use crate::body::WatchedBody;
use crate::coalesce::{self, Coalesced};

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

/// Every upstream HTTP/2 connection slot is busy (and stayed so for the wait allowed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("all {max} upstream HTTP/2 connections (--upstream-h2-max-connections) are busy")]
pub struct H2Overflow {
    /// The bound.
    pub max: usize,
}

/// A pool key of one HTTP/2 client: the client and `scheme://authority`.
type PoolKey = (u64, String);

#[derive(Debug)]
struct KeyState {
    /// Requests in flight (response body included).
    busy: usize,
    /// When a request last started.
    last_used: Instant,
    /// Connections holding a slot.
    conns: usize,
}

struct Slot {
    key: PoolKey,
    kill: Arc<Kill>,
}

#[derive(Default)]
struct LimitState {
    /// Connections open or being opened, each holding a slot.
    slots: HashMap<u64, Slot>,
    keys: HashMap<PoolKey, KeyState>,
    next_slot: u64,
}

/// Closes a connection from outside: its reads end and its writes fail, so the HTTP/2
/// connection task ends and the pool discards it.
#[derive(Default)]
struct Kill {
    killed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Kill {
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }

    /// Registers the reader to wake on kill; true if already killed.
    fn register(&self, cx: &Context<'_>) -> bool {
        if let Ok(mut w) = self.waker.lock() {
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        self.killed.load(Ordering::SeqCst)
    }
}

/// The bound on upstream connections of the HTTP/2 clients (see the module docs).
pub struct H2Limit {
    max: usize,
    wait: Duration,
    state: Mutex<LimitState>,
    freed: tokio::sync::Notify,
    next_client: AtomicU64,
    counters: H2Counters,
}

/// What [`H2Limit`] reports: requests refused, connections closed to make room, and the
/// connections holding a slot.
#[derive(Clone, Default)]
pub struct H2Counters {
    /// Requests refused with 503 after waiting for a slot.
    pub overflows: Counter,
    /// Idle connections closed to make room.
    pub evictions: Counter,
    /// Connections open (or opening) now.
    pub open: Gauge,
}

impl H2Limit {
    /// At most `max` connections; a request waits up to `wait` for a slot.
    pub fn new(max: usize, wait: Duration, counters: H2Counters) -> Self {
        H2Limit {
            max,
            wait,
            state: Mutex::default(),
            freed: tokio::sync::Notify::new(),
            next_client: AtomicU64::new(1),
            counters,
        }
    }

    /// Marks a request on `key` in flight until the guard drops (keep it with the response
    /// body): its connection is not idle and becomes the most recently used.
    fn begin(self: &Arc<Self>, key: PoolKey) -> H2Busy {
        if let Ok(mut s) = self.state.lock() {
            let now = Instant::now();
            match s.keys.get_mut(&key) {
                Some(k) => {
                    k.busy += 1;
                    k.last_used = now;
                }
                None => {
                    s.keys.insert(
                        key.clone(),
                        KeyState {
                            busy: 1,
                            last_used: now,
                            conns: 0,
                        },
                    );
                }
            }
        }
        H2Busy {
            limit: self.clone(),
            key,
        }
    }

    fn end(&self, key: &PoolKey) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let idle = match s.keys.get_mut(key) {
            Some(k) => {
                k.busy = k.busy.saturating_sub(1);
                k.busy == 0
            }
            None => false,
        };
        if idle {
            if s.keys.get(key).is_some_and(|k| k.conns == 0) {
                s.keys.remove(key);
            }
            drop(s);
            // A connection became idle: a waiting request may close it and take its slot.
            self.freed.notify_waiters();
        }
    }

    /// A slot for a new connection on `key`: a free one, else that of the least recently
    /// used idle connection (closed now), else waits for one up to the configured wait.
    async fn acquire(self: &Arc<Self>, key: PoolKey) -> Result<SlotGuard, H2Overflow> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let notified = self.freed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(g) = self.try_acquire(&key) {
                return Ok(g);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.counters.overflows.inc();
                return Err(H2Overflow { max: self.max });
            }
        }
    }

    fn try_acquire(self: &Arc<Self>, key: &PoolKey) -> Option<SlotGuard> {
        let mut s = self.state.lock().ok()?;
        if s.slots.len() >= self.max {
            let victim = s
                .slots
                .iter()
                .filter_map(|(id, slot)| {
                    let k = s.keys.get(&slot.key)?;
                    (k.busy == 0).then_some((k.last_used, *id))
                })
                .min()
                .map(|(_, id)| id)?;
            let slot = s.slots.remove(&victim)?;
            Self::unref(&mut s, &slot.key);
            slot.kill.kill();
            self.counters.evictions.inc();
            tracing::debug!(authority = %slot.key.1, "closing the least recently used idle upstream HTTP/2 connection to make room");
        }
        let id = s.next_slot;
        s.next_slot += 1;
        let kill = Arc::new(Kill::default());
        s.slots.insert(
            id,
            Slot {
                key: key.clone(),
                kill: kill.clone(),
            },
        );
        s.keys
            .entry(key.clone())
            .or_insert(KeyState {
                busy: 0,
                last_used: Instant::now(),
                conns: 0,
            })
            .conns += 1;
        self.counters.open.set(s.slots.len() as i64);
        Some(SlotGuard {
            limit: self.clone(),
            id,
            kill,
        })
    }

    fn unref(s: &mut LimitState, key: &PoolKey) {
        if let Some(k) = s.keys.get_mut(key) {
            k.conns = k.conns.saturating_sub(1);
            if k.conns == 0 && k.busy == 0 {
                s.keys.remove(key);
            }
        }
    }

    fn release(&self, id: u64) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        // An evicted connection gave its slot away already.
        if let Some(slot) = s.slots.remove(&id) {
            Self::unref(&mut s, &slot.key);
            self.counters.open.set(s.slots.len() as i64);
            drop(s);
            self.freed.notify_waiters();
        }
    }
}

/// A request in flight on an HTTP/2 client's pool key (see [`H2Limit`]).
pub struct H2Busy {
    limit: Arc<H2Limit>,
    key: PoolKey,
}

impl Drop for H2Busy {
    fn drop(&mut self) {
        self.limit.end(&self.key);
    }
}

/// A connection's slot, released when the connection (its I/O) is dropped.
struct SlotGuard {
    limit: Arc<H2Limit>,
    id: u64,
    kill: Arc<Kill>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.limit.release(self.id);
    }
}

/// A connector for the HTTP/2 clients: each connection takes a slot of the [`H2Limit`].
#[derive(Clone)]
pub struct LimitedConnector {
    inner: FixedConnector,
    limit: Arc<H2Limit>,
    client: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for LimitedConnector {
    type Response = Limited<TokioIo<Coalesced<TcpStream>>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let key = (self.client, pool_key(&dst));
        let limit = self.limit.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let slot = limit.acquire(key).await?;
            let io = tower_service::Service::call(&mut inner, dst).await?;
            // The connection's task runs on `coalesce::Exec`: its frames leave in as few
            // writes as one poll (and the next) allow.
            let io = TokioIo::new(Coalesced::new(io.into_inner()));
            Ok(Limited { io, slot })
        })
    }
}

/// `scheme://authority`, as hyper-util keys its pool.
fn pool_key(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or(""),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// A connection holding an [`H2Limit`] slot; closed (reads end, writes fail) when evicted.
pub struct Limited<T> {
    io: T,
    slot: SlotGuard,
}

impl<T: Connection> Connection for Limited<TokioIo<Coalesced<T>>> {
    fn connected(&self) -> Connected {
        self.io
            .inner()
            .with_inner(Connection::connected)
            .unwrap_or_else(Connected::new)
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.slot.kill.register(cx) {
            return Poll::Ready(Ok(())); // end of stream
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

fn evicted() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed to make room for another upstream HTTP/2 connection",
    )
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.slot.kill.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(evicted()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.slot.kill.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(evicted()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The pooled client type forwarding uses: plain HTTP, or TLS when the URI scheme is https.
pub type UpstreamClient = Client<HttpsConnector<FixedConnector>, WatchedBody>;

/// The pooled client type of HTTP/2 forwarding, whose connections are bounded by [`H2Limit`].
pub type LimitedClient = Client<HttpsConnector<LimitedConnector>, WatchedBody>;

/// Clients for each upstream protocol; all keep idle connections for reuse.
#[derive(Clone)]
pub struct Upstreams {
    /// HTTP/1.1 (keep-alive pool; ALPN http/1.1 over TLS).
    pub http1: UpstreamClient,
    /// HTTP/2 with prior knowledge, or ALPN h2 over TLS (one multiplexed connection per
    /// authority, within the process's [`H2Limit`]).
    pub http2: LimitedClient,
    /// Over TLS, offers ALPN `h2` and `http/1.1` and speaks what the upstream picks: HTTP/2
    /// requests to an upstream that may not speak HTTP/2 (one that does not negotiate `h2`
    /// gets HTTP/1.1 instead of an HTTP/2 preface it would never answer). Within the
    /// [`H2Limit`] too, whichever protocol each connection speaks.
    pub negotiated: LimitedClient,
    limit: Arc<H2Limit>,
    http2_id: u64,
    negotiated_id: u64,
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
        limit: &Arc<H2Limit>,
    ) -> Result<Self, rustls::Error> {
        let connector = FixedConnector::new(addr, connect_timeout);
        let (http2_id, negotiated_id) = (
            limit.next_client.fetch_add(1, Ordering::Relaxed),
            limit.next_client.fetch_add(1, Ordering::Relaxed),
        );
        let limited = |client| LimitedConnector {
            inner: connector.clone(),
            limit: limit.clone(),
            client,
        };
        let h1 = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector.clone());
        let h2 = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_http2()
            .wrap_connector(limited(http2_id));
        let either = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(tls)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(limited(negotiated_id));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_key)
            .build(h1);
        // The HTTP/2 clients' connection tasks coalesce their writes (`coalesce::Exec`).
        let http2 = Client::builder(coalesce::Exec)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_key)
            .http2_only(true)
            .build(h2);
        let negotiated = Client::builder(coalesce::Exec)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_key)
            .build(either);
        Ok(Upstreams {
            http1,
            http2,
            negotiated,
            limit: limit.clone(),
            http2_id,
            negotiated_id,
        })
    }

    /// Clients for a meshed destination `addr`: Istio mutual TLS with the workload
    /// certificate, Istio's ALPN (`istio-http/1.1` / `istio-h2` first) and SNI
    /// (`outbound_.PORT_._.HOST`, HOST being the request's authority). HTTP/2 goes with
    /// prior knowledge: Istio's ALPN is not what selects the protocol.
    pub fn new_mesh(
        addr: SocketAddr,
        connect_timeout: Duration,
        mesh: &Arc<crate::mesh_tls::MeshTls>,
        pool: &PoolSettings,
        limit: &Arc<H2Limit>,
    ) -> Result<Self, rustls::Error> {
        use crate::mesh_tls::{server_name, Proto};
        let connector = FixedConnector::new(addr, connect_timeout);
        let (http2_id, negotiated_id) = (
            limit.next_client.fetch_add(1, Ordering::Relaxed),
            limit.next_client.fetch_add(1, Ordering::Relaxed),
        );
        let port = addr.port();
        let sni: Arc<dyn hyper_rustls::ResolveServerName + Send + Sync> =
            Arc::new(move |uri: &Uri| server_name(uri.host().unwrap_or_default(), port));
        // The builder refuses a configuration with ALPN set; Istio's list is the point here.
        let h1 = HttpsConnector::new(
            connector.clone(),
            mesh.client_config(Proto::Http1),
            true,
            sni.clone(),
        );
        let h2 = |client| {
            HttpsConnector::new(
                LimitedConnector {
                    inner: connector.clone(),
                    limit: limit.clone(),
                    client,
                },
                mesh.client_config(Proto::Http2),
                true,
                sni.clone(),
            )
        };
        let built = |b: &mut hyper_util::client::legacy::Builder| {
            b.pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(pool.idle_timeout)
                .pool_max_idle_per_host(pool.max_idle_per_key);
        };
        let mut b1 = Client::builder(TokioExecutor::new());
        built(&mut b1);
        let mut b2 = Client::builder(coalesce::Exec);
        built(&mut b2);
        b2.http2_only(true);
        Ok(Upstreams {
            http1: b1.build(h1),
            http2: b2.build(h2(http2_id)),
            negotiated: b2.build(h2(negotiated_id)),
            limit: limit.clone(),
            http2_id,
            negotiated_id,
        })
    }

    /// Marks a request to `uri` on the HTTP/2 client (`negotiated`: the ALPN one) in
    /// flight until the guard drops; keep it with the response body.
    pub fn h2_busy(&self, negotiated: bool, uri: &Uri) -> H2Busy {
        let client = if negotiated {
            self.negotiated_id
        } else {
            self.http2_id
        };
        self.limit.begin((client, pool_key(uri)))
    }
}
