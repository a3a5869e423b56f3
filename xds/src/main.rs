//! `membrane-xds`: the control plane binary. Parses the flags, sets up logging, starts
//! the library's [`membrane_xds::app`] and stops it on SIGTERM or Ctrl-C; all logic lives
//! in the library.

use anyhow::{Context, Result};
use clap::Parser;
use membrane_xds::config::Config;
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
    let running = membrane_xds::app::start(&cfg).await?;
    let a = running.addrs;
    let mut extra_line = String::new();
    if let Some(l) = a.grpc {
        extra_line.push_str(&format!(" grpc={l}"));
    }
    if let Some(l) = a.tls {
        extra_line.push_str(&format!(" tls={l}"));
    }
    if let Some(l) = a.webhook {
        extra_line.push_str(&format!(" webhook={l}"));
    }
    let dbg_addr = a.debug;
    // Tests and scripts read the bound addresses from this line.
    println!("membrane-xds listening debug={dbg_addr}{extra_line}");
    info!(%dbg_addr, listeners = %extra_line.trim(), "membrane-xds listening");

    shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}
