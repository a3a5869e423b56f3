//! The xDS client: subscribes to `membrane-xds` for this proxy's NPDS
//! (`cilium.NetworkPolicy`) and NPHDS (`cilium.NetworkPolicyHosts`) over two gRPC streams
//! on one connection, puts each accepted update in force atomically through
//! [`PolicyHandle`], and ACKs it, or NACKs it with the translation error and keeps the last
//! good policy. The streams reconnect together with exponential backoff and jitter; while
//! the control plane is away the last good policy stays in force, and after a reconnect
//! the new control plane's first NPDS and NPHDS go in force together (`xds/resync.rs` says
//! why). Translation itself is [`crate::policy::npds`]'s.
//!
//! Over `https://` the client speaks mTLS: it verifies the control plane's certificate
//! against `--xds-ca` and presents the workload certificate (`--xds-cert/--xds-key`). The
//! files are read for every connection and checked every `--xds-cert-poll`; when any of
//! them changes (a rotated Secret), the stream ends and reconnects with the new pair, so a
//! certificate is replaced before it expires without a restart.
//! Connecting, the TLS files and the backoff are `membrane_xds_client`'s, shared with the
//! node agent's client. With inbound capture, a third stream (ADS, `mesh.rs`) carries the
//! workload's PeerAuthentication modes (`membrane.mesh.v1.MeshTls`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use membrane_api::proto::network_policy_discovery_service_client::NetworkPolicyDiscoveryServiceClient;
use membrane_api::proto::network_policy_hosts_discovery_service_client::NetworkPolicyHostsDiscoveryServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;
use crate::policy::PolicyHandle;

mod mesh;
mod resync;

use resync::{Accepted, Session, Target};

/// NPDS and NPHDS type URLs, defined with the protos.
pub use membrane_api::type_url::{NETWORK_POLICY as NPDS_TYPE, NETWORK_POLICY_HOSTS as NPHDS_TYPE};

/// Errors starting the client.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The node id is not Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local`.
    #[error("--node-id {0:?}: expected sidecar~POD_IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local")]
    NodeId(String),
    /// The address and the TLS settings are not usable.
    #[error(transparent)]
    Client(#[from] membrane_xds_client::ClientError),
}

/// mTLS to the control plane, as every client of membrane-xds configures it.
pub use membrane_xds_client::XdsTls;

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
    /// Node metadata (string values), as Istio's agent sends its `ISTIO_META_*`.
    pub metadata: Vec<(String, String)>,
}

/// The node this proxy names itself as: its id and metadata.
fn node(cfg: &XdsConfig) -> Node {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let metadata = (!cfg.metadata.is_empty()).then(|| Struct {
        fields: cfg
            .metadata
            .iter()
            .map(|(k, v)| {
                let v = Value {
                    kind: Some(Kind::StringValue(v.clone())),
                };
                (k.clone(), v)
            })
            .collect(),
    });
    Node {
        id: cfg.node_id.clone(),
        metadata,
        ..Default::default()
    }
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

struct Shared {
    cfg: XdsConfig,
    target: Target,
    policy: PolicyHandle,
    metrics: Arc<Metrics>,
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

    fn other(self) -> Kind {
        match self {
            Kind::Npds => Kind::Nphds,
            Kind::Nphds => Kind::Npds,
        }
    }
}

/// Runs a callback once, when both the policy and the PeerAuthentication modes are in
/// force (each part may report more than once).
struct Latch {
    policy: AtomicBool,
    mesh: AtomicBool,
    fired: AtomicBool,
    then: Box<dyn Fn() + Send + Sync>,
}

impl Latch {
    fn hit(&self, part: &AtomicBool) {
        part.store(true, Ordering::SeqCst);
        if self.policy.load(Ordering::SeqCst)
            && self.mesh.load(Ordering::SeqCst)
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            (self.then)();
        }
    }
}

/// Starts the subscription on the current runtime; it runs until `shutdown` turns true.
/// `on_ready` runs after the first NPDS and NPHDS updates are in force and, with `mesh`
/// (inbound capture serves the mesh), the first PeerAuthentication result too: a sidecar
/// is not ready while it might still serve plaintext that its PeerAuthentication refuses.
pub fn spawn(
    cfg: XdsConfig,
    policy: PolicyHandle,
    metrics: Arc<Metrics>,
    mesh: Option<Arc<crate::mesh_tls::MeshTls>>,
    on_ready: Box<dyn Fn() + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, XdsError> {
    let pod_ip = pod_ip(&cfg.node_id)?;
    membrane_xds_client::check(&cfg.address, cfg.tls.as_ref())?;
    let latch = Arc::new(Latch {
        policy: AtomicBool::new(false),
        // Without inbound capture there are no modes to wait for.
        mesh: AtomicBool::new(mesh.is_none()),
        fired: AtomicBool::new(false),
        then: on_ready,
    });
    let mut tasks = Vec::new();
    if let Some(mesh) = mesh {
        let latch = latch.clone();
        let first: Box<dyn Fn() + Send + Sync> = Box::new(move || latch.hit(&latch.mesh));
        let mut stop = shutdown.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = mesh::subscribe(cfg, mesh, first) => {}
                _ = stop.wait_for(|v| *v) => {}
            }
        }));
    }
    let on_ready: Box<dyn Fn() + Send + Sync> = Box::new(move || latch.hit(&latch.policy));
    let target = Target {
        pod_ip,
        address: cfg.address.clone(),
        node_id: cfg.node_id.clone(),
    };
    let shared = Shared {
        cfg,
        target,
        policy,
        metrics,
        on_ready,
    };
    let mut stop = shutdown;
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = subscribe(shared) => {}
            _ = stop.wait_for(|v| *v) => {}
        }
    }));
    Ok(tasks)
}

async fn subscribe(s: Shared) {
    let mut accepted = Accepted::default();
    let mut attempt = 0u32;
    loop {
        match session(&s, &mut accepted).await {
            Ok(got_one) => {
                if got_one {
                    attempt = 0;
                }
                tracing::warn!("xDS streams closed; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, "xDS streams failed; last good policy stays in force")
            }
        }
        let d = membrane_xds_client::backoff(s.cfg.backoff_initial, s.cfg.backoff_max, attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(d).await;
    }
}

/// One session: a connection carrying both streams, from connect to the end of either.
/// `Ok(true)` when at least one response arrived.
async fn session(
    s: &Shared,
    accepted: &mut Accepted,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    // Read now, so a rotated pair is used by the next connection, and compared while the
    // connection lasts.
    let conn = membrane_xds_client::connect(&s.cfg.address, s.cfg.tls.as_ref()).await?;
    // Both streams on one connection: one control plane process answers both.
    let channel = conn.channel.clone();
    let open = |kind: Kind| {
        let (tx, rx) = mpsc::channel(4);
        let first = DiscoveryRequest {
            node: Some(node(&s.cfg)),
            version_info: accepted.version(kind).unwrap_or_default().to_owned(),
            type_url: kind.type_url().into(),
            ..Default::default()
        };
        tx.try_send(first).expect("a new channel has room");
        (tx, ReceiverStream::new(rx))
    };
    let (npds_tx, npds_rx) = open(Kind::Npds);
    let (nphds_tx, nphds_rx) = open(Kind::Nphds);
    let mut npds_stream = NetworkPolicyDiscoveryServiceClient::new(channel.clone())
        .stream_network_policies(npds_rx)
        .await?
        .into_inner();
    let mut nphds_stream = NetworkPolicyHostsDiscoveryServiceClient::new(channel)
        .stream_network_policy_hosts(nphds_rx)
        .await?
        .into_inner();
    tracing::info!(address = %s.cfg.address, "xDS streams open");
    let mut got_one = false;
    let rotated = conn.rotated();
    tokio::pin!(rotated);
    let mut state = Session::default();
    loop {
        let (kind, msg) = tokio::select! {
            m = npds_stream.message() => (Kind::Npds, m?),
            m = nphds_stream.message() => (Kind::Nphds, m?),
            _ = &mut rotated => {
                tracing::info!("xDS certificate files changed; reconnecting with them");
                break;
            }
        };
        let Some(resp) = msg else {
            tracing::warn!(
                type_url = kind.type_url(),
                "xDS stream ended by the control plane"
            );
            break;
        };
        got_one = true;
        let step = state.on_response(accepted, &s.target, kind, &resp);
        if let Some(e) = step.enforce {
            s.policy.store(e);
        }
        if step.rejected.is_some() {
            s.metrics.policy_reload_failed();
        }
        if step.became_ready {
            (s.on_ready)();
        }
        for (k, r) in step.replies {
            match k {
                Kind::Npds => npds_tx.send(r).await?,
                Kind::Nphds => nphds_tx.send(r).await?,
            }
        }
    }
    Ok(got_one)
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

    #[test]
    fn the_node_carries_its_metadata_as_strings() {
        use envoy_types::pb::google::protobuf::value::Kind;
        let mut cfg = XdsConfig {
            address: "http://xds:15010".into(),
            node_id: "sidecar~10.0.0.1~a.default~default.svc.cluster.local".into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            tls: None,
            metadata: Vec::new(),
        };
        assert_eq!(node(&cfg).metadata, None);
        cfg.metadata = vec![("CLUSTER_ID".into(), "Kubernetes".into())];
        let n = node(&cfg);
        assert_eq!(n.id, cfg.node_id);
        assert_eq!(
            n.metadata.unwrap().fields["CLUSTER_ID"].kind,
            Some(Kind::StringValue("Kubernetes".into()))
        );
    }

    #[test]
    fn ready_waits_for_the_policy_and_the_modes_and_fires_once() {
        use std::sync::atomic::AtomicUsize;
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let latch = Latch {
            policy: AtomicBool::new(false),
            mesh: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            then: Box::new(move || {
                f.fetch_add(1, Ordering::SeqCst);
            }),
        };
        latch.hit(&latch.policy);
        latch.hit(&latch.policy);
        assert_eq!(
            fired.load(Ordering::SeqCst),
            0,
            "the modes are not in force yet"
        );
        latch.hit(&latch.mesh);
        latch.hit(&latch.mesh);
        latch.hit(&latch.policy);
        assert_eq!(fired.load(Ordering::SeqCst), 1);
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
                memory: None,
            }),
            metadata: Vec::new(),
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
                None,
                Box::new(|| {}),
                rx,
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{address}: {err}");
        }
    }
}
