//! Operator endpoints: the Envoy-compatible admin subset (15000), Prometheus and the status
//! port (15020: also readiness and, in a sidecar, the app probes), readiness (15021) and
//! Prometheus alone (15090, a sidecar's). Shapes follow Envoy's admin API so `istioctl` and scripts written for
//! Envoy read them; only what membrane has is reported.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;
use crate::policy::PolicyHandle;
use crate::sidecar::probe::Prober;

mod xds_dump;

/// Changes the diagnostic log filter at run time (`POST /logging?level=debug`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Envoy admin subset.
    Admin,
    /// `/stats/prometheus`.
    Metrics,
    /// `/healthz/ready`.
    Health,
    /// `/stats/prometheus` only (Istio's 15090).
    Stats,
}

/// What the admin endpoints report on.
pub struct AdminState {
    /// Downstream listener address.
    pub listen: SocketAddr,
    /// Upstream address.
    pub upstream: SocketAddr,
    /// Inbound capture listener, if enabled.
    pub capture_inbound: Option<SocketAddr>,
    /// Outbound capture listener, if enabled.
    pub capture_outbound: Option<SocketAddr>,
    /// Admin address.
    pub admin: SocketAddr,
    /// Worker threads.
    pub concurrency: usize,
    /// Endpoint labels as configured.
    pub endpoint_labels: String,
    /// Policy in force.
    pub policy: PolicyHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// False before listeners are up and while draining.
    pub ready: AtomicBool,
    /// Current log filter, for `GET /logging`.
    pub log_level: std::sync::Mutex<String>,
    /// Log filter control, when the binary installed one.
    pub log_control: Option<LogControl>,
    /// Process start.
    pub started: Instant,
    /// Wall-clock start, for `last_updated`.
    pub started_wall: SystemTime,
    /// Hot restart: this process's restart epoch (0, or its predecessor's plus one), and
    /// whether it serves a handover socket.
    pub restart: (u64, bool),
    /// App probes answered on the metrics (status) listener, when configured.
    pub app_probes: Option<Arc<crate::sidecar::probe::Prober>>,
}

/// Bounds on each operator listener: these ports answer the kubelet and scrapers, so a
/// client that connects and dribbles must not keep them (or the proxy's memory) busy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Concurrent connections; more are accepted and closed at once.
    pub max_connections: usize,
    /// Time to send each request head.
    pub header_read_timeout: Duration,
    /// Longest a connection lives, keep-alive included (bounds slow bodies and readers).
    pub connection_timeout: Duration,
}

/// Serves `role` on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    role: Role,
    state: Arc<AdminState>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, ?role, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, ?role, "operator listener full, closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    // App probes wait on the app; everything else is answered from memory.
                    if role == Role::Metrics && Prober::handles(req.uri().path()) {
                        return Ok::<_, Infallible>(match &state.app_probes {
                            Some(p) => p.answer(&req).await,
                            None => reply(
                                StatusCode::NOT_FOUND,
                                "text/plain",
                                "no app probes configured\n",
                            ),
                        });
                    }
                    Ok::<_, Infallible>(route(role, &state, req))
                }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            if tokio::time::timeout(limits.connection_timeout, conn)
                .await
                .is_err()
            {
                tracing::debug!(%peer, ?role, "operator connection timed out");
            }
            drop(permit);
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json_reply(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(v).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body)
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn route(role: Role, st: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let ready = st.ready.load(Ordering::Relaxed);
    match (role, path) {
        (Role::Health | Role::Admin | Role::Metrics, "/healthz/ready") => {
            if ready {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (Role::Metrics | Role::Admin | Role::Stats, "/stats/prometheus") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            st.metrics.encode_prometheus(),
        ),
        (Role::Admin, "/ready") => {
            if ready {
                reply(StatusCode::OK, "text/plain", "LIVE\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n")
            }
        }
        (Role::Admin, "/stats") => {
            if query_param(&req, "format") == Some("json") {
                let stats: Vec<_> = st
                    .metrics
                    .encode_envoy_stats()
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| json!({"name": k, "value": v.parse::<i64>().unwrap_or(0)}))
                    .collect();
                json_reply(&json!({ "stats": stats }))
            } else {
                reply(StatusCode::OK, "text/plain", st.metrics.encode_envoy_stats())
            }
        }
        (Role::Admin, "/server_info") => json_reply(&server_info(st, ready)),
        (Role::Admin, "/config_dump") => json_reply(&config_dump(st)),
        (Role::Admin, "/listeners") => {
            if query_param(&req, "format") == Some("json") {
                let statuses: Vec<_> = listeners(st)
                    .into_iter()
                    .map(|(name, a)| json!({"name": name, "local_address": socket_address(a)}))
                    .collect();
                json_reply(&json!({ "listener_statuses": statuses }))
            } else {
                let text: String = listeners(st).into_iter().map(|(name, a)| format!("{name}::{a}\n")).collect();
                reply(StatusCode::OK, "text/plain", text)
            }
        }
        (Role::Admin, "/clusters") => {
            if query_param(&req, "format") == Some("json") {
                json_reply(&json!({"cluster_statuses": [{
                    "name": cluster_name(st),
                    "host_statuses": [{
                        "address": socket_address(st.upstream),
                        "health_status": {"eds_health_status": "HEALTHY"},
                        "weight": 1
                    }]
                }]}))
            } else {
                let c = cluster_name(st);
                let u = st.upstream;
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!(
                        "{c}::observability_name::{c}\n{c}::{u}::health_flags::healthy\n{c}::{u}::weight::1\n"
                    ),
                )
            }
        }
        (Role::Admin, "/logging") => logging(st, &req),
        (Role::Admin, "/") => reply(
            StatusCode::OK,
            "text/plain",
            "admin commands are:\n  /clusters\n  /config_dump\n  /listeners\n  /logging\n  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn logging(st: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST {
        let Some(level) = query_param(req, "level") else {
            return reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "usage: POST /logging?level=<trace|debug|info|warning|error|off>\n",
            );
        };
        let level = if level == "warning" { "warn" } else { level };
        if !matches!(level, "trace" | "debug" | "info" | "warn" | "error" | "off") {
            return reply(StatusCode::BAD_REQUEST, "text/plain", "unknown level\n");
        }
        let Some(ctl) = &st.log_control else {
            return reply(
                StatusCode::NOT_IMPLEMENTED,
                "text/plain",
                "log level is fixed in this process\n",
            );
        };
        if let Err(e) = ctl(level) {
            return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n"));
        }
        if let Ok(mut l) = st.log_level.lock() {
            *l = level.to_owned();
        }
    } else if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET or POST\n",
        );
    }
    let level = st.log_level.lock().map(|l| l.clone()).unwrap_or_default();
    reply(
        StatusCode::OK,
        "text/plain",
        format!("active loggers:\n  membrane: {level}\n"),
    )
}

fn cluster_name(st: &AdminState) -> String {
    format!("inbound|{}||", st.upstream.port())
}

fn socket_address(a: SocketAddr) -> serde_json::Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

fn node(st: &AdminState) -> serde_json::Value {
    json!({
        "id": format!("sidecar~{}~membrane-proxy.standalone~standalone.svc.cluster.local", st.listen.ip()),
        "cluster": "membrane-proxy",
        "user_agent_name": "membrane-proxy",
        "user_agent_build_version": {"version": {"major_number": 0, "minor_number": 1, "patch": 0}},
        "metadata": {"ENDPOINT_LABELS": st.endpoint_labels}
    })
}

fn server_info(st: &AdminState, ready: bool) -> serde_json::Value {
    let up = format!("{}s", st.started.elapsed().as_secs());
    json!({
        "version": format!("membrane-proxy/{}", env!("CARGO_PKG_VERSION")),
        "state": if ready { "LIVE" } else { "DRAINING" },
        "hot_restart_version": if st.restart.1 { "membrane.handover.v1" } else { "disabled" },
        "command_line_options": {
            "concurrency": st.concurrency,
            "mode": "Serve",
            "base_id": "0",
            "restart_epoch": st.restart.0
        },
        "node": node(st),
        "uptime_current_epoch": up,
        "uptime_all_epochs": up
    })
}

/// The proxy's listeners under the names Istio gives them.
fn listeners(st: &AdminState) -> Vec<(&'static str, SocketAddr)> {
    let mut v = vec![("inbound", st.listen)];
    if let Some(a) = st.capture_inbound {
        v.push(("virtualInbound", a));
    }
    if let Some(a) = st.capture_outbound {
        v.push(("virtualOutbound", a));
    }
    v
}

fn listener_json(name: &str, addr: SocketAddr, policy: &serde_json::Value) -> serde_json::Value {
    let mut l = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": name,
        "address": socket_address(addr),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "rds": {"route_config_name": "inbound"},
                "http_filters": [
                    {
                        "name": "membrane.l7policy",
                        "typed_config": {
                            "@type": "type.googleapis.com/google.protobuf.Struct",
                            "value": policy
                        }
                    },
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }
                ]
            }
        }]}]
    });
    if name != "inbound" {
        l["use_original_dst"] = json!(true);
    }
    l
}

fn config_dump(st: &AdminState) -> serde_json::Value {
    let updated = humantime::format_rfc3339_seconds(st.started_wall).to_string();
    let policy = st.policy.load();
    let cluster = cluster_name(st);
    let mut dump = json!({"configs": [
        {
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": {
                "node": node(st),
                "admin": {"address": socket_address(st.admin)}
            },
            "last_updated": updated
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "static_listeners": listeners(st).into_iter().map(|(name, addr)| json!({
                "listener": listener_json(name, addr, policy.summary()),
                "last_updated": updated
            })).collect::<Vec<_>>()
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "static_clusters": [{
                "cluster": {
                    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": cluster,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(st.upstream)}}]}]
                    }
                },
                "last_updated": updated
            }]
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "static_route_configs": [{
                "route_config": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "name": "inbound",
                    "virtual_hosts": [{
                        "name": "inbound",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
                    }]
                },
                "last_updated": updated
            }]
        }
    ]});
    // What the control plane sent, when the policy in force came from it.
    if let (Some(r), Some(configs)) = (&policy.received, dump["configs"].as_array_mut()) {
        configs.push(xds_dump::section(r));
    }
    dump
}
