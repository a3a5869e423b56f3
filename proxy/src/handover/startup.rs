//! Starting a proxy that may replace a running one: the sequence the binary follows with
//! `--handover-socket` (see the module above), as a library call so that tests run it in
//! process too.

use crate::admin::LogControl;
use crate::config::Config;
use crate::listeners::Sockets;
use crate::policy::Enforcer;
use crate::Running;

use super::{check_same_proxy, connect, Server};

/// Starts the proxy configured by `cfg`, serving. With `--handover-socket`: when a proxy
/// serves that socket, its listening sockets are taken over, and it is asked to drain once
/// this one serves (with `--xds-address`, once the control plane's first policy is in
/// force); then this process serves the socket for its own successor (the [`Server`]).
/// Without a running proxy there, or without the flag, the listeners are bound afresh.
/// An error before this process serves leaves the running proxy serving.
pub async fn start(
    cfg: &Config,
    enforcer: Enforcer,
    log_control: Option<LogControl>,
) -> anyhow::Result<(Running, Option<Server>)> {
    cfg.validate()?;
    let predecessor = match &cfg.handover_socket {
        Some(path) => connect(path).await?,
        None => None,
    };
    let (mut running, predecessor) = match predecessor {
        None => {
            let sockets = Sockets::bind(cfg).await?;
            let running = crate::start_on(cfg, enforcer, log_control, sockets, 0).await?;
            (running, None)
        }
        Some((p, inherited)) => {
            check_same_proxy(p.pid, &inherited, cfg.listen)?;
            let epoch = p.epoch + 1;
            tracing::info!(
                predecessor = p.pid,
                epoch,
                sockets = inherited.len(),
                "taking the listeners over"
            );
            let sockets = Sockets::take_over(cfg, inherited).await?;
            let running = crate::start_on(cfg, enforcer, log_control, sockets, epoch).await?;
            if cfg.xds_address.is_some() {
                // Serving with the deny-all placeholder would fail requests the predecessor
                // still serves right: wait for the control plane's policy. The predecessor
                // serves meanwhile; if this process is stopped, it simply goes on.
                tracing::info!(
                    "waiting for the first policy from the control plane before taking over"
                );
                running.policy_ready().await;
            }
            (running, Some(p))
        }
    };
    let server = match &cfg.handover_socket {
        Some(path) => Some(Server::listen(
            path,
            running.handover_offer(),
            running.shutdown_signal(),
        )?),
        None => None,
    };
    running.serve();
    if let Some(p) = predecessor {
        let pid = p.pid;
        match p.drain().await {
            Ok(()) => tracing::info!(
                predecessor = pid,
                epoch = running.epoch(),
                "serving; the predecessor drains"
            ),
            // It went away on its own: nothing to drain, and this process serves anyway.
            Err(e) => tracing::warn!(
                predecessor = pid,
                error = %e,
                "serving; the predecessor did not confirm its drain"
            ),
        }
    }
    Ok((running, server))
}
