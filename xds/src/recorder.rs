//! The flight recorder and the metrics: what was sent to whom, what came
//! back, and which proxies are stale, since when and why.
//!
//! One record per proxy (node id), kept across reconnects so that history
//! survives a flapping connection; per type a bounded history of events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::resource::{short_name, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::stream::{Outcome, Sent};

/// How many events per proxy and type the recorder keeps.
pub const HISTORY: usize = 64;

/// Label set: the xDS type, short name (`lds`, `npds`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// Short type name.
    pub r#type: String,
}

/// Label set: a source file kind of error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Source name (`dir`).
    pub source: String,
}

/// Label set: what the injection webhook did with one request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectLabel {
    /// `injected`, `skipped`, `not_patchable` (allowed with a warning) or
    /// `rejected` (HTTP 4xx: malformed input).
    pub result: String,
}

/// Label set: why an mTLS xDS client was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    /// [`crate::auth::AuthError::reason`].
    pub reason: String,
}

/// The control plane's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Responses sent.
    pub pushes: Family<TypeLabel, Counter>,
    /// Responses ACKed.
    pub acks: Family<TypeLabel, Counter>,
    /// Responses NACKed.
    pub nacks: Family<TypeLabel, Counter>,
    /// Snapshot built → ACKed by the proxy.
    pub convergence: Family<TypeLabel, Histogram>,
    /// Response sent → ACKed.
    pub time_to_ack: Family<TypeLabel, Histogram>,
    /// Open xDS streams.
    pub connected: Gauge,
    /// Snapshots published (content changed).
    pub snapshots: Counter,
    /// Snapshots refused by the consistency check.
    pub snapshot_errors: Counter,
    /// Source files rejected.
    pub source_errors: Family<SourceLabel, Counter>,
    /// Injection webhook requests, by result.
    pub injections: Family<InjectLabel, Counter>,
    /// Webhook certificate/key pairs that failed to load (the last good
    /// pair stays in use).
    pub webhook_cert_errors: Counter,
    /// mTLS xDS requests refused (PERMISSION_DENIED), by reason.
    pub auth_denied: Family<AuthLabel, Counter>,
    /// The registry they are registered in.
    pub registry: Registry,
}

fn histogram() -> Histogram {
    // 100 µs … ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Metrics {
    /// Registers every metric under the `membrane_xds` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("membrane_xds");
        let m = Metrics {
            pushes: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            convergence: Family::new_with_constructor(histogram),
            time_to_ack: Family::new_with_constructor(histogram),
            connected: Gauge::default(),
            snapshots: Counter::default(),
            snapshot_errors: Counter::default(),
            source_errors: Family::default(),
            injections: Family::default(),
            webhook_cert_errors: Counter::default(),
            auth_denied: Family::default(),
            registry: Registry::default(),
        };
        registry.register("pushes", "xDS responses sent", m.pushes.clone());
        registry.register("acks", "xDS responses ACKed", m.acks.clone());
        registry.register("nacks", "xDS responses NACKed", m.nacks.clone());
        registry.register(
            "convergence_seconds",
            "Time from snapshot build to the proxy's ACK",
            m.convergence.clone(),
        );
        registry.register(
            "time_to_ack_seconds",
            "Time from response sent to the proxy's ACK",
            m.time_to_ack.clone(),
        );
        registry.register("connected_streams", "Open xDS streams", m.connected.clone());
        registry.register(
            "snapshots_published",
            "Snapshots published",
            m.snapshots.clone(),
        );
        registry.register(
            "snapshot_errors",
            "Snapshots refused by the consistency check",
            m.snapshot_errors.clone(),
        );
        registry.register(
            "source_errors",
            "Source objects rejected",
            m.source_errors.clone(),
        );
        registry.register(
            "injections",
            "Sidecar-injection webhook requests, by result",
            m.injections.clone(),
        );
        registry.register(
            "webhook_cert_errors",
            "Webhook certificate/key pairs rejected (the last good pair stays)",
            m.webhook_cert_errors.clone(),
        );
        registry.register(
            "auth_denied",
            "mTLS xDS requests refused: certificate or node id not acceptable, by reason",
            m.auth_denied.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(type_url: &str) -> TypeLabel {
    TypeLabel {
        r#type: short_name(type_url).to_string(),
    }
}

/// Milliseconds since the epoch, for JSON.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// One event in a type's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// A response was sent.
    Sent {
        /// Version.
        version: String,
        /// Nonce.
        nonce: String,
        /// Resources in it.
        resources: usize,
        /// Resources removed (delta).
        removed: usize,
        /// Epoch ms.
        at_ms: u64,
    },
    /// The proxy ACKed.
    Ack {
        /// Version.
        version: String,
        /// Nonce.
        nonce: String,
        /// Epoch ms.
        at_ms: u64,
        /// Time since the response was sent, ms.
        after_ms: Option<f64>,
    },
    /// The proxy NACKed.
    Nack {
        /// Version rejected.
        version: String,
        /// Nonce.
        nonce: String,
        /// The proxy's error, verbatim.
        error: String,
        /// Epoch ms.
        at_ms: u64,
    },
}

/// A NACK kept for the staleness report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NackRecord {
    /// Version rejected.
    pub version: String,
    /// Nonce.
    pub nonce: String,
    /// The proxy's error, verbatim.
    pub error: String,
    /// Epoch ms.
    pub at_ms: u64,
}

/// Per proxy, per type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeRecord {
    /// Newest version the control plane has for this proxy.
    pub latest_version: Option<String>,
    /// When that version was built, epoch ms.
    pub latest_at_ms: Option<u64>,
    /// Last version sent.
    pub sent_version: Option<String>,
    /// Last nonce sent.
    pub sent_nonce: Option<String>,
    /// When, epoch ms.
    pub sent_at_ms: Option<u64>,
    /// Last version ACKed.
    pub acked_version: Option<String>,
    /// Nonce of the last ACKed response.
    pub acked_nonce: Option<String>,
    /// When, epoch ms.
    pub acked_at_ms: Option<u64>,
    /// The last NACK, if it is newer than the last ACK.
    pub last_nack: Option<NackRecord>,
    /// Bounded history, oldest first.
    pub history: VecDeque<Event>,
    #[serde(skip)]
    sent_at: Option<SystemTime>,
    #[serde(skip)]
    latest_at: Option<SystemTime>,
}

/// One open stream of a proxy (a proxy may hold several: ADS, or NPDS and
/// NPHDS side by side).
#[derive(Debug, Clone, Serialize)]
pub struct ConnRecord {
    /// Peer address.
    pub peer: String,
    /// When the stream opened, epoch ms.
    pub connected_at_ms: u64,
    /// Subscriptions on this stream by type URL (`*` = wildcard).
    pub watches: BTreeMap<String, Vec<String>>,
}

/// Per proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyRecord {
    /// The node id.
    pub node_id: String,
    /// Whether any stream is open.
    pub connected: bool,
    /// Open streams by connection id.
    pub connections: BTreeMap<String, ConnRecord>,
    /// Subscriptions over all open streams, by type URL.
    pub watches: BTreeMap<String, Vec<String>>,
    /// Per type URL.
    pub types: BTreeMap<String, TypeRecord>,
    #[serde(skip)]
    connected_at: Option<SystemTime>,
}

impl ProxyRecord {
    fn recompute(&mut self) {
        self.connected = !self.connections.is_empty();
        self.watches = BTreeMap::new();
        for c in self.connections.values() {
            for (t, w) in &c.watches {
                let e = self.watches.entry(t.clone()).or_default();
                e.extend(w.iter().cloned());
                e.sort();
                e.dedup();
            }
        }
    }
}

/// One line of the staleness report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Staleness {
    /// The node id.
    pub proxy: String,
    /// Type URL.
    pub type_url: String,
    /// Version the control plane wants the proxy to have.
    pub latest_version: String,
    /// Version the proxy has ACKed, if any.
    pub acked_version: Option<String>,
    /// Since when (epoch ms): the build time of the oldest version not ACKed.
    pub since_ms: u64,
    /// Why, in words.
    pub reason: String,
    /// The proxy's own error when it NACKed.
    pub nack_error: Option<String>,
}

/// The flight recorder.
#[derive(Debug, Default)]
pub struct Recorder {
    proxies: Mutex<BTreeMap<String, ProxyRecord>>,
    /// Metrics updated alongside.
    pub metrics: Metrics,
}

impl Recorder {
    /// An empty recorder with fresh metrics.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, node: &str, f: impl FnOnce(&mut ProxyRecord) -> R) -> R {
        let mut p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let rec = p.entry(node.to_string()).or_insert_with(|| ProxyRecord {
            node_id: node.to_string(),
            connected: false,
            connections: BTreeMap::new(),
            watches: BTreeMap::new(),
            types: BTreeMap::new(),
            connected_at: None,
        });
        f(rec)
    }

    /// A stream for `node` opened.
    pub fn connected(&self, node: &str, connection_id: &str, peer: &str) {
        self.metrics.connected.inc();
        self.with(node, |r| {
            let now = SystemTime::now();
            r.connected_at = Some(now);
            r.connections.insert(
                connection_id.to_string(),
                ConnRecord {
                    peer: peer.to_string(),
                    connected_at_ms: millis(now),
                    watches: BTreeMap::new(),
                },
            );
            r.recompute();
        });
    }

    /// The stream `connection_id` of `node` closed.
    pub fn disconnected(&self, node: &str, connection_id: &str) {
        self.metrics.connected.dec();
        self.with(node, |r| {
            r.connections.remove(connection_id);
            r.recompute();
        });
    }

    /// The subscriptions of stream `connection_id` of `node` are now `watches`.
    pub fn watches(&self, node: &str, connection_id: &str, watches: BTreeMap<String, Vec<String>>) {
        self.with(node, |r| {
            if let Some(c) = r.connections.get_mut(connection_id) {
                c.watches = watches;
            }
            r.recompute();
        });
    }

    /// A snapshot with these type versions became current for `node`.
    /// Convergence is timed from the later of the build and the stream's
    /// start: a proxy cannot converge before it connects.
    pub fn latest(&self, node: &str, versions: &[(String, String)], built: SystemTime) {
        self.with(node, |r| {
            let built = r.connected_at.map_or(built, |c| c.max(built));
            for (t, v) in versions {
                let tr = r.types.entry(t.clone()).or_default();
                if tr.latest_version.as_deref() != Some(v.as_str()) {
                    tr.latest_version = Some(v.clone());
                    tr.latest_at = Some(built);
                    tr.latest_at_ms = Some(millis(built));
                }
            }
        });
    }

    /// A response went out.
    pub fn sent(&self, node: &str, s: &Sent) {
        self.metrics.pushes.get_or_create(&label(&s.type_url)).inc();
        let now = SystemTime::now();
        self.with(node, |r| {
            let tr = r.types.entry(s.type_url.clone()).or_default();
            tr.sent_version = Some(s.version.clone());
            tr.sent_nonce = Some(s.nonce.clone());
            tr.sent_at = Some(now);
            tr.sent_at_ms = Some(millis(now));
            push(
                tr,
                Event::Sent {
                    version: s.version.clone(),
                    nonce: s.nonce.clone(),
                    resources: s.names.len(),
                    removed: s.removed.len(),
                    at_ms: millis(now),
                },
            );
        });
    }

    /// The proxy answered.
    pub fn outcome(&self, node: &str, o: &Outcome) {
        let now = SystemTime::now();
        match o {
            Outcome::Ack {
                type_url,
                version,
                nonce,
            } => {
                let l = label(type_url);
                self.metrics.acks.get_or_create(&l).inc();
                self.with(node, |r| {
                    let tr = r.types.entry(type_url.clone()).or_default();
                    let after = tr.sent_at.and_then(|s| now.duration_since(s).ok());
                    if let Some(d) = after {
                        self.metrics
                            .time_to_ack
                            .get_or_create(&l)
                            .observe(d.as_secs_f64());
                    }
                    if tr.latest_version.as_deref() == Some(version.as_str()) {
                        if let Some(d) = tr.latest_at.and_then(|b| now.duration_since(b).ok()) {
                            self.metrics
                                .convergence
                                .get_or_create(&l)
                                .observe(d.as_secs_f64());
                        }
                    }
                    tr.acked_version = Some(version.clone());
                    tr.acked_nonce = Some(nonce.clone());
                    tr.acked_at_ms = Some(millis(now));
                    tr.last_nack = None;
                    push(
                        tr,
                        Event::Ack {
                            version: version.clone(),
                            nonce: nonce.clone(),
                            at_ms: millis(now),
                            after_ms: after.map(|d: Duration| d.as_secs_f64() * 1000.0),
                        },
                    );
                });
            }
            Outcome::Nack {
                type_url,
                version,
                nonce,
                error,
            } => {
                self.metrics.nacks.get_or_create(&label(type_url)).inc();
                self.with(node, |r| {
                    let tr = r.types.entry(type_url.clone()).or_default();
                    tr.last_nack = Some(NackRecord {
                        version: version.clone(),
                        nonce: nonce.clone(),
                        error: error.clone(),
                        at_ms: millis(now),
                    });
                    push(
                        tr,
                        Event::Nack {
                            version: version.clone(),
                            nonce: nonce.clone(),
                            error: error.clone(),
                            at_ms: millis(now),
                        },
                    );
                });
            }
            Outcome::Stale { .. } => {}
        }
    }

    /// Every proxy's record.
    pub fn proxies(&self) -> Vec<ProxyRecord> {
        let p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        p.values().cloned().collect()
    }

    /// One proxy's record.
    pub fn proxy(&self, node: &str) -> Option<ProxyRecord> {
        let p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        p.get(node).cloned()
    }

    /// Which proxies are stale (latest version not ACKed), since when, why.
    pub fn stale(&self) -> Vec<Staleness> {
        let p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for rec in p.values() {
            for (t, tr) in &rec.types {
                let Some(latest) = &tr.latest_version else {
                    continue;
                };
                if !rec.watches.contains_key(t) {
                    continue; // never asked for this type
                }
                if tr.acked_version.as_ref() == Some(latest) {
                    continue;
                }
                let (reason, nack_error) = match (&tr.last_nack, &tr.sent_version) {
                    (Some(n), _) => (
                        format!("proxy rejected version {} (nonce {})", n.version, n.nonce),
                        Some(n.error.clone()),
                    ),
                    _ if !rec.connected => ("proxy is disconnected".to_string(), None),
                    (None, Some(v)) if v == latest => (
                        format!(
                            "version {v} sent (nonce {}), no ACK yet",
                            tr.sent_nonce.clone().unwrap_or_default()
                        ),
                        None,
                    ),
                    (None, _) => (
                        "latest version not sent yet (previous response awaiting ACK)".to_string(),
                        None,
                    ),
                };
                out.push(Staleness {
                    proxy: rec.node_id.clone(),
                    type_url: t.clone(),
                    latest_version: latest.clone(),
                    acked_version: tr.acked_version.clone(),
                    since_ms: tr.latest_at_ms.unwrap_or_default(),
                    reason,
                    nack_error,
                });
            }
        }
        out
    }

    /// Istio's `SyncStatus` list (`/debug/syncz`): nonces sent and ACKed per type.
    pub fn syncz(&self) -> Vec<serde_json::Value> {
        let p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        p.values()
            .filter(|r| r.connected)
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("cluster_id".into(), "Kubernetes".into());
                o.insert("proxy".into(), r.node_id.clone().into());
                let kind = r.node_id.split('~').next().unwrap_or_default();
                if kind == "sidecar" || kind == "router" {
                    o.insert("proxy_type".into(), kind.into());
                }
                o.insert(
                    "istio_version".into(),
                    concat!("membrane-", env!("CARGO_PKG_VERSION")).into(),
                );
                for (t, prefix) in [
                    (CLUSTER, "cluster"),
                    (LISTENER, "listener"),
                    (ROUTE, "route"),
                    (ENDPOINT, "endpoint"),
                ] {
                    if let Some(tr) = r.types.get(t) {
                        if let Some(n) = &tr.sent_nonce {
                            o.insert(format!("{prefix}_sent"), n.clone().into());
                        }
                        if let Some(n) = &tr.acked_nonce {
                            o.insert(format!("{prefix}_acked"), n.clone().into());
                        }
                    }
                }
                let mut resources = serde_json::Map::new();
                for (t, tr) in &r.types {
                    resources.insert(
                        t.clone(),
                        serde_json::json!({
                            "sent": tr.sent_nonce,
                            "acked": tr.acked_nonce,
                            "sentTime": tr.sent_at_ms,
                            "ackedTime": tr.acked_at_ms,
                        }),
                    );
                }
                o.insert("resources".into(), resources.into());
                serde_json::Value::Object(o)
            })
            .collect()
    }
}

/// The ADS debug type istiod serves and `istioctl proxy-status --xds-address`
/// reads: one `envoy.service.status.v3.ClientConfig` per connected proxy.
pub const DEBUG_SYNCZ: &str = "istio.io/debug/syncz";

impl Recorder {
    /// Every connected proxy as a `ClientConfig`, with one generic xDS config
    /// per subscribed type: SYNCED (latest version ACKed), NOT_SENT, ERROR
    /// (the proxy NACKed it) or STALE (sent, not ACKed yet).
    pub fn client_configs(&self) -> Vec<envoy_types::pb::envoy::service::status::v3::ClientConfig> {
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::service::status::v3::{
            client_config::GenericXdsConfig, ClientConfig, ConfigStatus,
        };
        let p = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        p.values()
            .filter(|r| r.connected)
            .map(|r| ClientConfig {
                node: Some(Node {
                    id: r.node_id.clone(),
                    ..Default::default()
                }),
                generic_xds_configs: r
                    .watches
                    .keys()
                    .map(|t| {
                        let tr = r.types.get(t).cloned().unwrap_or_default();
                        let status = if tr.sent_version.is_none() {
                            ConfigStatus::NotSent
                        } else if tr.last_nack.is_some() {
                            ConfigStatus::Error
                        } else if tr.acked_version.is_some()
                            && tr.acked_version == tr.latest_version
                        {
                            ConfigStatus::Synced
                        } else {
                            ConfigStatus::Stale
                        };
                        GenericXdsConfig {
                            type_url: t.clone(),
                            version_info: tr.acked_version.or(tr.sent_version).unwrap_or_default(),
                            config_status: status as i32,
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }
}

fn push(tr: &mut TypeRecord, e: Event) {
    if tr.history.len() == HISTORY {
        tr.history.pop_front();
    }
    tr.history.push_back(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::NETWORK_POLICY;

    #[test]
    fn stale_report_names_the_nack_and_clears_on_ack() {
        let r = Recorder::new();
        let node = "sidecar~10.0.0.5~a.default~default.svc.cluster.local";
        r.connected(node, "c1", "127.0.0.1:1");
        r.watches(
            node,
            "c1",
            BTreeMap::from([(NETWORK_POLICY.to_string(), vec!["*".into()])]),
        );
        r.latest(
            node,
            &[(NETWORK_POLICY.to_string(), "v1".into())],
            SystemTime::now(),
        );
        let sent = |v: &str, n: &str| Sent {
            type_url: NETWORK_POLICY.into(),
            version: v.into(),
            nonce: n.into(),
            names: vec!["10.0.0.5".into()],
            removed: vec![],
        };
        r.sent(node, &sent("v1", "1"));
        let s = r.stale();
        assert_eq!(s.len(), 1);
        assert!(s[0].reason.contains("no ACK yet"), "{}", s[0].reason);
        r.outcome(
            node,
            &Outcome::Nack {
                type_url: NETWORK_POLICY.into(),
                version: "v1".into(),
                nonce: "1".into(),
                error: "invalid regex".into(),
            },
        );
        let s = r.stale();
        assert_eq!(s[0].nack_error.as_deref(), Some("invalid regex"));
        r.latest(
            node,
            &[(NETWORK_POLICY.to_string(), "v2".into())],
            SystemTime::now(),
        );
        r.sent(node, &sent("v2", "2"));
        r.outcome(
            node,
            &Outcome::Ack {
                type_url: NETWORK_POLICY.into(),
                version: "v2".into(),
                nonce: "2".into(),
            },
        );
        assert!(r.stale().is_empty());
        let rec = r.proxy(node).unwrap();
        assert_eq!(rec.types[NETWORK_POLICY].history.len(), 4);
        let text = r.metrics.encode();
        assert!(
            text.contains("membrane_xds_nacks_total{type=\"npds\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("membrane_xds_convergence_seconds_count{type=\"npds\"} 1"),
            "{text}"
        );
    }
}
