//! `membrane-xds-client`: what every client of membrane-xds does the same way before it
//! speaks its own protocol — the sidecar (NPDS/NPHDS) and the node agent (delta ADS).
//!
//! - [`XdsTls`]: the mTLS files (CA bundle, workload certificate and key). They are read for
//!   every connection, and [`Connection::rotated`] resolves once any of them reads
//!   differently, so a client ends its stream and reconnects with a rotated Secret before
//!   the old certificate expires, without a restart.
//! - [`check`]: an address and TLS settings that do not fit together are refused at start.
//! - [`connect`]: one channel to the control plane, over mTLS when configured.
//! - [`backoff`]: reconnect delays, exponential, capped and jittered.
//!
//! The binaries' crates depend on this one and never on the control plane's.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Why a client cannot start or connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane address is not a URI.
    #[error("--xds-address {0:?}: {1}")]
    Address(String, String),
    /// The address and the TLS settings do not fit together.
    #[error("--xds-address {0:?}: {1}")]
    Tls(String, &'static str),
    /// A TLS file could not be read.
    #[error("{flag} {path}: {error}")]
    File {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What reading it said.
        error: std::io::Error,
    },
    /// The in-memory certificate is not there yet (the CA has not issued it).
    #[error("no workload certificate yet to present to the control plane (waiting for the CA)")]
    NoIdentity,
    /// The connection could not be made.
    #[error("connecting to {0}: {1}")]
    Connect(String, tonic::transport::Error),
}

/// mTLS to the control plane.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// PEM CA bundle the control plane's certificate must chain to (`--xds-ca`).
    pub ca: PathBuf,
    /// PEM certificate chain and key presented to the control plane
    /// (`--xds-cert`, `--xds-key`).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How often the files are checked for new content.
    pub poll: Duration,
    /// A certificate held in memory instead of `identity`'s files (the sidecar's
    /// CA-issued workload certificate, whose key is never written anywhere).
    pub memory: Option<MemoryIdentity>,
}

/// A certificate chain and key held in memory, PEM, read for every connection and
/// compared as the files are (a new one ends the streams so they reconnect with it).
#[derive(Clone)]
pub struct MemoryIdentity(pub std::sync::Arc<dyn Fn() -> Option<PemPair> + Send + Sync>);

/// A certificate chain and its private key, PEM.
pub type PemPair = (Vec<u8>, Vec<u8>);

impl std::fmt::Debug for MemoryIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryIdentity")
    }
}

/// The bytes of the TLS files one connection was made with.
#[derive(Debug, PartialEq, Eq)]
struct TlsFiles {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl XdsTls {
    fn read(&self) -> Result<TlsFiles, ClientError> {
        let read = |flag: &'static str, p: &PathBuf| {
            std::fs::read(p).map_err(|error| ClientError::File {
                flag,
                path: p.display().to_string(),
                error,
            })
        };
        Ok(TlsFiles {
            ca: read("--xds-ca", &self.ca)?,
            identity: match (&self.identity, &self.memory) {
                (Some((c, k)), _) => Some((read("--xds-cert", c)?, read("--xds-key", k)?)),
                (None, Some(m)) => Some((m.0)().ok_or(ClientError::NoIdentity)?),
                (None, None) => None,
            },
        })
    }
}

/// Checks that `address` is a URI and that TLS settings come with, and only with, an
/// `https://` address.
pub fn check(address: &str, tls: Option<&XdsTls>) -> Result<(), ClientError> {
    Endpoint::from_shared(address.to_owned())
        .map_err(|e| ClientError::Address(address.to_owned(), e.to_string()))?;
    match (address.starts_with("https://"), tls) {
        (true, None) => Err(ClientError::Tls(
            address.to_owned(),
            "an https:// control plane needs --xds-ca (and --xds-cert/--xds-key)",
        )),
        (false, Some(_)) => Err(ClientError::Tls(
            address.to_owned(),
            "--xds-ca/--xds-cert/--xds-key need an https:// address",
        )),
        _ => Ok(()),
    }
}

/// One connection to the control plane and the TLS files it was made with.
#[derive(Debug)]
pub struct Connection {
    /// The channel every stream of this session goes over.
    pub channel: Channel,
    files: Option<(XdsTls, TlsFiles)>,
}

impl Connection {
    /// Resolves once a TLS file this connection was made with reads differently (never
    /// without TLS). A half-written file reads differently too: the reconnect then fails
    /// and is retried with backoff, the client's last good state staying in force.
    pub async fn rotated(&self) {
        match &self.files {
            Some((tls, used)) => loop {
                tokio::time::sleep(tls.poll).await;
                if tls.read().as_ref().ok() != Some(used) {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    }
}

/// Connects to `address` (2 s connect timeout), over mTLS with the files `tls` names as
/// they read now.
pub async fn connect(address: &str, tls: Option<&XdsTls>) -> Result<Connection, ClientError> {
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| ClientError::Address(address.to_owned(), e.to_string()))?
        .connect_timeout(Duration::from_secs(2));
    let files = match tls {
        Some(tls) => {
            let f = tls.read()?;
            let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&f.ca));
            if let Some((cert, key)) = &f.identity {
                c = c.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(c)
                .map_err(|e| ClientError::Connect(address.to_owned(), e))?;
            Some((tls.clone(), f))
        }
        None => None,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Connect(address.to_owned(), e))?;
    Ok(Connection { channel, files })
}

/// Delay before reconnect attempt `attempt` (0-based): `initial` doubled per attempt,
/// capped at `max`, jittered in [d/2, d] so that a restarted control plane is not hit by
/// every client at once.
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests;
