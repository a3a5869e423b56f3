//! Cluster-wide identity allocation: the number and label keys created
//! together in one transaction, so replicas agree on one number per label set.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use membrane_policy::identity::Identity;
use membrane_policy::LabelSet;
use tracing::info;

use super::{list, within, KvError, ID_BY_LABELS, ID_BY_NUMBER, MAX_IDENTITY};

fn parse_number(key: &str, text: &str) -> Result<Identity, KvError> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (Identity::MIN_CLUSTER..=MAX_IDENTITY).contains(n))
        .map(Identity)
        .ok_or_else(|| KvError::Value {
            key: key.to_owned(),
            message: format!(
                "{text:?} is not an identity number in {}..={MAX_IDENTITY}",
                Identity::MIN_CLUSTER
            ),
        })
}

/// Allocates cluster-wide identities. Keeps what it learned: an identity,
/// once allocated, never changes number.
#[derive(Clone)]
pub struct IdentityStore {
    client: Client,
    next: u32,
    known: HashMap<LabelSet, Identity>,
}

impl std::fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityStore")
            .field("next", &self.next)
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

impl IdentityStore {
    /// A store over `client`.
    pub fn new(client: Client) -> Self {
        IdentityStore {
            client,
            next: Identity::MIN_CLUSTER,
            known: HashMap::new(),
        }
    }

    /// The identity already known for `labels`, without asking etcd.
    pub fn cached(&self, labels: &LabelSet) -> Option<Identity> {
        Identity::reserved_for(labels).or_else(|| self.known.get(labels).copied())
    }

    /// The identity of `labels`: the one etcd holds, or a new one created
    /// with a transaction.
    pub async fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, KvError> {
        if let Some(id) = self.cached(labels) {
            return Ok(id);
        }
        let text = labels.to_string();
        let lkey = format!("{ID_BY_LABELS}{text}");
        let limit = Duration::from_secs(5);
        let r = within(limit, self.client.get(lkey.as_str(), None)).await?;
        if let Some(kv) = r.kvs().first() {
            let id = parse_number(&lkey, kv.value_str()?)?;
            self.known.insert(labels.clone(), id);
            return Ok(id);
        }
        let mut conflicts = 0;
        loop {
            if self.next > MAX_IDENTITY || conflicts > 0 {
                self.next = self.highest().await? + 1;
                if self.next > MAX_IDENTITY {
                    // Numbers freed by hand below the highest are found by
                    // a scan from the bottom.
                    self.next = self.lowest_free().await?;
                }
            }
            let n = self.next;
            let nkey = format!("{ID_BY_NUMBER}{n}");
            let txn = Txn::new()
                .when([
                    Compare::create_revision(lkey.as_str(), CompareOp::Equal, 0),
                    Compare::create_revision(nkey.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(nkey.as_str(), text.as_str(), None),
                    TxnOp::put(lkey.as_str(), n.to_string(), None),
                ])
                .or_else([TxnOp::get(lkey.as_str(), None)]);
            let resp = within(limit, self.client.txn(txn)).await?;
            if resp.succeeded() {
                info!(identity = n, labels = %text, "allocated cluster-wide identity");
                self.next = n + 1;
                self.known.insert(labels.clone(), Identity(n));
                return Ok(Identity(n));
            }
            // Another replica created the label key first: use its number.
            if let Some(TxnOpResponse::Get(g)) = resp.op_responses().first() {
                if let Some(kv) = g.kvs().first() {
                    let id = parse_number(&lkey, kv.value_str()?)?;
                    self.known.insert(labels.clone(), id);
                    return Ok(id);
                }
            }
            // The number went to another label set: look again.
            conflicts += 1;
            self.next = n + 1;
            if conflicts > 64 {
                return Err(KvError::Object(format!(
                    "identity for {text}: gave up after {conflicts} conflicting allocations"
                )));
            }
        }
    }

    async fn numbers(&mut self) -> Result<Vec<u32>, KvError> {
        let r = within(
            Duration::from_secs(5),
            self.client.get(
                ID_BY_NUMBER,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(ID_BY_NUMBER)?
                    .parse()
                    .ok()
            })
            .collect())
    }

    async fn highest(&mut self) -> Result<u32, KvError> {
        Ok(self
            .numbers()
            .await?
            .into_iter()
            .max()
            .unwrap_or(Identity::MIN_CLUSTER - 1))
    }

    async fn lowest_free(&mut self) -> Result<u32, KvError> {
        let used: std::collections::BTreeSet<u32> = self.numbers().await?.into_iter().collect();
        (Identity::MIN_CLUSTER..=MAX_IDENTITY)
            .find(|n| !used.contains(n))
            .ok_or(KvError::Exhausted)
    }
}

/// Every identity in etcd: number → label set text.
pub async fn list_identities(client: &mut Client) -> Result<BTreeMap<u32, String>, KvError> {
    let mut out = BTreeMap::new();
    for (k, v) in list(client, ID_BY_NUMBER).await? {
        let n = parse_number(&k, k.strip_prefix(ID_BY_NUMBER).unwrap_or(""))?;
        out.insert(n.0, v);
    }
    Ok(out)
}
