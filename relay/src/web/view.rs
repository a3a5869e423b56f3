//! What the page shows, kept server-side and bounded: the service map (workloads and the
//! verdicts between them) and the latest flows. Pure: events in, JSON-ready values out,
//! no I/O and no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};

use membrane_api::monitor::{Event, TYPE_L7};
use serde::Serialize;

/// Distinct reasons an edge keeps (the most frequent stay; the rest are counted as
/// `other`).
const REASONS_PER_EDGE: usize = 6;
/// Identities whose workload the view remembers.
const MAX_IDENTITIES: usize = 4096;
/// Distinct pods a map node lists.
const PODS_PER_NODE: usize = 16;

/// The sizes of the view: both tables are bounded, whatever the traffic.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The latest flows kept for the table (older ones are forgotten first).
    pub flows: usize,
    /// The edges of the map kept (the least recently seen one is forgotten first).
    pub edges: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            flows: 2000,
            edges: 1024,
        }
    }
}

/// One end of an edge: a workload (a pod's name without its replica suffix) in its
/// namespace, or, for a peer that is no pod, its address or reserved identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Peer {
    /// Unique key: `NAMESPACE/WORKLOAD`, `ip:ADDRESS`, `reserved:NAME` or `identity:N`.
    pub id: String,
    /// What the map writes on it.
    pub label: String,
    /// The pod's namespace, for workloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Counts of one (source, destination) pair of the map.
///
/// A connection is decided at several points: on its way out (the source's connect and
/// tc programs, by the source's egress policy) and on its way in (the destination's tc
/// and sk_lookup programs and its sidecar, by the destination's ingress policy). An
/// allowed verdict on the way out is not the flow's fate when the way in denies it, so
/// `allowed` counts the destination's allowed verdicts, and the source's only for a
/// destination that decides nothing (outside the mesh, or no ingress enforcement).
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// Where the flows came from.
    pub src: Peer,
    /// Where they went.
    pub dst: Peer,
    /// Allowed verdicts that stand (see above): the edge's green.
    pub allowed: u64,
    /// Allowed verdicts on the way in (the destination's).
    pub allowed_in: u64,
    /// Allowed verdicts on the way out (the source's).
    pub allowed_out: u64,
    /// Denied verdicts and dropped packets, wherever decided: the edge's red.
    pub denied: u64,
    /// Of `denied`, the requests a sidecar refused (L7): the connection itself was allowed.
    pub denied_l7: u64,
    #[serde(skip)]
    denied_in: u64,
    /// Why flows were denied (the deciding rule or the drop reason) and how often.
    pub reasons: BTreeMap<String, u64>,
    /// Destination ports seen.
    pub ports: Vec<u16>,
    /// The time of the latest flow.
    pub last: String,
    #[serde(skip)]
    touched: u64,
}

/// A map node: a peer and the pods seen behind it.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// The peer.
    #[serde(flatten)]
    pub peer: Peer,
    /// Its pods (`namespace/name`), at most a few.
    pub pods: Vec<String>,
}

/// The service map as the page reads it (`GET /api/map`).
#[derive(Debug, Serialize)]
pub struct Map {
    /// Every peer of an edge.
    pub nodes: Vec<Node>,
    /// The edges, most active first.
    pub edges: Vec<Edge>,
    /// Events seen since the relay started.
    pub events: u64,
    /// Events the view missed (it fell behind the stream, or a node lost them).
    pub lost: u64,
}

/// The service map and the latest flows.
#[derive(Debug)]
pub struct View {
    limits: Limits,
    edges: HashMap<(Peer, Peer), Edge>,
    pods: HashMap<Peer, Vec<String>>,
    /// The workload last seen with each identity: a record that names neither pod nor
    /// address (a connect, before the socket has one) is drawn on it.
    identities: HashMap<u32, Peer>,
    flows: VecDeque<Event>,
    seen: u64,
    lost: u64,
}

impl View {
    /// An empty view of at most `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                flows: limits.flows.max(1),
                edges: limits.edges.max(1),
            },
            edges: HashMap::new(),
            pods: HashMap::new(),
            identities: HashMap::new(),
            flows: VecDeque::new(),
            seen: 0,
            lost: 0,
        }
    }

    /// Take one event of the stream in.
    pub fn add(&mut self, e: Event) {
        self.seen += 1;
        if e.kind == membrane_api::monitor::TYPE_LOST {
            self.lost += e.count;
        }
        if let Some(denied) = verdict_of(&e) {
            self.count(&e, denied);
        }
        if self.flows.len() == self.limits.flows {
            self.flows.pop_front();
        }
        self.flows.push_back(e);
    }

    /// `n` events the view never got (its subscription fell behind).
    pub fn missed(&mut self, n: u64) {
        self.lost += n;
    }

    fn count(&mut self, e: &Event, denied: bool) {
        let src = peer(e.src_pod.as_deref(), e.src.as_deref(), e.src_identity);
        let dst = peer(e.dst_pod.as_deref(), e.dst.as_deref(), e.dst_identity);
        for (p, id) in [(&src, e.src_identity), (&dst, e.dst_identity)] {
            let room = self.identities.len() < MAX_IDENTITIES || self.identities.contains_key(&id);
            if p.namespace.is_some() && id != 0 && reserved(id).is_none() && room {
                self.identities.insert(id, p.clone());
            }
        }
        for (p, pod) in [(&src, &e.src_pod), (&dst, &e.dst_pod)] {
            if let Some(pod) = pod {
                let pods = self.pods.entry(p.clone()).or_default();
                if pods.len() < PODS_PER_NODE && !pods.contains(pod) {
                    pods.push(pod.clone());
                    pods.sort();
                }
            }
        }
        let key = (src, dst);
        if !self.edges.contains_key(&key) && self.edges.len() >= self.limits.edges {
            self.forget_oldest_edge();
        }
        let touched = self.seen;
        let edge = self.edges.entry(key.clone()).or_insert_with(|| Edge {
            src: key.0.clone(),
            dst: key.1.clone(),
            allowed: 0,
            allowed_in: 0,
            allowed_out: 0,
            denied: 0,
            denied_in: 0,
            denied_l7: 0,
            reasons: BTreeMap::new(),
            ports: Vec::new(),
            last: String::new(),
            touched,
        });
        edge.touched = touched;
        edge.last.clone_from(&e.time);
        if let Some(port) = port_of(e.dst.as_deref()) {
            if !edge.ports.contains(&port) && edge.ports.len() < 8 {
                edge.ports.push(port);
                edge.ports.sort_unstable();
            }
        }
        if !denied {
            match inbound(e) {
                true => edge.allowed_in += e.count.max(1),
                false => edge.allowed_out += e.count.max(1),
            }
            return;
        }
        edge.denied += e.count.max(1);
        if inbound(e) {
            edge.denied_in += 1;
        }
        if e.kind == TYPE_L7 {
            edge.denied_l7 += e.count.max(1);
        }
        let why = reason_of(e);
        if edge.reasons.len() < REASONS_PER_EDGE || edge.reasons.contains_key(&why) {
            *edge.reasons.entry(why).or_default() += 1;
        } else {
            *edge.reasons.entry("other".to_owned()).or_default() += 1;
        }
    }

    fn forget_oldest_edge(&mut self) {
        let oldest = self
            .edges
            .iter()
            .min_by_key(|(_, e)| e.touched)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.edges.remove(&k);
            // A peer no edge names any more leaves the map with its pods.
            let named = |p: &Peer| self.edges.keys().any(|(s, d)| s == p || d == p);
            for p in [&k.0, &k.1] {
                if !named(p) {
                    self.pods.remove(p);
                }
            }
        }
    }

    /// The map: its nodes and edges. An end known only by its identity is drawn on the
    /// workload that identity was seen with, and their counts add up.
    pub fn map(&self) -> Map {
        let resolve = |p: &Peer| -> Peer {
            p.id.strip_prefix("identity:")
                .and_then(|n| n.parse().ok())
                .and_then(|n: u32| self.identities.get(&n))
                .unwrap_or(p)
                .clone()
        };
        let mut merged: BTreeMap<(Peer, Peer), Edge> = BTreeMap::new();
        for e in self.edges.values() {
            let key = (resolve(&e.src), resolve(&e.dst));
            match merged.get_mut(&key) {
                Some(m) => m.absorb(e),
                None => {
                    let mut e = e.clone();
                    (e.src, e.dst) = key.clone();
                    merged.insert(key, e);
                }
            }
        }
        let mut edges: Vec<Edge> = merged.into_values().collect();
        for e in &mut edges {
            let decided_in = e.allowed_in + e.denied_in > 0;
            e.allowed = if decided_in {
                e.allowed_in
            } else {
                e.allowed_out
            };
        }
        edges.sort_by(|a, b| {
            (b.allowed + b.denied)
                .cmp(&(a.allowed + a.denied))
                .then_with(|| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)))
        });
        let mut nodes: BTreeMap<&Peer, Node> = BTreeMap::new();
        for p in edges.iter().flat_map(|e| [&e.src, &e.dst]) {
            nodes.entry(p).or_insert_with(|| Node {
                peer: p.clone(),
                pods: self.pods.get(p).cloned().unwrap_or_default(),
            });
        }
        let nodes = nodes.into_values().collect();
        Map {
            nodes,
            edges,
            events: self.seen,
            lost: self.lost,
        }
    }

    /// The latest flows that `keep` accepts, newest first, at most `limit`, and how many
    /// of the kept flows it accepted in all.
    pub fn flows(&self, keep: impl Fn(&Event) -> bool, limit: usize) -> (Vec<&Event>, usize) {
        let mut out = Vec::new();
        let mut matched = 0;
        for e in self.flows.iter().rev().filter(|e| keep(e)) {
            matched += 1;
            if out.len() < limit {
                out.push(e);
            }
        }
        (out, matched)
    }
}

impl Edge {
    /// Add `o`'s counts (an edge of the same two ends, drawn as one).
    fn absorb(&mut self, o: &Edge) {
        self.allowed_in += o.allowed_in;
        self.allowed_out += o.allowed_out;
        self.denied += o.denied;
        self.denied_in += o.denied_in;
        self.denied_l7 += o.denied_l7;
        for (why, n) in &o.reasons {
            *self.reasons.entry(why.clone()).or_default() += n;
        }
        for p in &o.ports {
            if !self.ports.contains(p) {
                self.ports.push(*p);
            }
        }
        self.ports.sort_unstable();
        if o.last > self.last {
            self.last.clone_from(&o.last);
        }
    }
}

/// Whether `e` was decided on the destination's side (its ingress policy): the
/// destination's tc and sk_lookup programs, the packet path into the node, and a
/// sidecar's inbound listener.
fn inbound(e: &Event) -> bool {
    match &e.l7 {
        Some(l7) => l7.direction != "egress",
        None => matches!(
            e.program.as_str(),
            "to-container" | "sk_lookup" | "from-overlay" | "from-netdev"
        ),
    }
}

/// `Some(true)` for a denial or a drop, `Some(false)` for an allowed verdict, `None` for
/// what is no verdict (capture, trace, lost).
fn verdict_of(e: &Event) -> Option<bool> {
    if e.is_drop() {
        return Some(true);
    }
    match e.verdict.as_deref() {
        Some("allowed") => Some(false),
        Some("denied") => Some(true),
        _ => None,
    }
}

/// Why a flow was denied, as the hover names it: the deciding rule of a request, else
/// the reason and where it was decided.
fn reason_of(e: &Event) -> String {
    match &e.l7 {
        Some(l7) => {
            let rule = l7.rule.as_deref().unwrap_or("no rule allows it");
            format!("L7 {} {}: {rule} ({})", l7.method, l7.path, l7.status)
        }
        None => format!("{} ({} {})", e.reason, e.kind, e.program),
    }
}

/// The destination port of an `ADDRESS:PORT`.
fn port_of(addr: Option<&str>) -> Option<u16> {
    addr?.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

/// Cilium's reserved identities, by number.
fn reserved(identity: u32) -> Option<&'static str> {
    Some(match identity {
        1 => "host",
        2 => "world",
        3 => "unmanaged",
        4 => "health",
        5 => "init",
        6 => "remote-node",
        7 => "kube-apiserver",
        8 => "ingress",
        _ => return None,
    })
}

/// The map node of one side of a flow: its pod's workload when the record names the pod,
/// else a reserved identity's name, else its address, else its identity.
pub fn peer(pod: Option<&str>, addr: Option<&str>, identity: u32) -> Peer {
    if let Some(pod) = pod.filter(|p| !p.is_empty()) {
        let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
        let w = workload(name);
        return Peer {
            id: format!("{ns}/{w}"),
            label: w.to_owned(),
            namespace: Some(ns.to_owned()),
        };
    }
    if let Some(r) = reserved(identity) {
        return Peer {
            id: format!("reserved:{r}"),
            label: r.to_owned(),
            namespace: None,
        };
    }
    let ip = addr.map(|a| {
        a.parse::<std::net::SocketAddr>()
            .map_or_else(|_| a.to_owned(), |s| s.ip().to_string())
    });
    match (ip, identity) {
        (Some(ip), _) => Peer {
            id: format!("ip:{ip}"),
            label: ip,
            namespace: None,
        },
        (None, id) => Peer {
            id: format!("identity:{id}"),
            label: format!("identity {id}"),
            namespace: None,
        },
    }
}

/// The characters Kubernetes draws generated name suffixes from (no vowels, no
/// look-alikes), so a word is rarely taken for one.
const GENERATED: &str = "bcdfghjklmnpqrstvwxz2456789";

fn generated(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.chars().all(|c| GENERATED.contains(c))
}

/// A pod's workload from its name: a Deployment's pod without its ReplicaSet hash and
/// suffix (`web-7d9f8c6b5-x2x4z` → `web`), a DaemonSet's or Job's without its suffix
/// (`agent-x2x4z` → `agent`), a StatefulSet's or numbered replica's without its ordinal
/// (`deathstar-2` → `deathstar`); any other name is its own workload.
pub fn workload(pod: &str) -> &str {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [last, hash, base]
            if !base.is_empty() && generated(hash, 6..=10) && generated(last, 5..=5) =>
        {
            base
        }
        [last, _, ..]
            if pod.len() > last.len() + 1
                && !last.is_empty()
                && (generated(last, 5..=5) || last.chars().all(|c| c.is_ascii_digit())) =>
        {
            &pod[..pod.len() - last.len() - 1]
        }
        _ => pod,
    }
}

#[cfg(test)]
mod tests;
