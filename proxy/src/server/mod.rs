//! Downstream side. Rooms: `listener` (accept loop, connection limit, the L4 verdict and
//! splice, policy-driven TLS), `http` (HTTP/1.1 and HTTP/2 connections and their timeouts),
//! `layers` (the request path: a stack of tower layers, see there), `route` (where a
//! connection goes) and `upgrade` (which upgrades are tunnelled, and the tunnel). This file
//! holds what they share: the listener's settings and state, and each connection's.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::connwatch::ConnWatch;
use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::upstream::Upstreams;

mod http;
mod layers;
mod listener;
mod route;
mod upgrade;

pub use listener::accept_loop;
pub use route::{Delivery, MeshSide, Route};

/// Listener settings, resolved from the `Config`.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Upstream address (its port is the policy port).
    pub upstream: SocketAddr,
    /// Forward HTTP/2 as HTTP/2 (else always HTTP/1.1 upstream).
    pub h2_upstream: bool,
    /// Originate TLS to the upstream.
    pub upstream_tls: bool,
    /// Name the upstream's certificate is verified against (SNI), instead of the request's authority.
    pub upstream_server_name: Option<String>,
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
    /// What the listener was configured with.
    pub settings: ListenerSettings,
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
    /// Istio mutual TLS of the capture listeners (`None`: no capture listener).
    mesh: Option<Arc<crate::mesh_tls::MeshTls>>,
    /// Where access-log records go (`None`: the access log is off).
    access_log: Option<crate::access_log::AccessLog>,
    /// Where L7 records for the node agent go (`None`: no `--records-socket`).
    records: Option<crate::records::Reporter>,
    /// Pooled clients per (destination, originating TLS material).
    origin_upstreams: std::sync::Mutex<std::collections::HashMap<(SocketAddr, u64), Upstreams>>,
    /// Draining after a handover: HTTP/1.1 connections close after their next response
    /// rather than at once (see `Running::drain_after_handover`).
    lazy_close: AtomicBool,
}

impl Shared {
    /// Builds the listener state; upstream clients are created here (no I/O yet).
    pub fn new(
        settings: ListenerSettings,
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
            mesh: None,
            access_log: None,
            records: None,
            origin_upstreams: Default::default(),
            lazy_close: AtomicBool::new(false),
        })
    }

    /// Serves Istio mutual TLS on the capture listeners with `mesh`.
    pub fn with_mesh(mut self, mesh: Option<Arc<crate::mesh_tls::MeshTls>>) -> Self {
        self.mesh = mesh;
        self
    }

    /// Writes access-log records to `log` (`None`: none are made).
    pub fn with_access_log(mut self, log: Option<crate::access_log::AccessLog>) -> Self {
        self.access_log = log;
        self
    }

    /// Sends each request's record to the node agent through `records` (`None`: none).
    pub fn with_records(mut self, records: Option<crate::records::Reporter>) -> Self {
        self.records = records;
        self
    }

    /// From now on a drain closes each HTTP/1.1 connection after its next response
    /// (`Connection: close`) instead of closing idle ones at once: the clients of listeners
    /// handed to a successor keep sending on their connections until told to reconnect.
    pub fn close_lazily(&self) {
        self.lazy_close.store(true, Ordering::Relaxed);
    }
}

/// Per-connection bookkeeping for the idle and stream timeouts, and what the request stack
/// needs of its connection.
pub(crate) struct ConnState {
    /// The listener's state.
    shared: Arc<Shared>,
    peer: SocketAddr,
    route: Route,
    /// SNI of the connection's TLS ClientHello, when it had one.
    sni: Option<Arc<str>>,
    /// The verified mesh peer of an inbound mTLS connection.
    mesh_peer: Option<Arc<crate::mesh_tls::Peer>>,
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// Shared with the connection's I/O guard.
    watch: Arc<ConnWatch>,
    /// HTTP/1 (the guard holds the stream after an upgrade request for the handler's verdict).
    http1: bool,
    /// The upgrade tunnel, if one was opened: the connection (and its slot) lasts as long.
    tunnel: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// HTTP/1: the connection is draining lazily; the next response says `Connection: close`.
    closing: AtomicBool,
}

/// A request in flight, on its connection (idle and stream timeouts) and in the process (the
/// heap trim waits for none), until its response body ends.
pub(crate) struct InFlight(Arc<ConnState>);

impl InFlight {
    /// Counts a request that has just arrived on `conn`.
    fn start(conn: &Arc<ConnState>, now: std::time::Instant) -> Self {
        conn.started.fetch_add(1, Ordering::Relaxed);
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.shared.metrics.request_started(now);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.shared.metrics.request_ended();
    }
}

/// The IP a connection's identity is looked up by.
pub fn peer_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}
