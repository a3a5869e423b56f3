//! The agent's xDS client: one delta ADS stream (`DeltaAggregatedResources`) to
//! membrane-xds as node `membrane-agent~NODE`, with wildcard subscriptions to Endpoint,
//! NetworkPolicyHosts, Service and Node.
//!
//! Each subscription carries the versions of the resources the agent holds
//! (`initial_resource_versions`, from its state directory after a restart), so the
//! control plane sends only what changed meanwhile and the removals. A response is put in
//! force by [`Node::apply`] (all of it or, on a resource that does not convert, none of
//! it) and then ACKed: the ACK means the maps hold it. A NACK carries the error naming the
//! resource and field. The stream reconnects with exponential backoff and jitter; while
//! the control plane is away the maps keep their contents (fail-static).
//!
//! Over `https://` the client speaks mTLS (`--xds-ca`, `--xds-cert/--xds-key`); the files
//! are read for every connection and polled, and a change ends the stream so the next one
//! uses the new pair.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node as XdsNode;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::node::Node;
use crate::resources::Kind;

/// gRPC status code INVALID_ARGUMENT, carried in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Bad client settings, found before connecting.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The control plane address is not a URI.
    #[error("--xds-address {0:?}: {1}")]
    Address(String, String),
    /// The address and the TLS settings do not fit together.
    #[error("--xds-address {0:?}: {1}")]
    Tls(String, &'static str),
    /// The node name is not a Kubernetes node name.
    #[error("--node {0:?}: not a Kubernetes node name (lowercase letters, digits, '-' and '.')")]
    Node(String),
}

/// mTLS to the control plane.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// PEM CA bundle the control plane's certificate must chain to.
    pub ca: PathBuf,
    /// PEM certificate chain and key presented to the control plane.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How often the files are checked for new content.
    pub poll: Duration,
}

#[derive(PartialEq, Eq)]
struct TlsFiles {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl XdsTls {
    fn read(&self) -> Result<TlsFiles, String> {
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
        };
        Ok(TlsFiles {
            ca: read("--xds-ca", &self.ca)?,
            identity: match &self.identity {
                Some((c, k)) => Some((read("--xds-cert", c)?, read("--xds-key", k)?)),
                None => None,
            },
        })
    }
}

/// What the client is configured with.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` of membrane-xds.
    pub address: String,
    /// The node's name; the node id is `membrane-agent~NAME`.
    pub node: String,
    /// First reconnect delay; doubles per failed attempt.
    pub backoff_initial: Duration,
    /// Reconnect delay ceiling.
    pub backoff_max: Duration,
    /// mTLS settings, required for (and only for) an `https://` address.
    pub tls: Option<XdsTls>,
}

impl XdsConfig {
    /// Checks the address and the TLS settings fit together.
    pub fn check(&self) -> Result<(), XdsError> {
        let n = &self.node;
        let valid = !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !n.starts_with(['-', '.'])
            && !n.ends_with(['-', '.']);
        if !valid {
            return Err(XdsError::Node(n.clone()));
        }
        tonic::transport::Endpoint::from_shared(self.address.clone())
            .map_err(|e| XdsError::Address(self.address.clone(), e.to_string()))?;
        match (self.address.starts_with("https://"), &self.tls) {
            (true, None) => Err(XdsError::Tls(
                self.address.clone(),
                "an https:// control plane needs --xds-ca (and --xds-cert/--xds-key)",
            )),
            (false, Some(_)) => Err(XdsError::Tls(
                self.address.clone(),
                "--xds-ca/--xds-cert/--xds-key need an https:// address",
            )),
            _ => Ok(()),
        }
    }

    /// The node id the agent presents.
    pub fn node_id(&self) -> String {
        format!("membrane-agent~{}", self.node)
    }
}

/// Delay before reconnect attempt `attempt` (0-based): exponential, capped, jittered in
/// [d/2, d] so that a restarted control plane is not hit by every agent at once.
pub fn backoff(cfg: &XdsConfig, attempt: u32) -> Duration {
    let exp = cfg
        .backoff_initial
        .saturating_mul(1u32 << attempt.min(16))
        .min(cfg.backoff_max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Runs the subscription until `shutdown` turns true.
pub async fn run(cfg: XdsConfig, node: Arc<Mutex<Node>>, mut shutdown: watch::Receiver<bool>) {
    lock(&node).xds.address = cfg.address.clone();
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            r = session(&cfg, &node) => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        lock(&node).xds.connected = false;
        match outcome {
            Ok(got_one) => {
                if got_one {
                    attempt = 0;
                }
                tracing::warn!(address = %cfg.address, "xDS stream closed; the maps keep their contents; reconnecting");
            }
            Err(e) => {
                tracing::warn!(address = %cfg.address, error = %e, "xDS stream failed; the maps keep their contents")
            }
        }
        let d = backoff(&cfg, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

fn lock(node: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|e| e.into_inner())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One stream, from connect to its end. `Ok(true)` when at least one response arrived.
async fn session(cfg: &XdsConfig, node: &Mutex<Node>) -> Result<bool, BoxError> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(cfg.address.clone())?
        .connect_timeout(Duration::from_secs(2));
    let files = match &cfg.tls {
        Some(tls) => {
            let f = tls.read()?;
            let mut c = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&f.ca));
            if let Some((cert, key)) = &f.identity {
                c = c.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(c)?;
            Some((tls.clone(), f))
        }
        None => None,
    };
    let channel = endpoint.connect().await?;
    let (tx, rx) = mpsc::channel(8);
    for kind in Kind::ALL {
        let held = lock(node).held_versions(kind);
        tx.send(DeltaDiscoveryRequest {
            node: Some(XdsNode {
                id: cfg.node_id(),
                ..Default::default()
            }),
            type_url: kind.type_url().into(),
            initial_resource_versions: held.into_iter().collect(),
            ..Default::default()
        })
        .await?;
    }
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    lock(node).xds.connected = true;
    tracing::info!(address = %cfg.address, node_id = %cfg.node_id(), "xDS stream open");
    let rotated = async {
        match &files {
            Some((tls, used)) => loop {
                tokio::time::sleep(tls.poll).await;
                if tls.read().as_ref().ok() != Some(used) {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    tokio::pin!(rotated);
    let mut got_one = false;
    loop {
        tokio::select! {
            msg = stream.message() => match msg? {
                Some(resp) => {
                    got_one = true;
                    let reply = apply(node, &resp);
                    tx.send(reply).await?;
                }
                None => break,
            },
            _ = &mut rotated => {
                tracing::info!("xDS certificate files changed; reconnecting with them");
                break;
            }
        }
    }
    Ok(got_one)
}

/// Puts one response in force; returns the ACK or the NACK to send.
fn apply(node: &Mutex<Node>, resp: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    let result: Result<(Kind, usize), String> = (|| {
        let kind = Kind::from_type_url(&resp.type_url)
            .ok_or_else(|| format!("type {:?}: not subscribed", resp.type_url))?;
        let updated =
            resp.resources
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let body = r.resource.as_ref().ok_or_else(|| {
                        format!("resources[{i}] ({:?}): no resource body", r.name)
                    })?;
                    if body.type_url != resp.type_url {
                        return Err(format!(
                            "resources[{i}] ({:?}): type {:?}, expected {:?}",
                            r.name, body.type_url, resp.type_url
                        ));
                    }
                    Ok((r.name.clone(), r.version.clone(), body.value.clone()))
                })
                .collect::<Result<Vec<_>, String>>()?;
        let mut n = lock(node);
        let programmed = n.apply(kind, updated, &resp.removed_resources)?;
        n.xds
            .versions
            .insert(kind, resp.system_version_info.clone());
        Ok((kind, programmed.len()))
    })();
    let mut n = lock(node);
    let error_detail = match result {
        Ok((kind, endpoints)) => {
            n.xds.acks += 1;
            tracing::info!(type_url = kind.type_url(), version = %resp.system_version_info,
                updated = resp.resources.len(), removed = resp.removed_resources.len(), endpoints,
                "xDS update in force (ACK)");
            None
        }
        Err(message) => {
            n.xds.nacks += 1;
            n.xds.last_nack = Some(message.clone());
            tracing::error!(type_url = %resp.type_url, version = %resp.system_version_info, error = %message,
                "xDS update rejected (NACK); the last good state stays in force");
            Some(Status {
                code: INVALID_ARGUMENT,
                message,
                details: vec![],
            })
        }
    };
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(address: &str, tls: bool) -> XdsConfig {
        XdsConfig {
            address: address.into(),
            node: "node-1".into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            tls: tls.then(|| XdsTls {
                ca: "ca.pem".into(),
                identity: None,
                poll: Duration::from_secs(1),
            }),
        }
    }

    #[test]
    fn addresses_and_tls_settings_that_do_not_fit_are_refused() {
        assert!(cfg("http://127.0.0.1:15010", false).check().is_ok());
        for (address, tls, says) in [
            ("https://xds:15012", false, "needs --xds-ca"),
            ("http://xds:15010", true, "need an https:// address"),
            ("not a uri", false, "--xds-address"),
        ] {
            let err = cfg(address, tls).check().unwrap_err().to_string();
            assert!(err.contains(says), "{address}: {err}");
        }
        assert_eq!(cfg("http://x:1", false).node_id(), "membrane-agent~node-1");
        let mut bad = cfg("http://x:1", false);
        bad.node = "Node_1".into();
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("--node \"Node_1\""));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let c = cfg("http://x:1", false);
        for _ in 0..50 {
            let d0 = backoff(&c, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d30 = backoff(&c, 30);
            assert!(d30 >= Duration::from_millis(2500) && d30 <= Duration::from_secs(5));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(&c, 5)).collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
