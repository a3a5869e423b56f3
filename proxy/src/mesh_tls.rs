//! Istio mutual TLS between sidecars: the room where the capture listeners get their mesh
//! identity. Inbound (15006) terminates the mTLS an istio-proxy (or another membrane)
//! originates, under PeerAuthentication's modes; outbound (15001) originates it to
//! destinations the sidecar is told are meshed, with Istio's SNI and ALPN.
//!
//! The workload certificate, its key and the mesh root are Istio's file-mounted layout
//! (`/etc/certs/{cert-chain.pem,key.pem,root-cert.pem}`), polled for changes: every rustls
//! configuration here resolves the certificate and the roots at handshake time from one
//! swappable [`Material`], so a rotation applies to the next handshake and never touches an
//! established connection. A bad new set is logged and the last good one stays.
//!
//! `verify` holds the certificate checks (chain to the mesh root, SPIFFE id) and what a
//! verified peer certificate tells the rest of the proxy (`Peer`: access log, XFCC, policy).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use clap::{Args, ValueEnum};
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub mod ca_client;
mod modes;
mod verify;

pub use verify::{spiffe_id, Peer};

/// ALPN values Istio's sidecars offer on in-mesh connections (`istio-peer-exchange` and
/// `istio` for TCP, `istio-http/1.0`, `istio-http/1.1`, `istio-h2` for HTTP): an inbound
/// ClientHello offering one of them is mesh mTLS (Istio's inbound filter chain match).
pub const ISTIO_ALPNS: [&[u8]; 5] = [
    b"istio-peer-exchange",
    b"istio",
    b"istio-http/1.0",
    b"istio-http/1.1",
    b"istio-h2",
];

/// What an Istio sidecar's ALPN override offers for HTTP/1.1 upstreams.
const ALPN_HTTP11: [&[u8]; 3] = [b"istio-http/1.1", b"istio", b"http/1.1"];
/// What it offers for HTTP/2 upstreams.
const ALPN_H2: [&[u8]; 3] = [b"istio-h2", b"istio", b"h2"];
/// For an opaque TCP stream: in-mesh without the metadata-exchange protocol (`istio-peer-
/// exchange` would make the peer expect Istio's exchange bytes first).
const ALPN_TCP: [&[u8]; 1] = [b"istio"];

/// PeerAuthentication's mTLS modes, for the inbound capture listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MeshMode {
    /// Only mutual TLS with a certificate chaining to the mesh root; plaintext is refused.
    #[value(name = "STRICT", alias = "strict")]
    Strict,
    /// Mutual TLS when the client offers Istio's ALPN, plaintext otherwise (the first bytes
    /// decide, as Envoy's TLS inspector). Istio's default.
    #[value(name = "PERMISSIVE", alias = "permissive")]
    Permissive,
    /// Plaintext only: inbound capture serves as without a mesh.
    #[value(name = "DISABLE", alias = "disable")]
    Disable,
}

/// Mesh mTLS settings, flattened into both `standalone` and `sidecar`.
#[derive(Debug, Clone, Args)]
pub struct MeshTlsArgs {
    /// PeerAuthentication mode of the inbound capture listener: STRICT (mTLS only),
    /// PERMISSIVE (mTLS or plaintext, the first bytes decide; Istio's default) or DISABLE.
    #[arg(
        long,
        env = "MEMBRANE_MESH_TLS_MODE",
        value_enum,
        default_value = "PERMISSIVE"
    )]
    pub mesh_tls_mode: MeshMode,
    /// The workload certificate chain (SPIFFE id `spiffe://TD/ns/NS/sa/SA` as URI SAN)
    /// presented on mesh connections both ways.
    #[arg(
        long,
        env = "MEMBRANE_MESH_CERT",
        default_value = "/etc/certs/cert-chain.pem"
    )]
    pub mesh_cert: PathBuf,
    /// Its private key.
    #[arg(long, env = "MEMBRANE_MESH_KEY", default_value = "/etc/certs/key.pem")]
    pub mesh_key: PathBuf,
    /// The mesh root(s) peers' certificates must chain to.
    #[arg(
        long,
        env = "MEMBRANE_MESH_ROOT",
        default_value = "/etc/certs/root-cert.pem"
    )]
    pub mesh_root: PathBuf,
    /// How often the three files are checked for new content (rotation: new handshakes
    /// use the new certificate, established connections are kept).
    #[arg(long, env = "MEMBRANE_MESH_CERT_POLL", value_parser = crate::config::parse_duration, default_value = "5s")]
    pub mesh_cert_poll: Duration,
    /// Destinations whose sidecars speak Istio mTLS (CIDRs, comma-separated; the pod
    /// network): outbound capture originates mTLS to them with Istio's SNI and ALPN and
    /// requires a server certificate from the mesh root with a SPIFFE id in
    /// `--trust-domain`. Other destinations get plaintext, as Istio's passthrough.
    #[arg(long, env = "MEMBRANE_MESH_OUTBOUND_CIDRS", value_delimiter = ',')]
    pub mesh_outbound_cidrs: Vec<IpNet>,
    /// The mesh's trust domain: a meshed destination's certificate must name a SPIFFE id in it.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The workload certificate from Istio's CA instead of the files (`--mesh-ca-*`).
    #[command(flatten)]
    pub ca: ca_client::CaClientArgs,
}

/// What the certificate watcher logs about one poll.
#[derive(Debug, PartialEq, Eq)]
enum PollReport {
    /// Nothing in force yet and the files not there: mesh mTLS stays off.
    Waiting(String),
    /// New files that do not work: the material in force stays.
    Rejected(String),
}

/// Why mesh mTLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MeshTlsError {
    /// A file is missing or unreadable.
    #[error("mesh tls: cannot read {path}: {message}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// A file does not hold what it should.
    #[error("mesh tls: {path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("mesh tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// A CA client setting the mesh cannot run with.
    #[error("mesh tls: {0}")]
    Ca(#[from] ca_client::CaClientError),
    /// A setting the mesh cannot run with.
    #[error("{flag}: {message}")]
    Setting {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: &'static str,
    },
}

/// One consistent set of the workload's certificate and the mesh roots.
pub(crate) struct Material {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) roots: Arc<rustls::RootCertStore>,
    pub(crate) client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    /// The workload's own SPIFFE id (XFCC `By=`).
    pub(crate) own_id: Option<String>,
    /// The chain and its key, PEM (for a CA-issued one, in memory only, never written to
    /// a file): what the control-plane connection presents (`--xds-cert-from-mesh`).
    pub(crate) pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// The mesh identity of this sidecar and the TLS configurations built on it.
pub struct MeshTls {
    args: MeshTlsArgs,
    current: ArcSwapOption<Material>,
    /// The file contents the material in force was built from.
    seen: Mutex<Option<[Vec<u8>; 3]>>,
    server: Arc<rustls::ServerConfig>,
    client_h1: Arc<rustls::ClientConfig>,
    client_h2: Arc<rustls::ClientConfig>,
    client_tcp: Arc<rustls::ClientConfig>,
    /// The inbound mode per port: the setting, then the control plane's PeerAuthentication.
    modes: modes::Modes,
    /// Istio's CA, when the certificate may come from it (files absent).
    ca: Option<ca_client::CaClient>,
    /// True once any material is in force (readiness waits for it when mTLS is required).
    loaded: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("mode", &self.modes.workload())
            .field("loaded", &self.current.load().is_some())
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, MeshTlsError> {
    std::fs::read(path).map_err(|e| MeshTlsError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> MeshTlsError {
    MeshTlsError::Invalid {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the material from the three files' contents.
fn build(args: &MeshTlsArgs, files: &[Vec<u8>; 3]) -> Result<Material, MeshTlsError> {
    build_from(
        [&args.mesh_cert, &args.mesh_key, &args.mesh_root].map(|p| p.display().to_string()),
        files,
        Some((files[0].clone(), files[1].clone())),
    )
}

/// Builds the material from a certificate chain, its key (PEM) and the roots (PEM);
/// `names` say where each came from in errors. `pem` keeps the chain and key for a
/// client that needs them as PEM (the control-plane connection, with a CA-issued
/// certificate).
fn build_from(
    names: [String; 3],
    files: &[Vec<u8>; 3],
    pem: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Material, MeshTlsError> {
    let [cert_name, key_name, root_name] = names.map(PathBuf::from);
    let [cert, key, root] = files;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&cert_name, e))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(&cert_name, "no CERTIFICATE block"));
    };
    let own_id = spiffe_id(leaf).map_err(|e| invalid(&cert_name, e))?;
    let der = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(&key_name, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| invalid(&key_name, e))?;
    let key = CertifiedKey::new(chain, signing);
    // A certificate paired with another key would fail every handshake: refuse it here.
    key.keys_match()
        .map_err(|e| invalid(&key_name, format!("does not match the certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root) {
        let c = c.map_err(|e| invalid(&root_name, e))?;
        roots.add(c).map_err(|e| invalid(&root_name, e))?;
    }
    if roots.is_empty() {
        return Err(invalid(&root_name, "no CERTIFICATE block"));
    }
    let roots = Arc::new(roots);
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| invalid(&root_name, e))?;
    Ok(Material {
        key: Arc::new(key),
        roots,
        client_verifier,
        own_id,
        pem,
    })
}

impl MeshTls {
    /// The mesh identity for `args`. The files are read now: unusable files are an error;
    /// missing ones are an error under STRICT or with meshed outbound destinations, and
    /// otherwise leave mesh mTLS off (plaintext only) until they appear.
    pub fn new(args: MeshTlsArgs) -> Result<Arc<Self>, MeshTlsError> {
        if args.mesh_cert_poll.is_zero() {
            return Err(MeshTlsError::Setting {
                flag: "--mesh-cert-poll",
                message: "must be more than 0s",
            });
        }
        let verify = Arc::new(verify::Dynamic::default());
        let provider = provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verify.clone())
            .with_cert_resolver(verify.clone());
        // What Envoy's inbound context selects from Istio's offers (`h2`, `http/1.1`), then
        // Istio's own values for a client offering nothing else: rustls refuses a handshake
        // without overlap. Never `istio-peer-exchange`: choosing it would promise Istio's
        // metadata-exchange bytes.
        server.alpn_protocols = [
            &b"h2"[..],
            b"http/1.1",
            b"istio",
            b"istio-h2",
            b"istio-http/1.1",
            b"istio-http/1.0",
        ]
        .iter()
        .map(|a| a.to_vec())
        .collect();
        let client = |alpn: &[&[u8]]| -> Result<Arc<rustls::ClientConfig>, MeshTlsError> {
            let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verify.clone())
                .with_client_cert_resolver(verify.clone());
            c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            Ok(Arc::new(c))
        };
        let ca = ca_client::CaClient::from_args(&args.ca)?;
        let mesh = Arc::new(MeshTls {
            ca,
            loaded: tokio::sync::watch::channel(false).0,
            client_h1: client(&ALPN_HTTP11)?,
            client_h2: client(&ALPN_H2)?,
            client_tcp: client(&ALPN_TCP)?,
            server: Arc::new(server),
            current: ArcSwapOption::empty(),
            seen: Mutex::new(None),
            modes: modes::Modes::new(args.mesh_tls_mode),
            args,
        });
        verify.attach(&mesh);
        let required = mesh.args.mesh_tls_mode == MeshMode::Strict
            || !mesh.args.mesh_outbound_cidrs.is_empty();
        match mesh.reload() {
            Ok(_) => {}
            // No files: the CA provides the certificate (readiness waits for it when
            // mTLS is required; nothing is served as plaintext meanwhile).
            Err(MeshTlsError::Read { .. }) if mesh.ca.is_some() => {
                tracing::info!(
                    ca = mesh.ca.as_ref().map(|c| c.address()).unwrap_or_default(),
                    "no mounted workload certificate: requesting one from the CA"
                );
            }
            Err(e @ MeshTlsError::Read { .. }) if !required => {
                tracing::warn!(error = %e, "mesh mTLS off until the workload certificate appears");
            }
            Err(e) => return Err(e),
        }
        Ok(mesh)
    }

    /// The inbound mode of the workload (no port-level override): the control plane's
    /// PeerAuthentication result once it sent one, else `--mesh-tls-mode`.
    pub fn mode(&self) -> MeshMode {
        self.modes.workload()
    }

    /// The inbound mode for a connection to the workload's `port` (the original
    /// destination port): PeerAuthentication's port-level mode, else the workload's.
    pub fn mode_for(&self, port: u16) -> MeshMode {
        self.modes.for_port(port)
    }

    /// Puts the control plane's PeerAuthentication result in force for connections
    /// accepted from now on (established ones keep theirs). Logged when it changes.
    pub fn set_peer_authentication(&self, e: membrane_api::mesh::Effective) {
        let shown = format!("{e:?}");
        if self.modes.set(e) {
            tracing::info!(modes = %shown, "mesh mTLS modes from PeerAuthentication in force");
        }
    }

    /// The control plane's PeerAuthentication result in force (default: none yet).
    pub fn peer_authentication(&self) -> Arc<membrane_api::mesh::Effective> {
        self.modes.current()
    }

    /// Re-reads the files; true if new material went in force. On error the material in
    /// force stays.
    pub fn reload(&self) -> Result<bool, MeshTlsError> {
        let files = [
            read(&self.args.mesh_cert)?,
            read(&self.args.mesh_key)?,
            read(&self.args.mesh_root)?,
        ];
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.as_ref() == Some(&files) {
            return Ok(false);
        }
        let material = build(&self.args, &files)?;
        tracing::info!(
            spiffe_id = material.own_id.as_deref().unwrap_or(""),
            "mesh mTLS certificate in force"
        );
        self.current.store(Some(Arc::new(material)));
        self.loaded.send_replace(true);
        *seen = Some(files);
        Ok(true)
    }

    /// Whether the three files of the mounted certificate exist (they win over the CA).
    pub(crate) fn files_present(&self) -> bool {
        [
            &self.args.mesh_cert,
            &self.args.mesh_key,
            &self.args.mesh_root,
        ]
        .iter()
        .all(|p| p.exists())
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        self.args.mesh_cert_poll
    }

    /// Puts a CA-issued certificate in force for new handshakes, unless the mounted
    /// files appeared meanwhile (they win). True if it went in force.
    pub(crate) fn install_issued(&self, material: Material) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if self.files_present() {
            return false;
        }
        // Forget the files' contents: if they come back, they go in force again.
        *seen = None;
        self.current.store(Some(Arc::new(material)));
        self.loaded.send_replace(true);
        true
    }

    /// Whether the certificate comes from a CA when the files are absent.
    pub fn uses_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Resolves once a workload certificate is in force (at once if one is).
    pub async fn certificate_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// The workload chain and key in force, PEM (a CA-issued one lives only in memory).
    pub fn issued_pem(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.material().and_then(|m| m.pem.clone())
    }

    /// Polls the files every `--mesh-cert-poll` until `shutdown`; each new version that
    /// fails is logged once. With a CA, also requests and renews the certificate from
    /// it while the files are absent.
    pub fn spawn_watch(
        self: &Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(ca) = self.ca.clone() {
            tasks.push(tokio::spawn(ca_client::run(
                self.clone(),
                ca,
                shutdown.clone(),
            )));
        }
        let mesh = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(mesh.args.mesh_cert_poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // `new` has just read the files and said what it found: the first poll is one
            // period away, and an error it already reported is not news.
            tick.tick().await;
            let mut last_error = mesh
                .reload()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                match mesh.poll_report(mesh.reload(), &mut last_error) {
                    Some(PollReport::Waiting(e)) => {
                        tracing::warn!(error = %e, "mesh mTLS off until the workload certificate appears");
                    }
                    Some(PollReport::Rejected(e)) => {
                        tracing::error!(error = %e, "new mesh mTLS material rejected; the last good one stays");
                    }
                    None => {}
                }
            }
        }));
        tasks
    }

    /// What one poll of the files is worth saying: a failure the first time it is seen
    /// (not again while it repeats), nothing after success. With no material in force and
    /// a file unreadable (not issued yet), it is a wait, not a rejection: there is no
    /// last good material to keep.
    fn poll_report(
        &self,
        result: Result<bool, MeshTlsError>,
        last_error: &mut String,
    ) -> Option<PollReport> {
        let e = match result {
            Ok(_) => {
                last_error.clear();
                return None;
            }
            Err(e) => e,
        };
        // Absent files are the normal case with a CA: it provides the certificate.
        if self.ca.is_some() && matches!(e, MeshTlsError::Read { .. }) {
            last_error.clear();
            return None;
        }
        let text = e.to_string();
        if text == *last_error {
            return None;
        }
        last_error.clone_from(&text);
        if self.material().is_none() && matches!(e, MeshTlsError::Read { .. }) {
            Some(PollReport::Waiting(text))
        } else {
            Some(PollReport::Rejected(text))
        }
    }

    pub(crate) fn material(&self) -> Option<Arc<Material>> {
        self.current.load_full()
    }

    /// The inbound server configuration, once a certificate is in force.
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.load().as_ref().map(|_| self.server.clone())
    }

    /// Whether outbound capture originates mesh mTLS to `ip`.
    pub fn meshed(&self, ip: IpAddr) -> bool {
        self.args
            .mesh_outbound_cidrs
            .iter()
            .any(|n| n.contains(&ip))
    }

    /// The client configuration for HTTP/1.1, HTTP/2 or opaque TCP to a meshed destination.
    pub fn client_config(&self, proto: Proto) -> Arc<rustls::ClientConfig> {
        match proto {
            Proto::Http1 => self.client_h1.clone(),
            Proto::Http2 => self.client_h2.clone(),
            Proto::Tcp => self.client_tcp.clone(),
        }
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.args.trust_domain
    }

    /// The workload's own SPIFFE id, when a certificate is in force.
    pub fn own_id(&self) -> Option<String> {
        self.material().and_then(|m| m.own_id.clone())
    }
}

/// What travels over an originated mesh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 (ALPN `istio-http/1.1`).
    Http1,
    /// HTTP/2 (ALPN `istio-h2`).
    Http2,
    /// Opaque bytes (ALPN `istio`).
    Tcp,
}

/// Istio's SNI for an in-mesh connection to `host` on `port`: `outbound_.PORT_._.HOST`.
/// An IP address gets no SNI (rustls sends none for an address).
pub fn server_name(
    host: &str,
    port: u16,
) -> Result<rustls::pki_types::ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(rustls::pki_types::ServerName::IpAddress(ip.into()));
    }
    rustls::pki_types::ServerName::try_from(format!(
        "outbound_.{port}_._.{}",
        host.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_istios() {
        assert_eq!(
            server_name("Reviews.default.svc.cluster.local", 9080)
                .unwrap()
                .to_str(),
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        assert!(matches!(
            server_name("10.0.0.1", 80).unwrap(),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]", 80).unwrap(),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
    }

    fn args(dir: &Path, mode: MeshMode) -> MeshTlsArgs {
        MeshTlsArgs {
            mesh_tls_mode: mode,
            mesh_cert: dir.join("cert-chain.pem"),
            mesh_key: dir.join("key.pem"),
            mesh_root: dir.join("root-cert.pem"),
            mesh_cert_poll: Duration::from_secs(1),
            mesh_outbound_cidrs: Vec::new(),
            trust_domain: "cluster.local".into(),
            ca: Default::default(),
        }
    }

    fn workload(root: &membrane_test_support::pki::Ca, dir: &Path, sa: &str) {
        use membrane_test_support::pki::Leaf;
        let id = format!("URI:spiffe://cluster.local/ns/default/sa/{sa}");
        root.issue(
            &Leaf::new(sa).san(&id),
            &dir.join("cert-chain.pem"),
            &dir.join("key.pem"),
        );
        std::fs::copy(root.cert(), dir.join("root-cert.pem")).unwrap();
    }

    #[test]
    fn rotation_swaps_valid_files_and_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let root = membrane_test_support::pki::Ca::in_dir(dir.path(), "root", "root");
        workload(&root, dir.path(), "a");
        let mesh = MeshTls::new(args(dir.path(), MeshMode::Strict)).unwrap();
        assert_eq!(
            mesh.own_id().as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/a")
        );
        assert!(!mesh.reload().unwrap(), "unchanged files: nothing new");
        workload(&root, dir.path(), "b");
        assert!(mesh.reload().unwrap());
        assert_eq!(
            mesh.own_id().as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/b")
        );
        // A key that is not the certificate's: refused, naming the file; b stays.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        workload(&root, &other, "c");
        std::fs::copy(other.join("key.pem"), dir.path().join("key.pem")).unwrap();
        let err = mesh.reload().unwrap_err().to_string();
        assert!(
            err.contains("key.pem") && err.contains("does not match"),
            "{err}"
        );
        assert_eq!(
            mesh.own_id().as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/b")
        );
    }

    #[test]
    fn missing_files_fail_strict_and_leave_permissive_off() {
        let dir = tempfile::tempdir().unwrap();
        let err = MeshTls::new(args(dir.path(), MeshMode::Strict)).unwrap_err();
        assert!(err.to_string().contains("cert-chain.pem"), "{err}");
        let mesh = MeshTls::new(args(dir.path(), MeshMode::Permissive)).unwrap();
        assert!(mesh.server_config().is_none());
        let mut zero = args(dir.path(), MeshMode::Permissive);
        zero.mesh_cert_poll = Duration::ZERO;
        let err = MeshTls::new(zero).unwrap_err().to_string();
        assert!(err.contains("--mesh-cert-poll"), "{err}");
    }

    #[test]
    fn the_watcher_waits_for_absent_files_and_rejects_bad_ones_once() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = MeshTls::new(args(dir.path(), MeshMode::Permissive)).unwrap();
        let mut last = String::new();
        // No files yet, nothing in force: a wait, said once.
        let wait = mesh.poll_report(mesh.reload(), &mut last);
        assert!(
            matches!(&wait, Some(PollReport::Waiting(e)) if e.contains("cert-chain.pem")),
            "{wait:?}"
        );
        assert_eq!(mesh.poll_report(mesh.reload(), &mut last), None);
        // The files appear: in force, nothing to say.
        let root = membrane_test_support::pki::Ca::in_dir(dir.path(), "root", "root");
        workload(&root, dir.path(), "a");
        assert_eq!(mesh.poll_report(mesh.reload(), &mut last), None);
        assert!(mesh.server_config().is_some());
        // A file vanishing under material in force is a rejection: a stays.
        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        let gone = mesh.poll_report(mesh.reload(), &mut last);
        assert!(
            matches!(&gone, Some(PollReport::Rejected(e)) if e.contains("key.pem")),
            "{gone:?}"
        );
        assert_eq!(mesh.poll_report(mesh.reload(), &mut last), None);
        assert_eq!(
            mesh.own_id().as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/a")
        );
    }

    #[test]
    fn xfcc_is_istios_element() {
        let dir = tempfile::tempdir().unwrap();
        let root = membrane_test_support::pki::Ca::in_dir(dir.path(), "root", "root");
        workload(&root, dir.path(), "a");
        let pem = std::fs::read(dir.path().join("cert-chain.pem")).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        let peer =
            Peer::from_chain(&chain, Some("spiffe://cluster.local/ns/default/sa/b")).unwrap();
        assert_eq!(peer.spiffe_id, "spiffe://cluster.local/ns/default/sa/a");
        let x = &peer.xfcc;
        assert!(
            x.starts_with("By=spiffe://cluster.local/ns/default/sa/b;Hash="),
            "{x}"
        );
        assert!(
            x.contains(";Subject=\"CN=a\";URI=spiffe://cluster.local/ns/default/sa/a"),
            "{x}"
        );
        // A certificate without a SPIFFE id is no mesh peer.
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        root.issue(
            &membrane_test_support::pki::Leaf::new("p").dns(&["p.test"]),
            &plain.join("c.pem"),
            &plain.join("k.pem"),
        );
        let pem = std::fs::read(plain.join("c.pem")).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(Peer::from_chain(&chain, None).is_none());
        // Nor one whose SPIFFE id breaks the specification (the shared parser's rules).
        root.issue(
            &membrane_test_support::pki::Leaf::new("u")
                .san("URI:spiffe://Cluster.Local/ns/default/sa/u"),
            &plain.join("u.pem"),
            &plain.join("uk.pem"),
        );
        let pem = std::fs::read(plain.join("u.pem")).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(Peer::from_chain(&chain, None).is_none());
        let err = spiffe_id(&chain[0]).unwrap_err();
        assert!(err.contains("may hold only lowercase"), "{err}");
    }

    #[test]
    fn modes_parse_as_istio_spells_them() {
        use clap::ValueEnum;
        assert_eq!(
            MeshMode::from_str("STRICT", false).unwrap(),
            MeshMode::Strict
        );
        assert_eq!(
            MeshMode::from_str("permissive", false).unwrap(),
            MeshMode::Permissive
        );
        assert!(MeshMode::from_str("MUTUAL", false).is_err());
    }
}
