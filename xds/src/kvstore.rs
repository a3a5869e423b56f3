//! etcd as the cluster-wide key-value store: the key layout, object storage
//! for the CLI, cluster-wide identity allocation and the control plane's
//! lease-bound registrations.
//!
//! Key layout (every key under `/membrane/`, values are UTF-8):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `/membrane/objects/v1/<Kind>/<namespace>/<name>` | the object as JSON (CiliumNetworkPolicy, Pod, Service, EndpointSlice) | `membrane policy import`, `membrane etcd apply` |
//! | `/membrane/objects/v1/<Kind>/<name>` | the object as JSON (CiliumClusterwideNetworkPolicy, Namespace, Node) | same |
//! | `/membrane/identities/v1/id/<number>` | the label set, `source:key=value,...` sorted | the control plane, in one transaction with the next key |
//! | `/membrane/identities/v1/labels/<label set>` | the number, decimal | same |
//! | `/membrane/ipcache/v1/<ip>/<replica>` | `{"identity":N,"kind":"endpoint"|"node","name":...}` under the replica's lease | each control-plane replica |
//!
//! Identities follow the idea of Cilium's kvstore allocator: the number key
//! and the label key are created together by one transaction that succeeds
//! only if neither exists, so two replicas racing for the same label set
//! agree on one number, and two label sets never share one. The labels are
//! readable back from the number. Identities are not garbage-collected.
//!
//! Registrations live under a lease the replica keeps alive: when the replica
//! dies its entries expire with the lease.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use membrane_policy::identity::Identity;
use membrane_policy::LabelSet;
use serde_json::Value;
use thiserror::Error;
use tracing::{info, warn};

/// The etcd client type [`connect`] returns.
pub use etcd_client::Client as EtcdClient;

/// Every key membrane writes starts with this.
pub const ROOT: &str = "/membrane/";
/// Objects the etcd source reads.
pub const OBJECTS: &str = "/membrane/objects/v1/";
/// Identity number → label set.
pub const ID_BY_NUMBER: &str = "/membrane/identities/v1/id/";
/// Label set → identity number.
pub const ID_BY_LABELS: &str = "/membrane/identities/v1/labels/";
/// Endpoint and node addresses → identity, per replica, under its lease.
pub const IPCACHE: &str = "/membrane/ipcache/v1/";

/// Kinds stored under [`OBJECTS`], and whether they are namespaced.
pub const KINDS: &[(&str, bool)] = &[
    ("CiliumNetworkPolicy", true),
    ("CiliumClusterwideNetworkPolicy", false),
    ("Pod", true),
    ("Service", true),
    ("EndpointSlice", true),
    ("Namespace", false),
    ("Node", false),
];

/// Largest identity number handed out (Cilium's cluster-scope range).
const MAX_IDENTITY: u32 = 65535;
/// Operations per transaction (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// Errors talking to etcd or reading what it holds.
#[derive(Debug, Error)]
pub enum KvError {
    /// The client failed (connection, timeout, server error).
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    /// An operation did not finish in time.
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
    /// A stored value is not what its key says it should be.
    #[error("{key}: {message}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The identity range is used up.
    #[error("identity space exhausted: every number from 256 to {MAX_IDENTITY} is taken")]
    Exhausted,
    /// An object cannot be stored.
    #[error("{0}")]
    Object(String),
    /// A TLS file cannot be read, or an endpoint does not fit TLS.
    #[error("etcd TLS: {0}")]
    Tls(String),
}

/// TLS to etcd: the CA bundle its server certificate must chain to and,
/// for a server started with `--client-cert-auth`, the client's pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM CA bundle.
    pub ca: std::path::PathBuf,
    /// PEM client certificate chain and private key.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl EtcdTls {
    /// From the `--etcd-ca/--etcd-cert/--etcd-key` flags: `None` without a CA.
    pub fn from_flags(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Option<Self>, KvError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), None, None) => Ok(Some(EtcdTls {
                ca: ca.to_path_buf(),
                client: None,
            })),
            (Some(ca), Some(c), Some(k)) => Ok(Some(EtcdTls {
                ca: ca.to_path_buf(),
                client: Some((c.to_path_buf(), k.to_path_buf())),
            })),
            _ => Err(KvError::Tls(
                "--etcd-cert and --etcd-key go together, and need --etcd-ca".into(),
            )),
        }
    }

    fn options(&self) -> Result<etcd_client::TlsOptions, KvError> {
        let read = |flag: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| KvError::Tls(format!("{flag} {}: {e}", p.display())))
        };
        let mut o = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(read("--etcd-ca", &self.ca)?),
        );
        if let Some((cert, key)) = &self.client {
            o = o.identity(etcd_client::Identity::from_pem(
                read("--etcd-cert", cert)?,
                read("--etcd-key", key)?,
            ));
        }
        Ok(o)
    }
}

/// Connects to `endpoints` (`http://host:port` or `host:port`) in
/// plaintext. The channel is lazy: an unreachable etcd makes operations
/// fail, not this call.
pub async fn connect(endpoints: &[String]) -> Result<Client, KvError> {
    connect_tls(endpoints, None).await
}

/// [`connect`], over TLS when `tls` is given: endpoints are then
/// `https://host:port` or `host:port`, and the server's certificate must
/// chain to the CA and name the host dialled.
pub async fn connect_tls(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Client, KvError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // HTTP/2 pings find a dead server under an idle watch.
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    let mut urls = endpoints.to_vec();
    if let Some(tls) = tls {
        opts = opts.with_tls(tls.options()?);
        for u in &mut urls {
            if u.starts_with("http://") {
                return Err(KvError::Tls(format!(
                    "endpoint {u}: plaintext URL with --etcd-ca; use https://"
                )));
            }
            if !u.starts_with("https://") {
                *u = format!("https://{u}");
            }
        }
    }
    Ok(Client::connect(urls, Some(opts)).await?)
}

/// Runs `f` with a deadline.
pub async fn within<T, F>(limit: Duration, f: F) -> Result<T, KvError>
where
    F: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(KvError::Timeout(limit)),
    }
}

/// Whether `kind` is stored, and if it is namespaced.
pub fn kind_scope(kind: &str) -> Option<bool> {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, ns)| *ns)
}

/// The key of an object: namespaced kinds need `namespace`.
pub fn object_key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{OBJECTS}{kind}/{ns}/{name}"),
        None => format!("{OBJECTS}{kind}/{name}"),
    }
}

/// What a key under [`OBJECTS`] names: (kind, namespace, name).
pub fn parse_object_key(key: &str) -> Result<(String, Option<String>, String), String> {
    let rest = key
        .strip_prefix(OBJECTS)
        .ok_or_else(|| format!("{key}: not under {OBJECTS}"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let kind = parts[0];
    let Some(namespaced) = kind_scope(kind) else {
        return Err(format!(
            "{key}: kind {kind:?} is not one of {}",
            KINDS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
        ));
    };
    match (namespaced, &parts[1..]) {
        (true, [ns, name]) if !ns.is_empty() && !name.is_empty() => {
            Ok((kind.into(), Some((*ns).into()), (*name).into()))
        }
        (false, [name]) if !name.is_empty() => Ok((kind.into(), None, (*name).into())),
        (true, _) => Err(format!("{key}: expected {OBJECTS}{kind}/NAMESPACE/NAME")),
        (false, _) => Err(format!("{key}: expected {OBJECTS}{kind}/NAME")),
    }
}

/// One object ready to be stored: its key and JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Its key under [`OBJECTS`].
    pub key: String,
    /// `Kind namespace/name`.
    pub describe: String,
    /// The object as JSON.
    pub value: String,
}

fn flatten(v: Value, out: &mut Vec<Value>) {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        if let Some(Value::Array(items)) = v.get("items").cloned() {
            for i in items {
                flatten(i, out);
            }
        }
        return;
    }
    out.push(v);
}

/// Validates one file's text the way the control plane will (policies with
/// the policy engine, the core kinds with their parser) and splits it into
/// storable objects. `allowed` limits the kinds (empty: every stored kind).
/// Errors name file, object and field.
pub fn objects_from_file(
    file: &str,
    text: &str,
    allowed: &[&str],
) -> Result<Vec<StoredObject>, Vec<String>> {
    crate::source::dir::parse(file, text)
        .map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())?;
    let mut values = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        use serde::Deserialize;
        let v = Value::deserialize(doc)
            .map_err(|e| vec![format!("{file}: document {}: {e}", i + 1)])?;
        if !v.is_null() {
            flatten(v, &mut values);
        }
    }
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for mut v in values {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let namespaced = match kind_scope(&kind) {
            Some(n) if allowed.is_empty() || allowed.contains(&kind.as_str()) => n,
            _ => {
                let want = if allowed.is_empty() {
                    KINDS.iter().map(|k| k.0).collect::<Vec<_>>()
                } else {
                    allowed.to_vec()
                };
                errors.push(format!(
                    "{file}: {} {name}: kind: {kind:?} is not stored here; expected one of {}",
                    if kind.is_empty() { "object" } else { &kind },
                    want.join(", ")
                ));
                continue;
            }
        };
        if name.is_empty() || name.contains('/') {
            errors.push(format!(
                "{file}: {kind}: metadata.name: {name:?} is not a valid object name"
            ));
            continue;
        }
        let ns = if namespaced {
            let ns = v
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned();
            if ns.contains('/') {
                errors.push(format!(
                    "{file}: {kind} {name}: metadata.namespace: {ns:?} is not a valid namespace"
                ));
                continue;
            }
            // Stored with its namespace spelled out, so the value alone says
            // where it belongs.
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("namespace".into(), Value::String(ns.clone()));
            }
            Some(ns)
        } else {
            None
        };
        let describe = match &ns {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        };
        out.push(StoredObject {
            key: object_key(&kind, ns.as_deref(), &name),
            describe,
            value: v.to_string(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Writes `objects`, all in one transaction per 128 (etcd's limit), so a
/// small import lands whole or not at all. An object given twice is written
/// once, in its last version (etcd refuses a key twice in one transaction).
pub async fn put_objects(client: &mut Client, objects: &[StoredObject]) -> Result<(), KvError> {
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        last.insert(&o.key, i);
    }
    let mut order: Vec<usize> = last.into_values().collect();
    order.sort_unstable();
    let objects: Vec<&StoredObject> = order.into_iter().map(|i| &objects[i]).collect();
    for chunk in objects.chunks(MAX_TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|o| TxnOp::put(o.key.as_str(), o.value.as_str(), None))
            .collect();
        within(
            Duration::from_secs(10),
            client.txn(Txn::new().and_then(ops)),
        )
        .await?;
    }
    Ok(())
}

/// Every (key, value) under `prefix`, in key order.
pub async fn list(client: &mut Client, prefix: &str) -> Result<Vec<(String, String)>, KvError> {
    let r = within(
        Duration::from_secs(10),
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    r.kvs()
        .iter()
        .map(|kv| {
            Ok((
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Deletes `key`; false when it did not exist.
pub async fn delete(client: &mut Client, key: &str) -> Result<bool, KvError> {
    let r = within(Duration::from_secs(10), client.delete(key, None)).await?;
    Ok(r.deleted() > 0)
}

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

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// One registration: an address and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IpEntry {
    /// Numeric identity.
    pub identity: u32,
    /// `endpoint` or `node`.
    pub kind: String,
    /// `namespace/pod` or the node name.
    pub name: String,
}

/// Keeps this replica's registrations in etcd under a lease: writes what
/// `want` says (address → entry), renews the lease, and after a lost lease
/// (etcd down longer than the TTL) grants a new one and writes everything
/// again. Revokes the lease when `stop` fires, so a clean shutdown removes
/// the entries at once; a crash leaves them to expire.
pub async fn register(
    mut client: Client,
    replica: String,
    ttl: Duration,
    mut want: tokio::sync::watch::Receiver<BTreeMap<String, IpEntry>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let limit = Duration::from_secs(5);
    let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(60);
    loop {
        let lease = match within(limit, client.lease_grant(secs, None)).await {
            Ok(l) => l.id(),
            Err(e) => {
                warn!(error = %e, "etcd lease grant failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        let mut keeper = match within(limit, client.lease_keep_alive(lease)).await {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "etcd lease keep-alive failed; retrying");
                continue;
            }
        };
        info!(lease, %replica, "registrations under a new etcd lease");
        let mut written: BTreeMap<String, IpEntry> = BTreeMap::new();
        'lease: loop {
            let now = want.borrow_and_update().clone();
            let key = |ip: &str| format!("{IPCACHE}{ip}/{replica}");
            for (ip, e) in &now {
                if written.get(ip) == Some(e) {
                    continue;
                }
                let v = serde_json::to_string(e).unwrap_or_default();
                let put = client.put(key(ip), v, Some(PutOptions::new().with_lease(lease)));
                if let Err(e) = within(limit, put).await {
                    warn!(error = %e, "etcd registration failed; retrying");
                    break 'lease;
                }
                written.insert(ip.clone(), e.clone());
            }
            let gone: Vec<String> = written
                .keys()
                .filter(|ip| !now.contains_key(*ip))
                .cloned()
                .collect();
            for ip in gone {
                if let Err(e) = within(limit, client.delete(key(&ip), None)).await {
                    warn!(error = %e, "etcd deregistration failed; retrying");
                    break 'lease;
                }
                written.remove(&ip);
            }
            tokio::select! {
                _ = tokio::time::sleep(ttl / 3) => {
                    let alive = async {
                        keeper.0.keep_alive().await?;
                        keeper.1.message().await
                    };
                    match tokio::time::timeout(limit, alive).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        other => {
                            warn!(result = ?other.map(|r| r.map(|m| m.map(|m| m.ttl()))), "etcd lease lost; registering again");
                            break 'lease;
                        }
                    }
                }
                r = want.changed() => {
                    if r.is_err() {
                        // The controller is gone: the process is stopping.
                        let _ = within(limit, client.lease_revoke(lease)).await;
                        return;
                    }
                }
                _ = stopped(&mut stop) => {
                    let _ = within(limit, client.lease_revoke(lease)).await;
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip_and_bad_keys_are_named() {
        let k = object_key("CiliumNetworkPolicy", Some("default"), "rule1");
        assert_eq!(k, "/membrane/objects/v1/CiliumNetworkPolicy/default/rule1");
        assert_eq!(
            parse_object_key(&k).unwrap(),
            (
                "CiliumNetworkPolicy".into(),
                Some("default".into()),
                "rule1".into()
            )
        );
        let k = object_key("Node", None, "n1");
        assert_eq!(parse_object_key(&k).unwrap().2, "n1");
        let e = parse_object_key("/membrane/objects/v1/Secret/default/x").unwrap_err();
        assert!(e.contains("kind \"Secret\""), "{e}");
        let e = parse_object_key("/membrane/objects/v1/Pod/x").unwrap_err();
        assert!(e.contains("Pod/NAMESPACE/NAME"), "{e}");
    }

    #[test]
    fn files_split_into_keyed_objects_and_invalid_ones_are_named() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: r1}\nspec: {endpointSelector: {}}\n---\nkind: Node\nmetadata: {name: n1}\n";
        let objs = objects_from_file("a.yaml", text, &[]).unwrap();
        assert_eq!(
            objs.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            vec![
                "/membrane/objects/v1/CiliumNetworkPolicy/default/r1",
                "/membrane/objects/v1/Node/n1"
            ]
        );
        assert!(objs[0].value.contains("\"namespace\":\"default\""));
        let e = objects_from_file("a.yaml", text, &["CiliumNetworkPolicy"]).unwrap_err();
        assert!(e[0].contains("a.yaml: Node n1: kind"), "{e:?}");
        let bad = text.replace("endpointSelector: {}", "endpointSelector: {matchLabels: 7}");
        let e = objects_from_file("a.yaml", &bad, &[]).unwrap_err();
        assert!(
            e[0].contains("a.yaml: CiliumNetworkPolicy default/r1: spec.endpointSelector"),
            "{e:?}"
        );
    }
}
