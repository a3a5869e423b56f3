//! `membrane demo --stay`: the relay's web page over the mini-cluster, served from this
//! process while the scenario plays and after it, until Ctrl-C.
//!
//! The page is `membrane_relay::web` on a runtime of its own in the host's namespace (so
//! the printed loopback address works), fed from the mini-cluster's in-process relay: the
//! merged stream of both nodes' agents, their sidecars' records included.

use anyhow::{Context, Result};
use membrane_datapath::events::Event;
use membrane_minicluster::Cluster;
use membrane_relay::web::{Limits, Web};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::broadcast;

/// Events the channel holds for a page that fell behind (it then counts them lost).
const BACKLOG: usize = 4096;

/// The page, serving.
pub struct Page {
    /// Where it is served.
    pub addr: SocketAddr,
    /// What it shows: every event sent here.
    pub feed: broadcast::Sender<Event>,
}

/// Bind `addr` and serve the page from its own thread. Binding happens before this
/// returns, so a taken address fails here, before anything else is set up.
pub fn start(addr: SocketAddr) -> Result<Page> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("start the web page's runtime")?;
    let web = rt.block_on(Web::bind(addr, Limits::default()))?;
    let addr = web.local_addr();
    let (feed, rx) = broadcast::channel(BACKLOG);
    std::thread::spawn(move || {
        if let Err(e) = rt.block_on(web.run(rx)) {
            eprintln!("membrane demo: {e}");
        }
    });
    Ok(Page { addr, feed })
}

/// Forward the mini-cluster's in-process relay (its merged stream of both nodes) into
/// `feed`, for as long as the process runs. Where a record names no pod but its address
/// is one of the mini-cluster's pods (an agent names only pods it hosts), the name is
/// filled in.
pub fn follow_relay(c: &Cluster, feed: &broadcast::Sender<Event>) -> Result<()> {
    let r = c.relay().context("the mini-cluster runs no relay")?;
    let pods: HashMap<IpAddr, String> = c
        .pods()
        .filter_map(|p| Some((p.ip.parse().ok()?, format!("default/{}", p.name))))
        .collect();
    let mut rx = r.relay.subscribe();
    let feed = feed.clone();
    r.runtime.spawn(async move {
        loop {
            let e = match rx.recv().await {
                Ok(mut e) => {
                    if e.src_pod.is_none() {
                        e.src_pod = pod_at(&pods, e.src.as_deref());
                    }
                    if e.dst_pod.is_none() {
                        e.dst_pod = pod_at(&pods, e.dst.as_deref());
                    }
                    e
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Event::lost("membrane-relay", n, "slow-subscriber")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // No page subscribed (it failed): nothing to keep.
            if feed.send(e).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The pod at `addr`'s address, if it is one of the mini-cluster's.
fn pod_at(pods: &HashMap<IpAddr, String>, addr: Option<&str>) -> Option<String> {
    let ip = addr?.parse::<SocketAddr>().ok()?.ip();
    pods.get(&ip).cloned()
}
