//! The merged stream on the network: the `Observer` service on 4245 (Hubble Relay's
//! port), over mTLS. `last N` asks every node's agent for its latest N matching events
//! (their rings) and keeps the latest N of all; `follow` then streams the merged events
//! that pass the filter, which the relay applies before sending.
//!
//! A `pod` or `namespace` filter matches an end by its name, and an agent names only its
//! own node's pods: the relay names the others (from the workload directory) when the
//! events reach it. So that an agent's `last N` counts its events about another node's
//! pod, the relay sends it, in the filter's `names`, the addresses of the pods those
//! lists pick with the names it will give them, and applies the whole filter again to
//! the answers once named. The live stream is named before it is filtered.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::SystemTime;

use membrane_api::monitor::Event;
use membrane_api::observer::proto::observer_server::{Observer, ObserverServer};
use membrane_api::observer::proto::{self, GetEventsRequest};
use membrane_api::observer::{encode, peer, Filter, TYPE_NODE_STATUS};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::merge::time_of;
use crate::nodes::status;
use crate::tls::{TlsError, TlsFiles};
use crate::Relay;

/// The server's failures at start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file could not be read.
    #[error(transparent)]
    File(#[from] TlsError),
    /// The TLS settings do not make a server.
    #[error("--listen {0}: tls: {1}")]
    Tls(SocketAddr, tonic::transport::Error),
    /// The address could not be bound.
    #[error("--listen {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Event, Status>> + Send>>;

/// The relay's gRPC service.
#[derive(Debug, Clone)]
struct Service {
    relay: Relay,
    admitted: Option<Vec<String>>,
}

#[tonic::async_trait]
impl Observer for Service {
    type GetEventsStream = EventStream;

    async fn get_events(
        &self,
        req: Request<GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        peer::admit_request(&req, self.admitted.as_deref()).inspect_err(|e| {
            tracing::warn!(peer = ?req.remote_addr(), "relay client refused: {}", e.message());
        })?;
        let r = req.into_inner();
        // The relay names the ends itself (its workload directory); a client's `names`
        // have no say.
        let wire_filter = proto::Filter {
            names: Default::default(),
            ..r.filter.unwrap_or_default()
        };
        let filter =
            Filter::new(&wire_filter).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Subscribed before the nodes are asked, so nothing falls between the two.
        let live = r.follow.then(|| self.relay.subscribe());
        let last = if r.last > 0 {
            self.relay.last(r.last, &wire_filter, &filter).await
        } else {
            Vec::new()
        };
        Ok(Response::new(stream(last, live, filter)))
    }
}

/// `last`, then every live event passing `filter` that is newer than the newest of
/// `last` (the nodes' rings and the live stream overlap by the reorder window).
fn stream(
    last: Vec<Event>,
    live: Option<broadcast::Receiver<Event>>,
    filter: Filter,
) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let cut = last
            .iter()
            .filter(|e| e.kind != TYPE_NODE_STATUS)
            .map(|e| time_of(e, SystemTime::UNIX_EPOCH))
            .max();
        for e in last {
            if tx.send(Ok(encode(&e))).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        loop {
            let e = tokio::select! {
                r = live.recv() => match r {
                    Ok(e) if !filter.matches(&e) => continue,
                    Ok(e) if e.kind != TYPE_NODE_STATUS
                        && cut.is_some_and(|c| time_of(&e, SystemTime::now()) <= c) => continue,
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::lost("relay", n, "slow-subscriber"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            };
            if tx.send(Ok(encode(&e))).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

impl Relay {
    /// The latest `n` events passing `filter` (`wire` checked) across every node the
    /// registry lists, from the agents' rings, named, oldest first; a node that cannot
    /// answer is a `node-status` record among them.
    pub async fn last(&self, n: u64, wire: &proto::Filter, filter: &Filter) -> Vec<Event> {
        let nodes = self.nodes.borrow().clone();
        let ask = proto::Filter {
            names: self.directory.borrow().names_for(filter),
            ..wire.clone()
        };
        let mut asks = tokio::task::JoinSet::new();
        for (name, ip) in nodes {
            let (access, ask) = (self.access.clone(), ask.clone());
            asks.spawn(async move { (name, access.last(ip, n, ask).await) });
        }
        let mut all = Vec::new();
        while let Some(done) = asks.join_next().await {
            match done {
                // Again once named: the directory may have changed since the question.
                Ok((_, Ok(evs))) => all.extend(
                    evs.into_iter()
                        .map(|e| self.named(e))
                        .filter(|e| filter.matches(e)),
                ),
                Ok((name, Err(why))) => all.push(status(&name, format!("unreachable: {why}"))),
                Err(_) => {}
            }
        }
        let now = SystemTime::now();
        all.sort_by_key(|e| time_of(e, now));
        let skip = all
            .len()
            .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
        all.split_off(skip)
    }
}

/// Binds `addr` and serves `relay`'s merged stream on it (on the current runtime), over
/// mTLS with `tls` (clients must chain to its CA and, when `admitted` is not empty, carry
/// one of those SPIFFE ids), or in plaintext without.
pub async fn serve(
    relay: Relay,
    addr: SocketAddr,
    tls: Option<&TlsFiles>,
    admitted: Vec<String>,
) -> Result<SocketAddr, ServeError> {
    let mut builder = Server::builder();
    if let Some(t) = tls {
        builder = builder
            .tls_config(t.server()?)
            .map_err(|e| ServeError::Tls(addr, e))?;
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(addr, e))?;
    let svc = Service {
        relay,
        admitted: (tls.is_some() && !admitted.is_empty()).then_some(admitted),
    };
    let router = builder.add_service(ObserverServer::new(svc));
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
        {
            tracing::error!(%bound, "relay server: {e}");
        }
    });
    Ok(bound)
}
