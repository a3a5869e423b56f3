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

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use thiserror::Error;

/// The etcd client type [`connect`] returns.
pub use etcd_client::Client as EtcdClient;

mod failover;
mod identity;
mod objects;
mod registry;

pub use identity::{list_identities, IdentityStore};
pub use objects::{
    kind_scope, object_key, objects_from_file, parse_object_key, put_objects, StoredObject,
};
pub use registry::{register, IpEntry};

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
    ("PeerAuthentication", true),
    ("PrefilterDenyList", false),
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
/// fail, not this call. Requests go to one endpoint at a time and fail over
/// to the next when it cannot serve them (`kvstore/failover.rs`).
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
    Ok(Client::connect_with_balanced_channel(urls, Some(opts), failover::Builder).await?)
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

#[cfg(test)]
mod tests;
