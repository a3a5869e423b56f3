//! The xDS client: subscribes to `membrane-xds` for this proxy's NPDS
//! (`cilium.NetworkPolicy`) and NPHDS (`cilium.NetworkPolicyHosts`) over two gRPC streams,
//! puts each accepted update in force atomically through [`PolicyHandle`], and ACKs it, or
//! NACKs it with the translation error and keeps the last good policy. Streams reconnect
//! with exponential backoff and jitter; while the control plane is away the last good
//! policy stays in force. Translation itself is [`crate::policy::npds`]'s.
//!
//! Over `https://` the client speaks mTLS: it verifies the control plane's certificate
//! against `--xds-ca` and presents the workload certificate (`--xds-cert/--xds-key`). The
//! files are read for every connection and checked every `--xds-cert-poll`; when any of
//! them changes (a rotated Secret), the stream ends and reconnects with the new pair, so a
//! certificate is replaced before it expires without a restart.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use membrane_api::proto::network_policy_discovery_service_client::NetworkPolicyDiscoveryServiceClient;
use membrane_api::proto::network_policy_hosts_discovery_service_client::NetworkPolicyHostsDiscoveryServiceClient;
use membrane_api::proto::{NetworkPolicy, NetworkPolicyHosts};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;
use crate::policy::{npds, PolicyHandle};

/// NPDS and NPHDS type URLs, defined with the protos.
pub use membrane_api::type_url::{NETWORK_POLICY as NPDS_TYPE, NETWORK_POLICY_HOSTS as NPHDS_TYPE};

/// gRPC status code INVALID_ARGUMENT, carried in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Errors starting the client.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The node id is not Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local`.
    #[error("--node-id {0:?}: expected sidecar~POD_IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local")]
    NodeId(String),
    /// The control plane address is not a URI.
    #[error("--xds-address {0:?}: {1}")]
    Address(String, String),
    /// The address and the TLS settings do not fit together.
    #[error("--xds-address {0:?}: {1}")]
    Tls(String, &'static str),
}

/// mTLS to the control plane.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// PEM CA bundle the control plane's certificate must chain to.
    pub ca: PathBuf,
    /// PEM workload certificate chain and key presented to the control plane.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How often the files are checked for new content.
    pub poll: Duration,
}

/// The bytes of the TLS files one connection was made with.
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
    /// `http://HOST:PORT` of membrane-xds.
    pub address: String,
    /// Istio node id; its IP names the endpoint whose policy is enforced.
    pub node_id: String,
    /// First reconnect delay; doubles per failed attempt.
    pub backoff_initial: Duration,
    /// Reconnect delay ceiling.
    pub backoff_max: Duration,
    /// mTLS settings, required for (and only for) an `https://` address.
    pub tls: Option<XdsTls>,
}

/// The pod IP inside an Istio node id.
pub fn pod_ip(node_id: &str) -> Result<IpAddr, XdsError> {
    let mut parts = node_id.split('~');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(ip), Some(_), Some(_)) => {
            ip.parse().map_err(|_| XdsError::NodeId(node_id.into()))
        }
        _ => Err(XdsError::NodeId(node_id.into())),
    }
}

/// The last accepted resources of each type, with their versions.
#[derive(Default)]
struct Accepted {
    npds: Option<(String, Vec<NetworkPolicy>)>,
    nphds: Option<(String, Vec<NetworkPolicyHosts>)>,
}

struct Shared {
    cfg: XdsConfig,
    pod_ip: IpAddr,
    policy: PolicyHandle,
    metrics: Arc<Metrics>,
    accepted: Mutex<Accepted>,
    /// Called once both types have been accepted for the first time.
    on_ready: Box<dyn Fn() + Send + Sync>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Npds,
    Nphds,
}

impl Kind {
    fn type_url(self) -> &'static str {
        match self {
            Kind::Npds => NPDS_TYPE,
            Kind::Nphds => NPHDS_TYPE,
        }
    }
}

/// Starts both subscriptions on the current runtime; they run until `shutdown` turns true.
/// `on_ready` runs after the first NPDS and NPHDS updates are in force.
pub fn spawn(
    cfg: XdsConfig,
    policy: PolicyHandle,
    metrics: Arc<Metrics>,
    on_ready: Box<dyn Fn() + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, XdsError> {
    let pod_ip = pod_ip(&cfg.node_id)?;
    tonic::transport::Endpoint::from_shared(cfg.address.clone())
        .map_err(|e| XdsError::Address(cfg.address.clone(), e.to_string()))?;
    match (cfg.address.starts_with("https://"), &cfg.tls) {
        (true, None) => {
            return Err(XdsError::Tls(
                cfg.address.clone(),
                "an https:// control plane needs --xds-ca (and --xds-cert/--xds-key)",
            ))
        }
        (false, Some(_)) => {
            return Err(XdsError::Tls(
                cfg.address.clone(),
                "--xds-ca/--xds-cert/--xds-key need an https:// address",
            ))
        }
        _ => {}
    }
    let shared = Arc::new(Shared {
        cfg,
        pod_ip,
        policy,
        metrics,
        accepted: Mutex::new(Accepted::default()),
        on_ready,
    });
    Ok([Kind::Npds, Kind::Nphds]
        .into_iter()
        .map(|k| {
            let (s, mut stop) = (shared.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = subscribe(s, k) => {}
                    _ = stop.wait_for(|v| *v) => {}
                }
            })
        })
        .collect())
}

/// Delay before reconnect attempt `attempt` (0-based): exponential, capped, with jitter in
/// [d/2, d] so a restarted control plane is not hit by every proxy at once.
fn backoff(cfg: &XdsConfig, attempt: u32) -> Duration {
    let exp = cfg
        .backoff_initial
        .saturating_mul(1u32 << attempt.min(16))
        .min(cfg.backoff_max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

async fn subscribe(s: Arc<Shared>, kind: Kind) {
    let mut attempt = 0u32;
    loop {
        match session(&s, kind).await {
            Ok(got_one) => {
                if got_one {
                    attempt = 0;
                }
                tracing::warn!(
                    type_url = kind.type_url(),
                    "xDS stream closed; reconnecting"
                );
            }
            Err(e) => {
                tracing::warn!(type_url = kind.type_url(), error = %e, "xDS stream failed; last good policy stays in force")
            }
        }
        let d = backoff(&s.cfg, attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(d).await;
    }
}

/// One stream, from connect to its end. `Ok(true)` when at least one response arrived.
async fn session(s: &Shared, kind: Kind) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(s.cfg.address.clone())?
        .connect_timeout(Duration::from_secs(2));
    // The files this connection is made with: read now, so a rotated pair is used by the
    // next connection, and compared while it lasts.
    let files = match &s.cfg.tls {
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
    let (tx, rx) = mpsc::channel(4);
    let last_version = {
        let a = s.accepted.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            Kind::Npds => a.npds.as_ref().map(|x| x.0.clone()),
            Kind::Nphds => a.nphds.as_ref().map(|x| x.0.clone()),
        }
    };
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: s.cfg.node_id.clone(),
            ..Default::default()
        }),
        version_info: last_version.unwrap_or_default(),
        type_url: kind.type_url().into(),
        ..Default::default()
    })
    .await?;
    let requests = ReceiverStream::new(rx);
    let mut stream = match kind {
        Kind::Npds => {
            NetworkPolicyDiscoveryServiceClient::new(channel)
                .stream_network_policies(requests)
                .await?
        }
        Kind::Nphds => {
            NetworkPolicyHostsDiscoveryServiceClient::new(channel)
                .stream_network_policy_hosts(requests)
                .await?
        }
    }
    .into_inner();
    tracing::info!(type_url = kind.type_url(), address = %s.cfg.address, "xDS stream open");
    let mut got_one = false;
    let rotated = async {
        match &files {
            Some((tls, used)) => loop {
                tokio::time::sleep(tls.poll).await;
                // A half-written file reads differently too: the reconnect then fails and
                // is retried with backoff, the last good policy staying in force.
                if tls.read().as_ref().ok() != Some(used) {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    tokio::pin!(rotated);
    loop {
        tokio::select! {
            msg = stream.message() => match msg? {
                Some(resp) => {
                    got_one = true;
                    let reply = apply(s, kind, &resp);
                    tx.send(reply).await?;
                }
                None => break,
            },
            _ = &mut rotated => {
                tracing::info!(type_url = kind.type_url(), "xDS certificate files changed; reconnecting with them");
                break;
            }
        }
    }
    Ok(got_one)
}

fn decode<M: Message + Default>(resp: &DiscoveryResponse, kind: Kind) -> Result<Vec<M>, String> {
    resp.resources
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if a.type_url != kind.type_url() {
                return Err(format!(
                    "resources[{i}]: type {:?}, expected {:?}",
                    a.type_url,
                    kind.type_url()
                ));
            }
            M::decode(a.value.as_slice()).map_err(|e| format!("resources[{i}]: {e}"))
        })
        .collect()
}

/// Translates and, if valid, puts the update in force; returns the ACK or NACK to send.
fn apply(s: &Shared, kind: Kind, resp: &DiscoveryResponse) -> DiscoveryRequest {
    let mut a = s.accepted.lock().unwrap_or_else(|e| e.into_inner());
    let was_ready = a.npds.is_some() && a.nphds.is_some();
    let result: Result<(), String> = (|| {
        let (policies, hosts) = match kind {
            Kind::Npds => (
                decode::<NetworkPolicy>(resp, kind)?,
                a.nphds.as_ref().map(|x| x.1.clone()).unwrap_or_default(),
            ),
            Kind::Nphds => {
                let hosts = decode::<NetworkPolicyHosts>(resp, kind)?;
                npds::ipcache(&hosts).map_err(|e| e.to_string())?;
                match &a.npds {
                    Some((_, p)) => (p.clone(), hosts),
                    None => {
                        // Nothing to enforce yet: remember the hosts for the first policy.
                        a.nphds = Some((resp.version_info.clone(), hosts));
                        return Ok(());
                    }
                }
            }
        };
        let versions = |k: Kind| match (k, &a) {
            (Kind::Npds, a) => a.npds.as_ref().map(|x| x.0.clone()),
            (Kind::Nphds, a) => a.nphds.as_ref().map(|x| x.0.clone()),
        };
        let (npds_v, nphds_v) = match kind {
            Kind::Npds => (Some(resp.version_info.clone()), versions(Kind::Nphds)),
            Kind::Nphds => (versions(Kind::Npds), Some(resp.version_info.clone())),
        };
        let summary = serde_json::json!({
            "source": "xds",
            "xds_address": s.cfg.address,
            "node_id": s.cfg.node_id,
            "npds_version": npds_v,
            "nphds_version": nphds_v,
        });
        let e = npds::build(s.pod_ip, &policies, &hosts, summary).map_err(|e| e.to_string())?;
        s.policy.store(e);
        match kind {
            Kind::Npds => a.npds = Some((resp.version_info.clone(), policies)),
            Kind::Nphds => a.nphds = Some((resp.version_info.clone(), hosts)),
        }
        Ok(())
    })();
    let last_good = match kind {
        Kind::Npds => a.npds.as_ref().map(|x| x.0.clone()),
        Kind::Nphds => a.nphds.as_ref().map(|x| x.0.clone()),
    };
    let now_ready = a.npds.is_some() && a.nphds.is_some();
    drop(a);
    let error_detail = match result {
        Ok(()) => {
            tracing::info!(type_url = kind.type_url(), version = %resp.version_info, "xDS update in force (ACK)");
            None
        }
        Err(message) => {
            s.metrics.policy_reload_failed();
            tracing::error!(type_url = kind.type_url(), version = %resp.version_info, error = %message, "xDS update rejected (NACK); last good policy stays in force");
            Some(Status {
                code: INVALID_ARGUMENT,
                message,
                details: vec![],
            })
        }
    };
    if now_ready && !was_ready {
        (s.on_ready)();
    }
    DiscoveryRequest {
        version_info: last_good.unwrap_or_default(),
        response_nonce: resp.nonce.clone(),
        type_url: kind.type_url().into(),
        error_detail,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_names_the_pod_ip() {
        assert_eq!(
            pod_ip("sidecar~10.1.2.3~deathstar-1.default~default.svc.cluster.local").unwrap(),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert!(pod_ip("membrane-agent~node-1").is_err());
        assert!(pod_ip("sidecar~not-an-ip~a.b~b.svc.cluster.local").is_err());
    }

    #[tokio::test]
    async fn an_address_and_tls_settings_that_do_not_fit_are_refused_at_start() {
        let cfg = |address: &str, tls: bool| XdsConfig {
            address: address.into(),
            node_id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            tls: tls.then(|| XdsTls {
                ca: "ca.pem".into(),
                identity: None,
                poll: Duration::from_secs(1),
            }),
        };
        for (address, tls, says) in [
            ("https://xds:15012", false, "needs --xds-ca"),
            ("http://xds:15010", true, "need an https:// address"),
        ] {
            let (_tx, rx) = watch::channel(false);
            let err = spawn(
                cfg(address, tls),
                PolicyHandle::new(crate::policy::deny_all("test")),
                Arc::new(Metrics::new()),
                Box::new(|| {}),
                rx,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{address}: {err}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cfg = XdsConfig {
            address: String::new(),
            node_id: String::new(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            tls: None,
        };
        for _ in 0..50 {
            let d0 = backoff(&cfg, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = backoff(&cfg, 3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let d30 = backoff(&cfg, 30);
            assert!(d30 >= Duration::from_millis(2500) && d30 <= Duration::from_secs(5));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(&cfg, 5)).collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
