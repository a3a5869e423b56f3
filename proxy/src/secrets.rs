//! Secrets the policy refers to: TLS material for policy-driven TLS (`terminatingTLS` /
//! `originatingTLS`), turned into rustls configurations, and the values `headerMatches`
//! compare against (the store is the policy engine's `SecretResolver`). They are
//! Kubernetes `Secret` objects read from `--secrets-dir`, or, for TLS, PEM carried inline
//! in an NPDS `TLSContext`.
//!
//! The directory holds Secret manifests (YAML or JSON, several documents per file; `data`
//! is base64, `stringData` plain). It is re-scanned on a timer and on SIGHUP; only files
//! whose size or modification time changed are re-read. A file that no longer parses keeps
//! the secrets it last defined. Configurations are built on first use and cached per TLS
//! context; when the secret behind one changes, the next handshake rebuilds it, and if
//! the new material is unusable the last good configuration stays in use (the error,
//! naming the secret and the item, is logged once per change). A context that never had
//! good material refuses handshakes: the proxy never falls back to plaintext.
//!
//! Header matches read the secret on every request, so a secret that appears or changes
//! is enforced from the next request after the scan that sees it. A secret a header match
//! cannot use (absent, not exactly one entry, not a header value) is logged once per
//! version, naming the secret and never showing its value.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use membrane_policy::http::{SecretData, SecretName, SecretResolver};
use membrane_policy::rule::TlsSource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why TLS material could not be had; every message names the secret (or the inline
/// context) and the item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No Secret of that namespace and name is known.
    #[error("{source_name}: not found{where_}")]
    NotFound {
        /// `secret NS/NAME`.
        source_name: String,
        /// Where it was looked for.
        where_: String,
    },
    /// An item is missing or unusable.
    #[error("{source_name}: item {item:?}: {message}")]
    Item {
        /// `secret NS/NAME` or `inline TLS context`.
        source_name: String,
        /// The item (key in the secret, or the NPDS field).
        item: String,
        /// What is wrong.
        message: String,
    },
    /// A manifest in the directory cannot be used.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// One Secret's items, with a version that changes whenever they do.
#[derive(Debug)]
struct Secret {
    items: Arc<SecretData>,
    version: u64,
    /// Whether a header match has checked this version (and logged it if unusable).
    header_checked: std::sync::atomic::AtomicBool,
}

type SecretKey = (String, String);

/// What one file last defined, and the stamp it was read at.
#[derive(Debug, Default, Clone)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    secrets: Vec<(SecretKey, BTreeMap<String, Vec<u8>>)>,
}

/// A built configuration and the secret version it was built from.
struct Cached<T> {
    version: u64,
    value: Option<T>,
    failed_version: Option<u64>,
}

/// Upstream (originating) TLS material: trust anchors and an optional client certificate.
#[derive(Debug)]
pub struct ClientTls {
    /// Changes whenever the material does (keys pooled upstream clients).
    pub id: u64,
    /// Trust anchors the upstream's certificate is verified against.
    pub roots: Arc<rustls::RootCertStore>,
    /// Certificate presented to the upstream, when the secret has one.
    pub client_cert: Option<Arc<CertifiedKey>>,
}

/// The secrets of `--secrets-dir` and the TLS configurations built from them.
pub struct SecretStore {
    dir: Option<PathBuf>,
    files: Mutex<BTreeMap<PathBuf, FileState>>,
    secrets: ArcSwap<HashMap<SecretKey, Arc<Secret>>>,
    servers: Mutex<HashMap<TlsSource, Cached<Arc<rustls::ServerConfig>>>>,
    clients: Mutex<HashMap<TlsSource, Cached<Arc<ClientTls>>>>,
    versions: AtomicU64,
    /// Secrets header matches asked for and did not find, logged once until the next
    /// scan changes the set of secrets.
    missing_logged: Mutex<std::collections::HashSet<SecretName>>,
}

/// The version of a secret that does not exist (distinct from every real one).
const MISSING: u64 = u64::MAX;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl SecretStore {
    /// A store reading `dir` (none: only inline material resolves). Reads it once; the
    /// errors are the files that could not be used (the rest is in force).
    pub fn new(dir: Option<PathBuf>) -> (Self, Vec<SecretError>) {
        let store = SecretStore {
            dir,
            files: Mutex::default(),
            secrets: ArcSwap::from_pointee(HashMap::new()),
            servers: Mutex::default(),
            clients: Mutex::default(),
            versions: AtomicU64::new(1),
            missing_logged: Mutex::default(),
        };
        let errors = store.reload();
        (store, errors)
    }

    /// Re-scans the directory; returns the problems found (each also leaves the previous
    /// content of that file in force).
    pub fn reload(&self) -> Vec<SecretError> {
        let Some(dir) = &self.dir else {
            return vec![];
        };
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return vec![SecretError::File {
                    file: dir.display().to_string(),
                    message: format!("cannot list the secrets directory: {e}"),
                }]
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        paths.sort();
        let Ok(mut files) = self.files.lock() else {
            return vec![];
        };
        files.retain(|p, _| paths.contains(p));
        for path in &paths {
            let stamp = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            let state = files.entry(path.clone()).or_default();
            if stamp.is_some() && state.stamp == stamp {
                continue;
            }
            state.stamp = stamp;
            match read_secret_file(path) {
                Ok(secrets) => state.secrets = secrets,
                Err(e) => errors.push(e),
            }
        }
        // Rebuild the index; an unchanged secret keeps its version (and so its cached
        // configurations).
        let old = self.secrets.load();
        let mut next: HashMap<SecretKey, Arc<Secret>> = HashMap::new();
        for (path, state) in files.iter() {
            for (key, items) in &state.secrets {
                if next.contains_key(key) {
                    errors.push(SecretError::File {
                        file: path.display().to_string(),
                        message: format!(
                            "Secret {}/{} is defined in an earlier file too; this one is ignored",
                            key.0, key.1
                        ),
                    });
                    continue;
                }
                let secret = match old.get(key) {
                    Some(s) if *s.items == *items => s.clone(),
                    _ => Arc::new(Secret {
                        items: Arc::new(items.clone()),
                        version: self.versions.fetch_add(1, Ordering::Relaxed),
                        header_checked: Default::default(),
                    }),
                };
                next.insert(key.clone(), secret);
            }
        }
        let changed = next.len() != old.len()
            || next
                .iter()
                .any(|(k, s)| old.get(k).is_none_or(|o| o.version != s.version));
        self.secrets.store(Arc::new(next));
        if changed {
            if let Ok(mut m) = self.missing_logged.lock() {
                m.clear();
            }
        }
        errors
    }

    /// Re-scans every `interval` until `shutdown`; problems are logged.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.dir.as_ref()?;
        let store = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                for e in store.reload() {
                    tracing::error!(error = %e, "secret rejected; previous content stays in use");
                }
            }
        }))
    }

    fn version_of(&self, src: &TlsSource) -> u64 {
        match src {
            TlsSource::Secret {
                namespace, name, ..
            } => self
                .secrets
                .load()
                .get(&(namespace.clone(), name.clone()))
                .map_or(MISSING, |s| s.version),
            TlsSource::Inline { .. } => 0,
        }
    }

    fn items(&self, src: &TlsSource) -> Result<Items, SecretError> {
        match src {
            TlsSource::Secret {
                namespace,
                name,
                certificate,
                private_key,
                trusted_ca,
            } => {
                let source_name = src.to_string();
                let secret = self
                    .secrets
                    .load()
                    .get(&(namespace.clone(), name.clone()))
                    .cloned()
                    .ok_or_else(|| SecretError::NotFound {
                        source_name: source_name.clone(),
                        where_: match &self.dir {
                            Some(d) => format!(" in --secrets-dir {}", d.display()),
                            None => " (no --secrets-dir is configured)".to_owned(),
                        },
                    })?;
                let pick = |named: &Option<String>, default: &str| {
                    let item = named.clone().unwrap_or_else(|| default.to_owned());
                    let value = secret.items.get(&item).cloned();
                    Item {
                        required: named.is_some(),
                        item,
                        value,
                    }
                };
                Ok(Items {
                    source_name,
                    cert: pick(certificate, "tls.crt"),
                    key: pick(private_key, "tls.key"),
                    ca: pick(trusted_ca, "ca.crt"),
                })
            }
            TlsSource::Inline {
                trusted_ca,
                certificate_chain,
                private_key,
            } => {
                let inline = |item: &str, v: &str| Item {
                    required: false,
                    item: item.to_owned(),
                    value: (!v.is_empty()).then(|| v.as_bytes().to_vec()),
                };
                Ok(Items {
                    source_name: src.to_string(),
                    cert: inline("certificate_chain", certificate_chain),
                    key: inline("private_key", private_key),
                    ca: inline("trusted_ca", trusted_ca),
                })
            }
        }
    }

    /// The downstream (terminating) configuration for `src`: its certificate and key, ALPN
    /// h2 and http/1.1, and, when the context has a trusted CA, client certificates
    /// required and verified against it.
    pub fn server_config(&self, src: &TlsSource) -> Result<Arc<rustls::ServerConfig>, SecretError> {
        cached(&self.servers, src, self.version_of(src), || {
            let items = self.items(src)?;
            let key = items.certified_key()?;
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| items.err("certificate", e.to_string()))?;
            let builder = match items.roots()? {
                Some(roots) => {
                    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider(),
                    )
                    .build()
                    .map_err(|e| items.err(&items.ca.item, e.to_string()))?;
                    builder.with_client_cert_verifier(verifier)
                }
                None => builder.with_no_client_auth(),
            };
            let mut cfg =
                builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(cfg))
        })
    }

    /// The upstream (originating) material for `src`: trust anchors (required: the proxy
    /// never originates TLS it does not verify) and the client certificate, if any.
    pub fn client_tls(&self, src: &TlsSource) -> Result<Arc<ClientTls>, SecretError> {
        cached(&self.clients, src, self.version_of(src), || {
            let items = self.items(src)?;
            let roots = items.roots()?.ok_or_else(|| {
                items.err(
                    &items.ca.item,
                    "not present; originating TLS needs trust anchors for the destination".into(),
                )
            })?;
            let client_cert = if items.cert.value.is_some() || items.cert.required {
                Some(Arc::new(items.certified_key()?))
            } else {
                None
            };
            Ok(Arc::new(ClientTls {
                id: self.versions.fetch_add(1, Ordering::Relaxed),
                roots: Arc::new(roots),
                client_cert,
            }))
        })
    }
}

impl SecretResolver for SecretStore {
    /// The secret as of the last scan. The first lookup of each version of a secret a
    /// header match cannot use logs why (once), so a typo or a secret with a stray
    /// newline shows up in the log rather than only as denied requests.
    fn secret(&self, name: &SecretName) -> Option<Arc<SecretData>> {
        let found = self
            .secrets
            .load()
            .get(&(name.namespace.clone(), name.name.clone()))
            .cloned();
        match &found {
            Some(s) => {
                if !s.header_checked.swap(true, Ordering::Relaxed) {
                    if let Err(e) =
                        membrane_policy::http::header_secret_from_data(name, s.items.clone())
                    {
                        tracing::warn!(error = %e, "header match secret unusable; matches against it fail (or use their inline value)");
                    }
                }
            }
            None => {
                if let Ok(mut logged) = self.missing_logged.lock() {
                    if logged.insert(name.clone()) {
                        let where_ = match &self.dir {
                            Some(d) => format!("in --secrets-dir {}", d.display()),
                            None => "(no --secrets-dir is configured)".to_owned(),
                        };
                        tracing::warn!(secret = %name, "header match secret not found {where_}; matches against it fail (or use their inline value)");
                    }
                }
            }
        }
        found.map(|s| s.items.clone())
    }
}

/// Returns the cached value for `src` if built from `version`; otherwise builds it. A
/// failed build keeps the previous value (and logs once per version); with none, fails.
fn cached<T: Clone>(
    cache: &Mutex<HashMap<TlsSource, Cached<T>>>,
    src: &TlsSource,
    version: u64,
    build: impl FnOnce() -> Result<T, SecretError>,
) -> Result<T, SecretError> {
    let mut cache = cache.lock().map_err(|_| SecretError::Item {
        source_name: src.to_string(),
        item: String::new(),
        message: "internal lock poisoned".into(),
    })?;
    if let Some(c) = cache.get(src) {
        if let (true, Some(v)) = (c.version == version, &c.value) {
            return Ok(v.clone());
        }
    }
    match build() {
        Ok(v) => {
            cache.insert(
                src.clone(),
                Cached {
                    version,
                    value: Some(v.clone()),
                    failed_version: None,
                },
            );
            Ok(v)
        }
        Err(e) => {
            let entry = cache.entry(src.clone()).or_insert(Cached {
                version,
                value: None,
                failed_version: None,
            });
            if entry.failed_version != Some(version) {
                entry.failed_version = Some(version);
                match &entry.value {
                    Some(_) => {
                        tracing::error!(error = %e, "TLS material rejected; the previous certificate stays in use")
                    }
                    None => {
                        tracing::error!(error = %e, "TLS material unusable; handshakes on this context are refused")
                    }
                }
            }
            // Keep serving the last good configuration; its version stays old so the
            // next change is tried again.
            entry.value.clone().ok_or(e)
        }
    }
}

struct Item {
    item: String,
    /// Named explicitly: must exist.
    required: bool,
    value: Option<Vec<u8>>,
}

struct Items {
    source_name: String,
    cert: Item,
    key: Item,
    ca: Item,
}

impl Items {
    fn err(&self, item: &str, message: String) -> SecretError {
        SecretError::Item {
            source_name: self.source_name.clone(),
            item: item.to_owned(),
            message,
        }
    }

    fn need<'a>(&self, it: &'a Item) -> Result<&'a [u8], SecretError> {
        it.value
            .as_deref()
            .ok_or_else(|| self.err(&it.item, "not present".into()))
    }

    fn certified_key(&self) -> Result<CertifiedKey, SecretError> {
        let pem = self.need(&self.cert)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(&self.cert.item, format!("not a PEM certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(self.err(&self.cert.item, "no CERTIFICATE block".into()));
        }
        let pem = self.need(&self.key)?;
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| self.err(&self.key.item, format!("not a PEM private key: {e}")))?;
        let signing = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| self.err(&self.key.item, e.to_string()))?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| {
            self.err(
                &self.key.item,
                format!("does not match the certificate: {e}"),
            )
        })?;
        Ok(key)
    }

    /// The trust anchors: `None` when the (optional) item is absent.
    fn roots(&self) -> Result<Option<rustls::RootCertStore>, SecretError> {
        let Some(pem) = self.ca.value.as_deref() else {
            return match self.ca.required {
                true => Err(self.err(&self.ca.item, "not present".into())),
                false => Ok(None),
            };
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| self.err(&self.ca.item, format!("not PEM certificates: {e}")))?;
            roots
                .add(c)
                .map_err(|e| self.err(&self.ca.item, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(self.err(&self.ca.item, "no CERTIFICATE block".into()));
        }
        Ok(Some(roots))
    }
}

/// A Kubernetes Secret manifest, as much of it as TLS needs.
#[derive(serde::Deserialize)]
struct SecretDoc {
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<Meta>,
    #[serde(default)]
    data: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "stringData")]
    string_data: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
}

type FileSecrets = Vec<(SecretKey, BTreeMap<String, Vec<u8>>)>;

/// Parses every `kind: Secret` document of a file (other kinds are skipped). Any bad
/// Secret rejects the whole file, so a file is never half applied.
fn read_secret_file(path: &Path) -> Result<FileSecrets, SecretError> {
    let file = path.display().to_string();
    let ferr = |message: String| SecretError::File {
        file: file.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| ferr(e.to_string()))?;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| ferr(format!("document {i}: not YAML/JSON: {e}")))?;
        if value.is_null() {
            continue;
        }
        let doc: SecretDoc =
            serde_yaml_ng::from_value(value).map_err(|e| ferr(format!("document {i}: {e}")))?;
        if doc.kind.as_deref() != Some("Secret") {
            continue;
        }
        let meta = doc.metadata.unwrap_or(Meta {
            name: None,
            namespace: None,
        });
        let name = meta
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ferr(format!("document {i}: Secret: metadata.name is missing")))?;
        let namespace = meta
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let mut items = BTreeMap::new();
        for (k, v) in doc.data.unwrap_or_default() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.split_whitespace().collect::<String>())
                .map_err(|e| {
                    ferr(format!(
                        "Secret {namespace}/{name}: data.{k}: not base64: {e}"
                    ))
                })?;
            items.insert(k, bytes);
        }
        // stringData wins over data, as the API server merges them.
        for (k, v) in doc.string_data.unwrap_or_default() {
            items.insert(k, v.into_bytes());
        }
        out.push(((namespace, name), items));
    }
    Ok(out)
}

use serde::Deserialize as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_and_errors_name_the_secret_and_item() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s1, namespace: ns}\ndata: {tls.crt: aGVsbG8=}\nstringData: {ca.crt: plain}\n---\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            "{\"kind\": \"Secret\", \"metadata\": {\"name\": \"s2\"}, \"data\": {\"k\": \"!!\"}}",
        )
        .unwrap();
        let (store, errors) = SecretStore::new(Some(dir.path().to_owned()));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = errors[0].to_string();
        assert!(
            e.contains("b.json: Secret default/s2: data.k: not base64"),
            "{e}"
        );
        let src = |name: &str, cert: Option<&str>| TlsSource::Secret {
            namespace: "ns".into(),
            name: name.into(),
            certificate: cert.map(str::to_owned),
            private_key: None,
            trusted_ca: None,
        };
        let e = store
            .server_config(&src("s1", None))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("secret ns/s1: item \"tls.crt\": not a PEM certificate chain")
                || e.starts_with("secret ns/s1: item \"tls.crt\": no CERTIFICATE block"),
            "{e}"
        );
        let e = store
            .server_config(&src("s1", Some("other.crt")))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "secret ns/s1: item \"other.crt\": not present");
        let e = store
            .client_tls(&src("nope", None))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("secret ns/nope: not found in --secrets-dir "),
            "{e}"
        );
        let e = store
            .client_tls(&src("s1", None))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("secret ns/s1: item \"ca.crt\": "), "{e}");
    }
}
