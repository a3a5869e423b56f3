//! Command-line and environment configuration: one `Config` parsed once in `main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `membrane-proxy`: the L7 sidecar.
#[derive(Debug, Parser)]
#[command(name = "membrane-proxy", version, about = "membrane L7 sidecar proxy")]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Modes of operation.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sidecar without a mesh: enforce a policy file on one listener in front of one upstream.
    Standalone(Box<Config>),
    /// The mesh sidecar, configured from Istio's injected environment.
    #[command(long_about = crate::sidecar::HELP)]
    Sidecar(Box<crate::sidecar::SidecarArgs>),
    /// Wait until the sidecar is ready (the postStart hook of holdApplicationUntilProxyStarts).
    #[command(long_about = crate::sidecar::wait::HELP)]
    Wait(crate::sidecar::wait::WaitArgs),
}

/// How the proxy talks HTTP to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 downstream goes upstream as HTTP/1.1, HTTP/2 as HTTP/2 (h2c prior knowledge).
    /// gRPC needs this (trailers).
    Match,
    /// Always HTTP/1.1 upstream (as an Envoy cluster without http2_protocol_options).
    Http1,
}

/// Everything `membrane-proxy standalone` is configured with.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to accept downstream connections on.
    #[arg(long, env = "MEMBRANE_LISTEN")]
    pub listen: SocketAddr,
    /// Upstream (the endpoint's application) to forward to; its port is the policy's port.
    #[arg(long, env = "MEMBRANE_UPSTREAM")]
    pub upstream: SocketAddr,
    /// CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy files (YAML, several objects per file allowed).
    #[arg(
        long = "policy",
        env = "MEMBRANE_POLICY",
        value_delimiter = ',',
        required_unless_present = "xds_address",
        conflicts_with = "xds_address"
    )]
    pub policy: Vec<PathBuf>,
    /// The endpoint's labels, `source:key=value,...` (`k8s:app=backend`). Not used with
    /// `--xds-address` (the control plane knows the endpoint's identity).
    #[arg(
        long,
        env = "MEMBRANE_ENDPOINT_LABELS",
        required_unless_present = "xds_address"
    )]
    pub endpoint_labels: Option<String>,
    /// Take the policy from membrane-xds over NPDS/NPHDS instead of `--policy` files:
    /// `https://HOST:15012` (mTLS, with --xds-ca, --xds-cert and --xds-key) or, on a trusted
    /// local path only, plaintext `http://HOST:15010`. Everything is denied and readiness
    /// is 503 until the first policy arrives; while the control plane is away, the last
    /// good policy stays in force.
    #[arg(long, env = "MEMBRANE_XDS_ADDRESS", requires = "node_id")]
    pub xds_address: Option<String>,
    /// PEM CA bundle the control plane's certificate must chain to (https:// addresses).
    #[arg(long, env = "MEMBRANE_XDS_CA", requires = "xds_address")]
    pub xds_ca: Option<PathBuf>,
    /// PEM workload certificate (SPIFFE id `spiffe://DOMAIN/ns/NS/sa/SA` in its URI SAN)
    /// presented to the control plane; Istio's layout mounts it at /etc/certs/cert-chain.pem.
    /// Re-read when it changes: the stream reconnects with the new pair.
    #[arg(long, env = "MEMBRANE_XDS_CERT", requires_all = ["xds_key", "xds_ca"])]
    pub xds_cert: Option<PathBuf>,
    /// PEM private key for --xds-cert (/etc/certs/key.pem).
    #[arg(long, env = "MEMBRANE_XDS_KEY", requires = "xds_cert")]
    pub xds_key: Option<PathBuf>,
    /// Present the mesh workload certificate issued by the CA (`--mesh-ca-address`,
    /// held in memory) to the control plane instead of --xds-cert/--xds-key files; the
    /// streams reconnect with each renewed certificate.
    #[arg(
        long,
        env = "MEMBRANE_XDS_CERT_FROM_MESH",
        requires = "xds_ca",
        conflicts_with = "xds_cert"
    )]
    pub xds_cert_from_mesh: bool,
    /// How often --xds-ca/--xds-cert/--xds-key are checked for new content.
    #[arg(long, env = "MEMBRANE_XDS_CERT_POLL", value_parser = parse_duration, default_value = "5s")]
    pub xds_cert_poll: Duration,
    /// Istio node id sent to the control plane, `sidecar~POD_IP~POD.NS~NS.svc.cluster.local`;
    /// the policy enforced is the one for POD_IP.
    #[arg(long, env = "MEMBRANE_NODE_ID", requires = "xds_address")]
    pub node_id: Option<String>,
    /// Node metadata sent with the node id, `KEY=VALUE` (repeatable), as Istio's agent sends
    /// its `ISTIO_META_*` variables (`CLUSTER_ID`, `WORKLOAD_NAME`, ...).
    #[arg(long = "node-meta", value_name = "KEY=VALUE", requires = "xds_address", value_parser = parse_node_meta)]
    pub node_meta: Vec<(String, String)>,
    /// First reconnect delay to the control plane (doubles per failed attempt, with jitter).
    #[arg(long, env = "MEMBRANE_XDS_BACKOFF_INITIAL", value_parser = parse_duration, default_value = "100ms")]
    pub xds_backoff_initial: Duration,
    /// Longest reconnect delay to the control plane.
    #[arg(long, env = "MEMBRANE_XDS_BACKOFF_MAX", value_parser = parse_duration, default_value = "5s")]
    pub xds_backoff_max: Duration,
    /// What Kafka, DNS and generic L7 rules in `--policy` files do (membrane does not
    /// enforce them): `fail-closed` denies the peers and ports only they would allow;
    /// `l4-only` allows those at L4 without the rules. With `--xds-address` the control
    /// plane's setting applies (it sends such rules only when they must fail closed).
    #[arg(long, env = "MEMBRANE_UNENFORCED_L7", default_value = "fail-closed")]
    pub unenforced_l7: membrane_policy::UnenforcedL7Mode,
    /// Cilium's allow-localhost for `--policy` files: `auto` (the default) and `always` let
    /// the node's own traffic (`reserved:host`) in on any port no rule naming the host
    /// covers; `policy` requires a rule. With `--xds-address` the control plane's setting
    /// applies (NPDS carries the host's allowance as rules).
    #[arg(long, env = "MEMBRANE_ALLOW_LOCALHOST", default_value = "auto")]
    pub allow_localhost: membrane_policy::AllowLocalhost,
    /// Static ipcache entries `CIDR=LABELS` (`10.0.0.0/8=k8s:org=empire`); longest prefix wins.
    #[arg(long = "peer", env = "MEMBRANE_PEER", value_delimiter = ';')]
    pub peer: Vec<String>,
    /// Worker threads (1 = one current-thread runtime, as Envoy's `--concurrency 1`).
    #[arg(long, env = "MEMBRANE_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Before the event loop sleeps, poll for more work for up to this long (adaptive: off
    /// after a poll that found nothing, on again once traffic is dense); 0us: never.
    #[arg(long, env = "MEMBRANE_BUSY_POLL", value_parser = parse_duration, default_value = "50us")]
    pub busy_poll: Duration,
    /// Admin listener (Envoy-compatible subset).
    #[arg(long, env = "MEMBRANE_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Transparent inbound capture listener (Istio's 15006): connections redirected here
    /// (by the eBPF datapath's sk_lookup, or iptables/nftables) are delivered to their
    /// original destination, the pod's address and the port the client dialled (read with
    /// SO_ORIGINAL_DST after a NAT redirect), under the ingress policy of that port. The
    /// app is reached as the client reached the pod, so a port it binds to localhost only
    /// is never exposed. A connection to one of `--proxy-ports` is refused.
    #[arg(long, env = "MEMBRANE_CAPTURE_INBOUND")]
    pub capture_inbound: Option<SocketAddr>,
    /// Transparent outbound capture listeners (Istio's 15001), comma-separated: redirected
    /// connections go to their original destination under the endpoint's egress policy;
    /// a connection nobody redirected (no SO_ORIGINAL_DST answer) is refused. Bind them
    /// to loopback (`127.0.0.1:15001,[::1]:15001`, where the eBPF datapath steers the
    /// pod's IPv4 and IPv6 connects) so no peer can dial them; an IPv6 address the pod
    /// does not have is skipped with a warning. The proxy's own upstream connections must
    /// be excluded from the redirect (e.g. by its uid, as Istio does with 1337).
    #[arg(long, env = "MEMBRANE_CAPTURE_OUTBOUND", value_delimiter = ',')]
    pub capture_outbound: Vec<SocketAddr>,
    /// The sidecar's own ports, comma-separated: capture never forwards to one of them
    /// (with the ports this proxy binds, which are always included).
    #[arg(
        long,
        env = "MEMBRANE_PROXY_PORTS",
        value_delimiter = ',',
        default_value = "15000,15001,15006,15007,15020,15021,15090"
    )]
    pub proxy_ports: Vec<u16>,
    /// Prometheus listener (`/stats/prometheus`).
    #[arg(long, env = "MEMBRANE_METRICS", default_value = "127.0.0.1:15020")]
    pub metrics: SocketAddr,
    /// Readiness listener (`/healthz/ready`).
    #[arg(long, env = "MEMBRANE_HEALTH", default_value = "127.0.0.1:15021")]
    pub health: SocketAddr,
    /// A second Prometheus listener (`/stats/prometheus` only), as Envoy's 15090 in an
    /// Istio sidecar; none by default.
    #[arg(long, env = "MEMBRANE_STATS")]
    pub stats: Option<SocketAddr>,
    /// App probes answered on the `--metrics` listener, Istio's `ISTIO_KUBE_APP_PROBERS`
    /// JSON: `/app-health/CONTAINER/livez|readyz|startupz` to the app's original
    /// httpGet/tcpSocket/grpc probe, which the proxy performs against
    /// `--app-probe-address` and answers with the app's status.
    #[arg(long, env = "MEMBRANE_APP_PROBERS", value_parser = parse_app_probers)]
    pub app_probers: Option<crate::sidecar::probe::AppProbers>,
    /// Where app probes go (the pod's address, as Istio's agent probes).
    #[arg(long, env = "MEMBRANE_APP_PROBE_ADDRESS", default_value = "127.0.0.1")]
    pub app_probe_address: std::net::IpAddr,
    /// Upstream HTTP protocol selection.
    #[arg(long, env = "MEMBRANE_UPSTREAM_PROTOCOL", value_enum, default_value_t = UpstreamProtocol::Match)]
    pub upstream_protocol: UpstreamProtocol,
    /// Write a JSON-lines access log entry per request (to stdout, or `--access-log-path`).
    #[arg(long, env = "MEMBRANE_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Append the access log to this file instead of stdout (created when missing; reopened
    /// on SIGHUP and when the path is rotated away). `/dev/stdout` is stdout.
    #[arg(long, env = "MEMBRANE_ACCESS_LOG_PATH")]
    pub access_log_path: Option<PathBuf>,
    /// Access-log lines are written in blocks; a line waits at most this long.
    #[arg(long, env = "MEMBRANE_ACCESS_LOG_FLUSH_INTERVAL", value_parser = parse_duration, default_value = "250ms")]
    pub access_log_flush_interval: Duration,
    /// Access-log bytes recorded but not yet written (a slow stdout reader, a slow disk)
    /// beyond which new lines are dropped and counted
    /// (`membrane_access_log_dropped_total{reason="overflow"}`); requests never wait.
    #[arg(long, env = "MEMBRANE_ACCESS_LOG_MAX_BUFFERED", default_value_t = 8 << 20)]
    pub access_log_max_buffered: usize,
    /// Send one record per HTTP request to the node agent's records socket (monitor events
    /// of type `l7`); skipped while the socket is absent, reconnected with backoff.
    #[arg(long, env = "MEMBRANE_RECORDS_SOCKET")]
    pub records_socket: Option<PathBuf>,
    /// Records are sent in batches; a record waits at most this long.
    #[arg(long, env = "MEMBRANE_RECORDS_FLUSH_INTERVAL", value_parser = parse_duration, default_value = "100ms")]
    pub records_flush_interval: Duration,
    /// Record bytes not yet sent beyond which new records are dropped and counted
    /// (`membrane_l7_records_dropped_total{reason="overflow"}`); requests never wait.
    #[arg(long, env = "MEMBRANE_RECORDS_MAX_BUFFERED", default_value_t = 1 << 20)]
    pub records_max_buffered: usize,
    /// Merge repeated slashes in paths (`//a///b` → `/a/b`) before matching and forwarding.
    #[arg(long, env = "MEMBRANE_MERGE_SLASHES", default_value_t = false, action = clap::ArgAction::Set)]
    pub merge_slashes: bool,
    /// Add `x-membrane-denied-by: <policy>` to denials (off: denials leak nothing).
    #[arg(long, env = "MEMBRANE_DENY_DETAIL_HEADER", default_value_t = false, action = clap::ArgAction::Set)]
    pub deny_detail_header: bool,
    /// Time a client has to send the protocol preface and each request head (slowloris bound).
    #[arg(long, env = "MEMBRANE_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub header_read_timeout: Duration,
    /// A downstream connection with no request in flight for this long is closed.
    #[arg(long, env = "MEMBRANE_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "300s")]
    pub idle_timeout: Duration,
    /// Time a whole request (head and body) has to arrive, counted from its head
    /// (Envoy's `request_timeout`); a request still incomplete then is answered 408 or reset
    /// and its upstream request aborted. 0s: no limit (long client-streaming RPCs), leaving
    /// `--stream-idle-timeout` as the only bound.
    #[arg(long, env = "MEMBRANE_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "300s")]
    pub request_timeout: Duration,
    /// A request whose connection moves no byte in either direction for this long is cut
    /// off with its upstream exchange (Envoy's `stream_idle_timeout`): a stalled body, a
    /// client that stops reading its response, an idle upgrade tunnel.
    #[arg(long, env = "MEMBRANE_STREAM_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "300s")]
    pub stream_idle_timeout: Duration,
    /// Upgrade protocols tunnelled after a 101 (as Envoy's `upgrade_configs`), compared with
    /// the first token of `Upgrade`, case-insensitively. Any other `Upgrade` is removed and the
    /// request forwarded as plain HTTP. `h2c` is refused: the HTTP/2 requests inside the tunnel
    /// would bypass the HTTP rules (clients use prior knowledge instead).
    #[arg(
        long,
        env = "MEMBRANE_UPGRADE_TYPES",
        value_delimiter = ',',
        default_value = "websocket"
    )]
    pub upgrade_types: Vec<String>,
    /// Istio mutual TLS on the capture listeners (`mesh_tls`).
    #[command(flatten)]
    pub mesh_tls: crate::mesh_tls::MeshTlsArgs,
    /// Maximum concurrent connections on each operator listener (admin, metrics, health);
    /// more are accepted and closed at once.
    #[arg(long, env = "MEMBRANE_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,
    /// Time a client of an operator listener has to send each request head.
    #[arg(long, env = "MEMBRANE_ADMIN_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub admin_header_read_timeout: Duration,
    /// Longest an operator-listener connection lives, keep-alive included: bounds a slow
    /// request body or a client that stops reading (operator exchanges are small and quick).
    #[arg(long, env = "MEMBRANE_ADMIN_CONNECTION_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub admin_connection_timeout: Duration,
    /// Maximum size of a request head (request line plus headers), bytes.
    #[arg(long, env = "MEMBRANE_MAX_HEADER_BYTES", default_value_t = 60 * 1024)]
    pub max_header_bytes: usize,
    /// Maximum number of request headers (HTTP/1.1).
    #[arg(long, env = "MEMBRANE_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Maximum concurrent HTTP/2 streams per downstream connection.
    #[arg(long, env = "MEMBRANE_MAX_CONCURRENT_STREAMS", default_value_t = 100)]
    pub max_concurrent_streams: u32,
    /// Maximum concurrent downstream connections; more are accepted and closed at once.
    #[arg(long, env = "MEMBRANE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// How long draining (SIGTERM, or after handing the listeners to a new process) waits
    /// for in-flight connections before exiting.
    #[arg(long, env = "MEMBRANE_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub drain_timeout: Duration,
    /// Hot restart (upgrades without a failed request): serve this unix socket (mode 0600;
    /// root and this uid only) so that a new membrane-proxy started with the same flag
    /// takes every listening socket over (SCM_RIGHTS, matched by role and address; the
    /// connections queued on them are not lost). The new process starts serving once it
    /// has its policy (with --xds-address: the control plane's first), then the old one
    /// stops accepting, answers each HTTP/1.1 keep-alive connection's next request with
    /// `Connection: close` (HTTP/2: GOAWAY), finishes within --drain-timeout and exits
    /// 0. A new process that fails to start leaves the old one serving. No socket there
    /// (or a stale one): a fresh start. Its restart epoch is in the admin /server_info.
    /// Off by default, so that two proxies on one host never take each other over.
    #[arg(long, env = "MEMBRANE_HANDOVER_SOCKET")]
    pub handover_socket: Option<PathBuf>,
    /// Timeout for connecting to the upstream.
    #[arg(long, env = "MEMBRANE_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,
    /// Idle upstream connections kept per upstream (HTTP/1.1: the upstream address; HTTP/2 and
    /// TLS: each authority); one that becomes idle beyond this is closed. 0: no reuse.
    #[arg(long, env = "MEMBRANE_UPSTREAM_MAX_IDLE", default_value_t = 64)]
    pub upstream_max_idle: usize,
    /// An idle upstream connection is closed after this long unused.
    #[arg(long, env = "MEMBRANE_UPSTREAM_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub upstream_idle_timeout: Duration,
    /// Upstream connections the HTTP/2 clients may hold in all (one per authority, so a
    /// client cycling through authorities cannot make them without bound; Envoy's default
    /// `max_connections`). Beyond it the least recently used idle one is closed; when all
    /// are busy a request waits up to `--connect-timeout`, then gets 503.
    #[arg(
        long,
        env = "MEMBRANE_UPSTREAM_H2_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub upstream_h2_max_connections: usize,
    /// How often the heap is checked for freed memory to return to the kernel (glibc
    /// `malloc_trim` when 1 MiB more than after the last trim is resident but unused); 0s: never.
    #[arg(long, env = "MEMBRANE_MEMORY_TRIM_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub memory_trim_interval: Duration,
    /// A due heap trim waits until no request is in flight and none has started for this
    /// long, so it never competes with traffic; it then runs off the event loop.
    #[arg(long, env = "MEMBRANE_MEMORY_TRIM_IDLE", value_parser = parse_duration, default_value = "1s")]
    pub memory_trim_idle: Duration,
    /// Terminate TLS on the listener with this PEM certificate chain (with `--tls-key`);
    /// ALPN offers h2 and http/1.1. Reloaded on SIGHUP.
    #[arg(long, env = "MEMBRANE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "MEMBRANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Originate TLS to the upstream (ALPN http/1.1 or h2, as `--upstream-protocol` picks).
    #[arg(long, env = "MEMBRANE_UPSTREAM_TLS", default_value_t = false, action = clap::ArgAction::Set, requires = "upstream_ca")]
    pub upstream_tls: bool,
    /// PEM trust anchors for the upstream's certificate.
    #[arg(long, env = "MEMBRANE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Name to verify the upstream's certificate against and send as SNI (and as HTTP/2
    /// `:authority`); default: the request's own authority.
    #[arg(long, env = "MEMBRANE_UPSTREAM_SERVER_NAME")]
    pub upstream_server_name: Option<String>,
    /// Directory of Kubernetes `Secret` manifests (YAML/JSON; `data` base64, `stringData`
    /// plain) that policies' `terminatingTLS` / `originatingTLS` name by namespace and
    /// name. Re-scanned every `--secrets-poll-interval` and on SIGHUP.
    #[arg(long, env = "MEMBRANE_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// How often `--secrets-dir` is checked for changed files.
    #[arg(long, env = "MEMBRANE_SECRETS_POLL_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub secrets_poll_interval: Duration,
    /// Log filter for diagnostics (stderr), `RUST_LOG` syntax.
    #[arg(long, env = "MEMBRANE_LOG", default_value = "info")]
    pub log: String,
}

/// A setting the proxy cannot run with, found before anything is bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value outside what the setting can mean.
    #[error("{flag} {value}: {expected}")]
    Invalid {
        /// The command-line flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
}

/// Longest accepted duration: timers far beyond it overflow tokio's clock arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Config {
    /// Checks every setting that would panic or misbehave at run time (a zero interval
    /// panics tokio's timers, a zero limit refuses everything), naming the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |flag, value: String, expected| {
            Err(ConfigError::Invalid {
                flag,
                value,
                expected,
            })
        };
        let durations: [(&'static str, Duration, bool); 14] = [
            // (flag, value, zero allowed)
            ("--header-read-timeout", self.header_read_timeout, false),
            ("--idle-timeout", self.idle_timeout, false),
            ("--request-timeout", self.request_timeout, true),
            ("--stream-idle-timeout", self.stream_idle_timeout, false),
            ("--connect-timeout", self.connect_timeout, false),
            ("--upstream-idle-timeout", self.upstream_idle_timeout, false),
            ("--secrets-poll-interval", self.secrets_poll_interval, false),
            ("--xds-backoff-initial", self.xds_backoff_initial, false),
            ("--xds-backoff-max", self.xds_backoff_max, false),
            (
                "--admin-header-read-timeout",
                self.admin_header_read_timeout,
                false,
            ),
            (
                "--admin-connection-timeout",
                self.admin_connection_timeout,
                false,
            ),
            ("--drain-timeout", self.drain_timeout, true),
            (
                "--access-log-flush-interval",
                self.access_log_flush_interval,
                false,
            ),
            (
                "--records-flush-interval",
                self.records_flush_interval,
                false,
            ),
        ];
        for (flag, d, zero_ok) in durations {
            if d.is_zero() && !zero_ok {
                return invalid(flag, "0s".into(), "must be longer than 0s");
            }
            if d > MAX_DURATION {
                return invalid(flag, format!("{d:?}"), "must be at most 365 days");
            }
        }
        for (flag, d) in [
            ("--memory-trim-interval", self.memory_trim_interval),
            ("--memory-trim-idle", self.memory_trim_idle),
            ("--busy-poll", self.busy_poll),
        ] {
            if d > MAX_DURATION {
                return invalid(flag, format!("{d:?}"), "must be at most 365 days");
            }
        }
        if self.xds_backoff_max < self.xds_backoff_initial {
            return invalid(
                "--xds-backoff-max",
                format!("{:?}", self.xds_backoff_max),
                "must not be shorter than --xds-backoff-initial",
            );
        }
        let counts: [(&'static str, usize); 6] = [
            ("--max-connections", self.max_connections),
            ("--max-headers", self.max_headers),
            (
                "--max-concurrent-streams",
                self.max_concurrent_streams as usize,
            ),
            ("--concurrency", self.concurrency),
            (
                "--upstream-h2-max-connections",
                self.upstream_h2_max_connections,
            ),
            ("--admin-max-connections", self.admin_max_connections),
        ];
        for (flag, n) in counts {
            if n == 0 {
                return invalid(flag, "0".into(), "must be at least 1");
            }
        }
        // The semaphores' and hyper's own ceilings.
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS
            || self.admin_max_connections > tokio::sync::Semaphore::MAX_PERMITS
        {
            return invalid(
                "--max-connections",
                self.max_connections.to_string(),
                "is beyond what a semaphore can count",
            );
        }
        if self.max_header_bytes < 1024 || self.max_header_bytes > 16 << 20 {
            return invalid(
                "--max-header-bytes",
                self.max_header_bytes.to_string(),
                "must be between 1024 and 16777216",
            );
        }
        if self.access_log_max_buffered < 64 << 10 {
            return invalid(
                "--access-log-max-buffered",
                self.access_log_max_buffered.to_string(),
                "must be at least 65536 (one block of lines)",
            );
        }
        if self.records_max_buffered < 64 << 10 {
            return invalid(
                "--records-max-buffered",
                self.records_max_buffered.to_string(),
                "must be at least 65536",
            );
        }
        if self.concurrency > 1024 {
            return invalid(
                "--concurrency",
                self.concurrency.to_string(),
                "must be at most 1024",
            );
        }
        for t in &self.upgrade_types {
            let t = t.trim();
            if t.eq_ignore_ascii_case("h2c") {
                return invalid(
                    "--upgrade-types",
                    t.to_owned(),
                    "h2c cannot be tunnelled: the HTTP/2 requests inside would bypass the HTTP rules",
                );
            }
            if t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return invalid(
                    "--upgrade-types",
                    t.to_owned(),
                    "must be protocol names (tokens)",
                );
            }
        }
        Ok(())
    }
}

impl Config {
    /// The reporter's settings, when `--records-socket` is set.
    pub fn records_settings(&self) -> Option<crate::records::Settings> {
        self.records_socket
            .as_ref()
            .map(|socket| crate::records::Settings {
                socket: socket.clone(),
                flush_interval: self.records_flush_interval,
                max_buffered: self.records_max_buffered,
            })
    }

    /// The access log's settings (whether it is on is `access_log`).
    pub fn access_log_settings(&self) -> crate::access_log::Settings {
        use crate::access_log::Destination;
        let destination = match &self.access_log_path {
            Some(p) if p != std::path::Path::new("/dev/stdout") => Destination::File(p.clone()),
            _ => Destination::Stdout,
        };
        crate::access_log::Settings {
            destination,
            flush_interval: self.access_log_flush_interval,
            max_buffered: self.access_log_max_buffered,
        }
    }
}

fn parse_node_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_app_probers(s: &str) -> Result<crate::sidecar::probe::AppProbers, String> {
    crate::sidecar::probe::AppProbers::parse(s).map_err(|e| e.to_string())
}

/// Parses `50us`, `250ms`, `10s`, `5m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (expected e.g. 50us, 250ms, 10s, 5m)"))?;
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long")),
        _ => Err(format!(
            "{s:?}: unknown unit {unit:?} (expected us, ms, s or m)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn standalone_cli_parses() {
        let cli = Cli::try_parse_from([
            "membrane-proxy",
            "standalone",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--policy",
            "a.yaml",
            "--policy",
            "b.yaml",
            "--endpoint-labels",
            "k8s:app=backend",
            "--peer",
            "10.0.0.0/8=k8s:org=empire",
            "--concurrency",
            "2",
        ])
        .unwrap();
        let Command::Standalone(c) = cli.command else {
            panic!("standalone")
        };
        assert_eq!(c.policy.len(), 2);
        assert_eq!(c.peer, vec!["10.0.0.0/8=k8s:org=empire".to_string()]);
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.admin.port(), 15000);
    }

    #[test]
    fn xds_mode_replaces_policy_files() {
        let base = [
            "membrane-proxy",
            "standalone",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
        ];
        let node = "sidecar~10.0.0.1~a.default~default.svc.cluster.local";
        let with = |extra: &[&str]| {
            Cli::try_parse_from(base.iter().chain(extra.iter()).copied()).map(|c| {
                let Command::Standalone(c) = c.command else {
                    panic!("standalone")
                };
                c
            })
        };
        let c = with(&["--xds-address", "http://127.0.0.1:15010", "--node-id", node]).unwrap();
        assert_eq!(c.node_id.as_deref(), Some(node));
        assert!(c.policy.is_empty() && c.endpoint_labels.is_none());
        // A node id is required with xDS, and files and xDS do not mix.
        assert!(with(&["--xds-address", "http://127.0.0.1:15010"]).is_err());
        assert!(with(&[
            "--xds-address",
            "http://127.0.0.1:15010",
            "--node-id",
            node,
            "--policy",
            "a.yaml"
        ])
        .is_err());
        // mTLS: a workload pair needs the CA that verifies the control plane, and the
        // pair goes together.
        let x = "https://xds:15012";
        let c = with(&[
            "--xds-address",
            x,
            "--node-id",
            node,
            "--xds-ca",
            "ca.pem",
            "--xds-cert",
            "c.pem",
            "--xds-key",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(c.xds_cert_poll, Duration::from_secs(5));
        let refused = |extra: &[&str]| {
            let mut a = vec!["--xds-address", x, "--node-id", node];
            a.extend_from_slice(extra);
            with(&a).is_err()
        };
        assert!(refused(&["--xds-cert", "c.pem", "--xds-key", "k.pem"]));
        assert!(refused(&["--xds-ca", "ca.pem", "--xds-cert", "c.pem"]));
        assert!(refused(&["--xds-ca", "ca.pem", "--xds-key", "k.pem"]));
        // Without xDS, files and labels stay required.
        assert!(with(&[]).is_err());
    }
}
