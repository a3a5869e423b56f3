//! Identities for the translator: process-local, or agreed cluster-wide in
//! etcd.
//!
//! The policy engine's allocator is synchronous and must not do I/O. With
//! etcd, the controller bridges: before translating, it asks
//! [`ClusterIdentities`] for the identity of every pod label set the state
//! holds (new ones are allocated with etcd transactions, known ones come
//! from a cache), and seeds the translator's [`ClusterAllocator`] with the
//! answers; the engine then only looks numbers up. A label set etcd could
//! not give a number to (etcd down) fails that pod's translation, and its
//! sidecar keeps its previous snapshot. CIDR identities stay local to the
//! process (the engine allocates them above 2^24), as in Cilium.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use membrane_policy::identity::{
    Identity, IdentityAllocator, IdentityError, IdentityInfo, MemoryAllocator, RESERVED,
};
use membrane_policy::LabelSet;

use crate::kvstore::{IdentityStore, IpEntry};

/// The translator's allocator.
#[derive(Debug, Clone)]
pub enum ClusterAllocator {
    /// Numbers handed out by this process (the embedded default).
    Local(MemoryAllocator),
    /// Numbers agreed cluster-wide, fed in with [`ClusterAllocator::seed`].
    Seeded(Seeded),
}

impl Default for ClusterAllocator {
    fn default() -> Self {
        ClusterAllocator::Local(MemoryAllocator::new())
    }
}

/// Identities allocated elsewhere, with this process's references.
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    by_labels: HashMap<LabelSet, Identity>,
    by_id: BTreeMap<Identity, LabelSet>,
    refs: HashMap<LabelSet, usize>,
}

impl ClusterAllocator {
    /// An allocator that only hands out seeded numbers.
    pub fn seeded() -> Self {
        let mut s = Seeded::default();
        for (n, name) in RESERVED {
            s.by_id
                .insert(Identity(*n), IdentityInfo::reserved(name).labels);
        }
        ClusterAllocator::Seeded(s)
    }

    /// Teaches a seeded allocator numbers agreed elsewhere (no-op when local).
    pub fn seed(&mut self, ids: impl IntoIterator<Item = (LabelSet, Identity)>) {
        if let ClusterAllocator::Seeded(s) = self {
            for (l, id) in ids {
                s.by_id.insert(id, l.clone());
                s.by_labels.insert(l, id);
            }
        }
    }

    /// Whether numbers come from outside.
    pub fn is_seeded(&self) -> bool {
        matches!(self, ClusterAllocator::Seeded(_))
    }
}

impl IdentityAllocator for ClusterAllocator {
    fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError> {
        let s = match self {
            ClusterAllocator::Local(m) => return m.allocate(labels),
            ClusterAllocator::Seeded(s) => s,
        };
        if let Some(id) = Identity::reserved_for(labels) {
            return Ok(id);
        }
        let id = *s.by_labels.get(labels).ok_or_else(|| {
            IdentityError::Store(format!("no cluster-wide identity for labels {labels} yet"))
        })?;
        *s.refs.entry(labels.clone()).or_default() += 1;
        Ok(id)
    }

    fn release(&mut self, labels: &LabelSet) -> Result<bool, IdentityError> {
        let s = match self {
            ClusterAllocator::Local(m) => return m.release(labels),
            ClusterAllocator::Seeded(s) => s,
        };
        let Some(r) = s.refs.get_mut(labels) else {
            return Ok(false);
        };
        *r -= 1;
        if *r > 0 {
            return Ok(false);
        }
        // The number stays agreed; only this process's use ends.
        s.refs.remove(labels);
        Ok(true)
    }

    fn lookup(&self, labels: &LabelSet) -> Option<Identity> {
        match self {
            ClusterAllocator::Local(m) => m.lookup(labels),
            ClusterAllocator::Seeded(s) => Identity::reserved_for(labels).or_else(|| {
                s.refs
                    .contains_key(labels)
                    .then(|| s.by_labels.get(labels).copied())
                    .flatten()
            }),
        }
    }

    fn labels_of(&self, id: Identity) -> Option<&LabelSet> {
        match self {
            ClusterAllocator::Local(m) => m.labels_of(id),
            ClusterAllocator::Seeded(s) => s.by_id.get(&id),
        }
    }
}

/// A cluster-wide identity authority, called by the controller before each
/// translation, and told afterwards what was resolved so it can register it.
pub trait ClusterIdentities: Send + std::fmt::Debug {
    /// The identity of each label set in `want`, allocating new ones; label
    /// sets that could not get one are reported as errors, the rest answered.
    fn allocate(&mut self, want: &[LabelSet]) -> (Vec<(LabelSet, Identity)>, Vec<String>);
    /// What the control plane resolved: address → entry.
    fn publish(&mut self, entries: BTreeMap<String, IpEntry>);
}

/// [`ClusterIdentities`] over etcd. Allocation is async; the controller is
/// not, so calls run on the runtime given at construction, outside the
/// calling worker's scheduling slot (`block_in_place`), bounded by a
/// deadline per reconcile.
#[derive(Debug)]
pub struct EtcdIdentities {
    store: IdentityStore,
    handle: tokio::runtime::Handle,
    deadline: Duration,
    registrations: tokio::sync::watch::Sender<BTreeMap<String, IpEntry>>,
}

impl EtcdIdentities {
    /// Allocates through `store`; registrations go to `registrations`
    /// (read by [`crate::kvstore::register`]).
    pub fn new(
        store: IdentityStore,
        handle: tokio::runtime::Handle,
        registrations: tokio::sync::watch::Sender<BTreeMap<String, IpEntry>>,
    ) -> Self {
        EtcdIdentities {
            store,
            handle,
            deadline: Duration::from_secs(5),
            registrations,
        }
    }
}

impl ClusterIdentities for EtcdIdentities {
    fn allocate(&mut self, want: &[LabelSet]) -> (Vec<(LabelSet, Identity)>, Vec<String>) {
        let mut out = Vec::with_capacity(want.len());
        let mut missing = Vec::new();
        for l in want {
            match self.store.cached(l) {
                Some(id) => out.push((l.clone(), id)),
                None => missing.push(l.clone()),
            }
        }
        if missing.is_empty() {
            return (out, vec![]);
        }
        let store = &mut self.store;
        let deadline = self.deadline;
        let work = async move {
            let mut got = Vec::new();
            let mut errors = Vec::new();
            let start = tokio::time::Instant::now();
            for l in missing {
                if start.elapsed() >= deadline {
                    errors.push(format!(
                        "labels {l}: no identity: etcd deadline {deadline:?} passed"
                    ));
                    continue;
                }
                match store.allocate(&l).await {
                    Ok(id) => got.push((l, id)),
                    Err(e) => {
                        errors.push(format!("labels {l}: no identity: {e}"));
                    }
                }
            }
            (got, errors)
        };
        let handle = self.handle.clone();
        let (got, errors) = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(work))
            }
            // Outside any runtime (tests, tools) block directly.
            Err(_) => handle.block_on(work),
            Ok(_) => (
                vec![],
                vec!["etcd identities need a multi-threaded runtime".to_owned()],
            ),
        };
        out.extend(got);
        (out, errors)
    }

    fn publish(&mut self, entries: BTreeMap<String, IpEntry>) {
        self.registrations.send_if_modified(|cur| {
            if *cur == entries {
                false
            } else {
                *cur = entries;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_allocator_hands_out_only_seeded_numbers() {
        let mut a = ClusterAllocator::seeded();
        let l = LabelSet::parse("k8s:org=empire").unwrap();
        assert!(matches!(a.allocate(&l), Err(IdentityError::Store(_))));
        a.seed([(l.clone(), Identity(300))]);
        assert_eq!(a.lookup(&l), None, "not held yet");
        assert_eq!(a.allocate(&l).unwrap(), Identity(300));
        assert_eq!(a.allocate(&l).unwrap(), Identity(300));
        assert_eq!(a.lookup(&l), Some(Identity(300)));
        assert!(!a.release(&l).unwrap());
        assert!(a.release(&l).unwrap());
        assert_eq!(a.labels_of(Identity(300)), Some(&l));
        assert_eq!(
            a.labels_of(Identity::WORLD).unwrap().to_string(),
            "reserved:world"
        );
        assert_eq!(
            a.allocate(&LabelSet::parse("reserved:host").unwrap())
                .unwrap(),
            Identity::HOST
        );
    }
}
