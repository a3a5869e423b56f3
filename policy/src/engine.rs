//! The engine: endpoints, identities and policies kept together, with each endpoint's
//! resolved policy cached and recomputed only when something it depends on changes.
//!
//! A policy change re-resolves the endpoints selected by the old or the new version of the
//! policy; a new or vanished identity re-resolves the endpoints selected by rules whose peers
//! select it. Everything else keeps its cached, shared resolution.

use crate::identity::{Identity, IdentityAllocator, IdentityError, IdentityInfo, MemoryAllocator};
use crate::labels::LabelSet;
use crate::resolve::{
    subject_selects, Endpoint, NamedPorts, Repository, ResolvedPolicy, SelectorCache,
};
use crate::rule::{CompiledPolicy, Peer, PolicyKey, Subject};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// An endpoint's id (e.g. `namespace/pod`).
pub type EndpointId = String;

#[derive(Debug, Clone)]
struct EndpointState {
    endpoint: Endpoint,
    identity: Identity,
    resolved: Arc<ResolvedPolicy>,
}

/// Policies, endpoints and identities, with cached resolutions.
#[derive(Debug)]
pub struct Engine<A: IdentityAllocator = MemoryAllocator> {
    repo: Repository,
    cache: SelectorCache,
    allocator: A,
    endpoints: BTreeMap<EndpointId, EndpointState>,
    cidr_identities: BTreeMap<IpNet, Identity>,
    next_cidr: u32,
}

impl Default for Engine<MemoryAllocator> {
    fn default() -> Self {
        Engine::new(MemoryAllocator::new())
    }
}

impl<A: IdentityAllocator> Engine<A> {
    /// An engine allocating identities with `allocator`.
    pub fn new(allocator: A) -> Self {
        Engine {
            repo: Repository::new(),
            cache: SelectorCache::new(),
            allocator,
            endpoints: BTreeMap::new(),
            cidr_identities: BTreeMap::new(),
            next_cidr: Identity::MIN_LOCAL,
        }
    }

    /// The policies in force.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Identities and cached selections.
    pub fn selector_cache(&self) -> &SelectorCache {
        &self.cache
    }

    /// The allocator.
    pub fn allocator(&self) -> &A {
        &self.allocator
    }

    /// Node-local identities of the CIDR prefixes policies name.
    pub fn cidr_identities(&self) -> &BTreeMap<IpNet, Identity> {
        &self.cidr_identities
    }

    /// Ensures `labels` has an identity known to the selector cache (without an endpoint),
    /// e.g. a peer seen only in the ipcache. Returns the identity and the endpoints whose
    /// resolution changed.
    pub fn ensure_identity(
        &mut self,
        labels: &LabelSet,
    ) -> Result<(Identity, Vec<EndpointId>), IdentityError> {
        if let Some(id) = self.allocator.lookup(labels) {
            if self.cache.info(id).is_some() {
                return Ok((id, vec![]));
            }
        }
        let id = self.allocator.allocate(labels)?;
        let changed = self.cache.upsert_identity(
            id,
            IdentityInfo {
                labels: labels.clone(),
                cidr: None,
            },
        );
        Ok((id, self.reresolve_for_peers(&changed)))
    }

    /// Adds or updates an endpoint; returns its identity and every endpoint re-resolved
    /// (itself included).
    pub fn upsert_endpoint(
        &mut self,
        id: &str,
        endpoint: Endpoint,
    ) -> Result<(Identity, Vec<EndpointId>), IdentityError> {
        let identity = self.allocator.allocate(&endpoint.labels)?;
        let mut affected = Vec::new();
        if let Some(old) = self.endpoints.get(id) {
            let old_labels = old.endpoint.labels.clone();
            if old_labels != endpoint.labels {
                self.release_labels(&old_labels, &mut affected)?;
            } else {
                // Same labels: give back the reference taken above.
                self.allocator.release(&endpoint.labels)?;
            }
        }
        if self.cache.info(identity).is_none() {
            let changed = self.cache.upsert_identity(
                identity,
                IdentityInfo {
                    labels: endpoint.labels.clone(),
                    cidr: None,
                },
            );
            affected.extend(self.reresolve_for_peers(&changed));
        }
        let named = self.cluster_named_ports();
        let resolved = Arc::new(self.repo.resolve(&endpoint, &mut self.cache, &named));
        self.endpoints.insert(
            id.to_owned(),
            EndpointState {
                endpoint,
                identity,
                resolved,
            },
        );
        // Other endpoints' egress may depend on this endpoint's named ports.
        affected.push(id.to_owned());
        affected.sort();
        affected.dedup();
        Ok((identity, affected))
    }

    /// Removes an endpoint; returns the endpoints re-resolved.
    pub fn remove_endpoint(&mut self, id: &str) -> Result<Vec<EndpointId>, IdentityError> {
        let Some(old) = self.endpoints.remove(id) else {
            return Ok(vec![]);
        };
        let mut affected = Vec::new();
        self.release_labels(&old.endpoint.labels, &mut affected)?;
        Ok(affected)
    }

    fn release_labels(
        &mut self,
        labels: &LabelSet,
        affected: &mut Vec<EndpointId>,
    ) -> Result<(), IdentityError> {
        let id = self.allocator.lookup(labels);
        if self.allocator.release(labels)? {
            if let Some(id) = id {
                let changed = self.cache.remove_identity(id);
                affected.extend(self.reresolve_for_peers(&changed));
            }
        }
        Ok(())
    }

    /// Adds or replaces a policy; returns the endpoints re-resolved.
    pub fn apply_policy(&mut self, policy: Arc<CompiledPolicy>) -> Vec<EndpointId> {
        let new_subjects: Vec<Subject> = policy.rules.iter().map(|r| r.subject.clone()).collect();
        let old = self.repo.upsert(policy);
        let mut subjects = new_subjects;
        if let Some(old) = &old {
            subjects.extend(old.rules.iter().map(|r| r.subject.clone()));
        }
        let mut ids = self.sync_cidr_identities();
        ids.extend(self.reresolve_selected(&subjects));
        ids.sort();
        ids.dedup();
        ids
    }

    /// Removes a policy; returns the endpoints re-resolved.
    pub fn delete_policy(&mut self, key: &PolicyKey) -> Vec<EndpointId> {
        let Some(old) = self.repo.remove(key) else {
            return vec![];
        };
        let subjects: Vec<Subject> = old.rules.iter().map(|r| r.subject.clone()).collect();
        let mut ids = self.sync_cidr_identities();
        ids.extend(self.reresolve_selected(&subjects));
        ids.sort();
        ids.dedup();
        ids
    }

    /// The cached resolution of an endpoint.
    pub fn resolved(&self, id: &str) -> Option<Arc<ResolvedPolicy>> {
        self.endpoints.get(id).map(|s| s.resolved.clone())
    }

    /// An endpoint's identity.
    pub fn identity_of(&self, id: &str) -> Option<Identity> {
        self.endpoints.get(id).map(|s| s.identity)
    }

    /// Endpoint ids.
    pub fn endpoint_ids(&self) -> impl Iterator<Item = &EndpointId> {
        self.endpoints.keys()
    }

    /// Named ports of every endpoint, merged: how egress named ports resolve.
    pub fn cluster_named_ports(&self) -> NamedPorts {
        let mut out: NamedPorts = BTreeMap::new();
        for s in self.endpoints.values() {
            for (n, ports) in &s.endpoint.named_ports {
                out.entry(n.clone())
                    .or_default()
                    .extend(ports.iter().copied());
            }
        }
        out
    }

    fn sync_cidr_identities(&mut self) -> Vec<EndpointId> {
        let wanted = self.repo.cidr_prefixes();
        let stale: Vec<IpNet> = self
            .cidr_identities
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        let mut changed = Vec::new();
        for p in stale {
            if let Some(id) = self.cidr_identities.remove(&p) {
                changed.extend(self.cache.remove_identity(id));
            }
        }
        for p in wanted {
            if !self.cidr_identities.contains_key(&p) {
                let id = Identity(self.next_cidr);
                self.next_cidr += 1;
                self.cidr_identities.insert(p, id);
                changed.extend(self.cache.upsert_identity(id, IdentityInfo::cidr(p)));
            }
        }
        // Peers no rule names any more need not be kept up to date.
        let in_use: HashSet<Peer> = self
            .repo
            .policies()
            .flat_map(|p| p.rules.iter())
            .flat_map(|r| r.ingress.iter().chain(r.egress.iter()))
            .flat_map(|d| d.peers.iter().cloned())
            .collect();
        self.cache
            .retain(|p| in_use.contains(p) || matches!(p, Peer::Labels(_)));
        self.reresolve_for_peers(&changed)
    }

    fn reresolve_selected(&mut self, subjects: &[Subject]) -> Vec<EndpointId> {
        let ids: Vec<EndpointId> = self
            .endpoints
            .iter()
            .filter(|(_, s)| {
                subjects
                    .iter()
                    .any(|sub| subject_selects(sub, &s.endpoint.labels))
            })
            .map(|(id, _)| id.clone())
            .collect();
        self.reresolve(&ids);
        ids
    }

    fn reresolve_for_peers(&mut self, changed: &[Peer]) -> Vec<EndpointId> {
        if changed.is_empty() {
            return vec![];
        }
        let changed: HashSet<&Peer> = changed.iter().collect();
        let literal: HashSet<&Peer> = self
            .repo
            .policies()
            .flat_map(|p| p.rules.iter())
            .flat_map(|r| r.ingress.iter().chain(r.egress.iter()))
            .flat_map(|d| d.peers.iter())
            .filter(|p| changed.contains(p))
            .collect();
        // A changed selection no rule names literally is one narrowed by fromRequires or
        // toRequires; those only exist for endpoints selected by a rule with requirements.
        let derived_changed = changed.len() > literal.len();
        let subjects: Vec<Subject> = self
            .repo
            .policies()
            .flat_map(|p| p.rules.iter())
            .filter(|r| {
                (derived_changed && has_requires(r))
                    || r.ingress
                        .iter()
                        .chain(r.egress.iter())
                        .any(|d| d.peers.iter().any(|p| literal.contains(p)))
            })
            .map(|r| r.subject.clone())
            .collect();
        self.reresolve_selected(&subjects)
    }

    fn reresolve(&mut self, ids: &[EndpointId]) {
        let named = self.cluster_named_ports();
        for id in ids {
            if let Some(state) = self.endpoints.get(id) {
                let ep = state.endpoint.clone();
                let resolved = self.repo.resolve(&ep, &mut self.cache, &named);
                if let Some(state) = self.endpoints.get_mut(id) {
                    if *state.resolved != resolved {
                        state.resolved = Arc::new(resolved);
                    }
                }
            }
        }
    }

    /// Prefixes named by policies and the endpoints' identities, as ipcache input.
    pub fn identities_in_use(&self) -> BTreeSet<Identity> {
        self.endpoints
            .values()
            .map(|s| s.identity)
            .chain(self.cidr_identities.values().copied())
            .collect()
    }
}

fn has_requires(r: &crate::rule::CompiledRule) -> bool {
    !r.requires_ingress.is_empty() || !r.requires_egress.is_empty()
}
