//! The node's event stream on the network: the `membrane.observer.v1.Observer` service on
//! port 4244 (Hubble's), over mTLS with the node's certificate, for membrane-relay.
//!
//! A tap subscribes to the agent socket's hub like any monitor client, so every record the
//! hub carries (the ring buffers' events, the sidecars' `l7` records, `lost`) reaches it.
//! It names the pods on either side where the node knows them (its registrations and the
//! control plane's endpoints, by address), counts the events for the metrics, keeps the
//! latest `--observer-ring` of them (`--last N`) and fans them out to the gRPC clients.
//! A client that falls behind skips events and gets a `lost` record, as on the socket.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use membrane_api::monitor::Event;
use membrane_api::observer::proto::observer_server::{Observer, ObserverServer};
use membrane_api::observer::proto::{self, GetEventsRequest};
use membrane_api::observer::{encode, end_ip, peer, Filter};
use membrane_datapath::api::Hub;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::node::Node;
use crate::resources::{Kind, Spec};

/// How far a gRPC client may fall behind before it skips events.
const CLIENT_QUEUE: usize = 4096;
/// How often the tap re-reads which pod holds which address.
const PODS_EVERY: Duration = Duration::from_secs(1);

/// The observer's failures at start.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// A TLS file could not be read.
    #[error("{flag} {path}: {error}")]
    File {
        /// The flag naming it.
        flag: &'static str,
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The TLS settings do not make a server.
    #[error("--observer-addr {0}: tls: {1}")]
    Tls(SocketAddr, tonic::transport::Error),
    /// The address could not be bound.
    #[error("--observer-addr {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// mTLS of the observer: the node's certificate, the CA clients must chain to, and the
/// SPIFFE ids admitted.
#[derive(Debug, Clone)]
pub struct ObserverTls {
    /// PEM CA bundle clients' certificates must chain to.
    pub ca: PathBuf,
    /// The node's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// SPIFFE ids admitted (the relay's).
    pub clients: Vec<String>,
}

/// The latest events and the live fan-out.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<VecDeque<Event>>,
    cap: usize,
    tx: broadcast::Sender<Event>,
}

impl Feed {
    /// A feed remembering `cap` events.
    pub fn new(cap: usize) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(cap.min(4096))),
            cap,
            tx: broadcast::channel(CLIENT_QUEUE).0,
        }
    }

    /// Keeps `e` and sends it to every client.
    pub fn publish(&self, e: Event) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if self.cap > 0 {
            if ring.len() == self.cap {
                ring.pop_front();
            }
            ring.push_back(e.clone());
        }
        // Sent under the ring's lock, so a new client sees each event once: in its
        // `last` or live.
        let _ = self.tx.send(e);
    }

    /// The latest `n` events passing `f` (oldest first) and a receiver of later ones.
    pub fn last_and_subscribe(
        &self,
        n: usize,
        f: &Filter,
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let mut last: Vec<Event> = ring
            .iter()
            .rev()
            .filter(|e| f.matches(e))
            .take(n)
            .cloned()
            .collect();
        last.reverse();
        (last, rx)
    }
}

/// Addresses of the pods the node knows → `namespace/name`.
fn pods_by_ip(node: &Node) -> HashMap<IpAddr, String> {
    let mut m = HashMap::new();
    if let Some(held) = node.held.get(&Kind::Endpoint) {
        for (key, (_, _, spec)) in held {
            if let Spec::Endpoint(e) = spec {
                for ip in &e.ips {
                    m.insert(*ip, key.clone());
                }
            }
        }
    }
    for (key, reg) in &node.regs {
        for ip in &reg.ips {
            m.entry(*ip).or_insert_with(|| key.clone());
        }
    }
    m
}

/// Names the pods of `e` that its writer left unnamed.
pub fn enrich(e: &mut Event, pods: &HashMap<IpAddr, String>) {
    let name = |a: &Option<String>| {
        a.as_deref()
            .and_then(end_ip)
            .and_then(|ip| pods.get(&ip).cloned())
    };
    if e.src_pod.is_none() {
        e.src_pod = name(&e.src);
    }
    if e.dst_pod.is_none() {
        e.dst_pod = name(&e.dst);
    }
}

/// Subscribes to the socket's hub and feeds `feed` and `metrics` until the hub goes
/// (a thread of its own: the hub's receivers block).
pub fn tap(hub: &Hub, node: Arc<Mutex<Node>>, feed: Arc<Feed>, metrics: Arc<Metrics>) {
    let rx = hub.subscribe();
    std::thread::spawn(move || {
        let mut pods = HashMap::new();
        let mut refreshed: Option<Instant> = None;
        for line in rx {
            let Ok(mut e) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if refreshed.is_none_or(|t| t.elapsed() >= PODS_EVERY) {
                pods = pods_by_ip(&node.lock().unwrap_or_else(|p| p.into_inner()));
                refreshed = Some(Instant::now());
            }
            enrich(&mut e, &pods);
            metrics.count(&e);
            feed.publish(e);
        }
    });
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Service {
    node: String,
    feed: Arc<Feed>,
    admitted: Option<Vec<String>>,
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Observer for Service {
    type GetEventsStream = EventStream;

    async fn get_events(
        &self,
        req: Request<GetEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        peer::admit_request(&req, self.admitted.as_deref()).inspect_err(|e| {
            tracing::warn!(peer = ?req.remote_addr(), "observer client refused: {}", e.message());
        })?;
        let r = req.into_inner();
        let filter = Filter::new(&r.filter.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let last = usize::try_from(r.last).unwrap_or(usize::MAX);
        let (events, rx) = self.feed.last_and_subscribe(last, &filter);
        Ok(Response::new(stream(
            &self.node,
            events,
            r.follow.then_some(rx),
            filter,
        )))
    }
}

/// `events`, then (with `live`) every later event passing `filter`, a `lost` record for
/// what a slow client skipped.
pub fn stream(
    node: &str,
    events: Vec<Event>,
    live: Option<broadcast::Receiver<Event>>,
    filter: Filter,
) -> EventStream {
    let (tx, rx) = mpsc::channel(64);
    let node = node.to_owned();
    tokio::spawn(async move {
        for e in events {
            if tx.send(Ok(encode(&e))).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        loop {
            let e = tokio::select! {
                r = live.recv() => match r {
                    Ok(e) if filter.matches(&e) => e,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::lost(&node, n, "slow-subscriber"),
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

/// Binds `addr` and serves the observer on it (on the current runtime) with `tls`, or in
/// plaintext without; `None` admits every client (plaintext is for loopback and tests).
pub async fn serve(
    addr: SocketAddr,
    tls: Option<&ObserverTls>,
    node: &str,
    feed: Arc<Feed>,
) -> Result<SocketAddr, ObserverError> {
    let mut builder = Server::builder();
    if let Some(t) = tls {
        let read = |flag: &'static str, p: &PathBuf| {
            std::fs::read(p).map_err(|error| ObserverError::File {
                flag,
                path: p.display().to_string(),
                error,
            })
        };
        let (ca, cert, key) = (
            read("--observer-ca", &t.ca)?,
            read("--observer-cert", &t.cert)?,
            read("--observer-key", &t.key)?,
        );
        builder = builder
            .tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(cert, key))
                    .client_ca_root(Certificate::from_pem(ca))
                    .client_auth_optional(false),
            )
            .map_err(|e| ObserverError::Tls(addr, e))?;
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ObserverError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ObserverError::Bind(addr, e))?;
    let svc = Service {
        node: node.to_owned(),
        feed,
        admitted: tls.map(|t| t.clients.clone()),
    };
    let router = builder.add_service(ObserverServer::new(svc));
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
        {
            tracing::error!(%bound, "observer server: {e}");
        }
    });
    Ok(bound)
}

/// The observer's and the metrics' settings (`membrane-agent run --xds-address`).
#[derive(clap::Args, Debug, Clone)]
pub struct ObserverArgs {
    /// Serve the event stream over gRPC here (4244 is Hubble's port); off when not
    /// given. mTLS with --observer-cert/--observer-key (default: --xds-cert/--xds-key,
    /// the node's certificate) and --observer-ca (default: --xds-ca).
    #[arg(long, env = "MEMBRANE_OBSERVER_ADDR")]
    pub observer_addr: Option<SocketAddr>,
    /// PEM CA bundle observer clients' certificates must chain to.
    #[arg(long, env = "MEMBRANE_OBSERVER_CA")]
    pub observer_ca: Option<PathBuf>,
    /// PEM certificate chain the observer presents.
    #[arg(long, env = "MEMBRANE_OBSERVER_CERT", requires = "observer_key")]
    pub observer_cert: Option<PathBuf>,
    /// PEM key of --observer-cert.
    #[arg(long, env = "MEMBRANE_OBSERVER_KEY", requires = "observer_cert")]
    pub observer_key: Option<PathBuf>,
    /// SPIFFE ids admitted to the observer (repeat or comma-separate).
    #[arg(
        long = "observer-client-id",
        env = "MEMBRANE_OBSERVER_CLIENT_IDS",
        value_delimiter = ',',
        default_value = "spiffe://cluster.local/ns/membrane-system/sa/membrane-relay"
    )]
    pub observer_client_ids: Vec<String>,
    /// Serve the observer without TLS, admitting every client (loopback and tests only).
    #[arg(long, env = "MEMBRANE_OBSERVER_PLAINTEXT")]
    pub observer_plaintext: bool,
    /// Events the node keeps for `--last N`.
    #[arg(long, env = "MEMBRANE_OBSERVER_RING", default_value_t = 4096)]
    pub observer_ring: usize,
    /// Serve Prometheus metrics (`/metrics`) here (Cilium's agent uses 9962); off when
    /// not given.
    #[arg(long, env = "MEMBRANE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl ObserverArgs {
    /// The observer's TLS: its own files, else the control plane's (`xds_ca`, and
    /// `xds_identity`, the node's certificate); `None` in plaintext. Errors when
    /// neither TLS nor plaintext is configured for an address.
    pub fn tls(
        &self,
        xds_ca: Option<&PathBuf>,
        xds_identity: Option<(&PathBuf, &PathBuf)>,
    ) -> anyhow::Result<Option<ObserverTls>> {
        if self.observer_plaintext || self.observer_addr.is_none() {
            return Ok(None);
        }
        let ca = self.observer_ca.as_ref().or(xds_ca);
        let pair = self
            .observer_cert
            .as_ref()
            .zip(self.observer_key.as_ref())
            .or(xds_identity);
        match (ca, pair) {
            (Some(ca), Some((cert, key))) => Ok(Some(ObserverTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                clients: self.observer_client_ids.clone(),
            })),
            _ => anyhow::bail!(
                "--observer-addr needs a certificate (--observer-ca, --observer-cert, --observer-key, or the node's --xds-ca/--xds-cert/--xds-key), or --observer-plaintext"
            ),
        }
    }
}

/// What the daemon runs the observer and the metrics with.
#[derive(Debug, Clone, Default)]
pub struct ObserverConfig {
    /// The observer's address; `None` = off.
    pub addr: Option<SocketAddr>,
    /// Its mTLS; `None` = plaintext.
    pub tls: Option<ObserverTls>,
    /// Events kept for `--last N`.
    pub ring: usize,
    /// The metrics address; `None` = off.
    pub metrics: Option<SocketAddr>,
}
