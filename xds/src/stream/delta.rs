//! The delta (incremental) variant: responses carry what changed against what
//! the client holds, with removals listed explicitly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};

use super::{clip, resolve_type, Outcome, Sent, Step, StreamError, StreamLimits, Subscription};
use crate::snapshot::Snapshot;

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
