//! Istio's certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`)
//! on the mTLS port (15012), so that sidecars get their workload certificates from the
//! control plane as Istio's pilot-agent gets them from istiod, and a cluster without istiod
//! has a CA.
//!
//! Who is asking is proved by the channel, as istiod's authenticators do, in this order:
//! the client certificate of the TLS handshake (a workload renewing; the TLS layer has
//! verified its chain to `--ca-cert`), else the bearer JWT in `authorization` (the pod's
//! projected service-account token, audience `istio-ca`), checked by the Kubernetes API's
//! TokenReview ([`tokenreview`], with `--kube`). The CSR may name only that identity: one
//! URI SAN, `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, nothing else; the
//! certificate is built from the authenticated identity, never from the request's fields
//! (only the CSR's public key is taken). Lifetimes are bounded, requests are size- and
//! rate-limited per identity, and every refusal says why (and counts in
//! `membrane_xds_ca_requests_total{reason}`).

#[cfg(feature = "kube")]
pub mod tokenreview;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use membrane_api::istioca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use membrane_api::istioca::{IstioCertificateRequest, IstioCertificateResponse};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use thiserror::Error;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::{Authorizer, SpiffeId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::recorder::ReasonLabel;

/// The metadata key of Istio's node-agent impersonation (ztunnel asks for other pods'
/// identities with it); membrane-xds signs only the caller's own identity.
const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Why a certificate request is refused.
#[derive(Debug, Error)]
pub enum CaError {
    /// Neither a client certificate nor a bearer token came with the request.
    #[error("no credential: present a workload client certificate or `authorization: Bearer <service account token>`")]
    NoCredential,
    /// The client certificate names no acceptable identity.
    #[error("client certificate: {0}")]
    Certificate(String),
    /// The token was refused (TokenReview said so, or it is no service-account token).
    #[error("token refused: {0}")]
    Token(String),
    /// A token came but there is nothing to check it with.
    #[error("token authentication needs the Kubernetes API (membrane-xds --kube): TokenReview checks the token")]
    NoReviewer,
    /// The API server could not answer the TokenReview.
    #[error("token review failed: {0}")]
    Review(String),
    /// The CSR asks for an identity other than the caller's.
    #[error("the CSR asks for {asked}; the caller is {caller}: a certificate names only the caller's own SPIFFE id as its one URI SAN")]
    Identity {
        /// The SANs the CSR holds.
        asked: String,
        /// The authenticated identity.
        caller: String,
    },
    /// Impersonation (Istio's node-agent mode) was asked for.
    #[error("metadata {IMPERSONATED_IDENTITY}: impersonation is not allowed, a caller gets only its own identity")]
    Impersonation,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Too many requests for one identity.
    #[error("{identity}: more than {limit} certificate requests in a minute; retry later")]
    RateLimited {
        /// The identity.
        identity: String,
        /// The limit per minute.
        limit: u32,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

impl CaError {
    /// The short reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            CaError::NoCredential => "no_credential",
            CaError::Certificate(_) => "bad_certificate",
            CaError::Token(_) => "token_refused",
            CaError::NoReviewer => "no_token_reviewer",
            CaError::Review(_) => "token_review_failed",
            CaError::Identity { .. } => "identity",
            CaError::Impersonation => "impersonation",
            CaError::BadRequest(_) => "bad_request",
            CaError::RateLimited { .. } => "rate_limited",
            CaError::Sign(_) => "sign_failed",
        }
    }

    fn status(&self) -> Status {
        let m = self.to_string();
        match self {
            CaError::NoCredential
            | CaError::Certificate(_)
            | CaError::Token(_)
            | CaError::NoReviewer => Status::unauthenticated(m),
            CaError::Identity { .. } | CaError::Impersonation => Status::permission_denied(m),
            CaError::BadRequest(_) => Status::invalid_argument(m),
            CaError::RateLimited { .. } => Status::resource_exhausted(m),
            CaError::Review(_) => Status::unavailable(m),
            CaError::Sign(_) => Status::internal(m),
        }
    }
}

/// Why the CA cannot start.
#[derive(Debug, Error)]
pub enum CaSetupError {
    /// The signing certificate or key is unusable.
    #[error("{flag} {path}: {message}")]
    Material {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Limits of the certificate service.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Lifetime when the request asks for none (Istio's `DEFAULT_WORKLOAD_CERT_TTL`).
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for (Istio's `MAX_WORKLOAD_CERT_TTL`).
    pub max_ttl: Duration,
    /// Largest CSR accepted, bytes of PEM.
    pub max_csr_bytes: usize,
    /// Requests per identity per minute.
    pub per_minute: u32,
}

/// Checks a bearer token and says which service account it belongs to.
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// `(namespace, service account)` of the token, or why it is refused.
    async fn review(&self, token: &str) -> Result<(String, String), CaError>;
}

/// The signing CA: the first certificate of `--ca-cert` and its key `--ca-key`.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate, PEM: what follows the leaf in every response (Istio's
    /// chain ends with the root).
    ca_pem: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer from the CA bundle (its first certificate signs) and that certificate's
    /// key; `paths` name the files in errors.
    pub fn from_pem(bundle: &str, key: &str, paths: (&str, &str)) -> Result<Signer, CaSetupError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |flag, path: &str, message: String| CaSetupError::Material {
            flag,
            path: path.to_owned(),
            message,
        };
        let first = rustls::pki_types::CertificateDer::pem_slice_iter(bundle.as_bytes())
            .next()
            .ok_or_else(|| bad("--ca-cert", paths.0, "no CERTIFICATE block".into()))?
            .map_err(|e| bad("--ca-cert", paths.0, e.to_string()))?;
        let key = KeyPair::from_pem(key)
            .map_err(|e| bad("--ca-key", paths.1, format!("not a PEM private key: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&first)
            .map_err(|e| bad("--ca-cert", paths.0, e.to_string()))?;
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(bad(
                "--ca-key",
                paths.1,
                "is not the key of the first certificate in --ca-cert".into(),
            ));
        }
        if !cert.tbs_certificate.is_ca() {
            return Err(bad(
                "--ca-cert",
                paths.0,
                "the first certificate is not a CA (basicConstraints CA:TRUE)".into(),
            ));
        }
        let ca_pem = pem_of(&first);
        let issuer = Issuer::from_ca_cert_der(&first, key)
            .map_err(|e| bad("--ca-cert", paths.0, e.to_string()))?;
        Ok(Signer { issuer, ca_pem })
    }

    /// Signs `csr`'s public key for `id`, valid from a minute ago (clocks lag) for `ttl`.
    /// Returns the chain, PEM, leaf first.
    fn sign(
        &self,
        csr: CertificateSigningRequestParams,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let mut p = CertificateParams::default();
        // Istio's workload certificates: no subject, the SPIFFE id as the one (critical)
        // SAN, usable both ways.
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(
            id.uri()
                .try_into()
                .map_err(|e| CaError::Sign(format!("{e}")))?,
        )];
        workload_leaf(&mut p);
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| CaError::Sign("no randomness for the serial number".into()))?;
        serial[0] &= 0x7f; // a positive INTEGER
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after =
            now + time::Duration::try_from(ttl).map_err(|e| CaError::Sign(format!("ttl: {e}")))?;
        let signed = CertificateSigningRequestParams {
            params: p,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(vec![signed.pem(), self.ca_pem.clone()])
    }
}

/// Makes `p` a workload leaf as Istio's are, usable both ways: not a CA, digital signature
/// and key encipherment, server and client authentication, the issuer's key identifier.
/// The CA service and `membrane cert issue` both build their leaves with it.
pub fn workload_leaf(p: &mut CertificateParams) {
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The SANs of a CSR, as a user reads them.
fn show_sans(sans: &[SanType]) -> String {
    if sans.is_empty() {
        return "no SAN".into();
    }
    let v: Vec<String> = sans
        .iter()
        .map(|s| match s {
            SanType::URI(u) => format!("URI:{}", u.as_str()),
            SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            SanType::Rfc822Name(e) => format!("email:{}", e.as_str()),
            other => format!("{other:?}"),
        })
        .collect();
    v.join(", ")
}

/// The CSR as it may be signed for `id`: it must parse, carry a valid signature and name
/// exactly `id` (one URI SAN).
fn check_csr(pem: &str, id: &SpiffeId) -> Result<CertificateSigningRequestParams, CaError> {
    let csr = CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| CaError::BadRequest(format!("csr: not a signed PKCS#10 request: {e}")))?;
    let want = id.uri();
    let ok = matches!(csr.params.subject_alt_names.as_slice(),
        [SanType::URI(u)] if u.as_str() == want);
    if !ok {
        return Err(CaError::Identity {
            asked: show_sans(&csr.params.subject_alt_names),
            caller: want,
        });
    }
    Ok(csr)
}

/// `IstioCertificateService` of membrane-xds.
pub struct CaService {
    signer: Arc<Signer>,
    auth: Arc<Authorizer>,
    reviewer: Option<Arc<dyn TokenReviewer>>,
    settings: CaSettings,
    counts: Family<ReasonLabel, Counter>,
    /// Requests per identity in the current minute.
    window: Mutex<HashMap<String, (Instant, u32)>>,
}

impl CaService {
    /// The service signing with `signer`, authenticating client certificates with `auth`
    /// (trust domain) and tokens with `reviewer`, counting results in `counts`
    /// (`membrane_xds_ca_requests_total`).
    pub fn new(
        signer: Arc<Signer>,
        auth: Arc<Authorizer>,
        reviewer: Option<Arc<dyn TokenReviewer>>,
        settings: CaSettings,
        counts: Family<ReasonLabel, Counter>,
    ) -> Self {
        CaService {
            signer,
            auth,
            reviewer,
            settings,
            counts,
            window: Mutex::new(HashMap::new()),
        }
    }

    /// The tonic service, with the request size bounded by the CSR limit.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        let max = self.settings.max_csr_bytes.saturating_add(4096);
        IstioCertificateServiceServer::new(self).max_decoding_message_size(max)
    }

    async fn identity<T>(&self, request: &Request<T>) -> Result<SpiffeId, CaError> {
        if let Some(certs) = request.peer_certs() {
            if !certs.is_empty() {
                return self
                    .auth
                    .peer(Some(certs.as_slice()))
                    .map_err(|e| CaError::Certificate(e.to_string()));
            }
        }
        let Some(value) = request.metadata().get("authorization") else {
            return Err(CaError::NoCredential);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| CaError::Token("authorization is not `Bearer <token>`".into()))?;
        let reviewer = self.reviewer.as_ref().ok_or(CaError::NoReviewer)?;
        let (namespace, service_account) = reviewer.review(token).await?;
        Ok(SpiffeId {
            trust_domain: self.auth.trust_domain().to_owned(),
            namespace,
            service_account,
        })
    }

    fn admit(&self, id: &str) -> Result<(), CaError> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Forget identities idle for a minute, so the map stays as large as the callers.
        if w.len() > 1024 {
            w.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let e = w.entry(id.to_owned()).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        if e.1 >= self.settings.per_minute {
            return Err(CaError::RateLimited {
                identity: id.to_owned(),
                limit: self.settings.per_minute,
            });
        }
        e.1 += 1;
        Ok(())
    }

    async fn create(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<(SpiffeId, Vec<String>), CaError> {
        let id = self.identity(&request).await?;
        let IstioCertificateRequest {
            csr,
            validity_duration,
            metadata,
        } = request.into_inner();
        if metadata
            .as_ref()
            .is_some_and(|m| m.fields.contains_key(IMPERSONATED_IDENTITY))
        {
            return Err(CaError::Impersonation);
        }
        if csr.len() > self.settings.max_csr_bytes {
            return Err(CaError::BadRequest(format!(
                "csr: {} bytes, more than the limit of {}",
                csr.len(),
                self.settings.max_csr_bytes
            )));
        }
        self.admit(&id.uri())?;
        let ttl = match validity_duration {
            s if s <= 0 => self.settings.default_ttl,
            s => Duration::from_secs(s as u64),
        };
        if ttl > self.settings.max_ttl {
            return Err(CaError::BadRequest(format!(
                "validity_duration: {} is longer than the longest allowed, {}",
                humantime::format_duration(ttl),
                humantime::format_duration(self.settings.max_ttl)
            )));
        }
        let parsed = check_csr(&csr, &id)?;
        let chain = self.signer.sign(parsed, &id, ttl)?;
        Ok((id, chain))
    }

    fn count(&self, reason: &str) {
        self.counts
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        match self.create(request).await {
            Ok((id, cert_chain)) => {
                self.count("issued");
                info!(peer, identity = %id.uri(), "workload certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e) => {
                self.count(e.reason());
                warn!(peer, reason = e.reason(), error = %e, "certificate request refused");
                Err(e.status())
            }
        }
    }
}

#[cfg(test)]
mod tests;
