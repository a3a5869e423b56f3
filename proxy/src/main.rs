//! `membrane-proxy` binary: parses the config, sets up logging and the runtime, takes the
//! listeners over from a running proxy when there is one (`--handover-socket`), runs until
//! SIGTERM/SIGINT or until a successor takes the listeners over, then drains.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use membrane_proxy::config::{Cli, Command, Config};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("membrane-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (cfg, sidecar) = match cli.command {
        Command::Standalone(cfg) => (*cfg, false),
        // The environment is checked before anything else happens: a pod with a bad one
        // fails at once, its log naming the variable.
        Command::Sidecar(args) => (args.into_config()?, true),
        Command::Wait(w) => return Ok(w.run()?),
    };

    // Diagnostics: JSON lines on stderr, filter reloadable from the admin `/logging`
    // endpoint. (The access log has its own sink, see `membrane_proxy::access_log`.)
    let diag_filter =
        EnvFilter::try_new(&cfg.log).with_context(|| format!("--log {:?}", cfg.log))?;
    let (diag_filter, reload_handle) = reload::Layer::new(diag_filter);
    let diag = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .with_filter(diag_filter);
    tracing_subscriber::registry().with(diag).init();
    if sidecar {
        let xds = cfg.xds_address.as_deref().unwrap_or_default();
        tracing::info!(
            node_id = cfg.node_id.as_deref().unwrap_or_default(),
            control_plane = xds,
            mtls = cfg.xds_cert.is_some(),
            "sidecar configured from the pod's environment"
        );
        if xds.starts_with("http://") {
            tracing::warn!(
                control_plane = xds,
                "no workload certificate: the control plane is dialled in plaintext"
            );
        }
    }
    let log_control: membrane_proxy::admin::LogControl = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        reload_handle.reload(f).map_err(|e| e.to_string())
    });

    let mut builder = if cfg.concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.concurrency);
        b
    };
    builder.enable_all();
    let rt = if cfg.busy_poll.is_zero() {
        builder.build()?
    } else {
        build_busy_polling(builder, cfg.busy_poll)?
    };
    rt.block_on(run(cfg, log_control))
}

/// A runtime whose event loop polls for up to `budget` before it sleeps (see `busypoll`).
fn build_busy_polling(
    mut builder: tokio::runtime::Builder,
    budget: std::time::Duration,
) -> anyhow::Result<tokio::runtime::Runtime> {
    use membrane_proxy::busypoll::{epoll_fds, runtime_epoll, BusyPoll};
    // The hooks are set before the runtime exists; its epoll descriptor is known after.
    let slot: Arc<std::sync::OnceLock<Arc<BusyPoll>>> = Arc::default();
    let (park, unpark) = (slot.clone(), slot.clone());
    builder
        .on_thread_park(move || {
            if let Some(b) = park.get() {
                b.before_park()
            }
        })
        .on_thread_unpark(move || {
            if let Some(b) = unpark.get() {
                b.after_unpark()
            }
        });
    let before = epoll_fds();
    let rt = builder.build()?;
    let created = epoll_fds().difference(&before).copied().collect();
    match runtime_epoll(&created) {
        Some(fd) => {
            let _ = slot.set(BusyPoll::new(fd, budget));
        }
        None => tracing::warn!(
            epoll_descriptors = created.len(),
            "busy polling off: the runtime's epoll descriptor is not known"
        ),
    }
    Ok(rt)
}

async fn run(cfg: Config, log_control: membrane_proxy::admin::LogControl) -> anyhow::Result<()> {
    use membrane_proxy::handover;
    use tokio::signal::unix::{signal, SignalKind};
    let xds = cfg.xds_address.is_some();
    // The policy is read before a running proxy is asked for its sockets: a successor
    // whose policy is refused leaves its predecessor alone.
    let enforcer = if xds {
        // Deny everything until the control plane's first policy is in force.
        membrane_proxy::policy::deny_all("no policy from the control plane yet")
    } else {
        membrane_proxy::policy::load(&cfg)?
    };
    let (running, mut server) = handover::start(&cfg, enforcer, Some(log_control)).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let handed_over = loop {
        let successor = async {
            match server.as_mut() {
                Some(s) => s.handed_over().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            pid = successor => break Some(pid),
            _ = hup.recv() => {
                // Reload: the last good policy and certificate stay in force when new ones are rejected.
                // A rotated access-log file is reopened.
                if let Some(log) = &running.access_log {
                    log.reopen();
                }
                if let Some(store) = &running.tls {
                    match store.reload() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate reload rejected; previous one stays in use"),
                    }
                }
                for e in running.secrets.reload() {
                    tracing::error!(error = %e, "secret rejected; previous content stays in use");
                }
                if xds {
                    tracing::info!("policy comes from xDS; SIGHUP reloads certificates only");
                    continue;
                }
                match membrane_proxy::policy::load(&cfg) {
                    Ok(e) => {
                        running.policy.store(e);
                        tracing::info!("policy reloaded");
                    }
                    Err(e) => {
                        running.metrics.policy_reload_failed();
                        tracing::error!(error = %format!("{e:#}"), "policy reload rejected; previous policy stays in force");
                    }
                }
            }
        }
    };
    if let Some(s) = server {
        s.close();
    }
    match handed_over {
        Some(successor) => {
            tracing::info!(successor, "handed over; draining");
            running.drain_after_handover(cfg.drain_timeout).await;
        }
        None => {
            tracing::info!("draining");
            running.drain(cfg.drain_timeout).await;
        }
    }
    tracing::info!("drained, exiting");
    Ok(())
}
