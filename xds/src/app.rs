//! The control plane as one call: [`start`] wires the sources, the translator, the
//! snapshot cache, the xDS gRPC server, the debug HTTP endpoint and the injection webhook
//! together from a [`Config`] and serves on the current tokio runtime, until
//! [`Running::shutdown`]. The `membrane-xds` binary is this plus flags, logging and
//! signals; tests run the same wiring in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::info;

use crate::auth::{Authorizer, Workloads};
use crate::ca;
use crate::config::Config;
use crate::controller::Controller;
use crate::debug::{self, DebugState};
use crate::identity::EtcdIdentities;
use crate::inject::Sidecar;
use crate::kvstore;
use crate::listener;
use crate::recorder::Recorder;
use crate::server::XdsServer;
use crate::snapshot::SnapshotCache;
use crate::source::dir::DirSource;
use crate::source::etcd::EtcdSource;
#[cfg(feature = "kube")]
use crate::source::kube::{self, KubeSource};
use crate::source::Source;
use crate::webhook::{self, Webhook};

/// `--native-sidecars`, resolved: `auto` asks the API server's version
/// when `--kube` is on (an unanswered question keeps native sidecars, the
/// default of every supported Kubernetes).
async fn native_sidecars(cfg: &Config) -> bool {
    #[cfg(feature = "kube")]
    if cfg.kube && cfg.native_sidecars == crate::config::NativeSidecars::Auto {
        let version = match kube::client(cfg.kubeconfig.as_deref()).await {
            Ok(c) => c.apiserver_version().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let parsed = version.as_ref().ok().and_then(|v| {
            let num = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
            Some((num(&v.major)?, num(&v.minor)?))
        });
        if parsed.is_none() {
            tracing::warn!(
                ?version,
                "API server version unknown: injecting native sidecars"
            );
        }
        let native = cfg.native_sidecars.resolve(parsed);
        info!(
            ?parsed,
            native, "injection: native sidecars decided from the API server version"
        );
        return native;
    }
    cfg.native_sidecars.resolve(None)
}

/// Why the control plane could not start; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Neither xDS listener was asked for.
    #[error(
        "no xDS listener: give --tls-cert, --tls-key and --ca-cert (mTLS on --tls-addr, \
         the authenticated default) and/or --plaintext-xds (unauthenticated, on \
         --grpc-addr, loopback by default)"
    )]
    NoListener,
    /// `--etcd-ca/--etcd-cert/--etcd-key` do not fit together.
    #[error(transparent)]
    EtcdTls(kvstore::KvError),
    /// `--kube` in a build without the Kubernetes source.
    #[error("--kube: this membrane-xds was built without the `kube` feature")]
    NoKube,
    /// The Kubernetes client could not be set up.
    #[cfg(feature = "kube")]
    #[error("--kube")]
    Kube(#[source] kube::KubeError),
    /// etcd could not be reached.
    #[error("--etcd")]
    Etcd(#[source] kvstore::KvError),
    /// A listener could not be bound.
    #[error("binding {flag} {addr}")]
    Bind {
        /// The flag naming the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file could not be read.
    #[error("{flag} {}", path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The xDS server's mTLS configuration was refused.
    #[error("mTLS configuration (--tls-cert/--tls-key/--ca-cert)")]
    Tls(#[source] tonic::transport::Error),
    /// The workload CA's certificate or key is unusable.
    #[error(transparent)]
    Ca(ca::CaSetupError),
    /// The webhook's certificate could not be loaded.
    #[error("--webhook-cert/--webhook-key")]
    Webhook(#[source] webhook::CertError),
    /// A bound listener has no local address.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl AppError {
    fn bind(flag: &'static str, addr: SocketAddr, source: std::io::Error) -> Self {
        AppError::Bind { flag, addr, source }
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, AppError> {
    std::fs::read(path).map_err(|source| AppError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// Where the started control plane listens (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Debug and metrics HTTP.
    pub debug: SocketAddr,
    /// Plaintext xDS (`--plaintext-xds`).
    pub grpc: Option<SocketAddr>,
    /// mTLS xDS.
    pub tls: Option<SocketAddr>,
    /// The injection webhook.
    pub webhook: Option<SocketAddr>,
}

/// A started control plane.
pub struct Running {
    /// Its bound addresses.
    pub addrs: Addrs,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Running {
    /// Stops every task; open xDS streams do not end on their own, so the wait is
    /// bounded (5 s).
    pub async fn shutdown(self) {
        info!("shutting down");
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for t in self.tasks {
                let _ = t.await;
            }
        })
        .await;
    }
}

/// Binds every listener `cfg` asks for and starts serving on the current tokio runtime.
pub async fn start(cfg: &Config) -> Result<Running, AppError> {
    if !cfg.plaintext_xds && cfg.tls_cert.is_none() {
        return Err(AppError::NoListener);
    }
    let etcd_tls = kvstore::EtcdTls::from_flags(
        cfg.etcd_ca.as_deref(),
        cfg.etcd_cert.as_deref(),
        cfg.etcd_key.as_deref(),
    )
    .map_err(AppError::EtcdTls)?;

    let cache = Arc::new(SnapshotCache::new());
    let recorder = Arc::new(Recorder::with_limits(cfg.recorder_limits()));
    let status = Arc::new(Mutex::new(serde_json::Value::Null));
    let (stop_tx, stop_rx) = watch::channel(false);
    // The controller wakes on this: file-system events and watch events.
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if let Some(d) = &cfg.source_dir {
        sources.push(Box::new(DirSource::new(d, cfg.max_file_bytes)));
    }
    #[cfg(not(feature = "kube"))]
    if cfg.kube {
        return Err(AppError::NoKube);
    }
    #[cfg(feature = "kube")]
    let mut token_reviewer: Option<Arc<dyn ca::TokenReviewer>> = None;
    #[cfg(not(feature = "kube"))]
    let token_reviewer: Option<Arc<dyn ca::TokenReviewer>> = None;
    #[cfg(feature = "kube")]
    if cfg.kube {
        let client = kube::client(cfg.kubeconfig.as_deref())
            .await
            .map_err(AppError::Kube)?;
        token_reviewer = Some(Arc::new(ca::tokenreview::KubeTokenReviewer::new(
            client.clone(),
            cfg.ca_token_audiences.clone(),
        )));
        let k = KubeSource::start(client, wake.clone());
        // Serving before the first list would hand sidecars a partial view.
        if !k.wait_synced(Duration::from_secs(cfg.kube_sync_secs)).await {
            tracing::warn!(
                secs = cfg.kube_sync_secs,
                "Kubernetes kinds not all listed yet; serving what is known"
            );
        }
        sources.push(Box::new(k));
    }
    let mut identities = None;
    let mut register_task = None;
    if !cfg.etcd.is_empty() {
        let client = kvstore::connect_tls(&cfg.etcd, etcd_tls.as_ref())
            .await
            .map_err(AppError::Etcd)?;
        sources.push(Box::new(
            EtcdSource::start(
                client.clone(),
                cfg.etcd.clone(),
                wake.clone(),
                Duration::from_secs(3),
            )
            .await,
        ));
        let replica = cfg.etcd_replica.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let (reg_tx, reg_rx) = watch::channel(Default::default());
        register_task = Some(tokio::spawn(kvstore::register(
            client.clone(),
            replica,
            Duration::from_secs(cfg.etcd_lease_ttl),
            reg_rx,
            stop_rx.clone(),
        )));
        identities = Some(Box::new(EtcdIdentities::new(
            kvstore::IdentityStore::new(client),
            tokio::runtime::Handle::current(),
            reg_tx,
        )));
    }
    let workloads = Arc::new(Workloads::new());
    let mut controller = Controller::new(sources, cache.clone(), recorder.clone(), status.clone())
        .with_unenforced_l7(cfg.unenforced_l7)
        .with_allow_localhost(cfg.allow_localhost)
        .with_root_namespace(&cfg.root_namespace)
        .with_workloads(workloads.clone());
    if let Some(ids) = identities {
        controller = controller.with_cluster_identities(ids);
    }
    // File-system events make changes visible at once; polling stays as the
    // fallback (and the only mechanism when the watcher cannot start). Watched before
    // the first pass: a change written after that pass read the directory, but before
    // the watch existed, would otherwise wait for the next poll (it fires `wake`,
    // which keeps the event until the controller runs).
    let _watcher = match &cfg.source_dir {
        Some(dir) => match crate::controller::watch_dir(dir, wake.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no file-system watch; polling only");
                None
            }
        },
        None => None,
    };
    // Publish before serving, so the first clients get a snapshot at once.
    controller.reconcile();

    let grpc = match cfg.plaintext_xds {
        true => Some(
            TcpListener::bind(cfg.grpc_addr)
                .await
                .map_err(|e| AppError::bind("--grpc-addr", cfg.grpc_addr, e))?,
        ),
        false => None,
    };
    let dbg = TcpListener::bind(cfg.debug_addr)
        .await
        .map_err(|e| AppError::bind("--debug-addr", cfg.debug_addr, e))?;
    let debug_addr = dbg.local_addr()?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key, &cfg.ca_cert) {
        (Some(cert), Some(key), Some(ca)) => {
            let cert = read("--tls-cert", cert)?;
            let key = read("--tls-key", key)?;
            let ca_path = ca;
            let ca = read("--ca-cert", ca)?;
            // The workload CA (Istio's certificate service) signs with the first
            // certificate of `ca` and --ca-key.
            let signer = match &cfg.ca_key {
                Some(k) => {
                    let key = read("--ca-key", k)?;
                    let signer = ca::Signer::from_pem(
                        &String::from_utf8_lossy(&ca),
                        &String::from_utf8_lossy(&key),
                        (&ca_path.display().to_string(), &k.display().to_string()),
                    )
                    .map_err(AppError::Ca)?;
                    Some(Arc::new(signer))
                }
                None => None,
            };
            // A client certificate must chain to `ca` (webpki also checks its
            // validity period); who it names is checked per request (auth.rs). It
            // is required in the handshake unless the CA serves: a pod asking for
            // its first certificate has only its token, and xDS refuses such a
            // connection per request.
            let builder = tonic::transport::Server::builder()
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(cert, key))
                        .client_ca_root(Certificate::from_pem(ca))
                        .client_auth_optional(signer.is_some()),
                )
                .map_err(AppError::Tls)?;
            let l = TcpListener::bind(cfg.tls_addr)
                .await
                .map_err(|e| AppError::bind("--tls-addr", cfg.tls_addr, e))?;
            Some((builder, l, signer))
        }
        _ => None,
    };
    let hook = match (&cfg.webhook_cert, &cfg.webhook_key) {
        (Some(cert), Some(key)) => {
            let settings = webhook::InjectSettings {
                cert: cert.clone(),
                key: key.clone(),
                poll: Duration::from_millis(cfg.webhook_cert_poll_ms.max(1)),
                max_body_bytes: cfg.webhook_max_body_bytes,
                limits: cfg.conn_limits(true),
                sidecar: Sidecar {
                    native_sidecars: native_sidecars(cfg).await,
                    hold_application: cfg.hold_application_until_proxy_starts,
                    rewrite_probes: cfg.rewrite_app_probers,
                    cluster_id: cfg.sidecar_cluster_id.clone(),
                    ca_address: cfg.sidecar_ca_address.clone(),
                    trust_domain: cfg.trust_domain.clone(),
                    ..Sidecar::new(
                        &cfg.sidecar_image,
                        &cfg.sidecar_xds_address,
                        &cfg.injection_revision,
                    )
                },
            };
            let wh = Webhook::new(settings, recorder.clone()).map_err(AppError::Webhook)?;
            let l = TcpListener::bind(cfg.webhook_addr)
                .await
                .map_err(|e| AppError::bind("--webhook-addr", cfg.webhook_addr, e))?;
            Some((Arc::new(wh), l))
        }
        _ => {
            info!("injection webhook off: no --webhook-cert/--webhook-key given");
            None
        }
    };
    let addrs = Addrs {
        debug: debug_addr,
        grpc: grpc.as_ref().map(TcpListener::local_addr).transpose()?,
        tls: tls.as_ref().map(|(_, l, _)| l.local_addr()).transpose()?,
        webhook: hook.as_ref().map(|(_, l)| l.local_addr()).transpose()?,
    };

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = XdsServer::new(cache.clone(), recorder.clone()).with_limits(cfg.stream_limits());
    // A server that fails has logged why; shutdown only waits for it.
    let grpc_task = grpc.map(|l| {
        let serve = server
            .router()
            .serve_with_incoming_shutdown(listener::nodelay(l), stopped(stop_rx.clone()));
        tokio::spawn(async move { drop(serve.await) })
    });
    let (agent_ns, agent_sa) = &cfg.agent_service_account;
    let (relay_ns, relay_sa) = &cfg.relay_service_account;
    let authorizer = Arc::new(
        Authorizer::new(cfg.trust_domain.clone(), workloads)
            .with_agent_account(agent_ns, agent_sa)
            .with_relay_account(relay_ns, relay_sa),
    );
    let tls_task = tls.map(|(builder, l, signer)| {
        let mut router = server.with_auth(authorizer.clone()).router_on(builder);
        if let Some(signer) = signer {
            info!("workload CA on the mTLS port (istio.v1.auth.IstioCertificateService)");
            let service = ca::CaService::new(
                signer,
                authorizer,
                token_reviewer,
                ca::CaSettings {
                    default_ttl: cfg.ca_workload_cert_ttl,
                    max_ttl: cfg.ca_max_workload_cert_ttl,
                    max_csr_bytes: cfg.ca_max_csr_bytes,
                    per_minute: cfg.ca_requests_per_minute,
                },
                recorder.metrics.ca_requests.clone(),
            );
            router = router.add_service(service.into_server());
        }
        let serve =
            router.serve_with_incoming_shutdown(listener::nodelay(l), stopped(stop_rx.clone()));
        tokio::spawn(async move { drop(serve.await) })
    });
    let hook_tasks = hook.map(|(wh, l)| {
        (
            tokio::spawn(webhook::watch_certificate(
                wh.clone(),
                stopped(stop_rx.clone()),
            )),
            tokio::spawn(webhook::serve(l, wh, stopped(stop_rx.clone()))),
        )
    });
    let dbg_state = Arc::new(DebugState {
        cache,
        recorder,
        sources: status,
    });
    let dbg_task = tokio::spawn(debug::serve(
        dbg,
        dbg_state,
        cfg.conn_limits(false),
        stopped(stop_rx.clone()),
    ));
    let ctl_task =
        tokio::spawn(controller.run(Duration::from_millis(cfg.poll_ms), wake, stopped(stop_rx)));
    let mut tasks = vec![ctl_task, dbg_task];
    tasks.extend(grpc_task);
    tasks.extend(tls_task);
    if let Some((w, s)) = hook_tasks {
        tasks.extend([w, s]);
    }
    // Last: revokes this replica's lease, so its registrations go at once.
    tasks.extend(register_task);
    Ok(Running {
        addrs,
        stop: stop_tx,
        tasks,
        _watcher,
    })
}
