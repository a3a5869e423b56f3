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
    /// PEM CA bundle that etcd's server certificate must chain to; turns on
    /// TLS to etcd (endpoints become `https://`).
    #[arg(long, env = "MEMBRANE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd (`--client-cert-auth`).
    #[arg(long, env = "MEMBRANE_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key for --etcd-cert.
    #[arg(long, env = "MEMBRANE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
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
    /// Also serve xDS over plaintext gRPC on --grpc-addr. Unauthenticated:
    /// a client there is whoever its node id says, and other ids get the
    /// shared snapshot (every endpoint's policy and the whole ipcache), so
    /// it is a trusted local path (the embedded default, tests), off unless
    /// asked for and on loopback unless --grpc-addr says otherwise.
    #[arg(long, env = "MEMBRANE_PLAINTEXT_XDS")]
    pub plaintext_xds: bool,
    /// Plaintext xDS gRPC listen address, served only with --plaintext-xds
    /// (port 0 picks one; the bound address is printed on stdout).
    #[arg(
        long,
        env = "MEMBRANE_GRPC_ADDR",
        default_value = "127.0.0.1:15010",
        requires = "plaintext_xds"
    )]
    pub grpc_addr: SocketAddr,
    /// mTLS xDS gRPC listen address (Istio's 15012), served with --tls-cert,
    /// --tls-key and --ca-cert: the default, authenticated path.
    #[arg(long, env = "MEMBRANE_TLS_ADDR", default_value = "0.0.0.0:15012")]
    pub tls_addr: SocketAddr,
    /// PEM certificate chain of the control plane for the mTLS xDS port
    /// (its SAN must hold the name clients dial, e.g.
    /// `membrane-xds.membrane-system.svc`). Read once at start.
    #[arg(long, env = "MEMBRANE_TLS_CERT", requires_all = ["tls_key", "ca_cert"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "MEMBRANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA certificates client certificates must chain to
    /// on the mTLS xDS port (a client without a valid one is refused in the
    /// handshake).
    #[arg(long, env = "MEMBRANE_CA_CERT", requires = "tls_cert")]
    pub ca_cert: Option<PathBuf>,
    /// SPIFFE trust domain of workload certificates: a client's URI SAN must
    /// be `spiffe://DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    #[arg(long, env = "MEMBRANE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The service account node agents run as (`NAMESPACE/NAME`): on the
    /// mTLS port only its certificate may present a node agent's id
    /// `membrane-agent~NODE`.
    #[arg(
        long,
        env = "MEMBRANE_AGENT_SERVICE_ACCOUNT",
        default_value = crate::auth::DEFAULT_AGENT_ACCOUNT,
        value_parser = parse_account
    )]
    pub agent_service_account: (String, String),
    /// PEM private key of the first certificate in --ca-cert: turns on Istio's
    /// certificate service (`istio.v1.auth.IstioCertificateService`) on the mTLS port, so
    /// sidecars get their workload certificates as from istiod. Callers prove who they
    /// are with a workload client certificate (renewal) or a service-account token
    /// (TokenReview, with --kube); the port then also accepts connections without a
    /// client certificate, and xDS still refuses them per request.
    #[arg(long, env = "MEMBRANE_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of a workload certificate when the request asks for none (Istio's
    /// DEFAULT_WORKLOAD_CERT_TTL).
    #[arg(long, env = "MEMBRANE_CA_WORKLOAD_CERT_TTL", value_parser = humantime::parse_duration, default_value = "24h")]
    pub ca_workload_cert_ttl: Duration,
    /// Longest lifetime a request may ask for (Istio's MAX_WORKLOAD_CERT_TTL); longer
    /// requests are refused.
    #[arg(long, env = "MEMBRANE_CA_MAX_WORKLOAD_CERT_TTL", value_parser = humantime::parse_duration, default_value = "90d")]
    pub ca_max_workload_cert_ttl: Duration,
    /// Largest CSR accepted, in bytes of PEM.
    #[arg(long, env = "MEMBRANE_CA_MAX_CSR_BYTES", default_value_t = 16 << 10)]
    pub ca_max_csr_bytes: usize,
    /// Certificate requests one identity may make per minute.
    #[arg(long, env = "MEMBRANE_CA_REQUESTS_PER_MINUTE", default_value_t = 20)]
    pub ca_requests_per_minute: u32,
    /// Audiences a service-account token must be meant for (Istio's TOKEN_AUDIENCES;
    /// the projected `istio-token` is issued for `istio-ca`).
    #[arg(
        long,
        env = "MEMBRANE_CA_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = "istio-ca"
    )]
    pub ca_token_audiences: Vec<String>,
    /// The relay's service account (`NAMESPACE/NAME`): a client with its
    /// SPIFFE id presenting `membrane-relay~NAME` gets the node registry and
    /// the workload directory, nothing else.
    #[arg(
        long,
        env = "MEMBRANE_RELAY_SERVICE_ACCOUNT",
        default_value = crate::auth::DEFAULT_RELAY_ACCOUNT,
        value_parser = parse_account
    )]
    pub relay_service_account: (String, String),
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
    /// Control plane the injected sidecar dials: the mTLS port, with the
    /// pod's certificate from the mounted `membrane.SERVICE_ACCOUNT` Secret.
    #[arg(
        long,
        env = "MEMBRANE_SIDECAR_XDS_ADDRESS",
        default_value = "https://membrane-xds.membrane-system.svc:15012"
    )]
    pub sidecar_xds_address: String,
    /// Istio revision written into injected pods' `sidecar.istio.io/status`;
    /// a pod labelled `istio.io/rev` with another revision is not injected.
    #[arg(long, env = "MEMBRANE_INJECTION_REVISION", default_value = "default")]
    pub injection_revision: String,
    /// The proxy as a native sidecar (an init container with `restartPolicy:
    /// Always`, Kubernetes 1.29+) or a plain container (`false`, for older
    /// clusters); `auto`: native unless `--kube` finds an API server older
    /// than 1.29. A pod's `sidecar.istio.io/nativeSidecar` annotation wins.
    #[arg(long, env = "MEMBRANE_NATIVE_SIDECARS", default_value = "auto")]
    pub native_sidecars: NativeSidecars,
    /// Istio's `holdApplicationUntilProxyStarts` for every pod (a pod's
    /// `proxy.istio.io/config` can ask for it too): with plain containers
    /// the proxy goes first and the application starts once it is ready.
    #[arg(long, env = "MEMBRANE_HOLD_APPLICATION_UNTIL_PROXY_STARTS")]
    pub hold_application_until_proxy_starts: bool,
    /// Rewrite the application's httpGet/tcpSocket/grpc probes to go
    /// through the sidecar's 15020 (Istio's default; a pod's
    /// `sidecar.istio.io/rewriteAppHTTPProbers` wins).
    #[arg(long, env = "MEMBRANE_REWRITE_APP_PROBERS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub rewrite_app_probers: bool,
    /// `ISTIO_META_CLUSTER_ID` of injected sidecars (Istio's default; the
    /// `/inject/cluster/NAME` path overrides it).
    #[arg(
        long,
        env = "MEMBRANE_SIDECAR_CLUSTER_ID",
        default_value = "Kubernetes"
    )]
    pub sidecar_cluster_id: String,
    /// Istio's CA injected sidecars request their certificates from (`CA_ADDR`, e.g.
    /// `istiod.istio-system.svc:15012`); unset: the sidecar's control plane address,
    /// this membrane-xds, which signs them with `--ca-key`.
    #[arg(long, env = "MEMBRANE_SIDECAR_CA_ADDRESS")]
    pub sidecar_ca_address: Option<String>,
    /// Debug and metrics HTTP listen address. Bound elsewhere than
    /// loopback, only `/metrics` and `/ready` answer remote clients: the
    /// per-proxy views (config dumps, syncz, adsz, flightz, ...) answer 403.
    #[arg(long, env = "MEMBRANE_DEBUG_ADDR", default_value = "127.0.0.1:15014")]
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
    /// Cilium's allow-localhost: `auto` (the default; `always` under Kubernetes, which
    /// every membrane source describes) and `always` let the node's own traffic
    /// (`reserved:host`: kubelet probes) reach a pod on every port no rule naming the host
    /// covers; `policy` requires a rule. Carried in NPDS (as rules for identity 1) and in
    /// the agents' policy entries.
    #[arg(long, env = "MEMBRANE_ALLOW_LOCALHOST", default_value = "auto")]
    pub allow_localhost: membrane_policy::AllowLocalhost,
    /// Istio's root namespace (mesh config `rootNamespace`): a PeerAuthentication there
    /// without a selector is mesh-wide.
    #[arg(long, env = "MEMBRANE_ROOT_NAMESPACE", default_value = crate::peerauth::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
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

/// `--native-sidecars`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeSidecars {
    /// Native unless the API server (with `--kube`) is older than 1.29.
    Auto,
    /// Always an init container with `restartPolicy: Always`.
    True,
    /// Always a plain container.
    False,
}

impl NativeSidecars {
    /// The choice, given the API server's `major.minor` when known.
    pub fn resolve(self, server: Option<(u32, u32)>) -> bool {
        match self {
            NativeSidecars::True => true,
            NativeSidecars::False => false,
            NativeSidecars::Auto => server.is_none_or(|v| v >= (1, 29)),
        }
    }
}

/// `NAMESPACE/NAME` of a service account.
fn parse_account(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "{s:?} is not a service account: expected NAMESPACE/NAME (e.g. kube-system/membrane-agent)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_listeners_are_loopback_and_plaintext_is_opt_in() {
        let c = Config::try_parse_from(["membrane-xds"]).unwrap();
        assert!(!c.plaintext_xds, "plaintext xDS must be asked for");
        assert_eq!(c.grpc_addr, "127.0.0.1:15010".parse().unwrap());
        assert_eq!(c.debug_addr, "127.0.0.1:15014".parse().unwrap());
        assert_eq!(c.tls_addr, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(
            c.agent_service_account,
            ("kube-system".to_string(), "membrane-agent".to_string())
        );
        let err = Config::try_parse_from(["membrane-xds", "--agent-service-account", "agent"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("NAMESPACE/NAME"), "{err}");
        assert_eq!(c.trust_domain, "cluster.local");
        assert!(
            c.sidecar_xds_address.starts_with("https://")
                && c.sidecar_xds_address.ends_with(":15012")
        );
        // An address for the plaintext port without asking for it is a mistake.
        let e =
            Config::try_parse_from(["membrane-xds", "--grpc-addr", "0.0.0.0:15010"]).unwrap_err();
        assert!(e.to_string().contains("--plaintext-xds"), "{e}");
        // mTLS needs the CA that client certificates chain to.
        let e = Config::try_parse_from(["membrane-xds", "--tls-cert", "c", "--tls-key", "k"])
            .unwrap_err();
        assert!(e.to_string().contains("--ca-cert"), "{e}");
        let c = Config::try_parse_from([
            "membrane-xds",
            "--plaintext-xds",
            "--grpc-addr",
            "0.0.0.0:0",
        ])
        .unwrap();
        assert!(c.plaintext_xds);
    }

    #[test]
    fn native_sidecars_unless_the_cluster_is_too_old_or_told_otherwise() {
        let c = Config::try_parse_from(["membrane-xds"]).unwrap();
        assert_eq!(c.native_sidecars, NativeSidecars::Auto);
        assert!(c.rewrite_app_probers && !c.hold_application_until_proxy_starts);
        assert!(NativeSidecars::Auto.resolve(None));
        assert!(NativeSidecars::Auto.resolve(Some((1, 29))));
        assert!(!NativeSidecars::Auto.resolve(Some((1, 28))));
        assert!(!NativeSidecars::False.resolve(Some((1, 34))));
        assert!(NativeSidecars::True.resolve(Some((1, 20))));
        let c = Config::try_parse_from([
            "membrane-xds",
            "--native-sidecars",
            "false",
            "--rewrite-app-probers",
            "false",
        ])
        .unwrap();
        assert_eq!(c.native_sidecars, NativeSidecars::False);
        assert!(!c.rewrite_app_probers);
        let e = Config::try_parse_from(["membrane-xds", "--native-sidecars", "maybe"]).unwrap_err();
        assert!(e.to_string().contains("auto, true, false"), "{e}");
    }
}
