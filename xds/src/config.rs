//! `membrane-xds`'s one configuration, from flags with `MEMBRANE_*` env fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::listener::ConnLimits;
use crate::recorder::Limits;
use crate::stream::StreamLimits;

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
    /// Proxy records the flight recorder keeps in all; beyond it the one
    /// disconnected longest is dropped.
    #[arg(long, env = "MEMBRANE_RECORDER_MAX_NODES", default_value_t = 16_384,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub recorder_max_nodes: u64,
    /// Events the flight recorder keeps per proxy, over all types.
    #[arg(long, env = "MEMBRANE_RECORDER_EVENTS_PER_NODE", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub recorder_events_per_node: u64,
    /// How long a proxy's record is kept after its last stream closed, in
    /// seconds.
    #[arg(
        long,
        env = "MEMBRANE_RECORDER_DISCONNECTED_TTL_SECS",
        default_value_t = 300
    )]
    pub recorder_disconnected_ttl_secs: u64,
    /// Longest client text kept or logged (NACK `error_detail`, echoed
    /// versions), in bytes; the rest is cut with a marker.
    #[arg(long, env = "MEMBRANE_XDS_MAX_TEXT_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(64..))]
    pub xds_max_text_bytes: u64,
    /// Resource names one xDS stream may subscribe to per type.
    #[arg(long, env = "MEMBRANE_XDS_MAX_NAMES_PER_TYPE", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub xds_max_names_per_type: u64,
    /// Longest `node.id` accepted, in bytes.
    #[arg(long, env = "MEMBRANE_XDS_MAX_NODE_ID_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub xds_max_node_id_bytes: u64,
    /// Connections the injection webhook holds at once; more are closed.
    #[arg(long, env = "MEMBRANE_WEBHOOK_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_max_connections: u64,
    /// Connections the debug endpoint holds at once; more are closed.
    #[arg(long, env = "MEMBRANE_DEBUG_MAX_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub debug_max_connections: u64,
    /// Time the webhook and debug listeners give a client for a TLS
    /// handshake and for each request head, in milliseconds.
    #[arg(long, env = "MEMBRANE_HTTP_HEAD_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_head_timeout_ms: u64,
    /// Time the webhook gives a client for a request body, in milliseconds.
    #[arg(long, env = "MEMBRANE_HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http_body_timeout_ms: u64,
}

impl Config {
    /// What the flight recorder keeps at most.
    pub fn recorder_limits(&self) -> Limits {
        Limits {
            max_nodes: self.recorder_max_nodes as usize,
            events_per_node: self.recorder_events_per_node as usize,
            max_text_bytes: self.xds_max_text_bytes as usize,
            disconnected_ttl: Duration::from_secs(self.recorder_disconnected_ttl_secs),
        }
    }

    /// What one xDS stream may make the server hold.
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_names_per_type: self.xds_max_names_per_type as usize,
            max_text_bytes: self.xds_max_text_bytes as usize,
            max_node_id_bytes: self.xds_max_node_id_bytes as usize,
        }
    }

    /// The bounds of the webhook (`webhook`) or debug listener.
    pub fn conn_limits(&self, webhook: bool) -> ConnLimits {
        ConnLimits {
            max_connections: if webhook {
                self.webhook_max_connections
            } else {
                self.debug_max_connections
            } as usize,
            head_timeout: Duration::from_millis(self.http_head_timeout_ms),
            body_timeout: Duration::from_millis(self.http_body_timeout_ms),
        }
    }
}
