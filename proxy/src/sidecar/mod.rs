//! `membrane-proxy sidecar`: the mesh mode configured as Istio's pilot-agent is, from the
//! environment Istio's injection template sets (the downward API's `POD_NAME`,
//! `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`; `PROXY_CONFIG`; `ISTIO_META_*`;
//! `ISTIO_KUBE_APP_PROBERS`), with a flag beside each variable that overrides it.
//!
//! This room only turns that environment into the [`Config`] `standalone` runs with in a
//! mesh (it builds the standalone command line and parses it with the same parser, so both
//! modes share every default, check and code path): Istio's node id, the control plane
//! from `PROXY_CONFIG`'s `discoveryAddress` (mTLS with the file-mounted workload
//! certificate, or one from Istio's CA, `CA_ADDR`, with the projected token), capture on 15001/15006 and the operator ports. Serving is the standalone
//! proxy's; the app probes answered on the status port are [`probe`]'s.

pub mod grpc_health;
mod insecure_tls;
pub mod probe;
pub mod proxy_config;
pub mod wait;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, Parser};
use serde::Deserialize;

use crate::config::{Cli, Command, Config};
use proxy_config::{AuthPolicy, ProxyConfig};

/// Istio's default control plane (`discoveryAddress`).
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "istiod.istio-system.svc:15012";
/// The loopback listener in front of the app, as the injector has always configured it.
pub const LOCAL_LISTEN: &str = "127.0.0.1:15007";

/// `membrane-proxy sidecar --help`: what it captures, which environment it reads, the ports.
pub const HELP: &str =
    "The mesh sidecar, configured as Istio's pilot-agent is: from the environment \
Istio's injection template sets (POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, \
PROXY_CONFIG, ISTIO_META_*, ISTIO_KUBE_APP_PROBERS), each overridable by the flag beside it.

It names itself to the control plane with Istio's node id, \
sidecar~INSTANCE_IP~POD_NAME.POD_NAMESPACE~POD_NAMESPACE.svc.cluster.local, and enforces the \
Cilium policy membrane-xds sends for that pod (NPDS), denying everything until the first \
policy is in force. The control plane is PROXY_CONFIG's discoveryAddress \
(istiod.istio-system.svc:15012 when unset): mTLS with the workload certificate mounted \
at /etc/certs/{cert-chain.pem,key.pem,root-cert.pem} when those files exist (or when \
controlPlaneAuthPolicy is MUTUAL_TLS), plaintext otherwise; an address with http:// or \
https:// says so itself. Without mounted files, when CA_ADDR is set or the projected token \
/var/run/secrets/tokens/istio-token exists, the certificate comes from Istio's CA (CA_ADDR, \
default the discovery address) as pilot-agent gets it: a key made in memory, a CSR for \
spiffe://TRUST_DOMAIN/ns/POD_NAMESPACE/sa/SERVICE_ACCOUNT sent with the token, verified \
against /var/run/secrets/istio/root-cert.pem, renewed at SECRET_GRACE_PERIOD_RATIO of \
SECRET_TTL; the control plane is then reached with mTLS presenting it.

Ports (Istio's):
  15001  outbound capture, on loopback (the pod's connections, redirected)
  15006  inbound capture (connections to the pod, redirected), delivered to the app at the
         address and port the peer dialled
  15000  admin (Envoy-compatible subset), localhost only (PROXY_CONFIG proxyAdminPort)
  15020  status (PROXY_CONFIG statusPort): /stats/prometheus, /healthz/ready and the app
         probes /app-health/CONTAINER/livez|readyz|startupz from ISTIO_KUBE_APP_PROBERS
  15021  /healthz/ready: 200 once the control plane's first policy is in force
  15090  /stats/prometheus
  15007  loopback listener in front of the app's first port (ISTIO_META_POD_PORTS)

Flags of `membrane-proxy standalone` that tune the proxy (timeouts, limits, logging) go \
after `--`; their MEMBRANE_* variables apply as in standalone mode.";

/// Everything `membrane-proxy sidecar` reads. Each value comes from the environment
/// Istio's template sets; the flag beside it wins.
#[derive(Debug, Clone, Args)]
pub struct SidecarArgs {
    /// The pod's name (downward API `metadata.name`).
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// The pod's namespace (downward API `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// The pod's IP (downward API `status.podIP`): the node id's address, the endpoint
    /// whose policy is enforced, where app probes go.
    #[arg(long, env = "INSTANCE_IP", value_name = "IP")]
    pub instance_ip: Option<String>,
    /// The pod's service account (downward API `spec.serviceAccountName`).
    #[arg(long, env = "SERVICE_ACCOUNT", value_name = "NAME")]
    pub service_account: Option<String>,
    /// The node's IP (downward API `status.hostIP`); checked when set.
    #[arg(long, env = "HOST_IP", value_name = "IP")]
    pub host_ip: Option<String>,
    /// Istio's ProxyConfig for this pod, JSON or YAML (istiod renders the mesh config's
    /// `defaultConfig` merged with the pod's `proxy.istio.io/config`).
    #[arg(long, env = "PROXY_CONFIG", value_name = "JSON|YAML")]
    pub proxy_config: Option<String>,
    /// The pod's container ports, JSON as Istio's injector writes them; the first TCP one
    /// is the app behind the loopback listener (80 when there is none).
    #[arg(long, env = "ISTIO_META_POD_PORTS", value_name = "JSON")]
    pub pod_ports: Option<String>,
    /// The app's original probes by status-port path, JSON (Istio's injector writes it
    /// when it rewrites the app's probes to 15020).
    #[arg(long, env = "ISTIO_KUBE_APP_PROBERS", value_name = "JSON")]
    pub app_probers: Option<String>,
    /// How traffic reaches the sidecar: REDIRECT or TPROXY (capture on 15001/15006), NONE
    /// (no capture listeners).
    #[arg(
        long,
        env = "ISTIO_META_INTERCEPTION_MODE",
        value_name = "MODE",
        default_value = "REDIRECT"
    )]
    pub interception_mode: String,
    /// The cluster's name in a multi-cluster mesh (node metadata `CLUSTER_ID`).
    #[arg(long, env = "ISTIO_META_CLUSTER_ID", value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// The workload (Deployment, ...) the pod belongs to (node metadata `WORKLOAD_NAME`).
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME", value_name = "NAME")]
    pub workload_name: Option<String>,
    /// The pod's owner reference, `kubernetes://apis/...` (node metadata `OWNER`).
    #[arg(long, env = "ISTIO_META_OWNER", value_name = "URI")]
    pub owner: Option<String>,
    /// The mesh's id (node metadata `MESH_ID`).
    #[arg(long, env = "ISTIO_META_MESH_ID", value_name = "ID")]
    pub mesh_id: Option<String>,
    /// The pod's app containers, comma-separated (node metadata `APP_CONTAINERS`).
    #[arg(long, env = "ISTIO_META_APP_CONTAINERS", value_name = "NAMES")]
    pub app_containers: Option<String>,
    /// The mesh's trust domain, `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (node metadata).
    #[arg(long, env = "TRUST_DOMAIN", value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// The cluster's DNS domain in the node id: `NAMESPACE.svc.DOMAIN`.
    #[arg(long, env = "MEMBRANE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The control plane, overriding PROXY_CONFIG's discoveryAddress (`HOST:PORT`, or with
    /// `http://` / `https://`).
    #[arg(long, value_name = "ADDRESS")]
    pub xds_address: Option<String>,
    /// The node id, overriding the one built from the pod's identity.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Where the workload certificate is mounted: cert-chain.pem, key.pem, root-cert.pem
    /// (Istio's file-mounted layout). Re-read when the files change.
    #[arg(long, env = "MEMBRANE_CERTS_DIR", default_value = "/etc/certs")]
    pub certs_dir: PathBuf,
    /// Istio's CA (`CA_ADDR`; default: the discovery address): without a mounted
    /// certificate in CERTS_DIR, the workload certificate is requested from it with the
    /// pod's `istio-token`, as pilot-agent does. Setting it turns that on even before the
    /// token is mounted.
    #[arg(long, env = "CA_ADDR", value_name = "ADDRESS")]
    pub ca_addr: Option<String>,
    /// The projected service-account token for the CA (audience `istio-ca`); when it
    /// exists and CERTS_DIR holds no certificate, the certificate comes from the CA.
    #[arg(
        long,
        env = "MEMBRANE_ISTIO_TOKEN",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub istio_token: PathBuf,
    /// The mesh root from Istio's `istio-ca-root-cert` ConfigMap: the CA, the control
    /// plane and peers are verified against it when the certificate comes from the CA.
    #[arg(
        long,
        env = "MEMBRANE_ISTIO_ROOT_CERT",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub istio_root_cert: PathBuf,
    /// Lifetime of the requested certificate, e.g. `24h` or Go's `24h0m0s` (SECRET_TTL).
    #[arg(long, env = "SECRET_TTL", value_name = "DURATION")]
    pub secret_ttl: Option<String>,
    /// Renew when this fraction of the lifetime is left (SECRET_GRACE_PERIOD_RATIO, 0.5).
    #[arg(long, env = "SECRET_GRACE_PERIOD_RATIO", value_name = "RATIO")]
    pub secret_grace_period_ratio: Option<String>,
    /// The key's algorithm: ECDSA (the only one offered; Istio's default is RSA).
    #[arg(long, env = "ECC_SIGNATURE_ALGORITHM", value_name = "ALG")]
    pub ecc_signature_algorithm: Option<String>,
    /// The ECDSA curve: P256 (default) or P384 (ECC_CURVE).
    #[arg(long, env = "ECC_CURVE", value_name = "CURVE")]
    pub ecc_curve: Option<String>,
    /// CA bundle the control plane's certificate must chain to (default CERTS_DIR/root-cert.pem).
    #[arg(long, env = "MEMBRANE_XDS_CA", value_name = "PEM")]
    pub xds_ca: Option<PathBuf>,
    /// Workload certificate chain presented to the control plane (default CERTS_DIR/cert-chain.pem).
    #[arg(long, env = "MEMBRANE_XDS_CERT", value_name = "PEM")]
    pub xds_cert: Option<PathBuf>,
    /// Its private key (default CERTS_DIR/key.pem).
    #[arg(long, env = "MEMBRANE_XDS_KEY", value_name = "PEM")]
    pub xds_key: Option<PathBuf>,
    /// Admin listener (default 127.0.0.1:PROXY_CONFIG proxyAdminPort, 15000).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Status listener: metrics, readiness, app probes (default [::]/0.0.0.0:statusPort, 15020).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Readiness listener (default 0.0.0.0:15021).
    #[arg(long, value_name = "ADDR")]
    pub health: Option<SocketAddr>,
    /// Prometheus listener (default 0.0.0.0:15090).
    #[arg(long, value_name = "ADDR")]
    pub stats: Option<SocketAddr>,
    /// Inbound capture listener (default 0.0.0.0:15006).
    #[arg(long, value_name = "ADDR")]
    pub capture_inbound: Option<SocketAddr>,
    /// Outbound capture listeners (default 127.0.0.1:15001,[::1]:15001).
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    pub capture_outbound: Vec<SocketAddr>,
    /// The loopback listener in front of the app.
    #[arg(long, value_name = "ADDR", default_value = LOCAL_LISTEN)]
    pub listen: SocketAddr,
    /// The app behind it (default 127.0.0.1:the first TCP port of ISTIO_META_POD_PORTS).
    #[arg(long, value_name = "ADDR")]
    pub upstream: Option<SocketAddr>,
    /// Flags of `membrane-proxy standalone` (after `--`), e.g. `-- --concurrency 2`.
    #[arg(last = true, value_name = "STANDALONE_FLAGS")]
    pub standalone_flags: Vec<String>,
}

/// Why the sidecar cannot start; each names the variable (and its flag) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    /// A required variable is unset or empty.
    #[error("{var} is not set (Istio's template sets it from {source_field}; or pass {flag})")]
    Missing {
        /// The environment variable.
        var: &'static str,
        /// Where Kubernetes takes it from.
        source_field: &'static str,
        /// The flag that sets it instead.
        flag: &'static str,
    },
    /// A variable whose value cannot be what it names.
    #[error("{var} {value:?}: {what}")]
    Invalid {
        /// The environment variable (or flag).
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        what: String,
    },
    /// The resulting proxy configuration was refused.
    #[error("{0}")]
    Flags(String),
}

/// A container port as `ISTIO_META_POD_PORTS` lists it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    container_port: u16,
    protocol: Option<String>,
}

/// Istio's node id: `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`.
pub fn node_id(ip: IpAddr, pod: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.{cluster_domain}")
}

fn required(
    v: &Option<String>,
    var: &'static str,
    source_field: &'static str,
    flag: &'static str,
) -> Result<String, SidecarError> {
    let v = v.as_deref().map(str::trim).unwrap_or_default();
    if v.is_empty() {
        return Err(SidecarError::Missing {
            var,
            source_field,
            flag,
        });
    }
    // A DNS label or subdomain: anything else would make the node id ambiguous.
    if !v
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(SidecarError::Invalid {
            var,
            value: v.to_owned(),
            what: "is not a Kubernetes name (lowercase letters, digits, '-', '.')".into(),
        });
    }
    Ok(v.to_owned())
}

fn ip(v: &str, var: &'static str) -> Result<IpAddr, SidecarError> {
    v.trim().parse().map_err(|_| SidecarError::Invalid {
        var,
        value: v.to_owned(),
        what: "is not an IP address".into(),
    })
}

/// The first TCP port in `ISTIO_META_POD_PORTS`.
fn first_tcp_port(json: &str) -> Result<Option<u16>, SidecarError> {
    if json.trim().is_empty() {
        return Ok(None);
    }
    let ports: Vec<ContainerPort> =
        serde_json::from_str(json).map_err(|e| SidecarError::Invalid {
            var: "ISTIO_META_POD_PORTS",
            value: json.to_owned(),
            what: format!("is not a JSON list of container ports: {e}"),
        })?;
    Ok(ports
        .iter()
        .find(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP") && p.container_port != 0)
        .map(|p| p.container_port))
}

/// How the sidecar reaches the control plane over TLS.
enum XdsTlsFlags {
    /// With the mounted files: CA bundle, certificate, key.
    Files([PathBuf; 3]),
    /// With the CA-issued certificate held in memory, verifying against this root.
    FromMesh(PathBuf),
}

/// The workload certificate from Istio's CA: when CERTS_DIR holds no certificate and
/// either CA_ADDR is set or the pod's `istio-token` is mounted (Istio's template mounts
/// it for exactly this). Returns the standalone flags that configure it.
fn ca_flags(
    args: &SidecarArgs,
    discovery: &str,
    namespace: &str,
) -> Result<Option<Vec<(String, String)>>, SidecarError> {
    let mounted = ["cert-chain.pem", "key.pem", "root-cert.pem"]
        .iter()
        .all(|f| args.certs_dir.join(f).exists());
    let ca_addr = args
        .ca_addr
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty());
    if mounted || (ca_addr.is_none() && !args.istio_token.exists()) {
        return Ok(None);
    }
    let sa = required(
        &args.service_account,
        "SERVICE_ACCOUNT",
        "spec.serviceAccountName",
        "--service-account",
    )?;
    let td = args
        .trust_domain
        .as_deref()
        .filter(|t| !t.is_empty())
        .unwrap_or("cluster.local");
    let address = ca_addr.unwrap_or(discovery);
    let address = match address.split_once("://") {
        Some(("http", rest)) | Some(("https", rest)) => rest,
        _ => address,
    };
    let mut f = vec![
        ("--mesh-ca-address", address.to_owned()),
        (
            "--mesh-ca-identity",
            format!("spiffe://{td}/ns/{namespace}/sa/{sa}"),
        ),
        ("--mesh-ca-token", args.istio_token.display().to_string()),
        ("--mesh-ca-root", args.istio_root_cert.display().to_string()),
        (
            "--mesh-ca-cluster-id",
            args.cluster_id
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "Kubernetes".into()),
        ),
        // The mounted layout still wins when it appears.
        (
            "--mesh-cert",
            args.certs_dir.join("cert-chain.pem").display().to_string(),
        ),
        (
            "--mesh-key",
            args.certs_dir.join("key.pem").display().to_string(),
        ),
        (
            "--mesh-root",
            args.certs_dir.join("root-cert.pem").display().to_string(),
        ),
    ];
    if let Some(ttl) = args.secret_ttl.as_deref().filter(|t| !t.is_empty()) {
        let d = humantime::parse_duration(ttl).map_err(|e| SidecarError::Invalid {
            var: "SECRET_TTL",
            value: ttl.to_owned(),
            what: format!("is not a duration: {e}"),
        })?;
        f.push(("--mesh-ca-ttl", format!("{}s", d.as_secs())));
    }
    if let Some(r) = args
        .secret_grace_period_ratio
        .as_deref()
        .filter(|r| !r.is_empty())
    {
        let ok = r.parse::<f64>().ok().filter(|v| *v > 0.0 && *v < 1.0);
        let Some(v) = ok else {
            return Err(SidecarError::Invalid {
                var: "SECRET_GRACE_PERIOD_RATIO",
                value: r.to_owned(),
                what: "is not a number between 0 and 1".into(),
            });
        };
        f.push(("--mesh-ca-grace-ratio", v.to_string()));
    }
    if let Some(a) = args
        .ecc_signature_algorithm
        .as_deref()
        .filter(|a| !a.is_empty())
    {
        if a != "ECDSA" {
            return Err(SidecarError::Invalid {
                var: "ECC_SIGNATURE_ALGORITHM",
                value: a.to_owned(),
                what: "only ECDSA keys are made (RSA is not offered)".into(),
            });
        }
    }
    if let Some(c) = args.ecc_curve.as_deref().filter(|c| !c.is_empty()) {
        if c != "P256" && c != "P384" {
            return Err(SidecarError::Invalid {
                var: "ECC_CURVE",
                value: c.to_owned(),
                what: "must be P256 or P384".into(),
            });
        }
        f.push(("--mesh-ca-key-curve", c.to_owned()));
    }
    Ok(Some(
        f.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    ))
}

/// The discovery address: the flag, else PROXY_CONFIG's, else Istio's default.
fn discovery_address(args: &SidecarArgs, pc: &ProxyConfig) -> String {
    args.xds_address
        .clone()
        .or_else(|| pc.discovery_address.clone())
        .unwrap_or_else(|| DEFAULT_DISCOVERY_ADDRESS.to_owned())
}

/// Where the control plane is and how to reach it: (`http(s)://HOST:PORT`, TLS). With
/// the certificate from the CA (`from_ca`) and no files, TLS presents that certificate.
fn xds_target(
    args: &SidecarArgs,
    pc: &ProxyConfig,
    from_ca: bool,
) -> Result<(String, Option<XdsTlsFlags>), SidecarError> {
    let address = discovery_address(args, pc);
    let files = [
        args.xds_ca
            .clone()
            .unwrap_or_else(|| args.certs_dir.join("root-cert.pem")),
        args.xds_cert
            .clone()
            .unwrap_or_else(|| args.certs_dir.join("cert-chain.pem")),
        args.xds_key
            .clone()
            .unwrap_or_else(|| args.certs_dir.join("key.pem")),
    ];
    let https = if let Some((scheme, _)) = address.split_once("://") {
        match scheme {
            "https" => true,
            "http" => false,
            _ => {
                return Err(SidecarError::Invalid {
                    var: "PROXY_CONFIG",
                    value: address,
                    what: "discoveryAddress: the scheme must be http:// or https://".into(),
                })
            }
        }
    } else {
        match pc.control_plane_auth_policy {
            Some(AuthPolicy::MutualTls) => true,
            Some(AuthPolicy::None) => false,
            None => from_ca || files.iter().all(|f| Path::new(f).exists()),
        }
    };
    let bare = address
        .split_once("://")
        .map_or(address.as_str(), |(_, rest)| rest);
    let url = format!("{}://{bare}", if https { "https" } else { "http" });
    let tls = match (https, from_ca && args.xds_cert.is_none()) {
        (false, _) => None,
        (true, false) => Some(XdsTlsFlags::Files(files)),
        (true, true) => Some(XdsTlsFlags::FromMesh(
            args.xds_ca
                .clone()
                .unwrap_or_else(|| args.istio_root_cert.clone()),
        )),
    };
    Ok((url, tls))
}

impl SidecarArgs {
    /// The standalone configuration this sidecar runs: the mesh flags built from the
    /// environment, then the pass-through flags, parsed by `standalone`'s own parser.
    pub fn into_config(self) -> Result<Config, SidecarError> {
        let argv = self.standalone_argv()?;
        let cli = Cli::try_parse_from(&argv).map_err(|e| SidecarError::Flags(e.to_string()))?;
        match cli.command {
            Command::Standalone(c) => Ok(*c),
            _ => Err(SidecarError::Flags("not a standalone command line".into())),
        }
    }

    /// `membrane-proxy standalone ...` for this pod.
    pub fn standalone_argv(&self) -> Result<Vec<String>, SidecarError> {
        let pod = required(&self.pod_name, "POD_NAME", "metadata.name", "--pod-name")?;
        let ns = required(
            &self.pod_namespace,
            "POD_NAMESPACE",
            "metadata.namespace",
            "--pod-namespace",
        )?;
        let instance = self
            .instance_ip
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .ok_or(SidecarError::Missing {
                var: "INSTANCE_IP",
                source_field: "status.podIP",
                flag: "--instance-ip",
            })?;
        let instance = ip(instance, "INSTANCE_IP")?;
        if let Some(h) = self.host_ip.as_deref().filter(|v| !v.trim().is_empty()) {
            ip(h, "HOST_IP")?;
        }
        if self
            .service_account
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            required(
                &self.service_account,
                "SERVICE_ACCOUNT",
                "spec.serviceAccountName",
                "--service-account",
            )?;
        }
        let pc =
            proxy_config::parse(self.proxy_config.as_deref().unwrap_or_default()).map_err(|e| {
                SidecarError::Invalid {
                    var: "PROXY_CONFIG",
                    value: self.proxy_config.clone().unwrap_or_default(),
                    what: e.to_string(),
                }
            })?;
        let probers = self.app_probers.as_deref().unwrap_or_default();
        probe::AppProbers::parse(probers).map_err(|e| SidecarError::Invalid {
            var: "ISTIO_KUBE_APP_PROBERS",
            value: probers.to_owned(),
            what: e.to_string(),
        })?;
        let capture = match self.interception_mode.as_str() {
            "REDIRECT" | "TPROXY" => true,
            "NONE" => false,
            other => {
                return Err(SidecarError::Invalid {
                    var: "ISTIO_META_INTERCEPTION_MODE",
                    value: other.to_owned(),
                    what: "must be REDIRECT, TPROXY or NONE".into(),
                })
            }
        };
        if self.cluster_domain.is_empty() || self.cluster_domain.contains('~') {
            return Err(SidecarError::Invalid {
                var: "MEMBRANE_CLUSTER_DOMAIN",
                value: self.cluster_domain.clone(),
                what: "is not a DNS domain".into(),
            });
        }
        let node = self
            .node_id
            .clone()
            .unwrap_or_else(|| node_id(instance, &pod, &ns, &self.cluster_domain));
        let ca = ca_flags(self, &discovery_address(self, &pc), &ns)?;
        let (xds, certs) = xds_target(self, &pc, ca.is_some())?;
        let app_port = first_tcp_port(self.pod_ports.as_deref().unwrap_or_default())?.unwrap_or(80);
        // All of the pod's addresses of its family, as Istio's agent binds its status port.
        let any: IpAddr = if instance.is_ipv6() {
            "::".parse().expect("literal")
        } else {
            "0.0.0.0".parse().expect("literal")
        };
        let local: IpAddr = if instance.is_ipv6() {
            "::1".parse().expect("literal")
        } else {
            "127.0.0.1".parse().expect("literal")
        };
        let admin = self
            .admin
            .unwrap_or(SocketAddr::new(local, pc.proxy_admin_port.unwrap_or(15000)));
        let metrics = self
            .metrics
            .unwrap_or(SocketAddr::new(any, pc.status_port.unwrap_or(15020)));
        let health = self.health.unwrap_or(SocketAddr::new(any, 15021));
        let stats = self.stats.unwrap_or(SocketAddr::new(any, 15090));
        let upstream = self.upstream.unwrap_or(SocketAddr::new(local, app_port));

        let mut a: Vec<String> = ["membrane-proxy", "standalone"].map(String::from).to_vec();
        let mut flag = |f: &str, v: String| {
            a.push(f.to_owned());
            a.push(v);
        };
        flag("--listen", self.listen.to_string());
        flag("--upstream", upstream.to_string());
        flag("--xds-address", xds);
        flag("--node-id", node);
        let mut from_mesh = false;
        match certs {
            Some(XdsTlsFlags::Files([ca, cert, key])) => {
                flag("--xds-ca", ca.display().to_string());
                flag("--xds-cert", cert.display().to_string());
                flag("--xds-key", key.display().to_string());
            }
            Some(XdsTlsFlags::FromMesh(ca)) => {
                flag("--xds-ca", ca.display().to_string());
                from_mesh = true;
            }
            None => {}
        }
        for (k, v) in ca.into_iter().flatten() {
            flag(&k, v);
        }
        flag("--admin", admin.to_string());
        flag("--metrics", metrics.to_string());
        flag("--health", health.to_string());
        flag("--stats", stats.to_string());
        if capture {
            flag(
                "--capture-inbound",
                self.capture_inbound
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| membrane_api::sidecar::CAPTURE_INBOUND.to_owned()),
            );
            flag(
                "--capture-outbound",
                if self.capture_outbound.is_empty() {
                    membrane_api::sidecar::CAPTURE_OUTBOUND.to_owned()
                } else {
                    let v: Vec<String> = self
                        .capture_outbound
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    v.join(",")
                },
            );
        }
        if !probers.trim().is_empty() {
            flag("--app-probers", probers.to_owned());
        }
        flag("--app-probe-address", instance.to_string());
        if let Some(n) = pc.concurrency {
            let n = match n {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n as usize,
            };
            flag("--concurrency", n.to_string());
        }
        if let Some(d) = pc.termination_drain_duration {
            flag("--drain-timeout", format!("{}ms", d.as_millis()));
        }
        // Node metadata under Istio's keys (ISTIO_META_X is X).
        let meta = [
            ("NAME", Some(pod.as_str())),
            ("NAMESPACE", Some(ns.as_str())),
            ("INSTANCE_IPS", Some(&*instance.to_string())),
            ("SERVICE_ACCOUNT", self.service_account.as_deref()),
            ("CLUSTER_ID", self.cluster_id.as_deref()),
            ("WORKLOAD_NAME", self.workload_name.as_deref()),
            ("OWNER", self.owner.as_deref()),
            ("MESH_ID", self.mesh_id.as_deref()),
            ("APP_CONTAINERS", self.app_containers.as_deref()),
            ("INTERCEPTION_MODE", Some(self.interception_mode.as_str())),
            ("POD_PORTS", self.pod_ports.as_deref()),
            ("TRUST_DOMAIN", self.trust_domain.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>();
        for m in meta {
            a.push("--node-meta".into());
            a.push(m);
        }
        if from_mesh {
            a.push("--xds-cert-from-mesh".into());
        }
        a.extend(self.standalone_flags.iter().cloned());
        Ok(a)
    }
}

/// `SidecarArgs` alone, for tests and tools that parse a sidecar command line.
#[derive(Debug, Parser)]
#[command(name = "membrane-proxy sidecar")]
pub struct SidecarCli {
    /// The arguments.
    #[command(flatten)]
    pub args: SidecarArgs,
}

#[cfg(test)]
mod tests;
