//! Downstream side: accept loop, protocol sniffing, per-connection limits, and the request
//! pipeline (validate → normalize → enforce → forward).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::body::{failure, full, ResponseBody, UpstreamBody, WatchedBody};
use crate::connwatch::{ConnWatch, UpgradeVerdict};
use crate::h1guard::H1Guard;
use crate::metrics::{CaptureListener, CaptureRefusal, Metrics, Verdict};
use crate::normalize::normalize_path;
use crate::policy::{Decision, Direction, PolicyHandle, RequestView};
use crate::upstream::Upstreams;

mod route;
mod upgrade;

pub use route::{Delivery, Route};
use upgrade::{tunnel, upgrade_allowed, wants_upgrade};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Listener settings, resolved from the `Config`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Upstream address (its port is the policy port).
    pub upstream: SocketAddr,
    /// Forward HTTP/2 as HTTP/2 (else always HTTP/1.1 upstream).
    pub h2_upstream: bool,
    /// Originate TLS to the upstream.
    pub upstream_tls: bool,
    /// Name the upstream's certificate is verified against (SNI), instead of the request's authority.
    pub upstream_server_name: Option<String>,
    /// Emit access-log entries.
    pub access_log: bool,
    /// Merge `//` in paths.
    pub merge_slashes: bool,
    /// Add a header naming the deciding policy to denials.
    pub deny_detail_header: bool,
    /// Slowloris bound on preface and request heads.
    pub header_read_timeout: Duration,
    /// Close connections idle this long.
    pub idle_timeout: Duration,
    /// A request (head and body) must have arrived this long after its head; `None`: no limit.
    pub request_timeout: Option<Duration>,
    /// A connection with a request in flight (or a tunnel) that moves no byte this long is cut.
    pub stream_idle_timeout: Duration,
    /// Upgrade protocols tunnelled after a 101, lower-case.
    pub upgrade_types: Arc<[String]>,
    /// Maximum request-head bytes.
    pub max_header_bytes: usize,
    /// Maximum request headers (HTTP/1.1).
    pub max_headers: usize,
    /// Maximum concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Maximum concurrent downstream connections.
    pub max_connections: usize,
    /// The sidecar's own ports: capture never forwards to one of them (sorted).
    pub proxy_ports: Vec<u16>,
    /// Upstream connection pool bounds.
    pub pool: crate::upstream::PoolSettings,
    /// Upstream connections the HTTP/2 clients may hold in all.
    pub h2_max_connections: usize,
}

/// State shared by every connection of one listener.
pub struct Shared {
    /// Settings.
    pub settings: Settings,
    /// Current policy (swapped atomically; each request loads it once).
    pub policy: PolicyHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    upstreams: Upstreams,
    /// The bound on upstream HTTP/2 connections, shared by every client.
    h2_limit: Arc<crate::upstream::H2Limit>,
    connections: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connect_timeout: Duration,
    upstream_tls: Option<crate::upstream::UpstreamTls>,
    capture_upstreams: std::sync::Mutex<std::collections::HashMap<SocketAddr, Upstreams>>,
    /// TLS material for policy-driven termination and origination.
    secrets: Arc<crate::secrets::SecretStore>,
    /// Pooled clients per (destination, originating TLS material).
    origin_upstreams: std::sync::Mutex<std::collections::HashMap<(SocketAddr, u64), Upstreams>>,
}

impl Shared {
    /// Builds the listener state; upstream clients are created here (no I/O yet).
    pub fn new(
        settings: Settings,
        policy: PolicyHandle,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
        upstream_tls: Option<&crate::upstream::UpstreamTls>,
        secrets: Arc<crate::secrets::SecretStore>,
    ) -> Result<Self, rustls::Error> {
        let h2_limit = Arc::new(crate::upstream::H2Limit::new(
            settings.h2_max_connections,
            connect_timeout,
            metrics.h2_limit_counters(),
        ));
        let upstreams = Upstreams::new(
            settings.upstream,
            connect_timeout,
            upstream_tls,
            &settings.pool,
            &h2_limit,
        )?;
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        Ok(Shared {
            settings,
            policy,
            metrics,
            upstreams,
            h2_limit,
            connections,
            tls,
            connect_timeout,
            upstream_tls: upstream_tls.cloned(),
            capture_upstreams: Default::default(),
            secrets,
            origin_upstreams: Default::default(),
        })
    }
}

/// Accepts until `shutdown` turns true; each connection gets its own task.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    delivery: Delivery,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared.metrics.connection_overflow();
            tracing::debug!(%peer, "max connections reached, closing");
            drop(stream);
            continue;
        };
        let route = match shared.route(&stream, delivery) {
            Ok(r) => r,
            Err(reason) => {
                let listener = match delivery {
                    Delivery::CapturedOutbound => CaptureListener::outbound,
                    _ => CaptureListener::inbound,
                };
                shared.metrics.capture_refused(listener, reason);
                tracing::info!(%peer, ?listener, ?reason, "capture refused a connection");
                continue;
            }
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shared.metrics.connection_opened();
            serve_connection(stream, peer, route, &shared, shutdown).await;
            shared.metrics.connection_closed();
            drop(permit);
        });
    }
}

/// Per-connection bookkeeping for the idle and stream timeouts.
pub(crate) struct ConnState {
    peer: SocketAddr,
    route: Route,
    /// SNI of the connection's TLS ClientHello, when it had one.
    sni: Option<Arc<str>>,
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// Shared with the connection's I/O guard.
    watch: Arc<ConnWatch>,
    /// HTTP/1 (the guard holds the stream after an upgrade request for the handler's verdict).
    http1: bool,
    /// The upgrade tunnel, if one was opened: the connection (and its slot) lasts as long.
    tunnel: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A request in flight, on its connection (idle and stream timeouts) and in the process (the
/// heap trim waits for none), until its response body ends.
pub(crate) struct InFlight(Arc<ConnState>, Arc<Metrics>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.1.request_ended();
    }
}

async fn sniff<I: AsyncRead + Unpin>(stream: &mut I) -> std::io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
    Ok(Some(buf.freeze()))
}

/// An L4-only port: one verdict per connection, then bytes are copied both ways unparsed.
async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    target: SocketAddr,
    shared: &Shared,
    checked: crate::policy::Checked,
    prefix: Bytes,
) {
    let started = Instant::now();
    if let Decision::Deny { decided_by } = &checked.decision {
        tracing::debug!(%peer, decided_by, "L4 connection denied");
        if shared.settings.access_log {
            tracing::info!(
                target: "access",
                r#type = "Denied",
                src = %peer,
                src_identity = checked.remote_identity,
                decided_by = decided_by.as_str(),
                "L4"
            );
        }
        return;
    }
    let mut upstream = match TcpStream::connect(target).await {
        Ok(u) => u,
        Err(e) => {
            shared.metrics.upstream_error();
            tracing::debug!(%peer, error = %e, "upstream connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if !prefix.is_empty() {
        // Bytes read while looking for a ClientHello go first.
        use tokio::io::AsyncWriteExt;
        if upstream.write_all(&prefix).await.is_err() {
            return;
        }
    }
    let copied = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
    if shared.settings.access_log {
        let (up, down) = copied.unwrap_or_default();
        tracing::info!(
            target: "access",
            r#type = "Response",
            src = %peer,
            src_identity = checked.remote_identity,
            bytes_up = up,
            bytes_down = down,
            duration_us = started.elapsed().as_micros() as u64,
            "L4"
        );
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    route: Route,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let policy = shared.policy.load();
    let (remote, port) = (route.remote(peer), route.target.port());
    // A port whose rules carry serverNames or TLS contexts: the ClientHello decides.
    if policy.tls_plan(remote, route.dir, port, None).is_some() {
        drop(policy);
        return serve_policy_tls(stream, peer, route, shared, shutdown).await;
    }
    let l4 = policy.check_l4(remote, route.dir, port);
    drop(policy);
    if let Some(checked) = l4 {
        return splice(stream, peer, route.target, shared, checked, Bytes::new()).await;
    }
    match &shared.tls {
        None => serve_http(stream, peer, route, None, shared, shutdown).await,
        Some(acceptor) => {
            let timeout = shared.settings.header_read_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(Arc::from);
                    serve_http(tls, peer, route, sni, shared, shutdown).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// A connection on a port whose rules carry serverNames or TLS contexts: read the
/// ClientHello (without answering it), let the policy decide with its SNI, then splice,
/// terminate (with the rule's certificate) or serve plaintext HTTP, originating TLS
/// upstream when the rule says so. TLS the policy needs but cannot get (no ClientHello,
/// no usable certificate) refuses the connection; nothing falls back to plaintext.
async fn serve_policy_tls(
    mut stream: TcpStream,
    peer: SocketAddr,
    route: Route,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let timeout = shared.settings.header_read_timeout;
    use crate::metrics::TlsRefusal;
    let refuse = |reason| shared.metrics.tls_refused(reason);
    let hello =
        match tokio::time::timeout(timeout, crate::tls::peek_client_hello(&mut stream)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                refuse(TlsRefusal::no_client_hello);
                return tracing::debug!(%peer, error = %e, "unreadable ClientHello");
            }
            Err(_) => {
                refuse(TlsRefusal::no_client_hello);
                return tracing::debug!(%peer, "no ClientHello within header read timeout");
            }
        };
    let (remote, port) = (route.remote(peer), route.target.port());
    let plan = shared
        .policy
        .load()
        .tls_plan(remote, route.dir, port, hello.sni.as_deref());
    let Some(plan) = plan else {
        // The policy changed under us and no longer inspects TLS here: treat as denied
        // rather than guess; the client retries under the new policy.
        return;
    };
    let stream = crate::tls::Prefixed::new(stream, hello.prefix);
    let terminating = plan.tls.as_ref().and_then(|t| t.terminating.as_ref());
    let originating = plan.tls.as_ref().and_then(|t| t.originating.as_ref());
    match &plan.l4 {
        Some(
            denied @ crate::policy::Checked {
                decision: Decision::Deny { .. },
                ..
            },
        ) => {
            refuse(TlsRefusal::denied);
            return splice(
                stream,
                peer,
                route.target,
                shared,
                denied.clone(),
                Bytes::new(),
            )
            .await;
        }
        Some(allowed) if terminating.is_none() && originating.is_none() => {
            // Admitted at L4 (serverNames only): bytes pass untouched.
            let (prefix, stream) = stream.into_parts();
            return splice(stream, peer, route.target, shared, allowed.clone(), prefix).await;
        }
        _ => {}
    }
    let sni: Option<Arc<str>> = hello.sni.as_deref().map(Arc::from);
    let route = match originating {
        Some(src) => match shared.originating(route, src, hello.sni.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                // The material's error is logged once by the secret store.
                refuse(TlsRefusal::no_origination);
                return tracing::debug!(%peer, error = %e, "cannot originate TLS upstream; connection refused");
            }
        },
        None => route,
    };
    match (terminating, hello.tls) {
        (Some(src), true) => {
            let cfg = match shared.secrets.server_config(src) {
                Ok(c) => c,
                Err(e) => {
                    refuse(TlsRefusal::no_certificate);
                    return tracing::debug!(%peer, error = %e, "no certificate for this port; TLS handshake refused");
                }
            };
            match tokio::time::timeout(timeout, crate::tls::accept_with(stream, cfg)).await {
                Ok(Ok(tls)) => serve_http(tls, peer, route, sni, shared, shutdown).await,
                Ok(Err(e)) => {
                    refuse(TlsRefusal::handshake_failed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed")
                }
                Err(_) => {
                    refuse(TlsRefusal::handshake_failed);
                    tracing::debug!(%peer, "TLS handshake timed out")
                }
            }
        }
        (Some(_), false) => {
            refuse(TlsRefusal::plaintext);
            tracing::debug!(%peer, "plaintext on a port that terminates TLS; refused")
        }
        (None, true) => {
            refuse(TlsRefusal::not_terminated);
            tracing::debug!(%peer, "TLS the policy must inspect or re-originate but does not terminate; refused")
        }
        (None, false) => serve_http(stream, peer, route, None, shared, shutdown).await,
    }
}

/// HTTP on an established (plain or TLS) stream: sniff HTTP/2 vs HTTP/1.1, then serve.
async fn serve_http<I>(
    mut stream: I,
    peer: SocketAddr,
    route: Route,
    sni: Option<Arc<str>>,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = &shared.settings;
    let prefix = match tokio::time::timeout(s.header_read_timeout, sniff(&mut stream)).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no request within header read timeout");
            return;
        }
    };
    let is_h2 = prefix.starts_with(H2_PREFACE);
    let watch = Arc::new(ConnWatch::default());
    let state = Arc::new(ConnState {
        peer,
        route,
        sni,
        in_flight: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        watch: watch.clone(),
        http1: !is_h2,
        tunnel: Default::default(),
    });
    let svc = {
        let shared = shared.clone();
        let state = state.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&shared, state, req).await) }
        })
    };

    let mut idle = tokio::time::interval(s.idle_timeout);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle.tick().await;
    let mut seen = 0u64;
    let mut draining = false;
    let mut idle_progress = watch.progress();
    let mut head_check =
        tokio::time::interval((s.header_read_timeout / 4).max(Duration::from_millis(10)));
    head_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    head_check.tick().await;
    // Stream idle: a connection with a request in flight that moved no byte in either
    // direction between two ticks is cut, with its upstream exchange (a stalled body, a
    // client that stopped reading). One coarse interval per connection, not a timer per request.
    let mut stream_check = tokio::time::interval(s.stream_idle_timeout);
    stream_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stream_check.tick().await;
    let mut stream_progress = watch.progress();

    macro_rules! drive {
        ($conn:expr) => {{
            let mut conn = std::pin::pin!($conn);
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with error");
                        }
                        break;
                    }
                    _ = shutdown.wait_for(|s| *s), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = head_check.tick(), if state.http1 => {
                        let late = watch.head_pending_for().is_some_and(|d| d > s.header_read_timeout);
                        if late {
                            tracing::debug!(%peer, "request head not received within header read timeout");
                            break;
                        }
                    }
                    _ = stream_check.tick() => {
                        let now = watch.progress();
                        if now == stream_progress && state.in_flight.load(Ordering::Relaxed) > 0 {
                            tracing::debug!(%peer, "stream idle timeout");
                            break;
                        }
                        stream_progress = now;
                    }
                    _ = idle.tick() => {
                        let now = state.started.load(Ordering::Relaxed);
                        let progress = watch.progress();
                        if draining {
                            // Asked to finish, yet nothing moved for a whole period (a
                            // response the client does not read): give up on it.
                            if progress == idle_progress {
                                tracing::debug!(%peer, "draining connection stalled");
                                break;
                            }
                        } else if now == seen && state.in_flight.load(Ordering::Relaxed) == 0 {
                            tracing::debug!(%peer, "idle timeout");
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        seen = now;
                        idle_progress = progress;
                    }
                }
            }
        }};
    }

    if is_h2 {
        let io = TokioIo::new(H1Guard::passthrough(stream, prefix).with_watch(watch.clone()));
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(s.max_concurrent_streams)
            // h2's default lets each connection buffer 400 KiB of response data; with many
            // connections that dominated RSS under load. Flow control still applies.
            .max_send_buf_size(64 * 1024)
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
        drive!(b.serve_connection(io, svc));
    } else {
        let io = TokioIo::new(
            H1Guard::new(stream, prefix, s.max_header_bytes).with_watch(watch.clone()),
        );
        let mut b = hyper::server::conn::http1::Builder::new();
        // No hyper header_read_timeout (with a timer set it defaults to 30 s, costing a timer
        // allocation and registration per request): the ConnWatch check in `drive!` enforces it.
        b.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(s.max_header_bytes)
            .max_headers(s.max_headers)
            .max_buf_size(s.max_header_bytes.max(8192) + 8192);
        drive!(b.serve_connection(io, svc).with_upgrades());
    }
    // An upgraded connection lives on as its tunnel: it keeps its slot until that ends.
    let tunnel = state.tunnel.lock().ok().and_then(|mut t| t.take());
    if let Some(t) = tunnel {
        let _ = t.await;
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
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

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), keeping `te: trailers` (gRPC) and, for an
/// upgrade, `connection: upgrade` + `upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in ["keep-alive", "proxy-connection", "transfer-encoding"] {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    let te_trailers = h
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

struct AccessEntry<'a> {
    kind: &'static str,
    peer: SocketAddr,
    /// Where the request goes (upstream or original destination).
    dst: SocketAddr,
    /// (source, destination) identities.
    identities: (u32, u32),
    method: &'a str,
    path: &'a str,
    host: &'a str,
    status: u16,
    decided_by: &'a str,
    started: Instant,
}

fn access_log(e: &AccessEntry<'_>) {
    tracing::info!(
        target: "access",
        r#type = e.kind,
        src = %e.peer,
        dst = %e.dst,
        src_identity = e.identities.0,
        dst_identity = e.identities.1,
        method = e.method,
        path = e.path,
        host = e.host,
        status = e.status,
        decided_by = e.decided_by,
        duration_us = e.started.elapsed().as_micros() as u64,
    );
}

async fn handle(
    shared: &Shared,
    conn_arc: Arc<ConnState>,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let conn = &*conn_arc;
    conn.started.fetch_add(1, Ordering::Relaxed);
    conn.in_flight.fetch_add(1, Ordering::Relaxed);
    shared.metrics.request_started(started);
    // Moved into the response body when there is one, so the request counts as in flight
    // (for the idle and stream timeouts) until its response has been sent.
    let mut in_flight = Some(InFlight(conn_arc.clone(), shared.metrics.clone()));
    let s = &shared.settings;
    let grpc = is_grpc(req.headers());
    let is_h2 = req.version() == Version::HTTP_2;
    // The HTTP/1 guard holds back everything after a request that may switch protocols
    // until this handler decides; any return but a 101 resumes its checking.
    let verdict = UpgradeVerdict::new(
        (conn.http1
            && (req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE)))
        .then_some(&*conn.watch),
    );

    if is_h2 && req.uri().authority().is_some() {
        // :authority is the target (RFC 9113 §8.3.1); a Host header beside it is not what
        // the policy matches, so it must not be what an HTTP/1.1 upstream routes on either.
        req.headers_mut().remove(header::HOST);
    }
    // The authority the client addressed: :authority for HTTP/2 (Host without one), Host
    // for HTTP/1.
    let host: Option<String> = if is_h2 && req.uri().authority().is_some() {
        req.uri().authority().map(|a| a.as_str().to_owned())
    } else {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    let reject = |status: StatusCode,
                  verdict: Verdict,
                  why: &str,
                  req: &Request<Incoming>,
                  identity: u32| {
        tracing::debug!(peer = %conn.peer, reason = why, "rejecting request");
        let mut r = local_reply(status, grpc, None);
        if !is_h2 && status == StatusCode::BAD_REQUEST {
            // The client's framing or target was unreadable: do not trust the rest of its stream.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        shared
            .metrics
            .request(verdict, status.as_u16(), started.elapsed());
        if s.access_log {
            access_log(&AccessEntry {
                kind: "Denied",
                peer: conn.peer,
                dst: conn.route.target,
                identities: (identity, 0),
                method: req.method().as_str(),
                path: req.uri().path(),
                host: host.as_deref().unwrap_or(""),
                status: status.as_u16(),
                decided_by: why,
                started,
            });
        }
        r
    };

    if req.method() == Method::CONNECT {
        return reject(
            StatusCode::METHOD_NOT_ALLOWED,
            Verdict::Invalid,
            "CONNECT",
            &req,
            0,
        );
    }
    // HTTP/1.1 requires exactly one Host (RFC 9112 §3.2); none may have two (which one
    // would the upstream read?).
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (req.version() == Version::HTTP_11 && hosts != 1) {
        return reject(
            StatusCode::BAD_REQUEST,
            Verdict::Invalid,
            "missing or repeated Host",
            &req,
            0,
        );
    }
    let path = match normalize_path(req.uri().path(), s.merge_slashes) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                Verdict::Invalid,
                &e.to_string(),
                &req,
                0,
            )
        }
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };

    // One policy snapshot for the whole request.
    let policy = shared.policy.load();
    let decision = policy.check(
        conn.route.remote(conn.peer),
        conn.route.dir,
        conn.route.target.port(),
        &RequestView {
            method: req.method().as_str(),
            path: &path_and_query,
            host: host.as_deref(),
            headers: req.headers(),
            sni: conn.sni.as_deref(),
            secrets: &*shared.secrets,
        },
    );
    let src_identity = decision.remote_identity;
    let identities = match conn.route.dir {
        Direction::Ingress => (decision.remote_identity, decision.local_identity),
        Direction::Egress => (decision.local_identity, decision.remote_identity),
    };
    let (allowed_by, header_actions) = match decision.decision {
        Decision::Deny { decided_by } => {
            let detail = s.deny_detail_header.then_some(decided_by.as_str());
            let r = local_reply(StatusCode::FORBIDDEN, grpc, detail);
            shared
                .metrics
                .request(Verdict::Denied, 403, started.elapsed());
            if s.access_log {
                access_log(&AccessEntry {
                    kind: "Denied",
                    peer: conn.peer,
                    dst: conn.route.target,
                    identities,
                    method: req.method().as_str(),
                    path: &path_and_query,
                    host: host.as_deref().unwrap_or(""),
                    status: 403,
                    decided_by: &decided_by,
                    started,
                });
            }
            return r;
        }
        Decision::Allow {
            decided_by,
            header_actions,
        } => (decided_by, header_actions),
    };
    drop(policy);

    // Rewrite the target: original authority (the connector dials the upstream regardless),
    // or the configured TLS server name, which is what the upstream certificate must match.
    let original_authority = host
        .as_deref()
        .filter(|h| h.parse::<http::uri::Authority>().is_ok())
        .map(str::to_owned)
        .unwrap_or_else(|| conn.route.target.to_string());
    let use_h2 = is_h2 && s.h2_upstream;
    // The URI's authority is also the upstream pool key. Plain HTTP/1.1 carries the client's
    // authority in Host, so its URI names the address dialled: one bounded pool per upstream
    // whatever Host values clients send. HTTP/2 (`:authority`) and TLS (SNI) need the name.
    let authority = match &conn.route.server_name {
        Some(name) => format!("{name}:{}", conn.route.target.port()),
        None if !use_h2 && !conn.route.https => conn.route.target.to_string(),
        None => original_authority.clone(),
    };
    let uri = match Uri::builder()
        .scheme(if conn.route.https { "https" } else { "http" })
        .authority(authority)
        .path_and_query(path_and_query.as_str())
        .build()
    {
        Ok(u) => u,
        Err(_) => {
            return reject(
                StatusCode::BAD_REQUEST,
                Verdict::Invalid,
                "unforwardable target",
                &req,
                src_identity,
            )
        }
    };
    // Only listed protocols are tunnelled; any other Upgrade is removed below (with the
    // Connection tokens) and the request goes upstream as plain HTTP.
    let upgrade = wants_upgrade(&req) && upgrade_allowed(req.headers(), &s.upgrade_types);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let method = parts.method.to_string();
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    canonical_content_length(&mut parts.headers);
    crate::policy::apply_header_actions(&mut parts.headers, &header_actions);
    // HTTP/2 over TLS: ALPN decides between h2 and HTTP/1.1 (the request goes out as
    // HTTP/1.1 unless the connection negotiated h2; the client adds Host on HTTP/1.1).
    let negotiate = use_h2 && conn.route.https;
    parts.version = if use_h2 && !negotiate {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if use_h2 {
        parts.headers.remove(header::HOST);
    } else if is_h2 || !parts.headers.contains_key(header::HOST) {
        // HTTP/2 downstream to HTTP/1.1 upstream: the authority the policy matched becomes Host.
        if let Ok(v) = HeaderValue::from_str(&original_authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    if !use_h2
        && !upgrade
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        // A body of unknown length goes upstream chunked, whatever the method: hyper's client
        // would otherwise drop it from a GET, changing what the request means.
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let body_failed = Arc::new(AtomicU8::new(failure::NONE));
    let body = if upgrade {
        WatchedBody::empty()
    } else {
        let deadline = s
            .request_timeout
            .map(|t| tokio::time::Instant::from_std(started) + t);
        WatchedBody::new(body, body_failed.clone(), deadline)
    };
    let upstream_req = Request::from_parts(parts, body);
    // HTTP/2 clients' requests keep their connection busy until the response body ends,
    // so the connection bound never closes one that is in use.
    let h2_busy =
        (negotiate || use_h2).then(|| conn.route.upstreams.h2_busy(negotiate, upstream_req.uri()));

    if s.access_log {
        access_log(&AccessEntry {
            kind: "Request",
            peer: conn.peer,
            dst: conn.route.target,
            identities,
            method: &method,
            path: &path_and_query,
            host: host.as_deref().unwrap_or(""),
            status: 0,
            decided_by: "",
            started,
        });
    }
    let upstreams = &conn.route.upstreams;
    let sent = if negotiate {
        upstreams.negotiated.request(upstream_req).await
    } else if use_h2 {
        upstreams.http2.request(upstream_req).await
    } else {
        upstreams.http1.request(upstream_req).await
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let overloaded = is_h2_overflow(&e);
            let status = match body_failed.load(Ordering::Relaxed) {
                failure::CLIENT => StatusCode::BAD_REQUEST,
                failure::TIMEOUT => StatusCode::REQUEST_TIMEOUT,
                _ if e.is_connect() => {
                    shared.metrics.upstream_error();
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => {
                    shared.metrics.upstream_error();
                    StatusCode::BAD_GATEWAY
                }
            };
            tracing::debug!(peer = %conn.peer, error = %e, "upstream request failed");
            let verdict = if matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT
            ) {
                Verdict::Invalid
            } else {
                Verdict::Allowed
            };
            shared
                .metrics
                .request(verdict, status.as_u16(), started.elapsed());
            let mut r = local_reply(status, grpc, None);
            if !is_h2
                && matches!(
                    status,
                    StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT
                )
            {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if overloaded {
                // As Envoy marks a circuit breaker's overflow.
                r.headers_mut()
                    .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
            }
            return r;
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(down) = downstream_upgrade else {
            // A 101 nobody asked for (the Upgrade was removed, or HTTP/2): passing it on
            // would leave client and upstream disagreeing about the protocol.
            shared.metrics.upstream_error();
            shared
                .metrics
                .request(Verdict::Allowed, 502, started.elapsed());
            tracing::debug!(peer = %conn.peer, "upstream switched protocols unasked");
            return local_reply(StatusCode::BAD_GATEWAY, grpc, None);
        };
        let up = hyper::upgrade::on(&mut resp);
        let watch = conn.watch.clone();
        let idle = s.stream_idle_timeout;
        let tunnel = tokio::spawn(async move {
            match tokio::try_join!(down, up) {
                Ok((d, u)) => tunnel(d, u, &watch, idle).await,
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        if let Ok(mut t) = conn.tunnel.lock() {
            *t = Some(tunnel);
        }
        verdict.upgraded();
    } else {
        drop(verdict);
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    let status = resp.status().as_u16();
    shared
        .metrics
        .request(Verdict::Allowed, status, started.elapsed());
    if s.access_log {
        access_log(&AccessEntry {
            kind: "Response",
            peer: conn.peer,
            dst: conn.route.target,
            identities,
            method: &method,
            path: &path_and_query,
            host: host.as_deref().unwrap_or(""),
            status,
            decided_by: &allowed_by,
            started,
        });
    }
    resp.map(|b| http_body_util::Either::Left(UpstreamBody::new(b, h2_busy, in_flight.take())))
}

/// `Content-Length: 010` goes upstream as `10`: some parsers read leading zeros as octal.
/// (The guard has already refused anything but digits.)
fn canonical_content_length(h: &mut HeaderMap) {
    let Some(v) = h.get(header::CONTENT_LENGTH) else {
        return;
    };
    let b = v.as_bytes();
    if b.len() > 1 && b[0] == b'0' {
        if let Some(n) = v.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
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

/// The IP a connection's identity is looked up by.
pub fn peer_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}
