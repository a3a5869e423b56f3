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

use std::collections::BTreeSet;

use thiserror::Error;

use crate::resource::ALL_TYPES;

mod delta;
mod sotw;

pub use delta::DeltaStream;
pub use sotw::{SotwStream, TypeStatus};

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
    /// How many resources it carries (counted, not named: at fleet size
    /// the names of every push to every stream would be an allocation each).
    pub resources: usize,
    /// How many names it removes (delta only).
    pub removed: usize,
}

/// The result of one input to the state machine.
#[derive(Debug, Default)]
pub struct Step<R> {
    /// What the request meant.
    pub outcomes: Vec<Outcome>,
    /// Responses to send, in order.
    pub responses: Vec<(Sent, R)>,
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

#[cfg(test)]
mod tests;
