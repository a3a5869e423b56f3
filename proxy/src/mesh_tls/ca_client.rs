//! The workload certificate from Istio's CA, as pilot-agent gets it: a key made here
//! (ECDSA, never written anywhere), a CSR naming the workload's SPIFFE id, sent to
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` (istiod's, or membrane-xds's
//! on 15012) over TLS verified against the mesh root, authenticated by the pod's projected
//! service-account token (`authorization: Bearer`, `ClusterID` metadata). The answer must
//! name exactly that id and chain to the root before it goes in force; it is renewed at
//! `SECRET_GRACE_PERIOD_RATIO` of its lifetime before expiry (with jitter, so a fleet does
//! not renew at once). Failures are logged once per distinct reason and retried with
//! backoff; the last good certificate stays in force, and nothing falls back to plaintext.
//!
//! Files win: while the file-mounted certificate (`--mesh-cert/--mesh-key/--mesh-root`)
//! exists, it is in force and no request is made, as Istio prefers mounted certificates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use membrane_api::istioca::istio_certificate_service_client::IstioCertificateServiceClient;
use membrane_api::istioca::IstioCertificateRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use super::{build_from, Material, MeshTls};

/// The key the workload certificate is made for (Istio's `ECC_CURVE` with
/// `ECC_SIGNATURE_ALGORITHM=ECDSA`; RSA, Istio's other choice, is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyCurve {
    /// ECDSA P-256 (the default).
    #[value(name = "P256")]
    P256,
    /// ECDSA P-384.
    #[value(name = "P384")]
    P384,
}

/// Where and how to get the workload certificate from a CA.
#[derive(Debug, Clone, Args, Default)]
pub struct CaClientArgs {
    /// Istio's CA (`https://HOST:PORT`, or `HOST:PORT`): request the workload certificate
    /// from it instead of reading the files (which still win when present).
    #[arg(long, env = "MEMBRANE_MESH_CA_ADDRESS", value_name = "ADDRESS")]
    pub mesh_ca_address: Option<String>,
    /// The service-account token proving who the workload is (Istio's projected
    /// `istio-token`, audience `istio-ca`); re-read for every request.
    #[arg(
        long,
        env = "MEMBRANE_MESH_CA_TOKEN",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub mesh_ca_token: PathBuf,
    /// The mesh root (Istio's `istio-ca-root-cert` ConfigMap): the CA's certificate and
    /// every issued chain must chain to it, and peers are verified against it.
    #[arg(
        long,
        env = "MEMBRANE_MESH_CA_ROOT",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub mesh_ca_root: PathBuf,
    /// The identity to request, `spiffe://TD/ns/NS/sa/SA` (the sidecar builds it from
    /// TRUST_DOMAIN, POD_NAMESPACE and SERVICE_ACCOUNT).
    #[arg(long, env = "MEMBRANE_MESH_CA_IDENTITY", value_name = "SPIFFE_ID")]
    pub mesh_ca_identity: Option<String>,
    /// The cluster's id, sent as `ClusterID` (Istio's ISTIO_META_CLUSTER_ID).
    #[arg(
        long,
        env = "MEMBRANE_MESH_CA_CLUSTER_ID",
        default_value = "Kubernetes"
    )]
    pub mesh_ca_cluster_id: String,
    /// Lifetime to request (Istio's SECRET_TTL).
    #[arg(long, env = "MEMBRANE_MESH_CA_TTL", value_parser = humantime::parse_duration, default_value = "24h")]
    pub mesh_ca_ttl: Option<Duration>,
    /// Renew when this fraction of the lifetime is left (Istio's
    /// SECRET_GRACE_PERIOD_RATIO), jittered by 1 %.
    #[arg(long, env = "MEMBRANE_MESH_CA_GRACE_RATIO", default_value = "0.5")]
    pub mesh_ca_grace_ratio: Option<f64>,
    /// The key's curve.
    #[arg(
        long,
        env = "MEMBRANE_MESH_CA_KEY_CURVE",
        value_enum,
        default_value = "P256"
    )]
    pub mesh_ca_key_curve: Option<KeyCurve>,
}

/// Why a certificate request failed.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// A setting the client cannot run with.
    #[error("{flag} {value:?}: {message}")]
    Setting {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// A local file (token, root) could not be read.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The CA could not be reached.
    #[error("CA {address} unreachable: {message}")]
    Unreachable {
        /// The CA.
        address: String,
        /// Why.
        message: String,
    },
    /// The CA answered with an error (e.g. it refused the token).
    #[error("CA {address} refused the request ({code:?}): {message}")]
    Refused {
        /// The CA.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA's answer is not a certificate we may use.
    #[error("CA {address}: the certificate returned is unusable: {message}")]
    BadAnswer {
        /// The CA.
        address: String,
        /// What is wrong.
        message: String,
    },
    /// Making the key or the CSR failed.
    #[error("making the key or CSR: {0}")]
    Key(String),
}

/// The checked settings of the CA client.
#[derive(Debug, Clone)]
pub(crate) struct CaClient {
    url: String,
    identity: String,
    token: PathBuf,
    root: PathBuf,
    cluster_id: String,
    ttl: Duration,
    grace_ratio: f64,
    curve: KeyCurve,
}

impl CaClient {
    /// The client `args` configure, or `None` without `--mesh-ca-address`.
    pub(crate) fn from_args(args: &CaClientArgs) -> Result<Option<CaClient>, CaClientError> {
        let Some(address) = args.mesh_ca_address.clone() else {
            return Ok(None);
        };
        let setting = |flag, value: String, message: &str| CaClientError::Setting {
            flag,
            value,
            message: message.to_owned(),
        };
        let url = match address.split_once("://") {
            Some(("https", _)) => address.clone(),
            Some(_) => {
                return Err(setting(
                    "--mesh-ca-address",
                    address,
                    "must be https:// (the CA is reached over TLS only)",
                ))
            }
            None => format!("https://{address}"),
        };
        url.parse::<http::Uri>()
            .map_err(|e| setting("--mesh-ca-address", address.clone(), &e.to_string()))?;
        let identity = args.mesh_ca_identity.clone().unwrap_or_default();
        membrane_api::spiffe::SpiffeId::parse(&identity)
            .ok()
            .and_then(|id| id.workload().map(|_| ()))
            .ok_or_else(|| {
                setting(
                    "--mesh-ca-identity",
                    identity.clone(),
                    "must be a workload SPIFFE id spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT",
                )
            })?;
        let ttl = args.mesh_ca_ttl.unwrap_or(Duration::from_secs(86400));
        if ttl < Duration::from_secs(2) {
            return Err(setting(
                "--mesh-ca-ttl",
                format!("{ttl:?}"),
                "must be at least 2s",
            ));
        }
        let grace_ratio = args.mesh_ca_grace_ratio.unwrap_or(0.5);
        if !(grace_ratio > 0.0 && grace_ratio < 1.0) {
            return Err(setting(
                "--mesh-ca-grace-ratio",
                grace_ratio.to_string(),
                "must be between 0 and 1 (exclusive)",
            ));
        }
        Ok(Some(CaClient {
            url,
            identity,
            token: args.mesh_ca_token.clone(),
            root: args.mesh_ca_root.clone(),
            cluster_id: args.mesh_ca_cluster_id.clone(),
            ttl,
            grace_ratio,
            curve: args.mesh_ca_key_curve.unwrap_or(KeyCurve::P256),
        }))
    }

    fn read(&self, what: &'static str, path: &PathBuf) -> Result<Vec<u8>, CaClientError> {
        std::fs::read(path).map_err(|error| CaClientError::Read {
            what,
            path: path.display().to_string(),
            error,
        })
    }

    /// One request: a new key, a CSR, the CA's answer checked. Returns the material and
    /// when the certificate expires.
    pub(crate) async fn fetch(&self) -> Result<(Material, SystemTime), CaClientError> {
        let root = self.read("the mesh root", &self.root)?;
        let token = self.read("the service-account token", &self.token)?;
        let token = String::from_utf8_lossy(&token).trim().to_owned();
        let alg = match self.curve {
            KeyCurve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyCurve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let key =
            rcgen::KeyPair::generate_for(alg).map_err(|e| CaClientError::Key(e.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            self.identity
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaClientError::Key(e.to_string()))?,
        )];
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| CaClientError::Key(e.to_string()))?;

        let unreachable = |message: String| CaClientError::Unreachable {
            address: self.url.clone(),
            message,
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&root));
        let channel = Channel::from_shared(self.url.clone())
            .map_err(|e| unreachable(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: self.ttl.as_secs() as i64,
            metadata: None,
        });
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| CaClientError::Read {
                what: "the service-account token",
                path: self.token.display().to_string(),
                error: std::io::Error::other("not a token (bytes a header cannot carry)"),
            })?;
        request.metadata_mut().insert("authorization", bearer);
        if let Ok(v) = self.cluster_id.parse() {
            request.metadata_mut().insert("clusterid", v);
        }
        let answer = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    unreachable(s.message().to_owned())
                }
                code => CaClientError::Refused {
                    address: self.url.clone(),
                    code,
                    message: s.message().to_owned(),
                },
            })?
            .into_inner();
        self.check(answer.cert_chain, key, root)
    }

    /// The answer as material: the chain (all but the root Istio appends) must name our
    /// identity, fit our key and chain to our root.
    fn check(
        &self,
        cert_chain: Vec<String>,
        key: rcgen::KeyPair,
        root: Vec<u8>,
    ) -> Result<(Material, SystemTime), CaClientError> {
        let bad = |message: String| CaClientError::BadAnswer {
            address: self.url.clone(),
            message,
        };
        // Istio's answer: the leaf, intermediates, then the root; the root we trust is
        // ours (the mounted one), not the one the answer carries.
        let mut pems = cert_chain;
        if pems.len() > 1 {
            pems.pop();
        }
        let chain_pem = pems.concat().into_bytes();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("cert_chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad("cert_chain holds no certificate".into()));
        };
        let got = super::spiffe_id(leaf).map_err(bad)?;
        if got.as_deref() != Some(self.identity.as_str()) {
            return Err(bad(format!(
                "it names {}, expected {} (SAN mismatch)",
                got.as_deref().unwrap_or("no SPIFFE id"),
                self.identity
            )));
        }
        let key_pem = key.serialize_pem().into_bytes();
        let material = build_from(
            [
                "the CA's cert_chain".into(),
                "the generated key".into(),
                self.root.display().to_string(),
            ],
            &[chain_pem.clone(), key_pem.clone(), root],
            Some((chain_pem, key_pem)),
        )
        .map_err(|e| bad(e.to_string()))?;
        material
            .client_verifier
            .verify_client_cert(leaf, &chain[1..], UnixTime::now())
            .map_err(|e| bad(format!("does not chain to the mesh root: {e}")))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
        let expiry = SystemTime::UNIX_EPOCH
            + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64);
        Ok((material, expiry))
    }

    /// How long to wait before renewing a certificate that expires at `expiry` and was
    /// received at `now`: until `grace_ratio` of its lifetime (from now) is left, less
    /// up to 1 % jitter.
    pub(crate) fn renew_in(&self, now: SystemTime, expiry: SystemTime) -> Duration {
        let left = expiry.duration_since(now).unwrap_or_default();
        let wait = left.mul_f64(1.0 - self.grace_ratio);
        let mut b = [0u8; 2];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        let jitter = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 0.01;
        wait.mul_f64(1.0 - jitter)
    }

    pub(crate) fn address(&self) -> &str {
        &self.url
    }
}

/// A transport error with its causes (tonic's top level says only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Requests and renews the certificate until `shutdown`, while the files are absent.
pub(crate) async fn run(
    mesh: Arc<MeshTls>,
    client: CaClient,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    let mut last_error = String::new();
    // When the certificate from the CA is due for renewal (now: none yet).
    let mut due = tokio::time::Instant::now();
    loop {
        let wait = due.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if mesh.files_present() {
            // The mounted certificate is in force (the file watcher's); look again later.
            due = tokio::time::Instant::now() + mesh.poll_interval();
            continue;
        }
        match client.fetch().await {
            Ok((material, expiry)) => {
                attempt = 0;
                last_error.clear();
                let renew = client.renew_in(SystemTime::now(), expiry);
                if mesh.install_issued(material) {
                    tracing::info!(
                        ca = client.address(),
                        spiffe_id = %client.identity,
                        renew_in = ?renew,
                        "mesh mTLS certificate from the CA in force"
                    );
                }
                due = tokio::time::Instant::now() + renew;
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::error!(error = %text, "workload certificate request failed; retrying with backoff (the last good certificate, if any, stays)");
                    last_error = text;
                }
                let backoff = membrane_xds_client::backoff(
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                    attempt,
                );
                attempt = attempt.saturating_add(1);
                due = tokio::time::Instant::now() + backoff;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(addr: &str, id: &str) -> CaClientArgs {
        CaClientArgs {
            mesh_ca_address: Some(addr.into()),
            mesh_ca_identity: Some(id.into()),
            mesh_ca_ttl: Some(Duration::from_secs(3600)),
            mesh_ca_grace_ratio: Some(0.5),
            ..Default::default()
        }
    }

    #[test]
    fn settings_are_checked_naming_the_flag() {
        let id = "spiffe://cluster.local/ns/default/sa/a";
        let c = CaClient::from_args(&args("istiod.istio-system.svc:15012", id))
            .unwrap()
            .unwrap();
        assert_eq!(c.url, "https://istiod.istio-system.svc:15012");
        assert!(CaClient::from_args(&CaClientArgs::default())
            .unwrap()
            .is_none());
        let e = CaClient::from_args(&args("http://istiod:15012", id))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--mesh-ca-address") && e.contains("https://"),
            "{e}"
        );
        let e = CaClient::from_args(&args("istiod:15012", "spiffe://cluster.local/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mesh-ca-identity"), "{e}");
        let mut a = args("istiod:15012", id);
        a.mesh_ca_grace_ratio = Some(1.0);
        let e = CaClient::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("--mesh-ca-grace-ratio"), "{e}");
    }

    #[test]
    fn renewal_comes_at_the_grace_ratio_with_a_little_jitter() {
        let c = CaClient::from_args(&args("ca:15012", "spiffe://cluster.local/ns/default/sa/a"))
            .unwrap()
            .unwrap();
        let now = SystemTime::now();
        for _ in 0..20 {
            let d = c.renew_in(now, now + Duration::from_secs(1000));
            assert!(
                d <= Duration::from_secs(500) && d >= Duration::from_secs(495),
                "{d:?}"
            );
        }
        assert_eq!(
            c.renew_in(now, now - Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
