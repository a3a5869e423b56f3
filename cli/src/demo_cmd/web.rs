//! `membrane demo --stay`: the relay's web page over the mini-cluster, served from this
//! process while the scenario plays and after it, until Ctrl-C.
//!
//! The page is `membrane_relay::web`, fed from a broadcast channel this module fills by
//! following every node agent's monitor stream (their API sockets), reconnecting when an
//! agent restarts (step 8 restarts one).

use anyhow::{Context, Result};
use membrane_datapath::api::Request;
use membrane_datapath::events::Event;
use membrane_minicluster::Cluster;
use membrane_relay::web::{Limits, Web};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
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

/// Follow every node agent of `c` into `feed`, one thread per agent, for as long as the
/// process runs. The agents name no pods in their records yet where they only know
/// addresses: the mini-cluster knows its pods, so their names are filled in here.
pub fn follow_agents(c: &Cluster, feed: &broadcast::Sender<Event>) {
    let pods: HashMap<IpAddr, String> = c
        .pods()
        .filter_map(|p| Some((p.ip.parse().ok()?, format!("default/{}", p.name))))
        .collect();
    for (node, socket) in c.agent_sockets() {
        let (feed, pods) = (feed.clone(), pods.clone());
        std::thread::spawn(move || follow(node, socket, &pods, &feed));
    }
}

/// The pod at `addr`'s address, if it is one of the mini-cluster's.
fn pod_at(pods: &HashMap<IpAddr, String>, addr: Option<&str>) -> Option<String> {
    let ip = addr?.parse::<SocketAddr>().ok()?.ip();
    pods.get(&ip).cloned()
}

fn follow(
    node: &str,
    socket: PathBuf,
    pods: &HashMap<IpAddr, String>,
    feed: &broadcast::Sender<Event>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Ok(mut s) = UnixStream::connect(&socket) {
            let req = serde_json::to_string(&Request::Monitor).unwrap_or_default();
            if writeln!(s, "{req}").is_ok() {
                backoff = Duration::from_millis(100);
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    let Ok(mut e) = serde_json::from_str::<Event>(&line) else {
                        eprintln!("membrane demo: {node}: a monitor line that is no event: {line}");
                        continue;
                    };
                    if e.src_pod.is_none() {
                        e.src_pod = pod_at(pods, e.src.as_deref());
                    }
                    if e.dst_pod.is_none() {
                        e.dst_pod = pod_at(pods, e.dst.as_deref());
                    }
                    // No page subscribed (it failed): nothing to keep.
                    if feed.send(e).is_err() {
                        return;
                    }
                }
            }
        }
        // The agent is restarting (step 8) or not up yet: try again shortly.
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
