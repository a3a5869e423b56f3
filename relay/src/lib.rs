//! `membrane-relay`: one view of the whole mesh. It finds every node's agent through the
//! node registry, merges their monitor event streams (`membrane_api::monitor::Event`,
//! the agents' own and their sidecars' `l7` records) in time order, and serves the merged
//! stream to `membrane monitor --all-nodes` and to a web page of the service map.
//!
//! In-process consumers (the web page, `membrane demo`) hold a [`Relay`] and call
//! [`Relay::subscribe`] for the live merged stream and [`Relay::recent`] for its latest
//! events.

pub mod hub;

use std::sync::Arc;

use membrane_api::monitor::Event;
use tokio::sync::broadcast;

/// A running relay's merged stream, cheap to clone and share.
#[derive(Clone, Debug)]
pub struct Relay {
    hub: Arc<hub::Hub>,
}

impl Relay {
    /// A relay's stream with no sources yet: `queue` is how far a subscriber may fall
    /// behind, `ring` how many merged events [`Relay::recent`] remembers.
    pub fn new(queue: usize, ring: usize) -> Self {
        Self {
            hub: Arc::new(hub::Hub::new(queue, ring)),
        }
    }

    /// Every merged event from now on, in time order, `node-status` records included.
    /// A subscriber that falls behind gets `RecvError::Lagged(n)` and continues.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.hub.subscribe()
    }

    /// The latest `n` merged events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        self.hub.recent(n)
    }

    /// The hub behind the stream (the merger publishes into it).
    pub fn hub(&self) -> &Arc<hub::Hub> {
        &self.hub
    }
}
