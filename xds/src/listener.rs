//! Connection caps and read deadlines for the control plane's HTTP
//! listeners (the injection webhook and the debug endpoint).
//!
//! Each listener holds at most `max_connections` connections; one beyond
//! that is accepted and closed at once (so the client learns at once
//! instead of waiting in the kernel's backlog) and counted in
//! `membrane_xds_connections_refused_total{listener}`. A request head must
//! arrive whole within `head_timeout` of the connection being ready for it
//! (hyper's header timer starts when it starts waiting, not at the first
//! byte, so a client trickling bytes gains nothing), and a body the server
//! reads within `body_timeout`; a connection that misses either is closed
//! and counted in `membrane_xds_connections_timed_out_total{listener}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::recorder::{ListenerLabel, Recorder};

/// The accepted connections of a gRPC listener, with Nagle's algorithm
/// off: xDS exchanges are small request/response messages, and Nagle
/// holding a response back until the peer's delayed ACK (40 ms) stalls
/// every exchange.
pub fn nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    )
}

/// One listener's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections held at once.
    pub max_connections: usize,
    /// Time for a TLS handshake, and for each request head.
    pub head_timeout: Duration,
    /// Time for a request body the server reads.
    pub body_timeout: Duration,
}

/// Admits connections up to a cap; each admitted one holds a permit until
/// it is dropped.
#[derive(Debug, Clone)]
pub struct Gate {
    name: &'static str,
    permits: Arc<Semaphore>,
    recorder: Arc<Recorder>,
}

impl Gate {
    /// A gate for the listener called `name` (a metric label).
    pub fn new(name: &'static str, max_connections: usize, recorder: Arc<Recorder>) -> Self {
        Gate {
            name,
            permits: Arc::new(Semaphore::new(max_connections)),
            recorder,
        }
    }

    fn label(&self) -> ListenerLabel {
        ListenerLabel {
            listener: self.name.to_string(),
        }
    }

    /// Counts a connection closed for reading too slowly.
    pub fn timed_out(&self) {
        let l = self.label();
        self.recorder
            .metrics
            .connections_timed_out
            .get_or_create(&l)
            .inc();
    }

    /// The next connection within the cap; those beyond it are closed and
    /// counted on the way.
    pub async fn accept(
        &self,
        listener: &TcpListener,
    ) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    warn!(listener = self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return (tcp, peer, permit),
                Err(_) => {
                    let l = self.label();
                    self.recorder
                        .metrics
                        .connections_refused
                        .get_or_create(&l)
                        .inc();
                    debug!(listener = self.name, %peer, "at the connection cap; closed");
                    drop(tcp);
                }
            }
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` until `stop`, within `limits`.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    gate: Gate,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (tcp, peer, permit) = tokio::select! {
            _ = &mut stop => return,
            c = gate.accept(&listener) => c,
        };
        // The peer address goes with every request: the debug views answer
        // loopback peers only (debug.rs).
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        let (svc, gate) = (TowerToHyperService::new(app), gate.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            if let Err(e) = served {
                if e.is_timeout() {
                    gate.timed_out();
                }
                debug!(listener = gate.name, %peer, error = %e, "connection ended");
            }
        });
    }
}
