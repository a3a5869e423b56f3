//! HTTP on an established (plain or TLS) stream: sniff HTTP/2 vs HTTP/1.1, serve the
//! connection with hyper over the request stack ([`super::layers`]), and enforce the
//! per-connection timeouts (header read, idle, stream idle, draining).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

use super::layers::HttpService;
use super::{ConnState, Route, Shared};
use crate::coalesce;
use crate::connwatch::ConnWatch;
use crate::h1guard::H1Guard;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn sniff<I: AsyncRead + Unpin>(stream: &mut I) -> std::io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
    Ok(Some(buf.freeze()))
}

/// HTTP on an established (plain or TLS) stream: sniff HTTP/2 vs HTTP/1.1, then serve.
pub(super) async fn serve_http<I>(
    mut stream: I,
    peer: SocketAddr,
    route: Route,
    sni: Option<Arc<str>>,
    mesh_peer: Option<Arc<crate::mesh_tls::Peer>>,
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
        shared: shared.clone(),
        peer,
        route,
        sni,
        mesh_peer,
        in_flight: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        watch: watch.clone(),
        http1: !is_h2,
        tunnel: Default::default(),
        closing: AtomicBool::new(false),
    });
    let svc = HttpService::new(state.clone());

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

    // `$conn`: the connection's future; `$graceful`: with the pinned future as `$c`, asks
    // the connection to finish gracefully.
    macro_rules! drive {
        ($conn:expr, $c:ident => $graceful:expr) => {{
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
                        if state.http1 && shared.lazy_close.load(Ordering::Relaxed) {
                            // Its client will send again on this connection (a successor
                            // has the listener): closing it now would race that request,
                            // so the next response carries `Connection: close`.
                            state.closing.store(true, Ordering::Relaxed);
                        } else {
                            let $c = conn.as_mut();
                            $graceful;
                        }
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
                            let $c = conn.as_mut();
                            $graceful;
                        }
                        seen = now;
                        idle_progress = progress;
                    }
                }
            }
        }};
    }

    if is_h2 {
        // The frames of one poll leave in one write (see `coalesce`).
        let io = TokioIo::new(coalesce::Coalesced::new(
            H1Guard::passthrough(stream, prefix).with_watch(watch.clone()),
        ));
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(s.max_concurrent_streams)
            // h2's default lets each connection buffer 400 KiB of response data; with many
            // connections that dominated RSS under load. Flow control still applies.
            .max_send_buf_size(64 * 1024)
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
        drive!(coalesce::scope(b.serve_connection(io, svc)), c => c.inner().graceful_shutdown());
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
        drive!(b.serve_connection(io, svc).with_upgrades(), c => c.graceful_shutdown());
    }
    // An upgraded connection lives on as its tunnel: it keeps its slot until that ends.
    let tunnel = state.tunnel.lock().ok().and_then(|mut t| t.take());
    if let Some(t) = tunnel {
        let _ = t.await;
    }
}
