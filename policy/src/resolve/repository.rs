//! The repository: the policies in force, indexed so that finding the rules that select an
//! endpoint looks only at the rules that can.

use super::direction::resolve_direction;
use super::*;

/// The set of policies in force. Policies are replaced whole, by key.
///
/// Rules are indexed by one exact label their subject requires (the most specific one:
/// not the namespace when another is available), so finding the rules that select an
/// endpoint looks only at rules sharing one of its labels, plus the few with no exact
/// requirement; resolution cost then grows with the rules that matter, not all of them.
#[derive(Debug, Clone, Default)]
pub struct Repository {
    policies: BTreeMap<PolicyKey, Arc<CompiledPolicy>>,
    revision: u64,
    /// (label key, value) → rules whose subject requires exactly that label.
    by_label: HashMap<(String, String), Vec<(PolicyKey, usize)>>,
    /// Rules whose subject requires no single exact label.
    unindexed: BTreeSet<(PolicyKey, usize)>,
    /// How many rules name each CIDR prefix.
    cidr_refs: BTreeMap<IpNet, usize>,
    /// Peer selector → rules naming it, to find who a changed selection affects.
    by_peer: HashMap<Peer, Vec<(PolicyKey, usize)>>,
    /// Rules with fromRequires/toRequires (they narrow other rules' peers).
    with_requires: BTreeSet<(PolicyKey, usize)>,
    /// What rules of L7 protocols membrane does not enforce do.
    unenforced_l7: UnenforcedL7Mode,
    /// Whether the host reaches endpoints without a rule naming it.
    allow_localhost: AllowLocalhost,
}

/// The exact label a subject is indexed by, if any.
pub(crate) fn index_label(subject: &Subject) -> Option<(String, String)> {
    let Subject::Endpoints(sel) = subject else {
        return None;
    };
    let exact = |r: &&crate::selector::Requirement| match &r.op {
        crate::selector::Operator::In(v) if v.len() == 1 => Some((r.key.clone(), v[0].clone())),
        _ => None,
    };
    let reqs = sel.requirements();
    reqs.iter()
        .filter(|r| r.key != crate::labels::POD_NAMESPACE)
        .find_map(|r| exact(&r))
        .or_else(|| reqs.iter().find_map(|r| exact(&r)))
}

fn rule_peers(r: &CompiledRule) -> impl Iterator<Item = &Peer> {
    let mut seen: Vec<&Peer> = r
        .ingress
        .iter()
        .chain(r.egress.iter())
        .flat_map(|d| d.peers.iter())
        .collect();
    seen.sort();
    seen.dedup();
    seen.into_iter()
}

fn cidrs_of(p: &CompiledPolicy) -> impl Iterator<Item = IpNet> + '_ {
    p.rules
        .iter()
        .flat_map(|r| r.ingress.iter().chain(r.egress.iter()))
        .flat_map(|d| d.peers.iter())
        .filter_map(|peer| {
            if let Peer::Cidr(c) = peer {
                Some(*c)
            } else {
                None
            }
        })
}

impl Repository {
    /// An empty repository.
    pub fn new() -> Self {
        Repository {
            revision: 1,
            ..Default::default()
        }
    }

    /// Adds or replaces a policy; returns the one it replaced.
    pub fn upsert(&mut self, p: Arc<CompiledPolicy>) -> Option<Arc<CompiledPolicy>> {
        self.revision += 1;
        let old = self.policies.insert(p.key.clone(), p.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&p);
        old
    }

    /// Removes a policy.
    pub fn remove(&mut self, key: &PolicyKey) -> Option<Arc<CompiledPolicy>> {
        let old = self.policies.remove(key);
        if let Some(old) = &old {
            self.revision += 1;
            self.unindex(old);
        }
        old
    }

    fn index(&mut self, p: &CompiledPolicy) {
        for (i, r) in p.rules.iter().enumerate() {
            match index_label(&r.subject) {
                Some(l) => self.by_label.entry(l).or_default().push((p.key.clone(), i)),
                None => {
                    self.unindexed.insert((p.key.clone(), i));
                }
            }
        }
        for c in cidrs_of(p) {
            *self.cidr_refs.entry(c).or_default() += 1;
        }
        for (i, r) in p.rules.iter().enumerate() {
            for peer in rule_peers(r) {
                self.by_peer
                    .entry(peer.clone())
                    .or_default()
                    .push((p.key.clone(), i));
            }
            if !r.requires_ingress.is_empty() || !r.requires_egress.is_empty() {
                self.with_requires.insert((p.key.clone(), i));
            }
        }
    }

    fn unindex(&mut self, p: &CompiledPolicy) {
        for (i, r) in p.rules.iter().enumerate() {
            match index_label(&r.subject) {
                Some(l) => {
                    if let Some(v) = self.by_label.get_mut(&l) {
                        v.retain(|(k, j)| !(k == &p.key && *j == i));
                        if v.is_empty() {
                            self.by_label.remove(&l);
                        }
                    }
                }
                None => {
                    self.unindexed.remove(&(p.key.clone(), i));
                }
            }
        }
        for c in cidrs_of(p) {
            if let Some(n) = self.cidr_refs.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    self.cidr_refs.remove(&c);
                }
            }
        }
        for (i, r) in p.rules.iter().enumerate() {
            for peer in rule_peers(r) {
                if let Some(v) = self.by_peer.get_mut(peer) {
                    v.retain(|(k, j)| !(k == &p.key && *j == i));
                    if v.is_empty() {
                        self.by_peer.remove(peer);
                    }
                }
            }
            self.with_requires.remove(&(p.key.clone(), i));
        }
    }

    fn rule(&self, key: &PolicyKey, i: usize) -> Option<&CompiledRule> {
        self.policies.get(key).and_then(|p| p.rules.get(i))
    }

    /// Subjects of the rules that name `peer`.
    pub fn subjects_using_peer(&self, peer: &Peer) -> Vec<Subject> {
        self.by_peer
            .get(peer)
            .into_iter()
            .flatten()
            .filter_map(|(k, i)| self.rule(k, *i).map(|r| r.subject.clone()))
            .collect()
    }

    /// True if some rule names `peer` literally.
    pub fn peer_in_use(&self, peer: &Peer) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// Subjects of the rules that carry fromRequires/toRequires.
    pub fn subjects_with_requires(&self) -> Vec<Subject> {
        self.with_requires
            .iter()
            .filter_map(|(k, i)| self.rule(k, *i).map(|r| r.subject.clone()))
            .collect()
    }

    /// Increases with every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The policies, ordered by key.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<CompiledPolicy>> {
        self.policies.values()
    }

    /// A policy by key.
    pub fn get(&self, key: &PolicyKey) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(key)
    }

    /// Every CIDR prefix the policies name; each needs a CIDR identity in the ipcache.
    pub fn cidr_prefixes(&self) -> BTreeSet<IpNet> {
        self.cidr_refs.keys().copied().collect()
    }

    /// The rules that select an endpoint with `labels`, in (policy, rule) order.
    pub fn selecting_rules(&self, labels: &LabelSet) -> Vec<(&PolicyKey, &CompiledRule)> {
        let mut candidates: Vec<&(PolicyKey, usize)> = self.unindexed.iter().collect();
        for l in labels.iter() {
            if let Some(v) = self.by_label.get(&(l.key.clone(), l.value.clone())) {
                candidates.extend(v.iter());
            }
        }
        candidates.sort();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|(k, i)| {
                let p = self.policies.get(k)?;
                Some((&p.key, p.rules.get(*i)?))
            })
            .filter(|(_, r)| subject_selects(&r.subject, labels))
            .collect()
    }

    /// Resolves the policy of `ep`. `cluster_named_ports` resolves named ports in egress
    /// rules (a destination's port names, cluster-wide, as Cilium does).
    pub fn resolve(
        &self,
        ep: &Endpoint,
        cache: &mut SelectorCache,
        cluster_named_ports: &NamedPorts,
    ) -> ResolvedPolicy {
        let selecting = self.selecting_rules(&ep.labels);
        let mut ingress = resolve_direction(&selecting, Direction::Ingress, cache, &ep.named_ports);
        let mut egress =
            resolve_direction(&selecting, Direction::Egress, cache, cluster_named_ports);
        ingress.unenforced_l7 = self.unenforced_l7;
        egress.unenforced_l7 = self.unenforced_l7;
        // Ingress only, and never for the host endpoint itself (as Cilium: its host
        // policies are the host's own business).
        ingress.allow_localhost = ingress.enforced
            && self.allow_localhost.allows_host()
            && !ep.labels.has_key(SOURCE_RESERVED, "host");
        ResolvedPolicy {
            ingress,
            egress,
            revision: self.revision,
        }
    }

    /// What rules of L7 protocols membrane does not enforce do in resolutions from now on
    /// (default: [`UnenforcedL7Mode::FailClosed`]).
    pub fn set_unenforced_l7(&mut self, mode: UnenforcedL7Mode) {
        self.unenforced_l7 = mode;
    }

    /// The current unenforced-L7 setting.
    pub fn unenforced_l7(&self) -> UnenforcedL7Mode {
        self.unenforced_l7
    }

    /// Whether the host reaches endpoints without a rule naming it, in resolutions from
    /// now on (default: [`AllowLocalhost::Auto`], which allows it).
    pub fn set_allow_localhost(&mut self, setting: AllowLocalhost) {
        self.allow_localhost = setting;
    }

    /// The current allow-localhost setting.
    pub fn allow_localhost(&self) -> AllowLocalhost {
        self.allow_localhost
    }
}

/// Whether a rule's subject selects an endpoint with these labels.
pub fn subject_selects(subject: &Subject, labels: &LabelSet) -> bool {
    // The host endpoint is policed only by host policies (nodeSelector); an endpointSelector,
    // even `{}` in a cluster-wide policy, selects pods.
    let host = labels.has_key(SOURCE_RESERVED, "host");
    match subject {
        Subject::Endpoints(s) => !host && s.matches(labels),
        Subject::Nodes(s) => host && s.matches(labels),
    }
}
