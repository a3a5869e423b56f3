//! The engine: endpoints, identities and policies kept together, with each endpoint's
//! resolved policy cached and recomputed only when something it depends on changes.
//!
//! A policy change re-resolves the endpoints selected by the old or the new version of the
//! policy; a new or vanished identity re-resolves the endpoints selected by rules whose peers
//! select it. Everything else keeps its cached, shared resolution.

use crate::identity::{Identity, IdentityAllocator, IdentityError, IdentityInfo, MemoryAllocator};
use crate::labels::LabelSet;
use crate::resolve::{
    index_label, subject_selects, AllowLocalhost, Endpoint, NamedPorts, Repository, ResolvedPolicy,
    SelectorCache, UnenforcedL7Mode,
};
use crate::rule::{CompiledPolicy, Peer, PolicyKey, Subject};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Every endpoint's named ports merged (egress named ports resolve against it); kept
    /// up to date as endpoints come and go rather than rebuilt per resolution.
    cluster_named: NamedPorts,
    changes_since_sweep: u32,
    /// (label key, value) → endpoints carrying it, to find the endpoints a rule selects.
    ep_by_label: HashMap<(String, String), BTreeSet<EndpointId>>,
}

/// Policy changes between sweeps of unused selections from the selector cache.
const SWEEP_EVERY: u32 = 256;

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
            cluster_named: NamedPorts::new(),
            changes_since_sweep: 0,
            ep_by_label: HashMap::new(),
        }
    }

    /// Sets what rules of L7 protocols membrane does not enforce (Kafka, DNS, generic
    /// `l7proto`) do, and re-resolves every endpoint under the new setting. The default,
    /// [`UnenforcedL7Mode::FailClosed`], denies what only such rules would allow.
    pub fn set_unenforced_l7(&mut self, mode: UnenforcedL7Mode) -> Vec<EndpointId> {
        if self.repo.unenforced_l7() == mode {
            return vec![];
        }
        self.repo.set_unenforced_l7(mode);
        let ids: Vec<EndpointId> = self.endpoints.keys().cloned().collect();
        self.reresolve(&ids);
        ids
    }

    /// Sets Cilium's `allow-localhost` (whether the node's own traffic reaches endpoints
    /// without a rule naming the host) and re-resolves every endpoint under the new
    /// setting; returns the endpoints re-resolved (none when the host's treatment is
    /// unchanged, as from `auto` to `always`).
    pub fn set_allow_localhost(&mut self, setting: AllowLocalhost) -> Vec<EndpointId> {
        let before = self.repo.allow_localhost();
        self.repo.set_allow_localhost(setting);
        if before.allows_host() == setting.allows_host() {
            return vec![];
        }
        let ids: Vec<EndpointId> = self.endpoints.keys().cloned().collect();
        self.reresolve(&ids);
        ids
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

    /// The allocator, to feed it what it hands out (e.g. identities agreed
    /// cluster-wide before a batch of endpoints is upserted).
    pub fn allocator_mut(&mut self) -> &mut A {
        &mut self.allocator
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
        let (ids, affected) = self.upsert_endpoints(vec![(id.to_owned(), endpoint)])?;
        Ok((ids[0], affected))
    }

    /// Adds or updates many endpoints at once (an initial sync): identities are allocated
    /// first, then every endpoint is resolved once. Returns their identities, in order,
    /// and every endpoint re-resolved.
    pub fn upsert_endpoints(
        &mut self,
        batch: Vec<(EndpointId, Endpoint)>,
    ) -> Result<(Vec<Identity>, Vec<EndpointId>), IdentityError> {
        let mut changed_peers = Vec::new();
        let mut identities = Vec::with_capacity(batch.len());
        let mut affected = Vec::new();
        let mut named_changed = false;
        let mut own: Vec<EndpointId> = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (id, endpoint) in &batch {
            let identity = match self.allocator.allocate(&endpoint.labels) {
                Ok(i) => i,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if let Some(old) = self.endpoints.remove(id) {
                self.index_endpoint(id, &old.endpoint.labels, false);
                named_changed |= old.endpoint.named_ports != endpoint.named_ports;
                let released = if old.endpoint.labels != endpoint.labels {
                    self.release_identity(&old.endpoint.labels)
                        .map(|p| changed_peers.extend(p))
                } else {
                    // Same labels: give back the reference taken above.
                    self.allocator.release(&endpoint.labels).map(|_| ())
                };
                if let Err(e) = released {
                    failure = Some(e);
                }
            } else {
                named_changed |= !endpoint.named_ports.is_empty();
            }
            if self.cache.info(identity).is_none() {
                changed_peers.extend(self.cache.upsert_identity(
                    identity,
                    IdentityInfo {
                        labels: endpoint.labels.clone(),
                        cidr: None,
                    },
                ));
            }
            identities.push(identity);
            // A placeholder until resolved below, so peers and named ports see the endpoint.
            self.index_endpoint(id, &endpoint.labels, true);
            self.endpoints.insert(
                id.clone(),
                EndpointState {
                    endpoint: endpoint.clone(),
                    identity,
                    resolved: Arc::new(ResolvedPolicy::default()),
                },
            );
            own.push(id.clone());
            if failure.is_some() {
                break;
            }
        }
        if named_changed {
            self.rebuild_cluster_named_ports();
        }
        changed_peers.sort();
        changed_peers.dedup();
        affected.extend(self.reresolve_for_peers(&changed_peers));
        // Every endpoint taken in is resolved, even when a later one failed: a placeholder
        // must never stand in as "no policy".
        self.reresolve(&own);
        if let Some(e) = failure {
            return Err(e);
        }
        affected.extend(own);
        affected.sort();
        affected.dedup();
        Ok((identities, affected))
    }

    /// Removes an endpoint; returns the endpoints re-resolved.
    pub fn remove_endpoint(&mut self, id: &str) -> Result<Vec<EndpointId>, IdentityError> {
        let Some(old) = self.endpoints.remove(id) else {
            return Ok(vec![]);
        };
        self.index_endpoint(id, &old.endpoint.labels, false);
        if !old.endpoint.named_ports.is_empty() {
            self.rebuild_cluster_named_ports();
        }
        let changed = self.release_identity(&old.endpoint.labels)?;
        Ok(self.reresolve_for_peers(&changed))
    }

    /// Drops a reference to `labels`' identity; returns the peers whose selection changed
    /// when that freed it.
    fn release_identity(&mut self, labels: &LabelSet) -> Result<Vec<Peer>, IdentityError> {
        let id = self.allocator.lookup(labels);
        if self.allocator.release(labels)? {
            if let Some(id) = id {
                return Ok(self.cache.remove_identity(id));
            }
        }
        Ok(vec![])
    }

    fn rebuild_cluster_named_ports(&mut self) {
        let mut out: NamedPorts = BTreeMap::new();
        for s in self.endpoints.values() {
            for (n, ports) in &s.endpoint.named_ports {
                out.entry(n.clone())
                    .or_default()
                    .extend(ports.iter().copied());
            }
        }
        self.cluster_named = out;
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

    /// Adds or replaces many policies at once (an initial sync): every endpoint any of them
    /// selects is re-resolved once. Returns the endpoints re-resolved.
    pub fn apply_policies(&mut self, policies: Vec<Arc<CompiledPolicy>>) -> Vec<EndpointId> {
        let mut subjects = Vec::new();
        for p in policies {
            subjects.extend(p.rules.iter().map(|r| r.subject.clone()));
            if let Some(old) = self.repo.upsert(p) {
                subjects.extend(old.rules.iter().map(|r| r.subject.clone()));
            }
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
    pub fn cluster_named_ports(&self) -> &NamedPorts {
        &self.cluster_named
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
        self.changes_since_sweep += 1;
        if self.changes_since_sweep >= SWEEP_EVERY {
            // Selections no rule uses any more need not be kept up to date; sweeping now and
            // then keeps a policy change from paying for every other policy's peers.
            self.changes_since_sweep = 0;
            let repo = &self.repo;
            self.cache
                .retain(|p| matches!(p, Peer::Labels(_)) || repo.peer_in_use(p));
        }
        self.reresolve_for_peers(&changed)
    }

    fn reresolve_selected(&mut self, subjects: &[Subject]) -> Vec<EndpointId> {
        // Subjects that require an exact label only need to look at endpoints carrying it.
        let mut candidates: BTreeSet<&EndpointId> = BTreeSet::new();
        let mut scan_all = false;
        for sub in subjects {
            match index_label(sub) {
                Some(l) => candidates.extend(self.ep_by_label.get(&l).into_iter().flatten()),
                None => scan_all = true,
            }
        }
        let pool: Vec<&EndpointId> = if scan_all {
            self.endpoints.keys().collect()
        } else {
            candidates.into_iter().collect()
        };
        let ids: Vec<EndpointId> = pool
            .into_iter()
            .filter(|id| {
                self.endpoints.get(*id).is_some_and(|s| {
                    subjects
                        .iter()
                        .any(|sub| subject_selects(sub, &s.endpoint.labels))
                })
            })
            .cloned()
            .collect();
        self.reresolve(&ids);
        ids
    }

    fn index_endpoint(&mut self, id: &str, labels: &LabelSet, add: bool) {
        for l in labels.iter() {
            let key = (l.key.clone(), l.value.clone());
            if add {
                self.ep_by_label
                    .entry(key)
                    .or_default()
                    .insert(id.to_owned());
            } else if let Some(set) = self.ep_by_label.get_mut(&key) {
                set.remove(id);
                if set.is_empty() {
                    self.ep_by_label.remove(&key);
                }
            }
        }
    }

    fn reresolve_for_peers(&mut self, changed: &[Peer]) -> Vec<EndpointId> {
        if changed.is_empty() {
            return vec![];
        }
        // A changed selection no rule names literally is one narrowed by fromRequires or
        // toRequires; those only exist for endpoints selected by a rule with requirements.
        let mut subjects = Vec::new();
        let mut derived_changed = false;
        for p in changed {
            if self.repo.peer_in_use(p) {
                subjects.extend(self.repo.subjects_using_peer(p));
            } else {
                derived_changed = true;
            }
        }
        if derived_changed {
            subjects.extend(self.repo.subjects_with_requires());
        }
        self.reresolve_selected(&subjects)
    }

    fn reresolve(&mut self, ids: &[EndpointId]) {
        // A resolution depends only on the endpoint (labels and named ports), the rules and
        // the cluster's named ports, none of which change during this call: the replicas
        // of one workload are resolved once and share the result.
        let mut done: HashMap<Endpoint, Arc<ResolvedPolicy>> = HashMap::new();
        for id in ids {
            let Some(state) = self.endpoints.get(id) else {
                continue;
            };
            let resolved = match done.get(&state.endpoint) {
                Some(r) => r.clone(),
                None => {
                    let ep = state.endpoint.clone();
                    let r = self.repo.resolve(&ep, &mut self.cache, &self.cluster_named);
                    let r = match &state.resolved {
                        old if **old == r => old.clone(),
                        _ => Arc::new(r),
                    };
                    done.insert(ep, r.clone());
                    r
                }
            };
            if let Some(state) = self.endpoints.get_mut(id) {
                if !Arc::ptr_eq(&state.resolved, &resolved) && *state.resolved != *resolved {
                    state.resolved = resolved;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_file;
    use crate::resolve::Verdict;
    use crate::rule::Proto;

    fn policy(text: &str) -> Arc<CompiledPolicy> {
        parse_file("t.yaml", text)
            .unwrap()
            .remove(0)
            .result
            .unwrap()
    }

    fn ep(labels: &str) -> Endpoint {
        Endpoint {
            labels: crate::trace::pod_labels(LabelSet::parse(labels).unwrap()),
            named_ports: NamedPorts::new(),
        }
    }

    const ALLOW_FROM_CLIENT: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n";

    #[test]
    fn changes_reresolve_only_what_they_affect() {
        let mut e = Engine::default();
        e.upsert_endpoints(vec![
            ("server".into(), ep("k8s:app=server")),
            ("other".into(), ep("k8s:app=other")),
        ])
        .unwrap();
        let other_before = e.resolved("other").unwrap();
        // A policy re-resolves the endpoints it selects, and only those.
        assert_eq!(e.apply_policy(policy(ALLOW_FROM_CLIENT)), ["server"]);
        assert!(
            Arc::ptr_eq(&other_before, &e.resolved("other").unwrap()),
            "untouched endpoint keeps its resolution"
        );
        // A client appearing later is a new identity the server's rule selects: the server is
        // re-resolved and now admits it.
        let (client_id, affected) = e.upsert_endpoint("client", ep("k8s:app=client")).unwrap();
        assert!(affected.contains(&"server".to_string()), "{affected:?}");
        assert!(!affected.contains(&"other".to_string()), "{affected:?}");
        let server = e.resolved("server").unwrap();
        assert_eq!(
            server
                .ingress
                .connection(client_id, Proto::Tcp, 80)
                .l4_verdict(),
            Verdict::Allowed
        );
        // When the client goes away its identity is released and the server no longer lists it.
        e.remove_endpoint("client").unwrap();
        let server = e.resolved("server").unwrap();
        assert_eq!(
            server
                .ingress
                .connection(client_id, Proto::Tcp, 80)
                .l4_verdict(),
            Verdict::Denied
        );
        // Deleting the policy lifts enforcement.
        assert_eq!(e.delete_policy(&policy(ALLOW_FROM_CLIENT).key), ["server"]);
        assert!(!e.resolved("server").unwrap().ingress.enforced);
    }

    #[test]
    fn cidr_identities_follow_the_policies() {
        let mut e = Engine::default();
        e.upsert_endpoint("server", ep("k8s:app=server")).unwrap();
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromCIDR: [10.0.0.0/8]\n";
        e.apply_policy(policy(text));
        let prefixes: Vec<String> = e.cidr_identities().keys().map(|p| p.to_string()).collect();
        assert_eq!(prefixes, ["10.0.0.0/8"]);
        let id = e.cidr_identities()[&"10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            e.resolved("server")
                .unwrap()
                .ingress
                .connection(id, Proto::Tcp, 22)
                .l4_verdict(),
            Verdict::Allowed
        );
        e.delete_policy(&policy(text).key);
        assert!(e.cidr_identities().is_empty());
    }
}
