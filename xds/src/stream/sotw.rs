//! The state-of-the-world variant: every response carries the whole
//! subscription, absence is removal, and ACK/NACK are by nonce per type.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::{clip, resolve_type, Outcome, Sent, Step, StreamError, StreamLimits, Subscription};
use crate::smallmap::SmallMap;
use crate::snapshot::Snapshot;
use crate::wire::SotwResponse;

#[derive(Debug, Clone)]
struct SotwType {
    subscription: Subscription,
    /// Version and nonce of the last response sent.
    sent: Option<(String, String)>,
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
    types: SmallMap<SotwType>,
    snapshot: Option<Arc<Snapshot>>,
    /// Bumped whenever a subscription changes ([`SotwStream::generation`]).
    generation: u64,
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
            types: SmallMap::new(),
            snapshot: None,
            generation: 0,
        }
    }

    /// Changes whenever the subscriptions ([`SotwStream::status`]) may have.
    pub fn generation(&self) -> u64 {
        self.generation
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
    ) -> Result<Step<SotwResponse>, StreamError> {
        let t = resolve_type(&self.only_type, &req.type_url)?;
        let max = self.limits.max_names_per_type;
        if req.resource_names.len() > max {
            return Err(StreamError::TooManyNames { type_url: t, max });
        }
        let text = self.limits.max_text_bytes;
        let mut step = Step::default();
        let first = !self.types.contains_key(&t);
        if first {
            // A new type is a new subscription.
            self.generation += 1;
            self.types.insert(
                t.clone(),
                SotwType {
                    subscription: Subscription::Names(BTreeSet::new()),
                    sent: None,
                    in_flight: false,
                    acked: None,
                    nacked: None,
                    dirty: true,
                },
            );
        }
        let st = self.types.get_mut(&t).expect("inserted above");
        if !req.response_nonce.is_empty() {
            match &st.sent {
                Some((version, nonce)) if *nonce == req.response_nonce => {
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
            self.generation += 1;
        }
        if let Some(r) = self.respond(&t) {
            step.responses.push(r);
        }
        Ok(step)
    }

    /// Handles a new snapshot for this stream's node.
    pub fn on_snapshot(&mut self, snap: Arc<Snapshot>) -> Step<SotwResponse> {
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

    fn respond(&mut self, t: &str) -> Option<(Sent, SotwResponse)> {
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
        let mut resources = Vec::new();
        let set = snap.resources_shared(t);
        if let Some(set) = &set {
            for (name, r) in &set.items {
                if st.subscription.wants(name) {
                    resources.push(r.body.clone());
                }
            }
        }
        // A wildcard gets the whole set: its shared encoding goes out.
        let whole = set.filter(|_| st.subscription == Subscription::Wildcard);
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        st.sent = Some((version.clone(), nonce.clone()));
        st.in_flight = true;
        st.dirty = false;
        let sent = Sent {
            type_url: t.to_string(),
            version: version.clone(),
            nonce: nonce.clone(),
            resources: resources.len(),
            removed: 0,
        };
        let resp = SotwResponse {
            version_info: version,
            resources,
            type_url: t.to_string(),
            nonce,
            whole,
            control_plane: None,
        };
        Some((sent, resp))
    }
}
