//! `membrane-xds`: the control plane binary. Wires the sources, the
//! translator, the snapshot cache, the xDS gRPC server and the debug HTTP
//! endpoint together; all logic lives in the library.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use membrane_xds::auth::{Authorizer, Workloads};
use membrane_xds::config::Config;
use membrane_xds::controller::Controller;
use membrane_xds::debug::{self, DebugState};
use membrane_xds::identity::EtcdIdentities;
use membrane_xds::inject::Sidecar;
use membrane_xds::kvstore;
use membrane_xds::listener;
use membrane_xds::recorder::Recorder;
use membrane_xds::server::XdsServer;
use membrane_xds::snapshot::SnapshotCache;
use membrane_xds::source::dir::DirSource;
use membrane_xds::source::etcd::EtcdSource;
#[cfg(feature = "kube")]
use membrane_xds::source::kube::{self, KubeSource};
use membrane_xds::source::Source;
use membrane_xds::webhook::{self, Webhook};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::info;

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cfg.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    if !cfg.plaintext_xds && cfg.tls_cert.is_none() {
        anyhow::bail!(
            "no xDS listener: give --tls-cert, --tls-key and --ca-cert (mTLS on --tls-addr, \
             the authenticated default) and/or --plaintext-xds (unauthenticated, on \
             --grpc-addr, loopback by default)"
        );
    }
    let etcd_tls = kvstore::EtcdTls::from_flags(
        cfg.etcd_ca.as_deref(),
        cfg.etcd_cert.as_deref(),
        cfg.etcd_key.as_deref(),
    )?;

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
        anyhow::bail!("--kube: this membrane-xds was built without the `kube` feature");
    }
    #[cfg(feature = "kube")]
    if cfg.kube {
        let client = kube::client(cfg.kubeconfig.as_deref())
            .await
            .context("--kube")?;
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
            .context("--etcd")?;
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
        Some(dir) => match membrane_xds::controller::watch_dir(dir, wake.clone()) {
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
                .with_context(|| format!("binding --grpc-addr {}", cfg.grpc_addr))?,
        ),
        false => None,
    };
    let dbg = TcpListener::bind(cfg.debug_addr)
        .await
        .with_context(|| format!("binding --debug-addr {}", cfg.debug_addr))?;
    let dbg_addr = dbg.local_addr()?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key, &cfg.ca_cert) {
        (Some(cert), Some(key), Some(ca)) => {
            let cert =
                std::fs::read(cert).with_context(|| format!("--tls-cert {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?;
            let ca = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
            // A client certificate is required and must chain to `ca`
            // (webpki also checks its validity period); who it names is
            // checked per request (auth.rs).
            let builder = tonic::transport::Server::builder()
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(Identity::from_pem(cert, key))
                        .client_ca_root(Certificate::from_pem(ca))
                        .client_auth_optional(false),
                )
                .context("mTLS configuration (--tls-cert/--tls-key/--ca-cert)")?;
            let l = TcpListener::bind(cfg.tls_addr)
                .await
                .with_context(|| format!("binding --tls-addr {}", cfg.tls_addr))?;
            Some((builder, l))
        }
        _ => None,
    };
    let hook = match (&cfg.webhook_cert, &cfg.webhook_key) {
        (Some(cert), Some(key)) => {
            let settings = webhook::Settings {
                cert: cert.clone(),
                key: key.clone(),
                poll: Duration::from_millis(cfg.webhook_cert_poll_ms.max(1)),
                max_body_bytes: cfg.webhook_max_body_bytes,
                limits: cfg.conn_limits(true),
                sidecar: Sidecar {
                    image: cfg.sidecar_image.clone(),
                    xds_address: cfg.sidecar_xds_address.clone(),
                    revision: cfg.injection_revision.clone(),
                },
            };
            let wh =
                Webhook::new(settings, recorder.clone()).context("--webhook-cert/--webhook-key")?;
            let l = TcpListener::bind(cfg.webhook_addr)
                .await
                .with_context(|| format!("binding --webhook-addr {}", cfg.webhook_addr))?;
            Some((Arc::new(wh), l))
        }
        _ => {
            info!("injection webhook off: no --webhook-cert/--webhook-key given");
            None
        }
    };
    let mut extra_line = String::new();
    if let Some(l) = &grpc {
        extra_line.push_str(&format!(" grpc={}", l.local_addr()?));
    }
    if let Some((_, l)) = &tls {
        extra_line.push_str(&format!(" tls={}", l.local_addr()?));
    }
    if let Some((_, l)) = &hook {
        extra_line.push_str(&format!(" webhook={}", l.local_addr()?));
    }
    // Tests and scripts read the bound addresses from this line.
    println!("membrane-xds listening debug={dbg_addr}{extra_line}");
    info!(%dbg_addr, listeners = %extra_line.trim(), "membrane-xds listening");

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = XdsServer::new(cache.clone(), recorder.clone()).with_limits(cfg.stream_limits());
    let grpc_task = grpc.map(|l| {
        tokio::spawn(
            server
                .router()
                .serve_with_incoming_shutdown(listener::nodelay(l), stopped(stop_rx.clone())),
        )
    });
    let authorizer = Arc::new(Authorizer::new(cfg.trust_domain.clone(), workloads));
    let tls_task = tls.map(|(builder, l)| {
        tokio::spawn(
            server
                .with_auth(authorizer)
                .router_on(builder)
                .serve_with_incoming_shutdown(listener::nodelay(l), stopped(stop_rx.clone())),
        )
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

    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    // Open xDS streams do not end on their own; bound the wait.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = ctl_task.await;
        let _ = dbg_task.await;
        if let Some(t) = grpc_task {
            let _ = t.await;
        }
        if let Some(t) = tls_task {
            let _ = t.await;
        }
        if let Some((w, s)) = hook_tasks {
            let _ = w.await;
            let _ = s.await;
        }
        // Revokes this replica's lease: its registrations go at once.
        if let Some(t) = register_task {
            let _ = t.await;
        }
    })
    .await;
    Ok(())
}
