//! Prometheus metrics (served on `/stats/prometheus`) and the counters `/stats` reads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The verdict a request got.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Verdict {
    /// Allowed by policy and forwarded.
    Allowed,
    /// Denied by policy (403 / gRPC status 7).
    Denied,
    /// Rejected before policy: malformed or unnormalizable request (400).
    Invalid,
}

/// Labels of `membrane_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Allowed, denied or invalid.
    pub verdict: Verdict,
    /// HTTP status code sent downstream.
    pub code: u16,
}

/// Why a connection on a port with TLS rules was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TlsRefusal {
    /// No (complete, valid) ClientHello or plaintext request in time.
    no_client_hello,
    /// The policy admits no rule for this peer with this SNI (or without TLS).
    denied,
    /// The rule's certificate was never usable.
    no_certificate,
    /// The TLS handshake with the client failed (e.g. a required client certificate).
    handshake_failed,
    /// Plaintext on a port that terminates TLS.
    plaintext,
    /// TLS on a port whose rules need to see inside it but do not terminate it.
    not_terminated,
    /// The rule's originating material (trusted CA) was never usable.
    no_origination,
}

/// Why the inbound capture listener refused a connection for mesh mTLS
/// (`membrane_mesh_tls_refused_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MeshRefusal {
    /// Plaintext (or TLS without a handshake) under STRICT.
    plaintext,
    /// The mTLS handshake failed: no client certificate, another root, no SPIFFE id.
    handshake_failed,
    /// No workload certificate in force yet.
    no_certificate,
    /// Nothing readable arrived within the header read timeout.
    no_client_hello,
    /// Outbound: the meshed destination's handshake failed.
    upstream_handshake_failed,
}

/// Labels of `membrane_mesh_tls_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshRefusalLabels {
    /// Why.
    pub reason: MeshRefusal,
}

/// Labels of `membrane_tls_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsRefusalLabels {
    /// Why.
    pub reason: TlsRefusal,
}

/// Which capture listener refused a connection.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CaptureListener {
    /// Inbound capture (15006).
    inbound,
    /// Outbound capture (15001).
    outbound,
}

/// Why a capture listener refused a connection.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CaptureRefusal {
    /// Outbound: nobody answered SO_ORIGINAL_DST for it, so the pod's datapath (or NAT)
    /// did not redirect it here: a client dialled the listener itself.
    no_original_destination,
    /// Outbound: the original destination is the listener itself or loopback, which
    /// capture never redirects.
    not_redirected,
    /// The original destination is one of the sidecar's own ports.
    proxy_port,
}

/// Labels of `membrane_capture_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureRefusalLabels {
    /// The listener.
    pub listener: CaptureListener,
    /// Why.
    pub reason: CaptureRefusal,
}

/// Why access-log lines were lost (`membrane_access_log_dropped_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AccessLogDrop {
    /// More than `--access-log-max-buffered` bytes were waiting to be written.
    overflow,
    /// The write failed (a full disk, a closed stdout).
    write_failed,
}

/// Labels of `membrane_access_log_dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccessLogDropLabels {
    /// Why.
    pub reason: AccessLogDrop,
}

/// Why L7 records were not sent to the agent (`membrane_l7_records_dropped_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RecordDrop {
    /// No agent was connected.
    disconnected,
    /// More than `--records-max-buffered` bytes were waiting.
    overflow,
    /// The agent connection failed with the batch.
    write_failed,
}

/// Labels of `membrane_l7_records_dropped_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordDropLabels {
    /// Why.
    pub reason: RecordDrop,
}

/// All metrics of one proxy process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histogram,
    connections_active: Gauge,
    connections_total: Counter,
    connections_rejected: Counter,
    upstream_errors: Counter,
    // Plain mirrors for Envoy-style `/stats`, which wants totals by verdict.
    allowed: AtomicU64,
    denied: AtomicU64,
    invalid: AtomicU64,
    active: AtomicI64,
    /// Requests between their head arriving and their response head leaving.
    requests_in_flight: AtomicI64,
    /// When the last request started, in ms since `epoch` (0: none yet).
    last_request_ms: AtomicU64,
    epoch: Instant,
    heap_trims: Counter,
    h2: crate::upstream::H2Counters,
    policy_reload_failures: Counter,
    tls_refused: Family<TlsRefusalLabels, Counter>,
    capture_refused: Family<CaptureRefusalLabels, Counter>,
    mesh_tls_refused: Family<MeshRefusalLabels, Counter>,
    access_log_dropped: Family<AccessLogDropLabels, Counter>,
    records_dropped: Family<RecordDropLabels, Counter>,
    records_sent: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `membrane` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("membrane");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by verdict and response code",
            requests.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            latency.clone(),
        );
        let connections_active = Gauge::default();
        registry.register(
            "downstream_connections_active",
            "Open downstream connections",
            connections_active.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "downstream_connections",
            "Accepted downstream connections",
            connections_total.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "downstream_connections_overflow",
            "Connections closed because max-connections was reached",
            connections_rejected.clone(),
        );
        let upstream_errors = Counter::default();
        registry.register(
            "upstream_errors",
            "Requests that failed upstream (502/504)",
            upstream_errors.clone(),
        );
        let policy_reload_failures = Counter::default();
        registry.register(
            "policy_reload_failures",
            "Policy updates rejected (the last good policy stays in force)",
            policy_reload_failures.clone(),
        );
        let heap_trims = Counter::default();
        registry.register(
            "heap_trims",
            "Times freed heap memory was returned to the kernel",
            heap_trims.clone(),
        );
        let h2 = crate::upstream::H2Counters::default();
        registry.register(
            "upstream_cx_overflow",
            "Requests refused (503) because every upstream HTTP/2 connection slot stayed busy",
            h2.overflows.clone(),
        );
        registry.register(
            "upstream_h2_evictions",
            "Idle upstream HTTP/2 connections closed to make room for another authority",
            h2.evictions.clone(),
        );
        registry.register(
            "upstream_h2_connections",
            "Upstream connections of the HTTP/2 clients (bounded by --upstream-h2-max-connections)",
            h2.open.clone(),
        );
        let tls_refused = Family::<TlsRefusalLabels, Counter>::default();
        registry.register(
            "tls_refused",
            "Connections refused on ports with TLS rules, by reason",
            tls_refused.clone(),
        );
        let capture_refused = Family::<CaptureRefusalLabels, Counter>::default();
        registry.register(
            "capture_refused",
            "Connections the capture listeners closed unforwarded, by listener and reason",
            capture_refused.clone(),
        );
        let mesh_tls_refused = Family::<MeshRefusalLabels, Counter>::default();
        registry.register(
            "mesh_tls_refused",
            "Connections refused for Istio mutual TLS, by reason",
            mesh_tls_refused.clone(),
        );
        let access_log_dropped = Family::<AccessLogDropLabels, Counter>::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines lost, by reason (the request path never waits for the writer)",
            access_log_dropped.clone(),
        );
        let records_dropped = Family::<RecordDropLabels, Counter>::default();
        registry.register(
            "l7_records_dropped",
            "L7 records not sent to the node agent, by reason (the request path never waits)",
            records_dropped.clone(),
        );
        let records_sent = Counter::default();
        registry.register(
            "l7_records_sent",
            "L7 records sent to the node agent",
            records_sent.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            connections_active,
            connections_total,
            connections_rejected,
            upstream_errors,
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            active: AtomicI64::new(0),
            requests_in_flight: AtomicI64::new(0),
            last_request_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            heap_trims,
            h2,
            policy_reload_failures,
            tls_refused,
            capture_refused,
            mesh_tls_refused,
            access_log_dropped,
            records_dropped,
            records_sent,
        }
    }

    /// The counters the reporter to the node agent increments.
    pub fn record_counters(&self) -> crate::records::Counters {
        let get = |reason| {
            self.records_dropped
                .get_or_create(&RecordDropLabels { reason })
                .clone()
        };
        crate::records::Counters {
            disconnected: get(RecordDrop::disconnected),
            overflow: get(RecordDrop::overflow),
            write_failed: get(RecordDrop::write_failed),
            sent: self.records_sent.clone(),
        }
    }

    /// The counters the access log's sink increments when it loses lines.
    pub fn access_log_drops(&self) -> crate::access_log::Drops {
        let get = |reason| {
            self.access_log_dropped
                .get_or_create(&AccessLogDropLabels { reason })
                .clone()
        };
        crate::access_log::Drops {
            overflow: get(AccessLogDrop::overflow),
            write_failed: get(AccessLogDrop::write_failed),
        }
    }

    /// A connection was refused for mesh mTLS.
    pub fn mesh_tls_refused(&self, reason: MeshRefusal) {
        self.mesh_tls_refused
            .get_or_create(&MeshRefusalLabels { reason })
            .inc();
    }

    /// A capture listener closed a connection without forwarding it.
    pub fn capture_refused(&self, listener: CaptureListener, reason: CaptureRefusal) {
        self.capture_refused
            .get_or_create(&CaptureRefusalLabels { listener, reason })
            .inc();
    }

    /// A connection on a port with TLS rules was refused.
    pub fn tls_refused(&self, reason: TlsRefusal) {
        self.tls_refused
            .get_or_create(&TlsRefusalLabels { reason })
            .inc();
    }

    /// Records a finished request (response head sent).
    pub fn request(&self, verdict: Verdict, code: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { verdict, code })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
        match verdict {
            Verdict::Allowed => &self.allowed,
            Verdict::Denied => &self.denied,
            Verdict::Invalid => &self.invalid,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A request head arrived at `now`; the request is in flight until
    /// [`Metrics::request_ended`].
    pub fn request_started(&self, now: Instant) {
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        // +1 so that a request in the first millisecond is not "none yet".
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    /// A request's response head left (or it was answered locally).
    pub fn request_ended(&self) {
        self.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// How long the proxy has been without traffic: `None` while a request is in flight,
    /// else the time since the last request started (since start-up when none has).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.requests_in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(
            self.last_request_ms
                .load(Ordering::Relaxed)
                .saturating_sub(1),
        );
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    /// The metrics the upstream HTTP/2 connection bound updates.
    pub fn h2_limit_counters(&self) -> crate::upstream::H2Counters {
        self.h2.clone()
    }

    /// Freed heap memory was returned to the kernel.
    pub fn heap_trimmed(&self) {
        self.heap_trims.inc();
    }

    /// A downstream connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_total.inc();
        self.connections_active.inc();
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A downstream connection closed.
    pub fn connection_closed(&self) {
        self.connections_active.dec();
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection was refused by the connection limit.
    pub fn connection_overflow(&self) {
        self.connections_rejected.inc();
    }

    /// The upstream could not be reached or failed mid-request.
    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    /// A policy update was rejected.
    pub fn policy_reload_failed(&self) {
        self.policy_reload_failures.inc();
    }

    /// Open downstream connections now.
    pub fn active_connections(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Envoy `/stats` text format: `name: value` lines, sorted.
    pub fn encode_envoy_stats(&self) -> String {
        let rows = [
            (
                "http.inbound.downstream_cx_active",
                self.active.load(Ordering::Relaxed).to_string(),
            ),
            (
                "http.inbound.downstream_rq_active",
                self.requests_in_flight.load(Ordering::Relaxed).to_string(),
            ),
            (
                "http.inbound.downstream_cx_total",
                self.connections_total.get().to_string(),
            ),
            (
                "http.inbound.downstream_cx_overflow",
                self.connections_rejected.get().to_string(),
            ),
            (
                "http.inbound.rbac.allowed",
                self.allowed.load(Ordering::Relaxed).to_string(),
            ),
            (
                "http.inbound.rbac.denied",
                self.denied.load(Ordering::Relaxed).to_string(),
            ),
            (
                "http.inbound.downstream_rq_invalid",
                self.invalid.load(Ordering::Relaxed).to_string(),
            ),
            (
                "cluster.inbound.upstream_rq_error",
                self.upstream_errors.get().to_string(),
            ),
            (
                "cluster.inbound.upstream_cx_overflow",
                self.h2.overflows.get().to_string(),
            ),
            (
                "membrane.upstream_h2_evictions",
                self.h2.evictions.get().to_string(),
            ),
            (
                "membrane.upstream_h2_connections",
                self.h2.open.get().to_string(),
            ),
            ("membrane.heap_trims", self.heap_trims.get().to_string()),
            (
                "membrane.policy_reload_failures",
                self.policy_reload_failures.get().to_string(),
            ),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(&v);
            out.push('\n');
        }
        out
    }
}
