//! The delta (incremental) variant: responses carry what changed against what
//! the client holds, with removals listed explicitly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::{clip, resolve_type, Outcome, Sent, Step, StreamError, StreamLimits, Subscription};
use crate::snapshot::{Snapshot, TypeResources};
use crate::wire::{DeltaItem, DeltaResponse};

#[derive(Debug, Clone)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds, as of its last ACK.
    client: Held,
    /// Nonce and the client state the in-flight response would produce.
    in_flight: Option<(String, String, Held)>,
    nacked: Option<String>,
    dirty: bool,
}

/// What a delta client holds. A wildcard client that ACKed a response holds
/// exactly the set it was sent: it is kept as that (shared) set rather than
/// as a copy of every name and version per stream.
#[derive(Debug, Clone)]
enum Held {
    /// Exactly these resources, at their content versions.
    Set(Arc<TypeResources>),
    /// Name → version (initial versions, named subscriptions).
    Map(BTreeMap<String, String>),
}

fn version_of(hash: u64) -> String {
    format!("{hash:016x}")
}

impl Held {
    /// Whether the client holds `name` at content hash `hash`.
    fn holds(&self, name: &str, hash: u64) -> bool {
        match self {
            Held::Set(set) => set.items.get(name).is_some_and(|r| r.hash == hash),
            Held::Map(m) => m.get(name).is_some_and(|v| *v == version_of(hash)),
        }
    }

    fn names(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        match self {
            Held::Set(set) => Box::new(set.items.keys()),
            Held::Map(m) => Box::new(m.keys()),
        }
    }

    /// The map form, to change one name.
    fn map(&mut self) -> &mut BTreeMap<String, String> {
        if let Held::Set(set) = self {
            let m = set
                .items
                .iter()
                .map(|(n, r)| (n.clone(), version_of(r.hash)))
                .collect();
            *self = Held::Map(m);
        }
        match self {
            Held::Map(m) => m,
            Held::Set(_) => unreachable!("converted above"),
        }
    }
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
    ) -> Result<Step<DeltaResponse>, StreamError> {
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
            client: Held::Map(BTreeMap::new()),
            in_flight: None,
            nacked: None,
            dirty: true,
        });
        if first {
            st.client = Held::Map(
                req.initial_resource_versions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
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
                st.client.map().remove(n);
            }
            st.dirty = true;
        }
        if let Some(r) = self.respond(&t) {
            step.responses.push(r);
        }
        Ok(step)
    }

    /// Handles a new snapshot.
    pub fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<DeltaResponse> {
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

    fn respond(&mut self, t: &str) -> Option<(Sent, DeltaResponse)> {
        let snap = self.snapshot.clone()?;
        let st = self.types.get_mut(t)?;
        if st.in_flight.is_some() {
            return None;
        }
        let version = snap.type_version(t);
        if !st.dirty && st.nacked.as_deref() == Some(version.as_str()) {
            return None;
        }
        let empty = Default::default();
        let set = snap.resources_shared(t);
        let items = set.as_ref().map(|r| &r.items).unwrap_or(&empty);
        let mut resources = Vec::new();
        for (name, r) in items {
            if !(st.wildcard || st.names.contains(name)) {
                continue;
            }
            if !st.client.holds(name, r.hash) {
                resources.push(DeltaItem {
                    name: name.clone(),
                    version: version_of(r.hash),
                    resource: r.body.clone(),
                });
            }
        }
        let removed: Vec<String> = st
            .client
            .names()
            .filter(|n| !items.contains_key(*n))
            .cloned()
            .collect();
        st.dirty = false;
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        // A wildcard client ends up holding exactly the set; anyone else, the
        // names it holds with what changed applied.
        let after = match set.filter(|_| st.wildcard) {
            Some(set) => Held::Set(set),
            None => {
                let mut after = st.client.clone();
                let m = after.map();
                for r in &resources {
                    m.insert(r.name.clone(), r.version.clone());
                }
                for n in &removed {
                    m.remove(n);
                }
                after
            }
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        st.in_flight = Some((nonce.clone(), version.clone(), after));
        let sent = Sent {
            type_url: t.to_string(),
            version: version.clone(),
            nonce: nonce.clone(),
            resources: resources.len(),
            removed: removed.len(),
        };
        let resp = DeltaResponse {
            system_version_info: version,
            resources,
            type_url: t.to_string(),
            removed_resources: removed,
            nonce,
        };
        Some((sent, resp))
    }
}
