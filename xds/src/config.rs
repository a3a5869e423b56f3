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
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "MEMBRANE_LOG", default_value = "info")]
    pub log: String,
}
