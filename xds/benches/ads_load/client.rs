//! One simulated sidecar of the load generator: its own HTTP/2 connection and one
//! ADS stream (state of the world or delta) subscribed to NPDS and NPHDS, ACKing
//! every response at once as Envoy does once it has applied it, and recording when
//! it ACKed which version.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use membrane_xds::proto::NetworkPolicyHosts;
use membrane_xds::resource::{NETWORK_POLICY, NETWORK_POLICY_HOSTS};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// The two protocol variants a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Sotw,
    Delta,
}

/// What one client has ACKed, read by the coordinator.
#[derive(Debug, Default)]
pub struct Slot {
    /// NPDS versions ACKed since the coordinator last cleared the list, with the time.
    pub npds: Vec<(String, Instant)>,
    /// The NPDS version last ACKed.
    pub npds_version: String,
    /// The NPHDS version last ACKed and when.
    pub nphds: Option<(String, Instant)>,
    /// Responses received, both types.
    pub responses: u64,
    /// Why the stream ended, if it did.
    pub ended: Option<String>,
}

/// A churn address appearing in or leaving a probe client's NPHDS, at its ACK.
#[derive(Debug, Clone)]
pub struct HostEvent {
    pub ip: String,
    pub added: bool,
    pub at: Instant,
}

/// Shared with the coordinator.
#[derive(Debug, Default)]
pub struct Shared {
    pub slots: Vec<Mutex<Slot>>,
    /// Host events seen by the probe clients (those that decode NPHDS).
    pub host_events: Mutex<Vec<HostEvent>>,
}

/// Churn pods' addresses start with this; probes track only these.
pub const CHURN_PREFIX: &str = "10.200.";

fn churn_ips(resources: &[Any]) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|a| NetworkPolicyHosts::decode(a.value.as_slice()).ok())
        .flat_map(|h| h.host_addresses)
        .filter(|a| a.starts_with(CHURN_PREFIX))
        .map(|a| a.trim_end_matches("/32").to_string())
        .collect()
}

fn record_hosts(shared: &Shared, old: &mut BTreeSet<String>, new: BTreeSet<String>, at: Instant) {
    let mut ev = shared.host_events.lock().unwrap();
    for ip in new.difference(old) {
        ev.push(HostEvent {
            ip: ip.clone(),
            added: true,
            at,
        });
    }
    for ip in old.difference(&new) {
        ev.push(HostEvent {
            ip: ip.clone(),
            added: false,
            at,
        });
    }
    *old = new;
}

fn record(shared: &Shared, idx: usize, type_url: &str, version: &str, at: Instant) {
    let mut s = shared.slots[idx].lock().unwrap();
    s.responses += 1;
    if type_url == NETWORK_POLICY {
        s.npds.push((version.to_string(), at));
        s.npds_version = version.to_string();
    } else {
        s.nphds = Some((version.to_string(), at));
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        ..Default::default()
    })
}

/// Connects client `idx` with `node_id` and runs it until the stream ends. `probe`
/// clients also decode NPHDS to report churn addresses.
pub async fn run(
    addr: String,
    idx: usize,
    node_id: String,
    proto: Proto,
    probe: bool,
    shared: Arc<Shared>,
    connected: tokio::sync::oneshot::Sender<()>,
) {
    let result = async {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let _ = connected.send(());
        match proto {
            Proto::Sotw => sotw(&mut client, idx, node_id, probe, &shared).await,
            Proto::Delta => delta(&mut client, idx, node_id, probe, &shared).await,
        }
    }
    .await;
    let why = match result {
        Ok(()) => "closed by the server".to_string(),
        Err(e) => e.to_string(),
    };
    shared.slots[idx].lock().unwrap().ended = Some(why);
}

type Error = Box<dyn std::error::Error + Send + Sync>;
type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

async fn sotw(
    c: &mut Client,
    idx: usize,
    node_id: String,
    probe: bool,
    shared: &Shared,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel(4);
    for (i, t) in [NETWORK_POLICY, NETWORK_POLICY_HOSTS]
        .into_iter()
        .enumerate()
    {
        tx.send(DiscoveryRequest {
            node: if i == 0 { node(&node_id) } else { None },
            type_url: t.into(),
            ..Default::default()
        })
        .await?;
    }
    let mut stream = c
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut hosts = BTreeSet::new();
    while let Some(resp) = stream.message().await? {
        if probe && resp.type_url == NETWORK_POLICY_HOSTS {
            record_hosts(
                shared,
                &mut hosts,
                churn_ips(&resp.resources),
                Instant::now(),
            );
        }
        // ACK as Envoy does: the version and nonce of what was applied.
        tx.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await?;
        record(
            shared,
            idx,
            &resp.type_url,
            &resp.version_info,
            Instant::now(),
        );
    }
    Ok(())
}

async fn delta(
    c: &mut Client,
    idx: usize,
    node_id: String,
    probe: bool,
    shared: &Shared,
) -> Result<(), Error> {
    let (tx, rx) = mpsc::channel(4);
    for (i, t) in [NETWORK_POLICY, NETWORK_POLICY_HOSTS]
        .into_iter()
        .enumerate()
    {
        tx.send(DeltaDiscoveryRequest {
            node: if i == 0 { node(&node_id) } else { None },
            type_url: t.into(),
            ..Default::default()
        })
        .await?;
    }
    let mut stream = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Probe clients keep what they hold (identity → churn addresses).
    let mut held: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut hosts = BTreeSet::new();
    while let Some(resp) = stream.message().await? {
        if probe && resp.type_url == NETWORK_POLICY_HOSTS {
            for r in &resp.resources {
                let ips = r
                    .resource
                    .as_ref()
                    .map(|a| churn_ips(std::slice::from_ref(a)))
                    .unwrap_or_default();
                held.insert(r.name.clone(), ips);
            }
            for n in &resp.removed_resources {
                held.remove(n);
            }
            let now: BTreeSet<String> = held.values().flatten().cloned().collect();
            record_hosts(shared, &mut hosts, now, Instant::now());
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await?;
        record(
            shared,
            idx,
            &resp.type_url,
            &resp.system_version_info,
            Instant::now(),
        );
    }
    Ok(())
}
