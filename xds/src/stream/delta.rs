//! The delta (incremental) variant: responses carry what changed against what
//! the client holds, with removals listed explicitly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::{clip, resolve_type, Outcome, Sent, Step, StreamError, StreamLimits, Subscription};
use crate::resource::Resource;
use crate::smallmap::SmallMap;
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

fn item(name: &str, r: &Resource) -> DeltaItem {
    DeltaItem {
        name: name.to_string(),
        version: version_of(r.hash),
        resource: r.body.clone(),
    }
}

/// What a client holding exactly `held` lacks of `now` (new or changed, in name order) and
/// what it holds that `now` does not (removed, in name order): one walk over both.
fn diff(
    held: &BTreeMap<String, Resource>,
    now: &BTreeMap<String, Resource>,
) -> (Vec<DeltaItem>, Vec<String>) {
    use std::cmp::Ordering;
    let (mut resources, mut removed) = (Vec::new(), Vec::new());
    let mut a = held.iter().peekable();
    let mut b = now.iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((x, _)), Some((y, _))) => x.cmp(y),
        };
        match order {
            Ordering::Less => {
                let (name, _) = a.next().expect("peeked");
                removed.push(name.clone());
            }
            Ordering::Greater => {
                let (name, r) = b.next().expect("peeked");
                resources.push(item(name, r));
            }
            Ordering::Equal => {
                let (_, old) = a.next().expect("peeked");
                let (name, r) = b.next().expect("peeked");
                if old.hash != r.hash {
                    resources.push(item(name, r));
                }
            }
        }
    }
    (resources, removed)
}

/// State of one delta (incremental) stream.
#[derive(Debug)]
pub struct DeltaStream {
    only_type: Option<String>,
    limits: StreamLimits,
    nonce: u64,
    types: SmallMap<DeltaType>,
    snapshot: Option<Arc<Snapshot>>,
    /// Bumped whenever a subscription changes ([`DeltaStream::generation`]).
    generation: u64,
}

impl DeltaStream {
    /// A stream for delta ADS (`None`) or for a single-type delta service.
    pub fn new(only_type: Option<&str>) -> Self {
        DeltaStream {
            only_type: only_type.map(str::to_string),
            limits: StreamLimits::default(),
            nonce: 0,
            types: SmallMap::new(),
            snapshot: None,
            generation: 0,
        }
    }

    /// Changes whenever the subscriptions ([`DeltaStream::subscriptions`]) may have.
    pub fn generation(&self) -> u64 {
        self.generation
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
        if first {
            // A new type is a new subscription.
            self.generation += 1;
            self.types.insert(
                t.clone(),
                DeltaType {
                    wildcard: false,
                    names: BTreeSet::new(),
                    client: Held::Map(BTreeMap::new()),
                    in_flight: None,
                    nacked: None,
                    dirty: true,
                },
            );
        }
        let st = self.types.get_mut(&t).expect("inserted above");
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
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            self.generation += 1;
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
        let (resources, removed) = match (&st.client, st.wildcard) {
            // A wildcard client holding a whole set (every sidecar's NPHDS): at fleet size
            // most snapshots leave that set as it was, and when it changes only a few
            // entries do. Equal content versions mean nothing to send; otherwise one walk
            // over the two sorted sets finds what changed.
            (Held::Set(held), true) => {
                let held_version = &held.version;
                let now_version = set.as_ref().map(|s| &s.version);
                if !st.dirty && now_version == Some(held_version) {
                    return None;
                }
                diff(&held.items, items)
            }
            _ => {
                let mut resources = Vec::new();
                for (name, r) in items {
                    if !(st.wildcard || st.names.contains(name)) {
                        continue;
                    }
                    if !st.client.holds(name, r.hash) {
                        resources.push(item(name, r));
                    }
                }
                let removed: Vec<String> = st
                    .client
                    .names()
                    .filter(|n| !items.contains_key(*n))
                    .cloned()
                    .collect();
                (resources, removed)
            }
        };
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

#[cfg(test)]
mod diff_tests {
    use super::*;
    use crate::proto::NetworkPolicyHosts;
    use crate::resource::NETWORK_POLICY_HOSTS;

    fn set(rng: &mut fastrand::Rng) -> BTreeMap<String, Resource> {
        (0..rng.usize(0..12))
            .map(|_| {
                let id = rng.u64(0..16);
                let h = NetworkPolicyHosts {
                    policy: id,
                    host_addresses: vec![format!("10.0.0.{}", rng.u8(0..3))],
                };
                (
                    id.to_string(),
                    Resource::new(NETWORK_POLICY_HOSTS, id.to_string(), &h),
                )
            })
            .collect()
    }

    #[test]
    fn the_walk_finds_what_lookups_find() {
        let mut rng = fastrand::Rng::with_seed(17);
        for _ in 0..500 {
            let (held, now) = (set(&mut rng), set(&mut rng));
            let (resources, removed) = diff(&held, &now);
            let want: Vec<&String> = now
                .iter()
                .filter(|(n, r)| held.get(*n).is_none_or(|h| h.hash != r.hash))
                .map(|(n, _)| n)
                .collect();
            let got: Vec<&String> = resources.iter().map(|r| &r.name).collect();
            assert_eq!(got, want);
            for r in &resources {
                assert_eq!(r.version, version_of(now[&r.name].hash));
            }
            let gone: Vec<&String> = held.keys().filter(|n| !now.contains_key(*n)).collect();
            assert_eq!(removed.iter().collect::<Vec<_>>(), gone);
        }
    }
}
