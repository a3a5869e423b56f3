//! Connections: the accept loop (connection limit, capture routing) and what happens to a
//! connection before any HTTP: the L4 verdict and splice, and the TLS the policy asks for
//! (read the ClientHello, then splice, terminate or refuse). HTTP goes to [`super::http`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::http::serve_http;
use super::{Delivery, MeshSide, Route, Shared};
use crate::mesh_tls::{MeshMode, Peer, Proto};
use crate::metrics::{CaptureListener, MeshRefusal};
use crate::policy::Decision;

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

/// An L4-only port: one verdict per connection, then bytes are copied both ways unparsed.
async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    route: &Route,
    mesh_peer: Option<&crate::mesh_tls::Peer>,
    shared: &Shared,
    checked: crate::policy::Checked,
    prefix: Bytes,
) {
    let target = route.target;
    let peer_id = mesh_peer.map_or("", |p| p.spiffe_id.as_str());
    let started = Instant::now();
    if let Decision::Deny { decided_by } = &checked.decision {
        tracing::debug!(%peer, decided_by, "L4 connection denied");
        if let Some(log) = &shared.access_log {
            log.record(|l| {
                l.str("message", "L4")
                    .str("type", "Denied")
                    .display("src", peer)
                    .u64("src_identity", checked.remote_identity.into())
                    .str("downstream_peer_uri_san", peer_id)
                    .str("decided_by", decided_by);
            });
        }
        return;
    }
    let upstream = match TcpStream::connect(target).await {
        Ok(u) => u,
        Err(e) => {
            shared.metrics.upstream_error();
            tracing::debug!(%peer, error = %e, "upstream connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let log = L4Log {
        peer,
        peer_id,
        checked: &checked,
        started,
    };
    if route.mesh == Some(MeshSide::Outbound) {
        // A meshed destination: the bytes go inside Istio mTLS (ALPN `istio`).
        let Some(mesh) = shared.mesh.as_ref() else {
            return;
        };
        let connector = tokio_rustls::TlsConnector::from(mesh.client_config(Proto::Tcp));
        let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
        match connector.connect(name, upstream).await {
            Ok(tls) => return copy(stream, tls, prefix, shared, &log).await,
            Err(e) => {
                shared
                    .metrics
                    .mesh_tls_refused(MeshRefusal::upstream_handshake_failed);
                return tracing::debug!(%peer, error = %e, "mesh mTLS to the destination failed");
            }
        }
    }
    copy(stream, upstream, prefix, shared, &log).await
}

/// What an L4 access-log record names.
struct L4Log<'a> {
    peer: SocketAddr,
    /// The mesh peer's SPIFFE id, or empty.
    peer_id: &'a str,
    checked: &'a crate::policy::Checked,
    started: Instant,
}

/// Copies bytes both ways (`prefix` first upstream) and logs the L4 record.
async fn copy<S: AsyncRead + AsyncWrite + Unpin, U: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut upstream: U,
    prefix: Bytes,
    shared: &Shared,
    log: &L4Log<'_>,
) {
    if !prefix.is_empty() {
        // Bytes read while looking for a ClientHello go first.
        use tokio::io::AsyncWriteExt;
        if upstream.write_all(&prefix).await.is_err() {
            return;
        }
    }
    let copied = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
    if let Some(sink) = &shared.access_log {
        let (up, down) = copied.unwrap_or_default();
        sink.record(|l| {
            l.str("message", "L4")
                .str("type", "Response")
                .display("src", log.peer)
                .u64("src_identity", log.checked.remote_identity.into())
                .str("downstream_peer_uri_san", log.peer_id)
                .u64("bytes_up", up)
                .u64("bytes_down", down)
                .u64("duration_us", log.started.elapsed().as_micros() as u64);
        });
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
    match (&shared.mesh, route.mesh) {
        (Some(mesh), Some(MeshSide::Inbound)) => {
            // Read once per connection: a new PeerAuthentication applies to the next one.
            match mesh.mode_for(route.target.port()) {
                MeshMode::Disable => {
                    serve_stream(stream, peer, route, None, shared, shutdown).await
                }
                mode => {
                    let mesh = mesh.clone();
                    serve_mesh_inbound(stream, peer, route, &mesh, mode, shared, shutdown).await
                }
            }
        }
        _ => serve_stream(stream, peer, route, None, shared, shutdown).await,
    }
}

/// Inbound capture under STRICT or PERMISSIVE: the first bytes decide, as Envoy's TLS
/// inspector and Istio's filter chain match. A ClientHello (under PERMISSIVE: one offering
/// Istio's ALPN) is mesh mTLS: a client certificate from the mesh root with a SPIFFE id is
/// required, and the decrypted stream goes on as any connection with that peer. Anything
/// else is plaintext, served under PERMISSIVE and refused under STRICT.
async fn serve_mesh_inbound(
    mut stream: TcpStream,
    peer: SocketAddr,
    route: Route,
    mesh: &crate::mesh_tls::MeshTls,
    mode: MeshMode,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let timeout = shared.settings.header_read_timeout;
    let refuse = |reason| shared.metrics.mesh_tls_refused(reason);
    let hello =
        match tokio::time::timeout(timeout, crate::tls::peek_client_hello(&mut stream)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                refuse(MeshRefusal::no_client_hello);
                return tracing::debug!(%peer, error = %e, "unreadable first bytes");
            }
            Err(_) => {
                refuse(MeshRefusal::no_client_hello);
                return tracing::debug!(%peer, "nothing within header read timeout");
            }
        };
    let istio = hello
        .alpn
        .iter()
        .any(|a| crate::mesh_tls::ISTIO_ALPNS.contains(&a.as_ref()));
    let mtls = hello.tls && (istio || mode == MeshMode::Strict);
    let stream = crate::tls::Prefixed::new(stream, hello.prefix);
    if !mtls {
        if mode == MeshMode::Strict {
            refuse(MeshRefusal::plaintext);
            return tracing::debug!(%peer, "plaintext under STRICT mesh mTLS; refused");
        }
        return serve_stream(stream, peer, route, None, shared, shutdown).await;
    }
    let Some(config) = mesh.server_config() else {
        refuse(MeshRefusal::no_certificate);
        return tracing::debug!(%peer, "mesh mTLS before a workload certificate; refused");
    };
    match tokio::time::timeout(timeout, crate::tls::accept_with(stream, config)).await {
        Ok(Ok(tls)) => {
            let own = mesh.own_id();
            let verified = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| Peer::from_chain(chain, own.as_deref()));
            // The verifier required a SPIFFE id, so a verified chain always yields a peer.
            let Some(verified) = verified else {
                refuse(MeshRefusal::handshake_failed);
                return;
            };
            serve_stream(tls, peer, route, Some(Arc::new(verified)), shared, shutdown).await
        }
        Ok(Err(e)) => {
            refuse(MeshRefusal::handshake_failed);
            tracing::info!(%peer, error = %e, "mesh mTLS handshake failed")
        }
        Err(_) => {
            refuse(MeshRefusal::handshake_failed);
            tracing::debug!(%peer, "mesh mTLS handshake timed out")
        }
    }
}

/// A connection (plain, or inside mesh mTLS from `mesh_peer`): the L4 verdict and splice,
/// policy-driven TLS, or HTTP.
async fn serve_stream<S>(
    stream: S,
    peer: SocketAddr,
    route: Route,
    mesh_peer: Option<Arc<Peer>>,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let policy = shared.policy.load();
    let (remote, port) = (route.remote(peer), route.target.port());
    // A port whose rules carry serverNames or TLS contexts: the ClientHello decides.
    if policy.tls_plan(remote, route.dir, port, None).is_some() {
        drop(policy);
        return serve_policy_tls(stream, peer, route, mesh_peer, shared, shutdown).await;
    }
    let l4 = policy.check_l4(remote, route.dir, port);
    drop(policy);
    if let Some(checked) = l4 {
        let p = mesh_peer.as_deref();
        return splice(stream, peer, &route, p, shared, checked, Bytes::new()).await;
    }
    match &shared.tls {
        None => serve_http(stream, peer, route, None, mesh_peer, shared, shutdown).await,
        Some(acceptor) => {
            let timeout = shared.settings.header_read_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(Arc::from);
                    serve_http(tls, peer, route, sni, mesh_peer, shared, shutdown).await
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
async fn serve_policy_tls<S>(
    mut stream: S,
    peer: SocketAddr,
    route: Route,
    mesh_peer: Option<Arc<Peer>>,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
            let p = mesh_peer.as_deref();
            return splice(
                stream,
                peer,
                &route,
                p,
                shared,
                denied.clone(),
                Bytes::new(),
            )
            .await;
        }
        Some(allowed) if terminating.is_none() && originating.is_none() => {
            // Admitted at L4 (serverNames only): bytes pass untouched.
            let (prefix, stream) = stream.into_parts();
            let p = mesh_peer.as_deref();
            return splice(stream, peer, &route, p, shared, allowed.clone(), prefix).await;
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
                Ok(Ok(tls)) => serve_http(tls, peer, route, sni, mesh_peer, shared, shutdown).await,
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
        (None, false) => serve_http(stream, peer, route, None, mesh_peer, shared, shutdown).await,
    }
}
