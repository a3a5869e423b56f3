//! Security identities: a number standing for a set of labels, as in Cilium.
//!
//! Reserved identities keep Cilium's numbers so that tooling and the wire (NPDS/NPHDS)
//! agree; cluster identities are allocated from 256 up; CIDR identities are node-local
//! and live above 2^24, like Cilium's local-scope identities.

use crate::labels::{Label, LabelSet, SOURCE_CIDR, SOURCE_RESERVED};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A numeric security identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity(pub u32);

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Cilium's reserved identities, with their numbers and `reserved:` label names.
pub const RESERVED: &[(u32, &str)] = &[
    (1, "host"),
    (2, "world"),
    (3, "unmanaged"),
    (4, "health"),
    (5, "init"),
    (6, "remote-node"),
    (7, "kube-apiserver"),
    (8, "ingress"),
    (9, "world-ipv4"),
    (10, "world-ipv6"),
];

impl Identity {
    /// The local host.
    pub const HOST: Identity = Identity(1);
    /// Everything outside the cluster.
    pub const WORLD: Identity = Identity(2);
    /// Endpoints not managed by the datapath.
    pub const UNMANAGED: Identity = Identity(3);
    /// Health-check endpoints.
    pub const HEALTH: Identity = Identity(4);
    /// Endpoints whose identity is not resolved yet.
    pub const INIT: Identity = Identity(5);
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: Identity = Identity(6);
    /// The Kubernetes API server.
    pub const KUBE_APISERVER: Identity = Identity(7);
    /// The ingress proxy.
    pub const INGRESS: Identity = Identity(8);
    /// IPv4 addresses outside the cluster.
    pub const WORLD_IPV4: Identity = Identity(9);
    /// IPv6 addresses outside the cluster.
    pub const WORLD_IPV6: Identity = Identity(10);
    /// First identity handed out for label sets.
    pub const MIN_CLUSTER: u32 = 256;
    /// First node-local identity (CIDR identities).
    pub const MIN_LOCAL: u32 = 1 << 24;

    /// The reserved identity whose label set is exactly one `reserved:` label, if any.
    pub fn reserved_for(labels: &LabelSet) -> Option<Identity> {
        if labels.len() != 1 {
            return None;
        }
        let l = labels.iter().next()?;
        if l.source != SOURCE_RESERVED {
            return None;
        }
        RESERVED
            .iter()
            .find(|(_, name)| *name == l.key)
            .map(|(n, _)| Identity(*n))
    }
}

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdentityInfo {
    /// Its labels.
    pub labels: LabelSet,
    /// For a CIDR identity, its prefix (the identity then also carries `reserved:world`).
    pub cidr: Option<IpNet>,
}

impl IdentityInfo {
    /// Labels of the reserved identity `name`.
    pub fn reserved(name: &str) -> Self {
        IdentityInfo {
            labels: LabelSet::from_labels([Label::new(SOURCE_RESERVED, name, "")]),
            cidr: None,
        }
    }

    /// The identity of addresses in `prefix` outside the cluster.
    pub fn cidr(prefix: IpNet) -> Self {
        let prefix = prefix.trunc();
        IdentityInfo {
            labels: LabelSet::from_labels([
                Label::new(SOURCE_CIDR, &prefix.to_string(), ""),
                Label::new(SOURCE_RESERVED, "world", ""),
            ]),
            cidr: Some(prefix),
        }
    }
}

/// Errors from identity allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The numeric space is used up.
    #[error("identity space exhausted ({0} identities in use)")]
    Exhausted(usize),
    /// The backing store failed.
    #[error("identity store: {0}")]
    Store(String),
}

/// Allocates identities for label sets: the same labels get the same number while any user
/// holds them. The in-memory allocator serves one process; the control plane's etcd-backed
/// one makes the numbers agree across the cluster.
pub trait IdentityAllocator {
    /// Returns the identity for `labels`, allocating it on first use, and takes a reference.
    fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError>;
    /// Drops a reference; returns true when the identity was freed.
    fn release(&mut self, labels: &LabelSet) -> Result<bool, IdentityError>;
    /// The identity currently held for `labels`, if any.
    fn lookup(&self, labels: &LabelSet) -> Option<Identity>;
    /// The labels behind an identity, if it is known.
    fn labels_of(&self, id: Identity) -> Option<&LabelSet>;
}

/// A reference-counted allocator in memory. Reserved label sets map to their reserved numbers.
#[derive(Debug, Clone)]
pub struct MemoryAllocator {
    by_labels: HashMap<LabelSet, (Identity, usize)>,
    by_id: BTreeMap<Identity, LabelSet>,
    next: u32,
    first: u32,
    limit: u32,
}

impl Default for MemoryAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryAllocator {
    /// An allocator over Cilium's cluster-scope range (256..=65535).
    pub fn new() -> Self {
        Self::with_range(Identity::MIN_CLUSTER, 65535)
    }

    /// An allocator handing out `first..=last`.
    pub fn with_range(first: u32, last: u32) -> Self {
        let mut by_id = BTreeMap::new();
        for (n, name) in RESERVED {
            by_id.insert(Identity(*n), IdentityInfo::reserved(name).labels);
        }
        MemoryAllocator {
            by_labels: HashMap::new(),
            by_id,
            next: first,
            first,
            limit: last,
        }
    }

    /// Every identity known, reserved ones included.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &LabelSet)> {
        self.by_id.iter().map(|(i, l)| (*i, l))
    }
}

impl IdentityAllocator for MemoryAllocator {
    fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError> {
        if let Some(id) = Identity::reserved_for(labels) {
            return Ok(id);
        }
        if let Some((id, refs)) = self.by_labels.get_mut(labels) {
            *refs += 1;
            return Ok(*id);
        }
        // Numbers are not reused while the counter has room, so a stale number held by a
        // lagging consumer never names a different label set.
        let start = self.next;
        let mut candidate = start;
        while self.by_id.contains_key(&Identity(candidate)) {
            candidate = if candidate >= self.limit {
                self.first
            } else {
                candidate + 1
            };
            if candidate == start {
                return Err(IdentityError::Exhausted(self.by_labels.len()));
            }
        }
        let id = Identity(candidate);
        self.next = if candidate >= self.limit {
            self.first
        } else {
            candidate + 1
        };
        self.by_labels.insert(labels.clone(), (id, 1));
        self.by_id.insert(id, labels.clone());
        Ok(id)
    }

    fn release(&mut self, labels: &LabelSet) -> Result<bool, IdentityError> {
        let Some((id, refs)) = self.by_labels.get_mut(labels) else {
            return Ok(false);
        };
        *refs -= 1;
        if *refs > 0 {
            return Ok(false);
        }
        let id = *id;
        self.by_labels.remove(labels);
        self.by_id.remove(&id);
        Ok(true)
    }

    fn lookup(&self, labels: &LabelSet) -> Option<Identity> {
        Identity::reserved_for(labels).or_else(|| self.by_labels.get(labels).map(|(id, _)| *id))
    }

    fn labels_of(&self, id: Identity) -> Option<&LabelSet> {
        self.by_id.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_while_in_use_and_reserved_numbers() {
        let mut a = MemoryAllocator::new();
        let empire = LabelSet::parse("k8s:org=empire").unwrap();
        let x = a.allocate(&empire).unwrap();
        assert_eq!(a.allocate(&empire).unwrap(), x);
        assert!(x.0 >= 256);
        assert!(!a.release(&empire).unwrap());
        assert_eq!(a.lookup(&empire), Some(x));
        assert!(a.release(&empire).unwrap());
        assert_eq!(a.lookup(&empire), None);
        let y = a.allocate(&empire).unwrap();
        assert_ne!(x, y, "numbers are not reused right away");
        assert_eq!(
            a.allocate(&LabelSet::parse("reserved:world").unwrap())
                .unwrap(),
            Identity::WORLD
        );
        assert_eq!(
            a.allocate(&LabelSet::parse("reserved:kube-apiserver").unwrap())
                .unwrap(),
            Identity(7)
        );
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = MemoryAllocator::with_range(256, 257);
        a.allocate(&LabelSet::parse("a=1").unwrap()).unwrap();
        a.allocate(&LabelSet::parse("a=2").unwrap()).unwrap();
        assert!(matches!(
            a.allocate(&LabelSet::parse("a=3").unwrap()),
            Err(IdentityError::Exhausted(2))
        ));
    }
}
