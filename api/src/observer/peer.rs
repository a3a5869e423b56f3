//! Who may read an observer stream: the client's certificate (already verified against
//! the CA by TLS) must carry exactly one URI SAN, a SPIFFE id, and that id must be one the
//! server was told to admit (the relay's on an agent, the operators' on the relay).

use x509_parser::extensions::GeneralName;

use crate::spiffe::SpiffeId;

/// A client the observer refuses.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No client certificate (plaintext, or TLS without one).
    #[error("no client certificate; the observer needs mTLS with one of {0}")]
    NoCertificate(String),
    /// The certificate does not parse or names no single SPIFFE id.
    #[error("client certificate: {0}; expected exactly one URI SAN spiffe://DOMAIN/ns/NAMESPACE/sa/ACCOUNT")]
    BadCertificate(String),
    /// A valid identity that is not admitted.
    #[error("client {0} is not admitted; admitted: {1}")]
    NotAdmitted(String, String),
}

/// The single SPIFFE id of a leaf certificate (DER).
pub fn spiffe_id(der: &[u8]) -> Result<String, PeerError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PeerError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerError::BadCertificate(format!("subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SpiffeId::parse(one)
            .map(|_| (*one).to_owned())
            .map_err(|e| PeerError::BadCertificate(e.to_string())),
        other => Err(PeerError::BadCertificate(format!(
            "{} URI SANs",
            other.len()
        ))),
    }
}

/// Checks the client's chain (leaf first) names one of `admitted`; returns its id.
pub fn admit(chain: Option<&[impl AsRef<[u8]>]>, admitted: &[String]) -> Result<String, PeerError> {
    let list = || admitted.join(", ");
    let leaf = chain
        .and_then(|c| c.first())
        .ok_or_else(|| PeerError::NoCertificate(list()))?;
    let id = spiffe_id(leaf.as_ref())?;
    if admitted.contains(&id) {
        Ok(id)
    } else {
        Err(PeerError::NotAdmitted(id, list()))
    }
}
