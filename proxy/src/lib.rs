//! membrane-proxy: the L7 sidecar. It owns the data path of one pod: accepting downstream
//! connections, parsing HTTP/1.1 and HTTP/2 strictly, normalizing paths, asking the shared
//! policy engine (`membrane-policy`) for a verdict per request, forwarding allowed requests
//! over pooled upstream connections, the operator endpoints (admin, metrics, readiness), and
//! its own replacement by a new process without a failed request ([`handover`]).
//!
//! It must never decide policy itself (verdicts come only from `membrane-policy`, through
//! [`policy`]), never forward a request whose framing or path it could not read
//! unambiguously, and never leak why a request was denied to the client (that goes to the
//! access log).

pub mod access_log;
pub mod admin;
pub mod body;
pub mod busypoll;
pub mod coalesce;
pub mod config;
pub mod connwatch;
pub mod h1guard;
pub mod handover;
pub mod listeners;
pub mod memory;
pub mod mesh_tls;
pub mod metrics;
pub mod normalize;
pub mod orig_dst;
pub mod policy;
pub mod records;
pub mod secrets;
pub mod server;
pub mod sidecar;
pub mod tls;
pub mod upstream;
pub mod xds;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{AdminState, LogControl, Role};
use crate::config::{Config, UpstreamProtocol};
use crate::metrics::Metrics;
use crate::policy::{Enforcer, PolicyHandle};
use crate::server::{ListenerSettings, Shared};

/// Where a started proxy actually listens (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Downstream listener.
    pub listen: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
    /// Prometheus.
    pub metrics: SocketAddr,
    /// Readiness.
    pub health: SocketAddr,
    /// The second Prometheus listener, when enabled.
    pub stats: Option<SocketAddr>,
    /// Transparent inbound capture, when enabled.
    pub capture_inbound: Option<SocketAddr>,
    /// Transparent outbound capture, when enabled (the first of its listeners).
    pub capture_outbound: Option<SocketAddr>,
}

/// A running proxy: its addresses, policy handle, and the means to drain it.
pub struct Running {
    /// Bound addresses.
    pub addrs: Addrs,
    /// The policy in force; `store` a new snapshot to update it.
    pub policy: PolicyHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The serving certificate when the listener terminates TLS; `reload` re-reads its files.
    pub tls: Option<Arc<tls::CertStore>>,
    /// Secrets for policy-driven TLS; `reload` re-scans `--secrets-dir`.
    pub secrets: Arc<secrets::SecretStore>,
    /// Mesh mTLS of the capture listeners (when there are any); `reload` re-reads its files.
    pub mesh_tls: Option<Arc<mesh_tls::MeshTls>>,
    /// The access log, when on; `reopen` after its file was rotated.
    pub access_log: Option<access_log::AccessLog>,
    admin: Arc<AdminState>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accepting: watch::Sender<bool>,
    policy_ready: watch::Receiver<bool>,
    handover_sockets: Vec<listeners::Inherited>,
    epoch: u64,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds every listener and starts serving on the current tokio runtime.
pub async fn start(
    cfg: &Config,
    enforcer: Enforcer,
    log_control: Option<LogControl>,
) -> anyhow::Result<Running> {
    cfg.validate()?;
    let sockets = listeners::Sockets::bind(cfg).await?;
    let running = start_on(cfg, enforcer, log_control, sockets, 0).await?;
    running.serve();
    Ok(running)
}

/// Starts the proxy on `sockets` (bound, or taken over from the process of restart epoch
/// `epoch - 1`) without accepting a connection yet: [`Running::serve`] opens the
/// listeners, once the caller knows this process should serve (a successor first waits for
/// its policy, see [`Running::policy_ready`]).
pub async fn start_on(
    cfg: &Config,
    enforcer: Enforcer,
    log_control: Option<LogControl>,
    sockets: listeners::Sockets,
    epoch: u64,
) -> anyhow::Result<Running> {
    cfg.validate()?;
    // Kept for a successor only: a duplicate keeps its socket listening (queueing) after
    // the accept loop has closed its copy, which a drain without successor must not do.
    let handover_sockets = match cfg.handover_socket {
        Some(_) => sockets.duplicate()?,
        None => Vec::new(),
    };
    let listeners::Sockets {
        listen: listener,
        admin: admin_l,
        metrics: metrics_l,
        health: health_l,
        stats: stats_l,
        capture_inbound: capture_l,
        capture_outbound: capture_out_l,
    } = sockets;
    let addrs = Addrs {
        capture_outbound: capture_out_l.first().map(|l| l.local_addr()).transpose()?,
        capture_inbound: capture_l.as_ref().map(|l| l.local_addr()).transpose()?,
        listen: listener.local_addr()?,
        admin: admin_l.local_addr()?,
        metrics: metrics_l.local_addr()?,
        health: health_l.local_addr()?,
        stats: stats_l.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    // Capture never forwards to the sidecar itself: the configured ports and every port
    // bound here.
    let mut proxy_ports = cfg.proxy_ports.clone();
    proxy_ports.extend([
        addrs.listen.port(),
        addrs.admin.port(),
        addrs.metrics.port(),
        addrs.health.port(),
    ]);
    proxy_ports.extend(addrs.capture_inbound.map(|a| a.port()));
    proxy_ports.extend(addrs.stats.map(|a| a.port()));
    for l in &capture_out_l {
        proxy_ports.push(l.local_addr()?.port());
    }
    proxy_ports.sort_unstable();
    proxy_ports.dedup();
    let metrics = Arc::new(Metrics::new());
    let policy = PolicyHandle::new(enforcer);
    let settings = ListenerSettings {
        upstream: cfg.upstream,
        h2_upstream: cfg.upstream_protocol == UpstreamProtocol::Match,
        upstream_tls: cfg.upstream_tls,
        upstream_server_name: cfg.upstream_server_name.clone(),
        merge_slashes: cfg.merge_slashes,
        deny_detail_header: cfg.deny_detail_header,
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        request_timeout: (!cfg.request_timeout.is_zero()).then_some(cfg.request_timeout),
        stream_idle_timeout: cfg.stream_idle_timeout,
        upgrade_types: cfg
            .upgrade_types
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect(),
        max_header_bytes: cfg.max_header_bytes,
        max_headers: cfg.max_headers,
        max_concurrent_streams: cfg.max_concurrent_streams,
        max_connections: cfg.max_connections,
        proxy_ports,
        h2_max_connections: cfg.upstream_h2_max_connections,
        pool: upstream::PoolSettings {
            max_idle_per_key: cfg.upstream_max_idle,
            idle_timeout: cfg.upstream_idle_timeout,
        },
    };

    let cert_store = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(Arc::new(tls::CertStore::load(c, k)?)),
        _ => None,
    };
    let acceptor = cert_store.as_ref().map(|s| s.acceptor()).transpose()?;
    let upstream_tls = match (&cfg.upstream_tls, &cfg.upstream_ca) {
        (true, Some(ca)) => Some(upstream::UpstreamTls {
            roots: Arc::new(upstream::load_roots(ca)?),
            client_cert: None,
        }),
        (true, None) => anyhow::bail!("--upstream-tls needs --upstream-ca"),
        _ => None,
    };
    let (secrets, secret_errors) = secrets::SecretStore::new(cfg.secrets_dir.clone());
    for e in &secret_errors {
        tracing::error!(error = %e, "secret rejected");
    }
    let secrets = Arc::new(secrets);
    // Mesh mTLS serves the capture listeners only: without them there is nothing to load.
    let mesh = match capture_l.is_some() || !capture_out_l.is_empty() {
        true => Some(mesh_tls::MeshTls::new(cfg.mesh_tls.clone())?),
        false => None,
    };
    let access_log = match cfg.access_log {
        true => Some(access_log::AccessLog::open(
            &cfg.access_log_settings(),
            metrics.access_log_drops(),
        )?),
        false => None,
    };
    let records = cfg
        .records_settings()
        .map(|s| records::Reporter::start(s, metrics.record_counters()))
        .transpose()?;
    let shared = Arc::new(
        Shared::new(
            settings,
            policy.clone(),
            metrics.clone(),
            cfg.connect_timeout,
            acceptor,
            upstream_tls.as_ref(),
            secrets.clone(),
        )?
        .with_mesh(mesh.clone())
        .with_access_log(access_log.clone())
        .with_records(records),
    );
    let admin = Arc::new(AdminState {
        listen: addrs.listen,
        upstream: cfg.upstream,
        capture_inbound: addrs.capture_inbound,
        capture_outbound: addrs.capture_outbound,
        admin: addrs.admin,
        concurrency: cfg.concurrency,
        endpoint_labels: cfg.endpoint_labels.clone().unwrap_or_default(),
        policy: policy.clone(),
        metrics: metrics.clone(),
        ready: Default::default(),
        log_level: std::sync::Mutex::new(cfg.log.clone()),
        log_control,
        started: Instant::now(),
        started_wall: SystemTime::now(),
        restart: (epoch, cfg.handover_socket.is_some()),
        app_probes: cfg
            .app_probers
            .clone()
            .map(|p| Arc::new(sidecar::probe::Prober::new(p, cfg.app_probe_address))),
    });
    let (tx, rx) = watch::channel(false);
    let (accepting, open) = watch::channel(false);
    // Every accept loop waits for `serve`: a process that takes listeners over accepts
    // nothing before it can serve it as well as its predecessor would.
    let gated = |f| gate(open.clone(), rx.clone(), f);
    let mut tasks = Vec::new();
    tasks.extend(secrets.spawn_watch(cfg.secrets_poll_interval, rx.clone()));
    tasks.extend(mesh.iter().flat_map(|m| m.spawn_watch(rx.clone())));
    if !cfg.memory_trim_interval.is_zero() {
        let (idle, trimmed) = (metrics.clone(), metrics.clone());
        tasks.push(tokio::spawn(memory::trim_loop(
            cfg.memory_trim_interval,
            cfg.memory_trim_idle,
            move || idle.idle_for(),
            move || trimmed.heap_trimmed(),
            rx.clone(),
        )));
    }
    if let Some(l) = capture_l {
        tasks.push(tokio::spawn(gated(Box::pin(server::accept_loop(
            l,
            shared.clone(),
            rx.clone(),
            server::Delivery::CapturedInbound,
        )))));
    }
    for l in capture_out_l {
        tasks.push(tokio::spawn(gated(Box::pin(server::accept_loop(
            l,
            shared.clone(),
            rx.clone(),
            server::Delivery::CapturedOutbound,
        )))));
    }
    let limits = admin::Limits {
        max_connections: cfg.admin_max_connections,
        header_read_timeout: cfg.admin_header_read_timeout,
        connection_timeout: cfg.admin_connection_timeout,
    };
    tasks.extend([
        tokio::spawn(gated(Box::pin(server::accept_loop(
            listener,
            shared.clone(),
            rx.clone(),
            server::Delivery::Upstream,
        )))),
        tokio::spawn(gated(Box::pin(admin::serve(
            admin_l,
            Role::Admin,
            admin.clone(),
            limits,
            rx.clone(),
        )))),
        tokio::spawn(gated(Box::pin(admin::serve(
            metrics_l,
            Role::Metrics,
            admin.clone(),
            limits,
            rx.clone(),
        )))),
        tokio::spawn(gated(Box::pin(admin::serve(
            health_l,
            Role::Health,
            admin.clone(),
            limits,
            rx.clone(),
        )))),
    ]);
    if let Some(l) = stats_l {
        tasks.push(tokio::spawn(gated(Box::pin(admin::serve(
            l,
            Role::Stats,
            admin.clone(),
            limits,
            rx.clone(),
        )))));
    }
    let (policy_ready_tx, policy_ready) = watch::channel(false);
    match (&cfg.xds_address, &cfg.node_id) {
        (Some(address), Some(node_id)) => {
            // Readiness waits for the first policy from the control plane (and, with a
            // CA, for the first workload certificate).
            let ready = admin.clone();
            let cert_wait = mesh.clone().filter(|m| m.uses_ca());
            let issued = match (cfg.xds_cert_from_mesh, &cert_wait) {
                (false, _) => None,
                (true, Some(m)) => {
                    let m = m.clone();
                    Some(membrane_xds_client::MemoryIdentity(Arc::new(move || {
                        m.issued_pem()
                    })))
                }
                (true, None) => anyhow::bail!(
                    "--xds-cert-from-mesh needs the mesh certificate from a CA \
                     (--mesh-ca-address, with a capture listener)"
                ),
            };
            let stop = rx.clone();
            tasks.extend(xds::spawn(
                xds::XdsConfig {
                    address: address.clone(),
                    node_id: node_id.clone(),
                    backoff_initial: cfg.xds_backoff_initial,
                    backoff_max: cfg.xds_backoff_max,
                    tls: cfg.xds_ca.as_ref().map(|ca| xds::XdsTls {
                        ca: ca.clone(),
                        identity: cfg.xds_cert.clone().zip(cfg.xds_key.clone()),
                        poll: cfg.xds_cert_poll,
                        memory: issued.clone(),
                    }),
                    metadata: cfg.node_meta.clone(),
                },
                policy.clone(),
                metrics.clone(),
                mesh.clone(),
                Box::new(move || {
                    policy_ready_tx.send_replace(true);
                    mark_ready(&ready, &stop, cert_wait.clone());
                }),
                rx.clone(),
            )?);
        }
        _ => {
            policy_ready_tx.send_replace(true);
            mark_ready(&admin, &rx, mesh.clone().filter(|m| m.uses_ca()));
        }
    }
    tracing::info!(
        listen = %addrs.listen,
        upstream = %cfg.upstream,
        admin = %addrs.admin,
        metrics = %addrs.metrics,
        health = %addrs.health,
        restart_epoch = epoch,
        "membrane-proxy started"
    );
    Ok(Running {
        addrs,
        policy,
        metrics,
        tls: cert_store,
        secrets,
        mesh_tls: mesh,
        access_log,
        admin,
        shared,
        shutdown: tx,
        accepting,
        policy_ready,
        handover_sockets,
        epoch,
        tasks,
    })
}

/// Runs `f` once `open` turns true; nothing if `shutdown` comes first.
async fn gate(
    mut open: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    tokio::select! {
        r = open.wait_for(|o| *o) => if r.is_err() { return },
        _ = shutdown.wait_for(|s| *s) => return,
    }
    f.await
}

impl Running {
    /// Starts accepting on every listener (after [`start_on`]; [`start`] does it itself).
    pub fn serve(&self) {
        self.accepting.send_replace(true);
    }

    /// Resolves once the proxy has a policy to enforce: at once with policy files; with
    /// `--xds-address`, when the control plane's first one is in force.
    pub async fn policy_ready(&self) {
        let mut ready = self.policy_ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// This process's restart epoch: 0, or its predecessor's plus one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What this process offers a successor: its listening sockets (kept with
    /// `--handover-socket` only) and its epoch. Each call hands out the duplicates kept for
    /// it; a second call offers none.
    pub fn handover_offer(&mut self) -> handover::Offer {
        handover::Offer {
            epoch: self.epoch,
            sockets: std::mem::take(&mut self.handover_sockets),
        }
    }

    /// A receiver that turns true when the proxy drains (for tasks beside it).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Drain after a successor took the listeners over: as [`Running::drain`], except that
    /// an idle HTTP/1.1 connection is not closed at once (its client would race the close
    /// with its next request, since it does not know the process is going) but answers that
    /// request with `Connection: close`; only connections idle through all of `timeout`
    /// are closed at its end.
    pub async fn drain_after_handover(self, timeout: Duration) {
        self.shared.close_lazily();
        self.drain(timeout).await
    }

    /// Graceful drain: readiness goes false, listeners close, open connections are asked to
    /// finish (HTTP/1.1 `Connection: close` after the current response, HTTP/2 GOAWAY); waits
    /// until they have or `timeout` passes.
    pub async fn drain(self, timeout: Duration) {
        self.admin.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + timeout;
        while self.metrics.active_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.tasks {
            t.abort();
        }
        // Every request has ended: its lines are written before the process goes.
        if let Some(log) = self.access_log {
            let flushed =
                tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(5))).await;
            if !matches!(flushed, Ok(true)) {
                tracing::warn!("access log: not every line could be written before exit");
            }
        }
    }
}

/// Marks the proxy ready, at once or, with a CA-provided workload certificate, once the
/// first one is in force (a sidecar without its certificate cannot serve its mesh). A
/// draining proxy stays unready.
fn mark_ready(
    admin: &Arc<AdminState>,
    stop: &watch::Receiver<bool>,
    cert: Option<Arc<mesh_tls::MeshTls>>,
) {
    let (admin, stop) = (admin.clone(), stop.clone());
    let set = move || {
        if !*stop.borrow() {
            admin.ready.store(true, Ordering::Relaxed);
        }
    };
    match cert {
        None => set(),
        Some(mesh) => {
            tokio::spawn(async move {
                mesh.certificate_loaded().await;
                set();
            });
        }
    }
}
