//! `membrane-relay`: one view of the whole mesh. It finds every node's agent through the
//! node registry ([`discovery`]: membrane-xds's `Node` resources), follows each agent's
//! event stream on its observer port ([`nodes`]: 4244, mTLS, reconnects with backoff, a
//! `node-status` record for every node that comes, goes or cannot be reached), merges the
//! streams in time order through a bounded reorder window ([`merge`]), names the ends the
//! writing agent could not (a pod of another node, from the control plane's workload
//! directory, [`discovery::Directory`]) and fans the result
//! out ([`hub`]) to the gRPC service on 4245 ([`server`]: `membrane monitor --all-nodes`)
//! and to in-process consumers: [`web`], the page of the service map and the latest flows,
//! and `membrane demo`.
//!
//! In-process consumers hold a [`Relay`] and call [`Relay::subscribe`] for the live merged
//! stream and [`Relay::recent`] for its latest events. It never writes to an agent and
//! keeps nothing on disk.

pub mod discovery;
pub mod hub;
pub mod merge;
pub mod nodes;
pub mod server;
pub mod tls;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use membrane_api::monitor::Event;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::discovery::{Directory, Nodes, XdsSource};
use crate::nodes::AgentAccess;

/// Where the relay learns the nodes.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// membrane-xds's node registry.
    Xds(XdsSource),
    /// A fixed list (a test bed without a control plane at hand).
    Static(Nodes),
}

/// What a relay runs with.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where the nodes come from.
    pub discovery: Discovery,
    /// How the agents are reached.
    pub agents: AgentAccess,
    /// How long events wait to be put in time order.
    pub window: Duration,
    /// The most events waiting at once.
    pub buffer: usize,
    /// How far a subscriber may fall behind.
    pub queue: usize,
    /// Merged events [`Relay::recent`] remembers.
    pub ring: usize,
}

impl RelayConfig {
    /// Defaults for everything but the nodes and how to reach them: a 1 s window (an
    /// agent's fan-in polls every 100 ms), 65 536 waiting events, 4096 queued per
    /// subscriber, the latest 4096 merged events kept.
    pub fn new(discovery: Discovery, agents: AgentAccess) -> Self {
        Self {
            discovery,
            agents,
            window: Duration::from_secs(1),
            buffer: 65_536,
            queue: 4096,
            ring: 4096,
        }
    }
}

/// Aborts the relay's tasks when the last [`Relay`] goes.
#[derive(Debug, Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A running relay's merged stream, cheap to clone and share.
#[derive(Clone, Debug)]
pub struct Relay {
    hub: Arc<hub::Hub>,
    nodes: watch::Receiver<Nodes>,
    directory: watch::Receiver<Directory>,
    access: AgentAccess,
    _tasks: Arc<Tasks>,
    _static: Option<Arc<watch::Sender<Nodes>>>,
}

impl Relay {
    /// Starts a relay on the current tokio runtime; it runs until the last clone is
    /// dropped.
    pub fn start(cfg: RelayConfig) -> Self {
        let hub = Arc::new(hub::Hub::new(cfg.queue, cfg.ring));
        let (tx, rx) = mpsc::channel(4096);
        let mut tasks = Vec::new();
        let (dtx, directory) = watch::channel(Directory::default());
        let (nodes, keep) = match cfg.discovery {
            Discovery::Xds(src) => {
                let (ntx, nrx) = watch::channel(Nodes::new());
                tasks.push(tokio::spawn(discovery::run(src, ntx, dtx)));
                (nrx, None)
            }
            Discovery::Static(list) => {
                let (ntx, nrx) = watch::channel(list);
                (nrx, Some(Arc::new(ntx)))
            }
        };
        tasks.push(tokio::spawn(nodes::manage(
            nodes.clone(),
            cfg.agents.clone(),
            tx,
        )));
        tasks.push(tokio::spawn(merge::run(
            rx,
            hub.clone(),
            merge::Reorder::new(cfg.window, cfg.buffer),
            directory.clone(),
        )));
        Self {
            hub,
            nodes,
            directory,
            access: cfg.agents,
            _tasks: Arc::new(Tasks(tasks)),
            _static: keep,
        }
    }

    /// Every merged event from now on, in time order, `node-status` records included.
    /// A subscriber that falls behind gets `RecvError::Lagged(n)` and continues.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.hub.subscribe()
    }

    /// The latest `n` merged events this relay has seen, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        self.hub.recent(n)
    }

    /// `e` with the ends its agent left unnamed named from the workload directory.
    pub fn named(&self, mut e: Event) -> Event {
        self.directory.borrow().name(&mut e);
        e
    }

    /// The nodes the relay follows now: name → address.
    pub fn nodes(&self) -> Nodes {
        self.nodes.borrow().clone()
    }
}
