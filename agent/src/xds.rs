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
//! uses the new pair. Connecting, the TLS files and the backoff are `membrane_xds_client`'s,
//! shared with the sidecar's client.

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
    /// The address and the TLS settings are not usable.
    #[error(transparent)]
    Client(#[from] membrane_xds_client::ClientError),
    /// The node name is not a Kubernetes node name.
    #[error("--node {0:?}: not a Kubernetes node name (lowercase letters, digits, '-' and '.')")]
    Node(String),
}

/// mTLS to the control plane, as every client of membrane-xds configures it.
pub use membrane_xds_client::XdsTls;

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
        Ok(membrane_xds_client::check(
            &self.address,
            self.tls.as_ref(),
        )?)
    }

    /// The node id the agent presents.
    pub fn node_id(&self) -> String {
        format!("membrane-agent~{}", self.node)
    }
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
        let d = membrane_xds_client::backoff(cfg.backoff_initial, cfg.backoff_max, attempt);
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
    // The TLS files are read now, so a rotated pair is used by the next connection.
    let conn = membrane_xds_client::connect(&cfg.address, cfg.tls.as_ref()).await?;
    let channel = conn.channel.clone();
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
    let rotated = conn.rotated();
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
                memory: None,
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
}
