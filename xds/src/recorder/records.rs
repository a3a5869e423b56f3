//! What the recorder keeps per proxy: the records the debug endpoints serve as
//! JSON (per proxy, per connection, per type, with a bounded event history).

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use crate::smallmap::SmallMap;

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
        /// The proxy's error, cut to [`Limits::max_text_bytes`](super::Limits::max_text_bytes).
        error: String,
        /// Epoch ms.
        at_ms: u64,
    },
}

impl Event {
    pub(super) fn at_ms(&self) -> u64 {
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
    /// The proxy's error, cut to [`Limits::max_text_bytes`](super::Limits::max_text_bytes).
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
    pub(super) sent_at: Option<SystemTime>,
    #[serde(skip)]
    pub(super) latest_at: Option<SystemTime>,
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
    pub watches: SmallMap<Vec<String>>,
}

/// Per proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyRecord {
    /// The node id.
    pub node_id: String,
    /// Whether any stream is open.
    pub connected: bool,
    /// Open streams by connection id.
    pub connections: SmallMap<ConnRecord>,
    /// Subscriptions over all open streams, by type URL.
    pub watches: SmallMap<Vec<String>>,
    /// Per type URL.
    pub types: SmallMap<TypeRecord>,
    #[serde(skip)]
    pub(super) connected_at: Option<SystemTime>,
    /// Since when no stream is open (the key of the recorder's idle set).
    #[serde(skip)]
    pub(super) idle_since: Option<Instant>,
    /// Events in all `types`' histories.
    #[serde(skip)]
    pub(super) events: usize,
}

impl ProxyRecord {
    pub(super) fn recompute(&mut self) {
        self.connected = !self.connections.is_empty();
        self.watches = SmallMap::new();
        for c in self.connections.values() {
            for (t, w) in &c.watches {
                let e = self.watches.or_default(t);
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
