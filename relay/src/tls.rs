//! The relay's two mTLS sides: as the agents' client (its certificate, the CA the agents'
//! chain to, the name their certificates carry) and as the server of the merged stream.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{flag} {path}: {error}")]
    File {
        /// The flag naming it.
        flag: &'static str,
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

/// PEM files of one side: the CA the peer must chain to, and our certificate and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA bundle (PEM).
    pub ca: PathBuf,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Key (PEM).
    pub key: PathBuf,
    /// Flag prefix for errors (`--agent`, `--listen`).
    pub flag: &'static str,
}

fn read(flag: &'static str, p: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|error| TlsError::File {
        flag,
        path: p.display().to_string(),
        error,
    })
}

/// The bytes of the CA bundle, the certificate and the key.
type Pem = (Vec<u8>, Vec<u8>, Vec<u8>);

impl TlsFiles {
    fn read(&self) -> Result<Pem, TlsError> {
        let (ca, cert, key) = match self.flag {
            "--agent" => ("--agent-ca", "--agent-cert", "--agent-key"),
            _ => ("--listen-ca", "--listen-cert", "--listen-key"),
        };
        Ok((
            read(ca, &self.ca)?,
            read(cert, &self.cert)?,
            read(key, &self.key)?,
        ))
    }

    /// Client settings for one agent, whose certificate must name `server_name` (its
    /// address, or the name configured); the files are read now, so a rotated pair is
    /// used by the next connection.
    pub fn client(&self, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
        let (ca, cert, key) = self.read()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(server_name))
    }

    /// Server settings: clients must present a certificate chaining to the CA.
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        let (ca, cert, key) = self.read()?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false))
    }
}
