//! One follower per node: connects to the node's agent (its address, the observer port),
//! follows its stream, and reconnects with backoff. Every change of a node's state is a
//! `node-status` record in the merged stream (`connected`, `unreachable: WHY` when it
//! cannot be reached, `gone: WHY` when its stream ends, `removed` when the registry drops
//! it), so a node that goes away is reported, never silently missing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use membrane_api::monitor::{rfc3339, Event};
use membrane_api::observer::proto::observer_client::ObserverClient;
use membrane_api::observer::proto::{self, GetEventsRequest};
use membrane_api::observer::{decode, TYPE_NODE_STATUS};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::discovery::Nodes;
use crate::tls::TlsFiles;

/// How the relay reaches the agents.
#[derive(Debug, Clone)]
pub struct AgentAccess {
    /// The agents' observer port (4244).
    pub port: u16,
    /// mTLS to the agents; `None` = plaintext.
    pub tls: Option<TlsFiles>,
    /// The name the agents' certificates carry; `None` = the node's address.
    pub server_name: Option<String>,
    /// First reconnect delay.
    pub backoff: Duration,
    /// Reconnect delay ceiling.
    pub backoff_max: Duration,
}

/// A relay record about `node`.
pub fn status(node: &str, reason: String) -> Event {
    Event {
        node: node.to_owned(),
        time: rfc3339(SystemTime::now()),
        kind: TYPE_NODE_STATUS.to_owned(),
        program: "relay".to_owned(),
        reason,
        ..Event::default()
    }
}

impl AgentAccess {
    /// A channel to the agent at `ip`.
    pub async fn connect(&self, ip: IpAddr) -> Result<Channel, String> {
        let addr = SocketAddr::new(ip, self.port);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(t) = &self.tls {
            let name = self.server_name.clone().unwrap_or_else(|| ip.to_string());
            ep = ep
                .tls_config(t.client(&name).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        ep.connect()
            .await
            .map_err(|e| format!("{addr}: {}", error_chain(&e)))
    }

    /// The latest `last` events of the agent at `ip` that pass `filter` (no follow).
    pub async fn last(
        &self,
        ip: IpAddr,
        last: u64,
        filter: proto::Filter,
    ) -> Result<Vec<Event>, String> {
        let ch = self.connect(ip).await?;
        let mut s = ObserverClient::new(ch)
            .get_events(GetEventsRequest {
                follow: false,
                last,
                filter: Some(filter),
            })
            .await
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await.map_err(|e| e.message().to_owned())? {
            out.push(decode(m));
        }
        Ok(out)
    }
}

/// The whole cause of a transport error (tonic's top level says only "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Reports a node's state when it changes, so a node down for an hour is one record, not
/// one per attempt.
struct Reporter {
    name: String,
    last: String,
}

impl Reporter {
    async fn report(&mut self, reason: String, out: &mpsc::Sender<Event>) {
        let kind = reason.split(':').next().unwrap_or_default().to_owned();
        if kind != self.last {
            self.last = kind;
            tracing::info!(node = %self.name, "{reason}");
            let _ = out.send(status(&self.name, reason)).await;
        }
    }
}

/// Follows node `name` at `ip` into `out` until `stop` turns true or `out` closes.
async fn follow(
    name: String,
    ip: IpAddr,
    access: AgentAccess,
    out: mpsc::Sender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    let mut reporter = Reporter {
        name,
        last: String::new(),
    };
    loop {
        let (reporter_ref, attempt_ref) = (&mut reporter, &mut attempt);
        let session = async {
            let ch = access.connect(ip).await.map_err(|e| (false, e))?;
            let mut s = ObserverClient::new(ch)
                .get_events(GetEventsRequest {
                    follow: true,
                    last: 0,
                    filter: None,
                })
                .await
                .map_err(|e| (false, format!("{}: {}", e.code(), e.message())))?
                .into_inner();
            reporter_ref.report("connected".to_owned(), &out).await;
            *attempt_ref = 0;
            loop {
                match s.message().await {
                    Ok(Some(m)) => {
                        if out.send(decode(m)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Err((true, "the stream ended".to_owned())),
                    Err(e) => return Err((true, format!("{}: {}", e.code(), e.message()))),
                }
            }
        };
        let result = tokio::select! {
            r = session => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(()) => return,
            Err((true, why)) => reporter.report(format!("gone: {why}"), &out).await,
            Err((false, why)) => reporter.report(format!("unreachable: {why}"), &out).await,
        }
        let d = membrane_xds_client::backoff(access.backoff, access.backoff_max, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Keeps one follower per node of `nodes` (a new address restarts its follower), until
/// `out` closes.
pub async fn manage(
    mut nodes: watch::Receiver<Nodes>,
    access: AgentAccess,
    out: mpsc::Sender<Event>,
) {
    let mut running: BTreeMap<String, (IpAddr, watch::Sender<bool>)> = BTreeMap::new();
    loop {
        let want = nodes.borrow_and_update().clone();
        running.retain(|name, (ip, stop)| {
            let keep = want.get(name) == Some(ip);
            if !keep {
                let _ = stop.send(true);
                if !want.contains_key(name) {
                    let _ = out.try_send(status(name, "removed".to_owned()));
                }
            }
            keep
        });
        for (name, ip) in want {
            if running.contains_key(&name) {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(follow(
                name.clone(),
                ip,
                access.clone(),
                out.clone(),
                stop_rx,
            ));
            running.insert(name, (ip, stop_tx));
        }
        tokio::select! {
            r = nodes.changed() => if r.is_err() { break },
            _ = out.closed() => break,
        }
    }
    for (_, (_, stop)) in running {
        let _ = stop.send(true);
    }
}
