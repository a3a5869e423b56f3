//! The flight recorder and the metrics: what was sent to whom, what came
//! back, and which proxies are stale, since when and why.
//!
//! One record per proxy (node id), kept across reconnects so that history
//! survives a flapping connection, with a bounded history of events.
//!
//! Every client can make a record, so everything kept is bounded (see
//! [`Limits`]): a disconnected proxy's record expires, the number of
//! records is capped (the longest-disconnected goes first), each record
//! keeps a bounded number of events, client text is cut, and only the
//! types this server serves are recorded.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::resource::{short_name, ALL_TYPES, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::stream::{clip, Outcome, Sent};

/// What the recorder keeps at most. Worst case, with every record held by
/// a connected proxy that NACKs with the longest text: `max_nodes` ×
/// (`events_per_node` + 6 last NACKs) × (`max_text_bytes` + ~200 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records kept in all. A new proxy beyond it evicts the record
    /// disconnected longest; with none disconnected it is served but not
    /// recorded (counted).
    pub max_nodes: usize,
    /// Events kept per proxy over all its types; the oldest goes first.
    pub events_per_node: usize,
    /// Longest client text kept (NACK errors, echoed versions).
    pub max_text_bytes: usize,
    /// How long a proxy's record outlives its last stream.
    pub disconnected_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 16_384,
            events_per_node: 64,
            max_text_bytes: 1024,
            disconnected_ttl: Duration::from_secs(300),
        }
    }
}

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

/// Label set: why a request or connection was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A fixed short name (`unknown_type`, `too_many_names`, …).
    pub reason: String,
}

/// Label set: one of the control plane's listeners.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `webhook` or `debug`.
    pub listener: String,
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
    /// xDS requests refused (the stream is closed), by reason.
    pub refused_requests: Family<ReasonLabel, Counter>,
    /// Proxy records held by the flight recorder.
    pub recorder_nodes: Gauge,
    /// Proxy records dropped: expired, evicted for room, or never made
    /// because every record belonged to a connected proxy.
    pub recorder_evictions: Family<ReasonLabel, Counter>,
    /// Connections closed at once because the listener was at its cap.
    pub connections_refused: Family<ListenerLabel, Counter>,
    /// Connections closed for sending a request head or body too slowly.
    pub connections_timed_out: Family<ListenerLabel, Counter>,
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
            refused_requests: Family::default(),
            recorder_nodes: Gauge::default(),
            recorder_evictions: Family::default(),
            connections_refused: Family::default(),
            connections_timed_out: Family::default(),
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
            "refused_requests",
            "xDS requests refused (stream closed), by reason",
            m.refused_requests.clone(),
        );
        registry.register(
            "recorder_nodes",
            "Proxy records held by the flight recorder",
            m.recorder_nodes.clone(),
        );
        registry.register(
            "recorder_evictions",
            "Proxy records dropped by the flight recorder, by reason",
            m.recorder_evictions.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener was at its cap",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed for a request head or body sent too slowly",
            m.connections_timed_out.clone(),
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
        /// The proxy's error, cut to [`Limits::max_text_bytes`].
        error: String,
        /// Epoch ms.
        at_ms: u64,
    },
}

impl Event {
    fn at_ms(&self) -> u64 {
        match self {
            Event::Sent { at_ms, .. } | Event::Ack { at_ms, .. } | Event::Nack { at_ms, .. } => {
                *at_ms
            }
        }
    }
}

/// A NACK kept for the staleness report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NackRecord {
    /// Version rejected.
    pub version: String,
    /// Nonce.
    pub nonce: String,
    /// The proxy's error, cut to [`Limits::max_text_bytes`].
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
    /// History, oldest first (bounded per proxy over all types).
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
    /// Since when no stream is open (the key of [`Records::idle`]).
    #[serde(skip)]
    idle_since: Option<Instant>,
    /// Events in all `types`' histories.
    #[serde(skip)]
    events: usize,
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

/// The records, and the disconnected ones ordered by when they became so.
#[derive(Debug, Default)]
struct Records {
    by_node: BTreeMap<String, ProxyRecord>,
    idle: BTreeSet<(Instant, String)>,
}

/// The flight recorder.
#[derive(Debug, Default)]
pub struct Recorder {
    records: Mutex<Records>,
    limits: Limits,
    /// Metrics updated alongside.
    pub metrics: Metrics,
}

fn known(type_url: &str) -> bool {
    ALL_TYPES.contains(&type_url)
}

impl Recorder {
    /// An empty recorder with fresh metrics and the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty recorder keeping at most `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Recorder {
            limits,
            ..Self::default()
        }
    }

    /// What this recorder keeps at most.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut r, Instant::now());
        r
    }

    /// Drops the records disconnected for longer than the TTL.
    fn expire(&self, r: &mut Records, now: Instant) {
        while let Some((since, node)) = r.idle.first().cloned() {
            if now.saturating_duration_since(since) < self.limits.disconnected_ttl {
                break;
            }
            r.idle.pop_first();
            r.by_node.remove(&node);
            self.evicted("expired");
        }
        self.metrics.recorder_nodes.set(r.by_node.len() as i64);
    }

    fn evicted(&self, reason: &str) {
        self.metrics
            .recorder_evictions
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Runs `f` on `node`'s record, made if needed and if there is room;
    /// `None` when there is none (every record is a connected proxy's).
    fn with<R>(&self, node: &str, f: impl FnOnce(&mut ProxyRecord) -> R) -> Option<R> {
        self.with_record(node, true, f)
    }

    fn with_record<R>(
        &self,
        node: &str,
        create: bool,
        f: impl FnOnce(&mut ProxyRecord) -> R,
    ) -> Option<R> {
        let mut guard = self.lock();
        let r = &mut *guard;
        let now = Instant::now();
        if !r.by_node.contains_key(node) {
            if !create {
                return None;
            }
            if r.by_node.len() >= self.limits.max_nodes {
                let Some((_, oldest)) = r.idle.pop_first() else {
                    self.evicted("full");
                    return None;
                };
                r.by_node.remove(&oldest);
                self.evicted("capacity");
            }
            r.by_node.insert(
                node.to_string(),
                ProxyRecord {
                    node_id: node.to_string(),
                    connected: false,
                    connections: BTreeMap::new(),
                    watches: BTreeMap::new(),
                    types: BTreeMap::new(),
                    connected_at: None,
                    idle_since: Some(now),
                    events: 0,
                },
            );
            r.idle.insert((now, node.to_string()));
            self.metrics.recorder_nodes.set(r.by_node.len() as i64);
        }
        let rec = r.by_node.get_mut(node).expect("made above");
        let out = f(rec);
        // Keep the idle index in step with the record's connections.
        match (rec.connections.is_empty(), rec.idle_since) {
            (true, None) => {
                rec.idle_since = Some(now);
                r.idle.insert((now, node.to_string()));
            }
            (false, Some(since)) => {
                rec.idle_since = None;
                r.idle.remove(&(since, node.to_string()));
            }
            _ => {}
        }
        Some(out)
    }

    /// Expires records as of `now` (tests; otherwise every access does).
    pub fn expire_at(&self, now: Instant) {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.expire(&mut r, now);
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
        self.with_record(node, false, |r| {
            r.connections.remove(connection_id);
            r.recompute();
        });
    }

    /// The subscriptions of stream `connection_id` of `node` are now `watches`.
    pub fn watches(&self, node: &str, connection_id: &str, watches: BTreeMap<String, Vec<String>>) {
        let watches = watches.into_iter().filter(|(t, _)| known(t)).collect();
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
            for (t, v) in versions.iter().filter(|(t, _)| known(t)) {
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
        if !known(&s.type_url) {
            return;
        }
        self.metrics.pushes.get_or_create(&label(&s.type_url)).inc();
        let now = SystemTime::now();
        let cap = self.limits.events_per_node;
        self.with(node, |r| {
            let tr = r.types.entry(s.type_url.clone()).or_default();
            tr.sent_version = Some(s.version.clone());
            tr.sent_nonce = Some(s.nonce.clone());
            tr.sent_at = Some(now);
            tr.sent_at_ms = Some(millis(now));
            push(
                r,
                &s.type_url,
                cap,
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
        // The stream already cut the text to the same limit and marked it;
        // the room for its marker keeps a second cut from cutting the cut.
        let cap = self.limits.events_per_node;
        let text = self.limits.max_text_bytes + 64;
        match o {
            Outcome::Ack { type_url, .. }
            | Outcome::Nack { type_url, .. }
            | Outcome::Stale { type_url, .. }
                if !known(type_url) => {}
            Outcome::Ack {
                type_url,
                version,
                nonce,
            } => {
                let version = &clip(version, text);
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
                        r,
                        type_url,
                        cap,
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
                let error = &clip(error, text);
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
                        r,
                        type_url,
                        cap,
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
        self.lock().by_node.values().cloned().collect()
    }

    /// One proxy's record.
    pub fn proxy(&self, node: &str) -> Option<ProxyRecord> {
        self.lock().by_node.get(node).cloned()
    }

    /// Which proxies are stale (latest version not ACKed), since when, why.
    pub fn stale(&self) -> Vec<Staleness> {
        let p = self.lock();
        let mut out = Vec::new();
        for rec in p.by_node.values() {
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
        let p = self.lock();
        p.by_node
            .values()
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
        let p = self.lock();
        p.by_node
            .values()
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

/// Appends to `type_url`'s history; at the proxy's cap the oldest event
/// of any type goes.
fn push(r: &mut ProxyRecord, type_url: &str, cap: usize, e: Event) {
    while r.events >= cap.max(1) {
        let oldest = r
            .types
            .values_mut()
            .filter(|t| !t.history.is_empty())
            .min_by_key(|t| t.history.front().map(Event::at_ms));
        match oldest {
            Some(t) => {
                t.history.pop_front();
                r.events -= 1;
            }
            None => break,
        }
    }
    if let Some(tr) = r.types.get_mut(type_url) {
        tr.history.push_back(e);
        r.events += 1;
    }
}

#[cfg(test)]
mod tests;
