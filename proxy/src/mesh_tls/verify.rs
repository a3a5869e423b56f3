//! The mesh's certificate checks and what a verified peer certificate yields.
//!
//! [`Dynamic`] is every resolver and verifier of the mesh's rustls configurations at once:
//! it reads the material in force at each handshake (so rotation needs no new
//! configuration): the workload certificate to present, the roots a peer must chain to, and
//! the SPIFFE rule: a client needs a `spiffe://` URI SAN (Istio's inbound accepts any
//! identity from the mesh root and leaves authorization to policy), a meshed server one in
//! the mesh's trust domain (Istio also pins the destination service's accounts, which this
//! sidecar does not learn without service discovery).

use std::sync::{Arc, OnceLock, Weak};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use membrane_api::spiffe::SpiffeId;

use super::{provider, MeshTls};

/// The SPIFFE id of a DER certificate: its first `spiffe://` URI SAN, which must be a
/// SPIFFE id by the specification (`membrane_api::spiffe`, the control plane's parser
/// too); `None`: it has none.
pub fn spiffe_id(der: &CertificateDer<'_>) -> Result<Option<String>, String> {
    parsed_spiffe_id(der).map(|id| id.map(|id| id.to_string()))
}

fn parsed_spiffe_id(der: &[u8]) -> Result<Option<SpiffeId>, String> {
    match uri_sans(der)?.iter().find(|u| u.starts_with("spiffe://")) {
        Some(u) => SpiffeId::parse(u)
            .map(Some)
            .map_err(|e| format!("URI SAN {e}")),
        None => Ok(None),
    }
}

fn parsed(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("unparsable certificate: {e}"))
}

fn sans(der: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    use x509_parser::extensions::GeneralName;
    let cert = parsed(der)?;
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    Ok((uris, dns))
}

fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    sans(der).map(|(u, _)| u)
}

/// A verified mesh peer: what the access log, the app (XFCC) and the policy learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its SPIFFE id (Envoy's `%DOWNSTREAM_PEER_URI_SAN%`).
    pub spiffe_id: String,
    /// This request's element of `x-forwarded-client-cert`, as Istio's inbound sets it
    /// (`By`, `Hash`, `Subject`, `URI`, `DNS`).
    pub xfcc: String,
}

impl Peer {
    /// The peer of a handshake that presented `chain` (verified), to a workload whose own
    /// SPIFFE id is `own_id`.
    pub fn from_chain(chain: &[CertificateDer<'_>], own_id: Option<&str>) -> Option<Peer> {
        let leaf = chain.first()?;
        let (uris, dns) = sans(leaf).ok()?;
        let spiffe_id = parsed_spiffe_id(leaf).ok()??.to_string();
        let subject = parsed(leaf).ok()?.subject().to_string();
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        // Envoy's element order: By, Hash, Subject, URI, DNS; `"` and `\` in the quoted
        // subject are escaped.
        let mut xfcc = String::new();
        if let Some(by) = own_id {
            xfcc.push_str(&format!("By={by};"));
        }
        let subject = subject.replace('\\', "\\\\").replace('"', "\\\"");
        xfcc.push_str(&format!("Hash={hash};Subject=\"{subject}\""));
        for u in &uris {
            xfcc.push_str(&format!(";URI={u}"));
        }
        for d in &dns {
            xfcc.push_str(&format!(";DNS={d}"));
        }
        Some(Peer { spiffe_id, xfcc })
    }
}

/// The mesh configurations' resolver and verifier (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Dynamic {
    // Weak: the configurations holding this live inside the `MeshTls` it points to.
    mesh: OnceLock<Weak<MeshTls>>,
}

impl Dynamic {
    pub(super) fn attach(&self, mesh: &Arc<MeshTls>) {
        let _ = self.mesh.set(Arc::downgrade(mesh));
    }

    fn mesh(&self) -> Option<Arc<MeshTls>> {
        self.mesh.get().and_then(Weak::upgrade)
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.mesh()?.material().map(|m| m.key.clone())
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn no_material() -> Error {
    Error::General("mesh tls: no workload certificate in force".into())
}

fn bad(reason: String) -> Error {
    Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(std::io::Error::other(reason)),
    )))
}

impl rustls::server::ResolvesServerCert for Dynamic {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key()
    }
}

impl rustls::client::ResolvesClientCert for Dynamic {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Dynamic {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Istio's peers present their one workload certificate whatever the hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let material = self
            .mesh()
            .and_then(|m| m.material())
            .ok_or_else(no_material)?;
        let verified =
            material
                .client_verifier
                .verify_client_cert(end_entity, intermediates, now)?;
        match spiffe_id(end_entity) {
            Ok(Some(_)) => Ok(verified),
            Ok(None) => Err(bad("client certificate has no spiffe:// URI SAN".into())),
            Err(e) => Err(bad(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ServerCertVerifier for Dynamic {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let mesh = self.mesh().ok_or_else(no_material)?;
        let material = mesh.material().ok_or_else(no_material)?;
        // The chain, not the name: mesh servers are known by SPIFFE id, not by DNS name.
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &material.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        match parsed_spiffe_id(end_entity) {
            Ok(Some(id)) if id.trust_domain() == mesh.trust_domain() => {
                Ok(ServerCertVerified::assertion())
            }
            Ok(_) => Err(bad(format!(
                "server certificate has no SPIFFE id in trust domain {}",
                mesh.trust_domain()
            ))),
            Err(e) => Err(bad(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        ClientCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        ClientCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}
