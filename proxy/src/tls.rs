//! Downstream TLS termination with rustls: ALPN `h2` / `http/1.1`, certificate and key from
//! PEM files, swapped atomically on reload (handshakes in progress keep the key they began
//! with; a bad new pair is rejected and the old one stays in use). Also the pieces of
//! policy-driven TLS that touch the wire: reading a ClientHello's SNI without answering
//! it, replaying the bytes read, and finishing the handshake with the configuration the
//! policy picked (see `secrets` for where that configuration comes from).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("{path}: cannot read a PEM certificate chain: {message}")]
    Cert {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// The key file is unreadable, not PEM, or a key type rustls cannot sign with.
    #[error("{path}: cannot read a PEM private key: {message}")]
    Key {
        /// File.
        path: String,
        /// Cause.
        message: String,
    },
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The serving certificate, reloadable from its files.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |m: String| TlsError::Cert {
        path: cert.display().to_string(),
        message: m,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block".into()));
    }
    let key_err = |m: String| TlsError::Key {
        path: key.display().to_string(),
        message: m,
    };
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| key_err(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_err(e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

impl CertStore {
    /// Loads the pair once; fails if either file is unusable.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = load_pair(cert, key)?;
        Ok(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(pair),
        })
    }

    /// Re-reads the files; on error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }

    /// The acceptor for downstream connections.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// What the first bytes of a connection showed: a TLS ClientHello (and its SNI), or not
/// TLS at all. `prefix` holds every byte read, to be replayed to whoever reads next.
#[derive(Debug)]
pub struct Peeked {
    /// The bytes consumed from the socket.
    pub prefix: bytes::Bytes,
    /// The connection starts with a TLS ClientHello.
    pub tls: bool,
    /// The server name the ClientHello indicated.
    pub sni: Option<String>,
    /// The ALPN protocols the ClientHello offered (mesh mTLS is recognized by Istio's).
    pub alpn: Vec<Vec<u8>>,
}

/// Largest ClientHello read before giving up (a post-quantum key share is ~1.2 KiB; 64
/// KiB is the TLS record-size bound with room to spare).
const MAX_HELLO: usize = 64 * 1024;

/// Reads just enough of `stream` to tell whether it starts with a TLS ClientHello and, if
/// so, which server name it indicates. Nothing is answered; the bytes are returned.
pub async fn peek_client_hello<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Peeked> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(2048);
    if stream.read_buf(&mut buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    // 0x16: a TLS handshake record; anything else (an HTTP method) is not TLS.
    if buf[0] != 0x16 {
        return Ok(Peeked {
            prefix: buf.freeze(),
            tls: false,
            sni: None,
            alpn: Vec::new(),
        });
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < buf.len() {
            let mut rest = &buf[fed..];
            fed += acceptor.read_tls(&mut rest)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                let alpn = hello
                    .alpn()
                    .map(|a| a.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                return Ok(Peeked {
                    prefix: buf.freeze(),
                    tls: true,
                    sni,
                    alpn,
                });
            }
            Ok(None) => {}
            Err((e, _)) => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
        }
        if buf.len() >= MAX_HELLO {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: bytes::Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is read before `inner`.
    pub fn new(inner: S, prefix: bytes::Bytes) -> Self {
        Prefixed { prefix, inner }
    }

    /// The bytes not yet read back, and the stream.
    pub fn into_parts(self) -> (bytes::Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Completes the TLS handshake on `stream` (whose ClientHello was peeked and is replayed
/// from its prefix) with `config`.
pub async fn accept_with<S>(
    stream: Prefixed<S>,
    config: Arc<rustls::ServerConfig>,
) -> std::io::Result<tokio_rustls::server::TlsStream<Prefixed<S>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    start.into_stream(config).await
}
