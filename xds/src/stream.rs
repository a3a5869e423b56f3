//! The per-stream xDS protocol state machine, state of the world and delta.
//!
//! Pure: no I/O, no clock, no tasks. The server feeds it requests and
//! snapshots and sends whatever responses it returns; the [`Outcome`]s it
//! reports (ACK, NACK, stale request) go to the flight recorder.
//!
//! Protocol rules implemented (as Envoy's xDS protocol document defines them):
//! - per type URL: a version and a nonce per response; a request whose
//!   `response_nonce` is the last nonce sent ACKs (no `error_detail`) or
//!   NACKs (with `error_detail`) that response; a request with an older nonce
//!   is stale and ignored;
//! - at most one response per type is in flight: a newer snapshot is sent
//!   once the previous response is ACKed or NACKed;
//! - a NACKed version is never resent; the next different snapshot is;
//! - subscriptions: the first request with no names (or `*`) is a wildcard;
//!   named subscriptions get exactly the named resources that exist;
//! - removal: SotW responses are complete for the subscription (absence is
//!   removal); delta responses list `removed_resources` explicitly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use thiserror::Error;

use crate::resource::ALL_TYPES;
use crate::snapshot::Snapshot;

/// What one stream may make the server hold. Every field is something a
/// client chooses; without a bound one stream could make the server keep
/// as much as it cares to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Resource names a stream may subscribe to per type (delta
    /// subscriptions accumulate across requests).
    pub max_names_per_type: usize,
    /// Longest client text kept or logged (NACK `error_detail`, echoed
    /// versions); the rest is cut with a marker saying how much.
    pub max_text_bytes: usize,
    /// Longest `node.id` accepted (Istio's ids are a few hundred bytes).
    pub max_node_id_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_names_per_type: 65_536,
            max_text_bytes: 1024,
            max_node_id_bytes: 1024,
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with a
/// marker naming how many bytes were cut; unchanged when it fits.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} more bytes cut]", &text[..end], text.len() - end)
}

/// Refuses a `node.id` longer than the limit (it keys the flight recorder
/// and appears in every log line of the stream).
pub fn check_node_id(id: &str, limits: &StreamLimits) -> Result<(), StreamError> {
    if id.len() > limits.max_node_id_bytes {
        return Err(StreamError::NodeIdTooLong {
            len: id.len(),
            max: limits.max_node_id_bytes,
        });
    }
    Ok(())
}

/// A request the state machine refuses; the stream is closed with it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    /// ADS requests must say which type they are about.
    #[error("request without type_url on an aggregated stream")]
    MissingTypeUrl,
    /// Only the types the service serves may be requested.
    #[error("type {found:?} is not served on this stream (expected {expected:?})")]
    WrongType {
        /// The type requested.
        found: String,
        /// The type the service serves.
        expected: String,
    },
    /// An aggregated stream asked for a type this server does not serve.
    /// Closing the stream (as Cilium's xDS server does) rather than
    /// ignoring it tells a misconfigured client what is wrong, and nothing
    /// is kept for the type.
    #[error("type {type_url:?} is not served; served types: {served}")]
    UnknownType {
        /// The type requested, cut to a readable length.
        type_url: String,
        /// The types this server serves.
        served: String,
    },
    /// A subscription named more resources than the limit.
    #[error("subscription to {type_url} names more than {max} resources")]
    TooManyNames {
        /// Type URL.
        type_url: String,
        /// The limit.
        max: usize,
    },
    /// The node id is longer than the limit.
    #[error("node.id is {len} bytes, longer than the {max} allowed")]
    NodeIdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl StreamError {
    /// A short, fixed name for the refusal (a metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            StreamError::MissingTypeUrl => "missing_type_url",
            StreamError::WrongType { .. } => "wrong_type",
            StreamError::UnknownType { .. } => "unknown_type",
            StreamError::TooManyNames { .. } => "too_many_names",
            StreamError::NodeIdTooLong { .. } => "node_id_too_long",
        }
    }
}

/// What a client subscribed to, per type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Everything of the type.
    Wildcard,
    /// Only these names (possibly none).
    Names(BTreeSet<String>),
}

impl Subscription {
    fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(n) => n.contains(name),
        }
    }

    /// The names, or `["*"]` for a wildcard (debug output).
    pub fn describe(&self) -> Vec<String> {
        match self {
            Subscription::Wildcard => vec!["*".to_string()],
            Subscription::Names(n) => n.iter().cloned().collect(),
        }
    }
}

/// What happened on a request, for the flight recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client accepted `version` (response `nonce`).
    Ack {
        /// Type URL.
        type_url: String,
        /// Version accepted.
        version: String,
        /// Nonce of the accepted response.
        nonce: String,
    },
    /// The client rejected the response with `nonce`, which carried `version`.
    Nack {
        /// Type URL.
        type_url: String,
        /// Version rejected.
        version: String,
        /// Nonce of the rejected response.
        nonce: String,
        /// The client's error message, cut to
        /// [`StreamLimits::max_text_bytes`].
        error: String,
    },
    /// A request answering an older nonce; ignored.
    Stale {
        /// Type URL.
        type_url: String,
        /// The outdated nonce.
        nonce: String,
    },
}

/// A response the state machine wants sent, with what the recorder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Type URL.
    pub type_url: String,
    /// Version sent (SotW `version_info`, delta `system_version_info`).
    pub version: String,
    /// Nonce of the response.
    pub nonce: String,
    /// Names of the resources sent.
    pub names: Vec<String>,
    /// Names removed (delta only).
    pub removed: Vec<String>,
}

/// The result of one input to the state machine.
#[derive(Debug, Default)]
pub struct Step<R> {
    /// What the request meant.
    pub outcomes: Vec<Outcome>,
    /// Responses to send, in order.
    pub responses: Vec<(Sent, R)>,
}

#[derive(Debug, Clone)]
struct SotwType {
    subscription: Subscription,
    /// Version, nonce and names of the last response sent.
    sent: Option<(String, String, BTreeSet<String>)>,
    in_flight: bool,
    acked: Option<String>,
    nacked: Option<String>,
    /// The subscription changed since the last response.
    dirty: bool,
}

/// State of one SotW stream (ADS or a single-type service such as NPDS).
#[derive(Debug)]
pub struct SotwStream {
    /// The type a single-type service serves; `None` for ADS.
    only_type: Option<String>,
    limits: StreamLimits,
    nonce: u64,
    types: BTreeMap<String, SotwType>,
    snapshot: Option<Arc<Snapshot>>,
}

/// Per-type state exposed for debug output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatus {
    /// What the client subscribed to.
    pub subscription: Subscription,
    /// Last version sent.
    pub sent_version: Option<String>,
    /// Last nonce sent.
    pub sent_nonce: Option<String>,
    /// Last version ACKed.
    pub acked_version: Option<String>,
    /// Last version NACKed.
    pub nacked_version: Option<String>,
}

impl SotwStream {
    /// A stream for ADS (`None`) or for a single-type service.
    pub fn new(only_type: Option<&str>) -> Self {
        SotwStream {
            only_type: only_type.map(str::to_string),
            limits: StreamLimits::default(),
            nonce: 0,
            types: BTreeMap::new(),
            snapshot: None,
        }
    }

    /// The same stream with these limits.
    pub fn with_limits(mut self, limits: StreamLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Per-type status, for `/debug/adsz`.
    pub fn status(&self) -> BTreeMap<String, TypeStatus> {
        self.types
            .iter()
            .map(|(t, s)| {
                (
                    t.clone(),
                    TypeStatus {
                        subscription: s.subscription.clone(),
                        sent_version: s.sent.as_ref().map(|x| x.0.clone()),
                        sent_nonce: s.sent.as_ref().map(|x| x.1.clone()),
                        acked_version: s.acked.clone(),
                        nacked_version: s.nacked.clone(),
                    },
                )
            })
            .collect()
    }

    /// Handles one request from the client.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
    ) -> Result<Step<DiscoveryResponse>, StreamError> {
        let t = resolve_type(&self.only_type, &req.type_url)?;
        let max = self.limits.max_names_per_type;
        if req.resource_names.len() > max {
            return Err(StreamError::TooManyNames { type_url: t, max });
        }
        let text = self.limits.max_text_bytes;
        let mut step = Step::default();
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t.clone()).or_insert_with(|| SotwType {
            subscription: Subscription::Names(BTreeSet::new()),
            sent: None,
            in_flight: false,
            acked: None,
            nacked: None,
            dirty: true,
        });
        if !req.response_nonce.is_empty() {
            match &st.sent {
                Some((version, nonce, _)) if *nonce == req.response_nonce => {
                    st.in_flight = false;
                    match &req.error_detail {
                        Some(status) => {
                            st.nacked = Some(version.clone());
                            step.outcomes.push(Outcome::Nack {
                                type_url: t.clone(),
                                version: version.clone(),
                                nonce: nonce.clone(),
                                error: clip(&status.message, text),
                            });
                        }
                        None => {
                            let echoed = clip(&req.version_info, text);
                            st.acked = Some(echoed.clone());
                            step.outcomes.push(Outcome::Ack {
                                type_url: t.clone(),
                                version: echoed,
                                nonce: nonce.clone(),
                            });
                        }
                    }
                }
                _ => {
                    step.outcomes.push(Outcome::Stale {
                        type_url: t,
                        nonce: clip(&req.response_nonce, text),
                    });
                    return Ok(step);
                }
            }
        }
        let names = &req.resource_names;
        let sub = if names.iter().any(|n| n == "*")
            || (names.is_empty() && (first || st.subscription == Subscription::Wildcard))
        {
            Subscription::Wildcard
        } else {
            Subscription::Names(names.iter().cloned().collect())
        };
        if sub != st.subscription {
            st.subscription = sub;
            st.dirty = true;
        }
        if let Some(r) = self.respond(&t) {
            step.responses.push(r);
        }
        Ok(step)
    }

    /// Handles a new snapshot for this stream's node.
    pub fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<DiscoveryResponse> {
        self.snapshot = Some(snap);
        let mut step = Step::default();
        let types: Vec<String> = self.types.keys().cloned().collect();
        for t in types {
            if let Some(r) = self.respond(&t) {
                step.responses.push(r);
            }
        }
        step
    }

    fn respond(&mut self, t: &str) -> Option<(Sent, DiscoveryResponse)> {
        let snap = self.snapshot.clone()?;
        let st = self.types.get_mut(t)?;
        if st.in_flight {
            return None;
        }
        let version = snap.type_version(t);
        let unchanged = st.sent.as_ref().is_some_and(|s| s.0 == version);
        if unchanged && !st.dirty {
            return None;
        }
        if !st.dirty && st.nacked.as_deref() == Some(version.as_str()) {
            return None;
        }
        let mut names = BTreeSet::new();
        let mut resources = Vec::new();
        if let Some(set) = snap.resources(t) {
            for (name, r) in &set.items {
                if st.subscription.wants(name) {
                    names.insert(name.clone());
                    resources.push((*r.body).clone());
                }
            }
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        st.sent = Some((version.clone(), nonce.clone(), names.clone()));
        st.in_flight = true;
        st.dirty = false;
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources,
            type_url: t.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        Some((
            Sent {
                type_url: t.to_string(),
                version,
                nonce,
                names: names.into_iter().collect(),
                removed: Vec::new(),
            },
            resp,
        ))
    }
}

fn resolve_type(only: &Option<String>, requested: &str) -> Result<String, StreamError> {
    match (only, requested) {
        (None, "") => Err(StreamError::MissingTypeUrl),
        (None, t) if ALL_TYPES.contains(&t) => Ok(t.to_string()),
        (None, t) => Err(StreamError::UnknownType {
            type_url: clip(t, 256),
            served: ALL_TYPES.join(", "),
        }),
        (Some(o), "") => Ok(o.clone()),
        (Some(o), t) if o == t => Ok(o.clone()),
        (Some(o), t) => Err(StreamError::WrongType {
            found: clip(t, 256),
            expected: o.clone(),
        }),
    }
}

#[derive(Debug, Clone)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds (name → version), as of its last ACK.
    client: BTreeMap<String, String>,
    /// Nonce and the client state the in-flight response would produce.
    in_flight: Option<(String, String, BTreeMap<String, String>)>,
    nacked: Option<String>,
    dirty: bool,
}

/// State of one delta (incremental) stream.
#[derive(Debug)]
pub struct DeltaStream {
    only_type: Option<String>,
    limits: StreamLimits,
    nonce: u64,
    types: BTreeMap<String, DeltaType>,
    snapshot: Option<Arc<Snapshot>>,
}

impl DeltaStream {
    /// A stream for delta ADS (`None`) or for a single-type delta service.
    pub fn new(only_type: Option<&str>) -> Self {
        DeltaStream {
            only_type: only_type.map(str::to_string),
            limits: StreamLimits::default(),
            nonce: 0,
            types: BTreeMap::new(),
            snapshot: None,
        }
    }

    /// The same stream with these limits.
    pub fn with_limits(mut self, limits: StreamLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Subscriptions per type, for `/debug/adsz`.
    pub fn subscriptions(&self) -> BTreeMap<String, Subscription> {
        self.types
            .iter()
            .map(|(t, s)| {
                let sub = if s.wildcard {
                    Subscription::Wildcard
                } else {
                    Subscription::Names(s.names.clone())
                };
                (t.clone(), sub)
            })
            .collect()
    }

    /// Handles one delta request.
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
    ) -> Result<Step<DeltaDiscoveryResponse>, StreamError> {
        let t = resolve_type(&self.only_type, &req.type_url)?;
        let max = self.limits.max_names_per_type;
        let text = self.limits.max_text_bytes;
        let known = self.types.get(&t).map_or(0, |st| st.names.len());
        // Checked before anything changes: a refused request leaves the
        // stream's state as it was.
        if known + req.resource_names_subscribe.len() > max
            || req.initial_resource_versions.len() > max
        {
            return Err(StreamError::TooManyNames { type_url: t, max });
        }
        let mut step = Step::default();
        let first = !self.types.contains_key(&t);
        let st = self.types.entry(t.clone()).or_insert_with(|| DeltaType {
            wildcard: false,
            names: BTreeSet::new(),
            client: BTreeMap::new(),
            in_flight: None,
            nacked: None,
            dirty: true,
        });
        if first {
            st.client = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            st.wildcard = req.resource_names_subscribe.is_empty();
        }
        if !req.response_nonce.is_empty() {
            match st.in_flight.take() {
                Some((nonce, version, after)) if nonce == req.response_nonce => {
                    match &req.error_detail {
                        Some(status) => {
                            st.nacked = Some(version.clone());
                            step.outcomes.push(Outcome::Nack {
                                type_url: t.clone(),
                                version,
                                nonce,
                                error: clip(&status.message, text),
                            });
                        }
                        None => {
                            st.client = after;
                            step.outcomes.push(Outcome::Ack {
                                type_url: t.clone(),
                                version,
                                nonce,
                            });
                        }
                    }
                }
                other => {
                    st.in_flight = other;
                    step.outcomes.push(Outcome::Stale {
                        type_url: t,
                        nonce: clip(&req.response_nonce, text),
                    });
                    return Ok(step);
                }
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(n.clone());
            }
            st.dirty = true;
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(n);
                // The client forgets it; no removal needs to be sent.
                st.client.remove(n);
            }
            st.dirty = true;
        }
        if let Some(r) = self.respond(&t) {
            step.responses.push(r);
        }
        Ok(step)
    }

    /// Handles a new snapshot.
    pub fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<DeltaDiscoveryResponse> {
        self.snapshot = Some(snap);
        let mut step = Step::default();
        let types: Vec<String> = self.types.keys().cloned().collect();
        for t in types {
            if let Some(r) = self.respond(&t) {
                step.responses.push(r);
            }
        }
        step
    }

    fn respond(&mut self, t: &str) -> Option<(Sent, DeltaDiscoveryResponse)> {
        let snap = self.snapshot.clone()?;
        let st = self.types.get_mut(t)?;
        if st.in_flight.is_some() {
            return None;
        }
        let version = snap.type_version(t);
        if !st.dirty && st.nacked.as_deref() == Some(version.as_str()) {
            return None;
        }
        let mut after = st.client.clone();
        let mut resources = Vec::new();
        let mut names = Vec::new();
        let empty = Default::default();
        let items = snap.resources(t).map(|r| &r.items).unwrap_or(&empty);
        for (name, r) in items {
            if !(st.wildcard || st.names.contains(name)) {
                continue;
            }
            let v = format!("{:016x}", r.hash);
            if st.client.get(name) != Some(&v) {
                resources.push(DeltaResource {
                    name: name.clone(),
                    version: v.clone(),
                    resource: Some((*r.body).clone()),
                    ..Default::default()
                });
                names.push(name.clone());
                after.insert(name.clone(), v);
            }
        }
        let removed: Vec<String> = st
            .client
            .keys()
            .filter(|n| !items.contains_key(*n))
            .cloned()
            .collect();
        for n in &removed {
            after.remove(n);
        }
        st.dirty = false;
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        st.in_flight = Some((nonce.clone(), version.clone(), after));
        let resp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            resources,
            type_url: t.to_string(),
            removed_resources: removed.clone(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        Some((
            Sent {
                type_url: t.to_string(),
                version,
                nonce,
                names,
                removed,
            },
            resp,
        ))
    }
}

#[cfg(test)]
mod tests;
