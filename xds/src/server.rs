//! The gRPC adapter: tonic services that drive one [`crate::stream`] state
//! machine per stream from client requests and snapshot-cache updates.
//!
//! The same services run on two listeners. On the plaintext one (a trusted
//! local path, off unless asked for) a node id is taken at its word. On the
//! mTLS one ([`XdsServer::with_auth`]) every request is refused with
//! PERMISSION_DENIED unless the client certificate's SPIFFE id may be the
//! pod its node id names ([`crate::auth`]); such a client watches only its
//! own pod's snapshot, never the shared one, and gets no debug types.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Authorizer, SpiffeId};
use crate::node::cache_key;
use crate::proto::network_policy_discovery_service_server::{
    NetworkPolicyDiscoveryService, NetworkPolicyDiscoveryServiceServer,
};
use crate::proto::network_policy_hosts_discovery_service_server::{
    NetworkPolicyHostsDiscoveryService, NetworkPolicyHostsDiscoveryServiceServer,
};
use crate::recorder::{AuthLabel, ReasonLabel, Recorder, DEBUG_SYNCZ};
use crate::resource::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};
use crate::smallmap::SmallMap;
use crate::snapshot::{Snapshot, SnapshotCache};
use crate::stream::{
    check_node_id, DeltaStream, Outcome, Sent, SotwStream, Step, StreamError, StreamLimits,
    Subscription,
};
use crate::wire::{DeltaResponse, SotwResponse};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

mod wire;
pub use wire::Wire;

/// Responses buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 16;

/// A stream's responses, from its driver to its response body. Boxed: the
/// channel's first block (32 slots) is allocated with it, per stream.
type Tx<R> = mpsc::Sender<Result<Box<R>, Status>>;
type Rx<R> = mpsc::Receiver<Result<Box<R>, Status>>;

/// A protocol (SotW or delta) the generic stream driver can run.
trait Machine: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn node_id(req: &Self::Req) -> Option<String>;
    fn on_request(&mut self, req: &Self::Req) -> Result<Step<Self::Resp>, StreamError>;
    fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<Self::Resp>;
    fn watches(&self) -> SmallMap<Subscription>;
    /// Changes whenever [`Machine::watches`] may have (the driver asks for them only then).
    fn watches_generation(&self) -> u64;
    /// A response to a debug-type request, answered from the recorder
    /// instead of a snapshot; `Some(None)` swallows the request (an ACK of
    /// an earlier debug response).
    fn debug(_req: &Self::Req, _rec: &Recorder, _n: u64) -> Option<Option<Self::Resp>> {
        None
    }
}

impl Machine for SotwStream {
    type Req = DiscoveryRequest;
    type Resp = SotwResponse;
    fn node_id(req: &DiscoveryRequest) -> Option<String> {
        req.node.as_ref().map(|n| n.id.clone())
    }
    fn on_request(&mut self, req: &DiscoveryRequest) -> Result<Step<SotwResponse>, StreamError> {
        SotwStream::on_request(self, req)
    }
    fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<SotwResponse> {
        SotwStream::on_snapshot(self, snap)
    }
    fn watches(&self) -> SmallMap<Subscription> {
        self.status()
            .into_iter()
            .map(|(t, s)| (t, s.subscription))
            .collect()
    }
    fn watches_generation(&self) -> u64 {
        self.generation()
    }
    fn debug(req: &DiscoveryRequest, rec: &Recorder, n: u64) -> Option<Option<SotwResponse>> {
        if req.type_url != DEBUG_SYNCZ {
            return None;
        }
        if !req.response_nonce.is_empty() {
            return Some(None);
        }
        let resources = rec
            .client_configs()
            .iter()
            .map(|c| {
                Arc::new(Any {
                    type_url: CLIENT_CONFIG.to_string(),
                    value: c.encode_to_vec(),
                })
            })
            .collect();
        Some(Some(SotwResponse {
            version_info: n.to_string(),
            resources,
            type_url: DEBUG_SYNCZ.to_string(),
            nonce: format!("debug-{n}"),
            // Where istioctl reads the ISTIOD column from.
            control_plane: Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
                identifier: crate::debug::control_plane_identifier(),
            }),
            ..Default::default()
        }))
    }
}

const CLIENT_CONFIG: &str = "type.googleapis.com/envoy.service.status.v3.ClientConfig";

impl Machine for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaResponse;
    fn node_id(req: &DeltaDiscoveryRequest) -> Option<String> {
        req.node.as_ref().map(|n| n.id.clone())
    }
    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
    ) -> Result<Step<DeltaResponse>, StreamError> {
        DeltaStream::on_request(self, req)
    }
    fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<DeltaResponse> {
        DeltaStream::on_snapshot(self, snap)
    }
    fn watches(&self) -> SmallMap<Subscription> {
        self.subscriptions().into_iter().collect()
    }
    fn watches_generation(&self) -> u64 {
        self.generation()
    }
}

/// The xDS services, sharing one snapshot cache and one flight recorder.
#[derive(Debug, Clone)]
pub struct XdsServer {
    cache: Arc<SnapshotCache>,
    recorder: Arc<Recorder>,
    next_conn: Arc<AtomicU64>,
    limits: StreamLimits,
    /// Set on the mTLS listener: who may be which node.
    auth: Option<Arc<Authorizer>>,
}

/// A generated service's response stream: the stream's responses as Envoy
/// messages (each resource copied; the [`Wire`] path shares them instead).
type RespStream<T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

fn proto<R: Send + 'static, T: 'static>(rx: Rx<R>, into: fn(R) -> T) -> RespStream<T> {
    Box::pin(ReceiverStream::new(rx).map(move |r| r.map(|b| into(*b))))
}

/// A response type and its Envoy message.
trait IntoProto: Send + Sized + 'static {
    type Proto: 'static;
    fn stream(rx: Rx<Self>) -> RespStream<Self::Proto>;
}

impl IntoProto for SotwResponse {
    type Proto = DiscoveryResponse;
    fn stream(rx: Rx<Self>) -> RespStream<DiscoveryResponse> {
        proto(rx, SotwResponse::into_proto)
    }
}

impl IntoProto for DeltaResponse {
    type Proto = DeltaDiscoveryResponse;
    fn stream(rx: Rx<Self>) -> RespStream<DeltaDiscoveryResponse> {
        proto(rx, DeltaResponse::into_proto)
    }
}

fn to_proto<R: IntoProto>(rx: Rx<R>) -> RespStream<R::Proto> {
    R::stream(rx)
}

impl XdsServer {
    /// Services over `cache`, recording into `recorder`.
    pub fn new(cache: Arc<SnapshotCache>, recorder: Arc<Recorder>) -> Self {
        XdsServer {
            cache,
            recorder,
            next_conn: Arc::new(AtomicU64::new(1)),
            limits: StreamLimits::default(),
            auth: None,
        }
    }

    /// The same services with these per-stream limits.
    pub fn with_limits(mut self, limits: StreamLimits) -> Self {
        self.limits = limits;
        self
    }

    fn sotw(&self, only_type: Option<&str>) -> SotwStream {
        SotwStream::new(only_type).with_limits(self.limits)
    }

    fn delta(&self, only_type: Option<&str>) -> DeltaStream {
        DeltaStream::new(only_type).with_limits(self.limits)
    }

    /// Counts a refused request and closes the stream with its reason.
    async fn refuse<R>(&self, e: &StreamError, tx: &Tx<R>) {
        self.recorder
            .metrics
            .refused_requests
            .get_or_create(&ReasonLabel {
                reason: e.reason().to_string(),
            })
            .inc();
        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
    }

    /// The same services for the mTLS listener: every request must come
    /// with a client certificate whose SPIFFE id `auth` accepts for the
    /// node id presented.
    pub fn with_auth(&self, auth: Arc<Authorizer>) -> Self {
        XdsServer {
            auth: Some(auth),
            ..self.clone()
        }
    }

    /// The peer's workload identity on the mTLS listener (`None` on the
    /// plaintext one); a refusal is logged and counted.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Option<SpiffeId>, Status> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        match auth.peer(certs.as_ref().map(|c| c.as_slice())) {
            Ok(id) => Ok(Some(id)),
            Err(e) => {
                let peer = request
                    .remote_addr()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                Err(self.deny(&e, "", &peer))
            }
        }
    }

    /// The snapshot key `node` may watch: on the mTLS listener only its own
    /// pod's, after checking the node id against the peer's identity.
    fn key_for(&self, node: &str, who: Option<&SpiffeId>, peer: &str) -> Result<String, Status> {
        match (&self.auth, who) {
            (Some(auth), Some(who)) => auth
                .authorize(node, who)
                .map_err(|e| self.deny(&e, node, peer)),
            // Unreachable by construction (authenticate runs first); refuse
            // rather than fall back to the shared snapshot.
            (Some(_), None) => Err(self.deny(&AuthError::NoCertificate, node, peer)),
            (None, _) => Ok(cache_key(node)),
        }
    }

    fn deny(&self, e: &AuthError, node: &str, peer: &str) -> Status {
        warn!(node, peer, reason = e.reason(), error = %e, "xds request refused");
        self.recorder
            .metrics
            .auth_denied
            .get_or_create(&AuthLabel {
                reason: e.reason().into(),
            })
            .inc();
        Status::permission_denied(e.to_string())
    }

    /// A tonic router serving ADS, NPDS and NPHDS (their streams on the [`Wire`] path).
    pub fn router(&self) -> tonic::transport::server::Router {
        self.router_on(tonic::transport::Server::builder())
    }

    /// The same services on a configured server (TLS, limits).
    pub fn router_on(
        &self,
        mut builder: tonic::transport::Server,
    ) -> tonic::transport::server::Router {
        let wire = |s| Wire::new(s, self.clone());
        builder
            .add_service(wire(AggregatedDiscoveryServiceServer::new(self.clone())))
            .add_service(Wire::new(
                NetworkPolicyDiscoveryServiceServer::new(self.clone()),
                self.clone(),
            ))
            .add_service(Wire::new(
                NetworkPolicyHostsDiscoveryServiceServer::new(self.clone()),
                self.clone(),
            ))
    }

    fn spawn<M: Machine>(
        &self,
        machine: M,
        inbound: Streaming<M::Req>,
        peer: Option<SocketAddr>,
        who: Option<SpiffeId>,
    ) -> Rx<M::Resp>
    where
        M::Req: prost::Message + Default,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tokio::spawn(async move { this.drive(machine, inbound, tx, id, peer, who).await });
        rx
    }

    async fn drive<M: Machine>(
        self,
        mut sm: M,
        mut inbound: Streaming<M::Req>,
        tx: Tx<M::Resp>,
        id: u64,
        peer: String,
        who: Option<SpiffeId>,
    ) where
        M::Req: prost::Message + Default,
    {
        let first = match inbound.message().await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let node = M::node_id(&first).unwrap_or_default();
        if node.is_empty() {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "the first request must carry node.id",
                )))
                .await;
            return;
        }
        // Before the id is logged or recorded anywhere.
        if let Err(e) = check_node_id(&node, &self.limits) {
            warn!(peer = %peer, error = %e, "refusing xds stream");
            self.refuse(&e, &tx).await;
            return;
        }
        let key = match self.key_for(&node, who.as_ref(), &peer) {
            Ok(k) => k,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let conn = format!("{node}-{id}");
        info!(node = %node, key = %key, peer = %peer, "xds stream opened");
        self.recorder.connected(&node, &conn, &peer);
        let mut snaps = self.cache.watch(&key);
        let mut latest: Option<Arc<Snapshot>> = None;
        let mut pending = Some(first);
        // What the recorder was last told: the subscriptions (as of a generation of the
        // state machine's) and the snapshot. At fleet size every push and every ACK passes
        // here, so they are compared without being rebuilt.
        let mut watches: SmallMap<Subscription> = SmallMap::new();
        let mut watches_gen: Option<u64> = None;
        let mut recorded_snap: Option<Arc<Snapshot>> = None;
        let mut debug_n = 0u64;
        loop {
            let step = if let Some(req) = pending.take() {
                debug_n += 1;
                // Debug types describe every client: not for workloads.
                let debug = match who {
                    None => M::debug(&req, &self.recorder, debug_n),
                    Some(_) => None,
                };
                if let Some(resp) = debug {
                    if let Some(resp) = resp {
                        if tx.send(Ok(Box::new(resp))).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                match sm.on_request(&req) {
                    Ok(step) => step,
                    Err(e) => {
                        warn!(node = %node, error = %e, "closing xds stream");
                        self.refuse(&e, &tx).await;
                        break;
                    }
                }
            } else {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => { pending = Some(req); continue; }
                        Ok(None) => break,
                        Err(e) => { debug!(node = %node, error = %e, "xds stream ended"); break; }
                    },
                    changed = snaps.changed() => {
                        if changed.is_err() { break; }
                        let snap = snaps.borrow_and_update().clone();
                        match snap {
                            Some(s) => { latest = Some(s.clone()); sm.on_snapshot(s) }
                            None => continue,
                        }
                    }
                }
            };
            // The recorder is shared by every stream: tell it only what changed.
            let gen = sm.watches_generation();
            let mut watches_changed = false;
            if watches_gen != Some(gen) {
                let now = sm.watches();
                watches_changed = now != watches;
                watches = now;
                watches_gen = Some(gen);
            }
            let snap_changed =
                latest.as_ref().map(|s| &s.version) != recorded_snap.as_ref().map(|s| &s.version);
            if watches_changed || snap_changed {
                if let Some(s) = &latest {
                    let versions: Vec<(String, String)> = watches
                        .keys()
                        .map(|t| (t.clone(), s.type_version(t)))
                        .collect();
                    self.recorder.latest(&node, &versions, s.created);
                }
                if watches_changed {
                    self.recorder.watches(
                        &node,
                        &conn,
                        watches.iter().map(|(t, s)| (t.clone(), s.describe())),
                    );
                }
                recorded_snap = latest.clone();
            }
            if !self.emit(&node, step, &tx).await {
                break;
            }
        }
        info!(node = %node, "xds stream closed");
        self.recorder.disconnected(&node, &conn);
    }

    async fn emit<R>(&self, node: &str, step: Step<R>, tx: &Tx<R>) -> bool {
        for o in &step.outcomes {
            match o {
                Outcome::Nack {
                    type_url,
                    version,
                    error,
                    ..
                } => warn!(node, type_url, version, error, "xds NACK"),
                Outcome::Stale { type_url, nonce } => {
                    debug!(node, type_url, nonce, "stale xds request ignored")
                }
                Outcome::Ack { .. } => {}
            }
            self.recorder.outcome(node, o);
        }
        for (sent, resp) in step.responses {
            self.record_sent(node, &sent);
            if tx.send(Ok(Box::new(resp))).await.is_err() {
                return false;
            }
        }
        true
    }

    fn record_sent(&self, node: &str, sent: &Sent) {
        debug!(node, type_url = %sent.type_url, version = %sent.version, nonce = %sent.nonce, "xds push");
        self.recorder.sent(node, sent);
    }

    fn fetch(
        &self,
        request: Request<DiscoveryRequest>,
        type_url: &str,
    ) -> Result<DiscoveryResponse, Status> {
        let who = self.authenticate(&request)?;
        let peer = request
            .remote_addr()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let req = request.into_inner();
        let node = req.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
        let key = self.key_for(&node, who.as_ref(), &peer)?;
        let snap = self
            .cache
            .get(&key)
            .ok_or_else(|| Status::unavailable(format!("no snapshot yet for node {node:?}")))?;
        let resources = snap
            .resources(type_url)
            .map(|set| {
                set.items
                    .values()
                    .filter(|r| {
                        req.resource_names.is_empty() || req.resource_names.contains(&r.name)
                    })
                    .map(|r| (*r.body).clone())
                    .collect()
            })
            .unwrap_or_default();
        Ok(DiscoveryResponse {
            version_info: snap.type_version(type_url),
            resources,
            type_url: type_url.to_string(),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = RespStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = RespStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let who = self.authenticate(&request)?;
        let peer = request.remote_addr();
        Ok(Response::new(to_proto(self.spawn(
            self.sotw(None),
            request.into_inner(),
            peer,
            who,
        ))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let who = self.authenticate(&request)?;
        let peer = request.remote_addr();
        Ok(Response::new(to_proto(self.spawn(
            self.delta(None),
            request.into_inner(),
            peer,
            who,
        ))))
    }
}

#[tonic::async_trait]
impl NetworkPolicyDiscoveryService for XdsServer {
    type DeltaNetworkPoliciesStream = RespStream<DeltaDiscoveryResponse>;
    type StreamNetworkPoliciesStream = RespStream<DiscoveryResponse>;

    async fn delta_network_policies(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaNetworkPoliciesStream>, Status> {
        let who = self.authenticate(&request)?;
        let peer = request.remote_addr();
        let sm = self.delta(Some(NETWORK_POLICY));
        Ok(Response::new(to_proto(self.spawn(
            sm,
            request.into_inner(),
            peer,
            who,
        ))))
    }

    async fn stream_network_policies(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamNetworkPoliciesStream>, Status> {
        let who = self.authenticate(&request)?;
        let peer = request.remote_addr();
        let sm = self.sotw(Some(NETWORK_POLICY));
        Ok(Response::new(to_proto(self.spawn(
            sm,
            request.into_inner(),
            peer,
            who,
        ))))
    }

    async fn fetch_network_policies(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.fetch(request, NETWORK_POLICY).map(Response::new)
    }
}

#[tonic::async_trait]
impl NetworkPolicyHostsDiscoveryService for XdsServer {
    type StreamNetworkPolicyHostsStream = RespStream<DiscoveryResponse>;
    type DeltaNetworkPolicyHostsStream = RespStream<DeltaDiscoveryResponse>;

    async fn stream_network_policy_hosts(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamNetworkPolicyHostsStream>, Status> {
        let who = self.authenticate(&request)?;
        let peer = request.remote_addr();
        let sm = self.sotw(Some(NETWORK_POLICY_HOSTS));
        Ok(Response::new(to_proto(self.spawn(
            sm,
            request.into_inner(),
            peer,
            who,
        ))))
    }

    async fn fetch_network_policy_hosts(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        self.fetch(request, NETWORK_POLICY_HOSTS).map(Response::new)
    }

    async fn delta_network_policy_hosts(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaNetworkPolicyHostsStream>, Status> {
        let who = self.authenticate(&request)?;
        let peer = request.remote_addr();
        let sm = self.delta(Some(NETWORK_POLICY_HOSTS));
        Ok(Response::new(to_proto(self.spawn(
            sm,
            request.into_inner(),
            peer,
            who,
        ))))
    }
}
