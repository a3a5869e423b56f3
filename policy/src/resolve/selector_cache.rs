//! The selector cache: the identities known, and for each peer selector in use the
//! identities it selects.

use super::*;

/// The identities known to the engine and, for each peer selector in use, the identities
/// it selects. Sharing one set between all rules that use the same selector is what keeps
/// resolution cheap.
#[derive(Debug, Default)]
pub struct SelectorCache {
    identities: BTreeMap<Identity, IdentityInfo>,
    cache: HashMap<Peer, Arc<[Identity]>>,
}

impl SelectorCache {
    /// An empty universe with Cilium's reserved identities.
    pub fn new() -> Self {
        let mut c = SelectorCache::default();
        for (n, name) in crate::identity::RESERVED {
            c.identities
                .insert(Identity(*n), IdentityInfo::reserved(name));
        }
        c
    }

    /// Adds or replaces an identity; returns the cached peers whose selection changed.
    pub fn upsert_identity(&mut self, id: Identity, info: IdentityInfo) -> Vec<Peer> {
        let old = self.identities.insert(id, info.clone());
        let mut changed = Vec::new();
        for (peer, set) in self.cache.iter_mut() {
            let was = old.as_ref().is_some_and(|o| peer_matches(peer, o));
            let is = peer_matches(peer, &info);
            if was != is {
                let mut v: Vec<Identity> = set.iter().copied().filter(|x| *x != id).collect();
                if is {
                    let pos = v.binary_search(&id).unwrap_or_else(|p| p);
                    v.insert(pos, id);
                }
                *set = v.into();
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// Removes an identity; returns the cached peers whose selection changed.
    pub fn remove_identity(&mut self, id: Identity) -> Vec<Peer> {
        if self.identities.remove(&id).is_none() {
            return vec![];
        }
        let mut changed = Vec::new();
        for (peer, set) in self.cache.iter_mut() {
            if set.binary_search(&id).is_ok() {
                *set = set
                    .iter()
                    .copied()
                    .filter(|x| *x != id)
                    .collect::<Vec<_>>()
                    .into();
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// What an identity stands for.
    pub fn info(&self, id: Identity) -> Option<&IdentityInfo> {
        self.identities.get(&id)
    }

    /// Every known identity.
    pub fn identities(&self) -> impl Iterator<Item = (Identity, &IdentityInfo)> {
        self.identities.iter().map(|(i, n)| (*i, n))
    }

    /// The identities `peer` selects, sorted.
    pub fn select(&mut self, peer: &Peer) -> Arc<[Identity]> {
        if let Some(s) = self.cache.get(peer) {
            return s.clone();
        }
        let set: Arc<[Identity]> = self
            .identities
            .iter()
            .filter(|(_, info)| peer_matches(peer, info))
            .map(|(id, _)| *id)
            .collect();
        self.cache.insert(peer.clone(), set.clone());
        set
    }

    /// Drops cached selections no rule uses any more.
    pub fn retain(&mut self, keep: impl Fn(&Peer) -> bool) {
        self.cache.retain(|p, _| keep(p));
    }
}

/// Whether `peer` selects an identity.
pub fn peer_matches(peer: &Peer, info: &IdentityInfo) -> bool {
    match peer {
        Peer::Labels(sel) => sel.matches(&info.labels),
        Peer::Cidr(net) => match info.cidr {
            Some(c) => net.contains(&c),
            // The all-addresses prefix also selects the plain world identities, as Cilium
            // treats 0.0.0.0/0 and ::/0 as the world entity.
            None => net.prefix_len() == 0 && is_world(&info.labels, net),
        },
        Peer::Nodes(sel) => {
            (info.labels.has_key(SOURCE_RESERVED, "remote-node")
                || info.labels.has_key(SOURCE_RESERVED, "host"))
                && sel.matches(&info.labels)
        }
        Peer::Unresolved(_) => false,
    }
}

fn is_world(labels: &LabelSet, net: &IpNet) -> bool {
    let fam = match net {
        IpNet::V4(_) => "world-ipv4",
        IpNet::V6(_) => "world-ipv6",
    };
    labels.has_key(SOURCE_RESERVED, "world") || labels.has_key(SOURCE_RESERVED, fam)
}
