//! The node daemon (`membrane-agent run --node NAME --xds-address URL`): opens the state
//! directory, adopts the endpoints recorded there, serves the agent socket (membrane-cni's
//! registrations, the CLI's queries, monitor events from every endpoint's ring buffer) and
//! runs the xDS client until killed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use membrane_datapath::api::{self, Hub, Request};
use membrane_datapath::{ensure_bpffs, Datapath};
use tokio::sync::watch;

use crate::metrics::{self, Metrics};
use crate::node::Node;
use crate::observer::{self, Feed, ObserverConfig};
use crate::store::Store;
use crate::tc::{PacketArgs, PacketPath};
use crate::xds::{self, XdsConfig};

/// How often endpoints whose programming failed are programmed again.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// What the daemon runs with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// bpffs directory; endpoints are pinned under `endpoints/` in it.
    pub bpffs: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The agent socket.
    pub socket: PathBuf,
    /// The socket's bounds.
    pub limits: api::Limits,
    /// The control plane.
    pub xds: XdsConfig,
    /// The packet path (tc): overlay, underlay, load balancing, tc policy.
    pub packet: PacketArgs,
    /// The event stream on gRPC and the metrics.
    pub observer: ObserverConfig,
}

fn lock(node: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers one socket request (every one but `monitor`).
pub fn handle(node: &Mutex<Node>, req: Request) -> serde_json::Value {
    let error = |e: &dyn std::fmt::Display| serde_json::json!({ "error": e.to_string() });
    let mut n = lock(node);
    match req {
        Request::Status => n.status(),
        Request::Monitor => error(&"monitor is a stream"),
        Request::Register(reg) => {
            let who = format!("{}/{}", reg.namespace, reg.pod);
            let done = n.register(reg);
            if done.is_ok() {
                // NodePorts with external traffic local follow this node's endpoints.
                if let Err(e) = n.sync_packet_path() {
                    tracing::warn!(endpoint = %who, "node-wide packet path: {e}");
                }
            }
            match done {
                Ok(c) => {
                    tracing::info!(endpoint = %who, changes = ?c, "endpoint registered");
                    serde_json::json!({ "registered": who, "changes": c })
                }
                Err(e) => {
                    tracing::error!(endpoint = %who, error = %e, "registration failed");
                    error(&e)
                }
            }
        }
        Request::Unregister {
            container_id,
            ifname,
        } => match n.unregister(&container_id, &ifname) {
            Ok(key) => {
                tracing::info!(endpoint = ?key, %container_id, "endpoint unregistered");
                serde_json::json!({ "unregistered": key })
            }
            Err(e) => error(&e),
        },
        Request::EndpointList => n.endpoints(),
        Request::EndpointGet { endpoint } => n.endpoint(&endpoint).unwrap_or_else(|e| error(&e)),
        Request::IdentityList => n.identities(),
        Request::ServiceList => n.services(),
        Request::PolicyGet { endpoint } => n.policy(&endpoint).unwrap_or_else(|e| error(&e)),
        Request::CtList => n.conntrack(),
        Request::TcStats => n.tc_stats(),
    }
}

/// Reads every endpoint's monitor ring buffer and publishes its events; the set of
/// endpoints is looked up again on every round, so new pods' events appear.
fn fan_in_events(node: Arc<Mutex<Node>>, hub: Arc<Hub>) {
    let mut readers: BTreeMap<PathBuf, membrane_datapath::events::EventReader> = BTreeMap::new();
    let name = lock(&node).name().to_owned();
    // The node-wide programs' ring (overlay and underlay devices), beside the endpoints'.
    let mut node_events = lock(&node).packet.as_ref().and_then(|p| p.dp.events().ok());
    loop {
        if let Some(r) = node_events.as_mut() {
            if let Ok(evs) = r.drain(&name, 4096) {
                for ev in evs {
                    hub.publish(&ev);
                }
            }
        }
        let dirs = lock(&node).endpoint_dirs();
        readers.retain(|d, _| dirs.contains(d));
        for d in dirs {
            if let std::collections::btree_map::Entry::Vacant(slot) = readers.entry(d) {
                if let Ok(r) = Datapath::open(slot.key()).and_then(|dp| dp.events()) {
                    slot.insert(r);
                }
            }
        }
        for r in readers.values_mut() {
            if let Ok(evs) = r.drain(&name, 4096) {
                for ev in evs {
                    hub.publish(&ev);
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the daemon until killed.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    cfg.xds.check()?;
    cfg.packet.check()?;
    ensure_bpffs(&cfg.bpffs)?;
    let (mut node, warnings) = Node::open(&cfg.xds.node, &cfg.bpffs, Store::new(&cfg.state_dir))
        .with_context(|| format!("--state-dir {}", cfg.state_dir.display()))?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    // The node pin directory first (adopted as it is when an earlier agent made it), so
    // that adopted endpoints find their tc programs' node maps.
    let packet = PacketPath::start(&cfg.packet, &cfg.bpffs).context("the packet path")?;
    tracing::info!(
        overlay = %packet.settings.overlay,
        node_ip = %packet.settings.node_ip4,
        pins = %packet.dp.dir().display(),
        "packet path ready"
    );
    node.set_packet_path(packet);
    let node = Arc::new(Mutex::new(node));
    for line in lock(&node).adopt() {
        tracing::info!("{line}");
    }
    match lock(&node).sync_packet_path() {
        Ok(c) => tracing::info!(changes = ?c, "node-wide packet path adopted"),
        Err(e) => tracing::warn!("node-wide packet path: {e}"),
    }
    let listener =
        api::bind(&cfg.socket).with_context(|| format!("--socket {}", cfg.socket.display()))?;
    let hub = Arc::new(Hub::new(&cfg.xds.node, api::SUBSCRIBER_QUEUE));
    {
        let (node, hub) = (node.clone(), hub.clone());
        let stats = Arc::new(api::ServeStats::default());
        let limits = cfg.limits;
        thread::spawn(move || {
            api::serve_requests(listener, hub, move |req| handle(&node, req), limits, stats)
        });
    }
    {
        let (node, hub) = (node.clone(), hub.clone());
        thread::spawn(move || fan_in_events(node, hub));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    // The tap subscribes even without a listener: the metrics count from it.
    let feed = Arc::new(Feed::new(cfg.observer.ring));
    let counters = Arc::new(Metrics::new(&cfg.xds.node));
    observer::tap(&hub, node.clone(), feed.clone(), counters.clone());
    if let Some(addr) = cfg.observer.addr {
        let bound = rt.block_on(observer::serve(
            addr,
            cfg.observer.tls.as_ref(),
            &cfg.xds.node,
            feed,
        ))?;
        let how = if cfg.observer.tls.is_some() {
            "mTLS"
        } else {
            "plaintext"
        };
        println!("observer (gRPC, {how}) on {bound}");
    }
    if let Some(addr) = cfg.observer.metrics {
        let l = rt.block_on(metrics::bind(addr))?;
        let _guard = rt.enter();
        metrics::serve(l, counters);
        println!("metrics on http://{addr}/metrics");
    }
    {
        let node = node.clone();
        thread::spawn(move || loop {
            thread::sleep(RETRY_EVERY);
            for line in lock(&node).retry_failed() {
                tracing::warn!("{line}");
            }
        });
    }
    println!(
        "serving {} as node {} (control plane {})",
        cfg.socket.display(),
        cfg.xds.node,
        cfg.xds.address
    );
    let (_stop, stop_rx) = watch::channel(false);
    rt.block_on(xds::run(cfg.xds, node, stop_rx));
    Ok(())
}
