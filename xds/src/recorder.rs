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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::resource::ALL_TYPES;
use crate::stream::{clip, Outcome, Sent};

mod metrics;
mod records;
mod views;

use metrics::label;
pub use metrics::{
    AuthLabel, InjectLabel, ListenerLabel, Metrics, ReasonLabel, SourceLabel, TypeLabel,
};
pub use records::{
    millis, ConnRecord, Event, NackRecord, ProxyRecord, SmallMap, Staleness, TypeRecord,
};
pub use views::{go_time, CLUSTER_ID, DEBUG_SYNCZ, ISTIO_VERSION};

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
                    connections: SmallMap::new(),
                    watches: SmallMap::new(),
                    types: SmallMap::new(),
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
                    watches: SmallMap::new(),
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
    pub fn watches(
        &self,
        node: &str,
        connection_id: &str,
        watches: impl IntoIterator<Item = (String, Vec<String>)>,
    ) {
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
                let tr = r.types.or_default(t);
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
            let tr = r.types.or_default(&s.type_url);
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
                    resources: s.resources,
                    removed: s.removed,
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
                    let tr = r.types.or_default(type_url);
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
                    let tr = r.types.or_default(type_url);
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
