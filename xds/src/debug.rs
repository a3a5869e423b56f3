//! The debug and metrics HTTP endpoint (15014): Istio-shaped `/debug/syncz`,
//! `/debug/config_dump`, `/debug/adsz`, the flight recorder
//! (`/debug/flightz`, `/debug/stalez`), source status and `/metrics`.
//! [`serve`] runs it within a connection cap and a request-head deadline.
//!
//! The views of proxies and sources disclose every pod's policy and the
//! ipcache, and nothing on this port is authenticated: they answer loopback
//! peers only (403 otherwise), whatever address the listener is bound to.
//! `/metrics` and `/ready` answer anyone. The router must be served with
//! `into_make_service_with_connect_info::<SocketAddr>()`; without the peer
//! address every view is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::configdump;
use crate::listener::{self, ConnLimits, Gate};
use crate::node::{cache_key, istio_proxy_id};
use crate::recorder::Recorder;
use crate::snapshot::SnapshotCache;

/// What the debug endpoint reads.
#[derive(Debug)]
pub struct DebugState {
    /// Published snapshots.
    pub cache: Arc<SnapshotCache>,
    /// The flight recorder and metrics.
    pub recorder: Arc<Recorder>,
    /// The sources' status (files loaded, files rejected and why), as JSON.
    pub sources: Arc<Mutex<Value>>,
}

/// The HTTP routes.
pub fn router(state: Arc<DebugState>) -> Router {
    let local = Router::new()
        .route("/debug/syncz", get(syncz))
        .route("/debug/adsz", get(adsz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/flightz", get(flightz))
        .route("/debug/stalez", get(stalez))
        .route("/debug/sourcez", get(sourcez))
        .layer(middleware::from_fn(loopback_only));
    Router::new()
        .merge(local)
        .route("/metrics", get(metrics))
        .route("/ready", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Refuses (403) a request whose peer is not a loopback address.
async fn loopback_only(req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match peer {
        Some(a) if a.ip().to_canonical().is_loopback() => next.run(req).await,
        _ => {
            tracing::warn!(peer = ?peer, path = %req.uri().path(), "debug view refused to a non-loopback client");
            (
                StatusCode::FORBIDDEN,
                "this debug view answers loopback clients only\n",
            )
                .into_response()
        }
    }
}

/// This control plane's name where istioctl shows the istiod serving a
/// proxy: the host name (the pod name in a cluster), as istiod uses its own.
pub fn control_plane_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    match host.trim() {
        "" => "membrane-xds".to_string(),
        h => h.to_string(),
    }
}

/// The `ControlPlane.identifier` of debug responses, in istiod's shape
/// (`IstioControlPlaneInstance`: component, id, build info).
pub fn control_plane_identifier() -> String {
    json!({
        "Component": "membrane-xds",
        "ID": control_plane_id(),
        "Info": { "version": crate::recorder::ISTIO_VERSION },
    })
    .to_string()
}

/// The header naming the control plane on `/debug/syncz` (the JSON list has
/// no room for it in Istio's shape; istioctl knows which istiod it asked).
pub const CONTROL_PLANE_HEADER: &str = "x-membrane-control-plane";

async fn syncz(State(s): State<Arc<DebugState>>) -> Response {
    (
        [(CONTROL_PLANE_HEADER, control_plane_id())],
        Json(s.recorder.syncz()),
    )
        .into_response()
}

async fn adsz(State(s): State<Arc<DebugState>>) -> Json<Value> {
    let clients: Vec<Value> = s
        .recorder
        .proxies()
        .into_iter()
        .flat_map(|p| {
            let node = p.node_id.clone();
            p.connections.into_iter().map(move |(id, c)| {
                json!({
                    "connectionId": id,
                    "connectedAt": c.connected_at_ms,
                    "address": c.peer,
                    "node": node,
                    "snapshotKey": cache_key(&node),
                    "watches": c.watches,
                })
            })
        })
        .collect();
    Json(json!({ "totalClients": clients.len(), "clients": clients }))
}

async fn flightz(
    State(s): State<Arc<DebugState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match q.get("proxyID") {
        Some(id) => match s.recorder.proxy(id) {
            Some(p) => Json(p).into_response(),
            None => (StatusCode::NOT_FOUND, format!("unknown proxy {id:?}\n")).into_response(),
        },
        None => Json(s.recorder.proxies()).into_response(),
    }
}

async fn stalez(State(s): State<Arc<DebugState>>) -> Json<Value> {
    let stale = s.recorder.stale();
    Json(json!({ "stale": stale.len(), "proxies": stale }))
}

async fn sourcez(State(s): State<Arc<DebugState>>) -> Json<Value> {
    Json(s.sources.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

async fn metrics(State(s): State<Arc<DebugState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.recorder.metrics.encode(),
    )
}

/// What the control plane holds for a proxy (its current snapshot), as
/// Envoy's `ConfigDump` JSON; versions are what was last sent to it.
/// `format=membrane` instead lists every type with its snapshot, sent and
/// ACKed versions and each resource's hash.
async fn config_dump(
    State(s): State<Arc<DebugState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(asked) = q.get("proxyID") else {
        return (StatusCode::BAD_REQUEST, "proxyID is required\n").into_response();
    };
    // Istio's proxy id (`POD.NAMESPACE`, what istioctl passes) names the
    // connected proxy whose node id it abbreviates; a full node id is taken
    // as it is.
    let resolved = resolve_proxy(&s.recorder, asked);
    let id = &resolved;
    let key = cache_key(id);
    let Some(snap) = s.cache.get(&key) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no snapshot for proxy {id:?} (key {key:?})\n"),
        )
            .into_response();
    };
    let record = s.recorder.proxy(id);
    let sent = |t: &str| {
        record
            .as_ref()
            .and_then(|r| r.types.get(t))
            .and_then(|x| x.sent_version.clone())
    };
    match q.get("format").map(String::as_str) {
        None | Some("envoy") => Json(configdump::config_dump(&snap, |t| {
            sent(t).unwrap_or_else(|| snap.type_version(t))
        }))
        .into_response(),
        Some("membrane") => {
            let mut types = serde_json::Map::new();
            for t in snap.type_urls() {
                let set = snap.resources(t).expect("listed type");
                let tr = record.as_ref().and_then(|r| r.types.get(t));
                types.insert(
                    t.to_string(),
                    json!({
                        "version": set.version,
                        "sent_version": tr.and_then(|x| x.sent_version.clone()),
                        "acked_version": tr.and_then(|x| x.acked_version.clone()),
                        "resources": set.items.values().map(|r| json!({
                            "name": r.name,
                            "version": format!("{:016x}", r.hash),
                            "config": configdump::resource_json(r),
                        })).collect::<Vec<_>>(),
                    }),
                );
            }
            Json(json!({
                "proxy": id,
                "snapshotKey": key,
                "snapshotVersion": snap.version,
                "types": types,
            }))
            .into_response()
        }
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("format {other:?}: expected envoy or membrane\n"),
        )
            .into_response(),
    }
}

/// The node id `asked` stands for: itself if it is one, else the one
/// recorded proxy whose Istio id (`POD.NAMESPACE`) it is.
fn resolve_proxy(recorder: &Recorder, asked: &str) -> String {
    if asked.contains('~') {
        return asked.to_string();
    }
    let matches: Vec<String> = recorder
        .proxies()
        .into_iter()
        .map(|p| p.node_id)
        .filter(|n| n != asked && istio_proxy_id(n) == asked)
        .collect();
    match matches.as_slice() {
        [one] => one.clone(),
        _ => asked.to_string(),
    }
}

/// Serves [`router`] on `listener` until `stop`: HTTP/1.1, at most
/// `limits.max_connections` at once, each request head within
/// `limits.head_timeout` (the routes read no body).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<DebugState>,
    limits: ConnLimits,
    stop: impl std::future::Future<Output = ()>,
) {
    let gate = Gate::new("debug", limits.max_connections, state.recorder.clone());
    listener::serve_http(listener, router(state), limits, gate, stop).await
}
