//! The control plane's Prometheus metrics: the label sets and the registry the
//! recorder, the streams, the sources and the listeners count into.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::resource::short_name;

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
    /// `injected`, `skipped`, `not_patchable` (allowed with a warning), `denied` or
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
    /// Certificate requests on Istio's CA service (15012), by result (`issued`, or why
    /// refused: `unauthenticated`, `identity`, `bad_request`, `rate_limited`, ...).
    pub ca_requests: Family<ReasonLabel, Counter>,
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
            ca_requests: Family::default(),
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
        registry.register(
            "ca_requests",
            "Workload certificate requests (Istio's CreateCertificate), by result",
            m.ca_requests.clone(),
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

pub(super) fn label(type_url: &str) -> TypeLabel {
    TypeLabel {
        r#type: short_name(type_url).to_string(),
    }
}
