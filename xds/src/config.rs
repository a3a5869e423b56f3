//! `membrane-xds`'s one configuration, from flags with `MEMBRANE_*` env fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// membrane's control plane: sources → identities → policy → xDS.
#[derive(Debug, Clone, Parser)]
#[command(name = "membrane-xds", version)]
pub struct Config {
    /// Directory of Kubernetes-shaped YAML (CNP, CCNP, Pod, Namespace,
    /// Service, EndpointSlice, Node), watched.
    #[arg(long, env = "MEMBRANE_SOURCE_DIR")]
    pub source_dir: Option<PathBuf>,
    /// etcd endpoints (comma-separated, `http://host:port` or `host:port`):
    /// objects under `/membrane/objects/v1/` are a source, identities are
    /// allocated there cluster-wide, and resolved addresses are registered.
    #[arg(long, env = "MEMBRANE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// TTL of this replica's etcd lease, in seconds: its registrations
    /// expire this long after it stops renewing.
    #[arg(long, env = "MEMBRANE_ETCD_LEASE_TTL", default_value_t = 15)]
    pub etcd_lease_ttl: u64,
    /// This replica's name in etcd registration keys (default: host name
    /// and process id).
    #[arg(long, env = "MEMBRANE_ETCD_REPLICA")]
    pub etcd_replica: Option<String>,
    /// Watch the Kubernetes API (CNP, CCNP, Pod, Namespace, Service,
    /// EndpointSlice, Node) and write each policy's `Valid` condition back.
    #[arg(long, env = "MEMBRANE_KUBE")]
    pub kube: bool,
    /// kubeconfig for --kube; without it: in-cluster, then KUBECONFIG, then
    /// ~/.kube/config.
    #[arg(long, env = "MEMBRANE_KUBECONFIG", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,
    /// How long start-up waits for the first list of every kind before
    /// serving what it has, in seconds.
    #[arg(long, env = "MEMBRANE_KUBE_SYNC_SECS", default_value_t = 30)]
    pub kube_sync_secs: u64,
    /// Plaintext xDS gRPC listen address (port 0 picks one; the bound
    /// address is printed on stdout).
    #[arg(long, env = "MEMBRANE_GRPC_ADDR", default_value = "0.0.0.0:15010")]
    pub grpc_addr: SocketAddr,
    /// TLS xDS gRPC listen address; served only with --tls-cert and --tls-key.
    #[arg(long, env = "MEMBRANE_TLS_ADDR", default_value = "0.0.0.0:15012")]
    pub tls_addr: SocketAddr,
    /// PEM certificate chain for the TLS xDS port.
    #[arg(long, env = "MEMBRANE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS xDS port.
    #[arg(long, env = "MEMBRANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Sidecar-injection webhook (HTTPS, `POST /inject`) listen address;
    /// served only with --webhook-cert and --webhook-key.
    #[arg(long, env = "MEMBRANE_WEBHOOK_ADDR", default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,
    /// PEM certificate chain for the webhook (for the Service's DNS name,
    /// e.g. `membrane-xds.membrane-system.svc`); re-read when it changes
    /// and on SIGHUP.
    #[arg(long, env = "MEMBRANE_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// PEM private key for --webhook-cert.
    #[arg(long, env = "MEMBRANE_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// How often the webhook's certificate and key files are checked for
    /// new content, in milliseconds.
    #[arg(long, env = "MEMBRANE_WEBHOOK_CERT_POLL_MS", default_value_t = 1000)]
    pub webhook_cert_poll_ms: u64,
    /// Largest AdmissionReview the webhook accepts, in bytes.
    #[arg(long, env = "MEMBRANE_WEBHOOK_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub webhook_max_body_bytes: usize,
    /// Image of the injected `membrane-proxy` container (it must hold
    /// `membrane-proxy` on its PATH).
    #[arg(long, env = "MEMBRANE_SIDECAR_IMAGE", default_value = concat!("membrane:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Control plane the injected sidecar dials (plaintext xDS).
    #[arg(
        long,
        env = "MEMBRANE_SIDECAR_XDS_ADDRESS",
        default_value = "http://membrane-xds.membrane-system.svc:15010"
    )]
    pub sidecar_xds_address: String,
    /// Istio revision written into injected pods' `sidecar.istio.io/status`.
    #[arg(long, env = "MEMBRANE_INJECTION_REVISION", default_value = "default")]
    pub injection_revision: String,
    /// Debug and metrics HTTP listen address.
    #[arg(long, env = "MEMBRANE_DEBUG_ADDR", default_value = "0.0.0.0:15014")]
    pub debug_addr: SocketAddr,
    /// How often the source directory is scanned regardless of file-system
    /// events, in milliseconds (events trigger a scan at once).
    #[arg(long, env = "MEMBRANE_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// Largest source file accepted, in bytes.
    #[arg(long, env = "MEMBRANE_MAX_FILE_BYTES", default_value_t = 4 << 20)]
    pub max_file_bytes: u64,
    /// What Kafka, DNS and generic L7 rules (which no membrane proxy enforces) do:
    /// `fail-closed` denies the peers and ports only they would allow; `l4-only` allows
    /// those at L4 without the rules.
    #[arg(long, env = "MEMBRANE_UNENFORCED_L7", default_value = "fail-closed")]
    pub unenforced_l7: membrane_policy::UnenforcedL7Mode,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "MEMBRANE_LOG", default_value = "info")]
    pub log: String,
}
