//! Who may read an observer stream: the client's certificate (already verified against
//! the CA by TLS) must carry exactly one URI SAN, a SPIFFE id, and that id must be one the
//! server was told to admit (the relay's on an agent, the operators' on the relay).

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
    let uris = crate::spiffe::uri_sans(der).map_err(PeerError::BadCertificate)?;
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

/// [`admit`] for a gRPC request over TLS: `Ok` when `admitted` is `None` (everyone is) or
/// the client's certificate names one of them, else PERMISSION_DENIED naming why.
pub fn admit_request<T>(
    req: &tonic::Request<T>,
    admitted: Option<&[String]>,
) -> Result<(), tonic::Status> {
    let Some(admitted) = admitted else {
        return Ok(());
    };
    let certs = req.peer_certs();
    admit(certs.as_ref().map(|c| c.as_slice()), admitted)
        .map(|_| ())
        .map_err(|e| tonic::Status::permission_denied(e.to_string()))
}
