//! The sidecar-injection webhook's HTTPS server (Istio's 15017): `POST
//! /inject` and `/inject/KEY/VALUE/...` answered by `inject.rs`.
//!
//! TLS is rustls with a certificate/key pair from PEM files. The pair is
//! re-read when either file's content changes (checked every
//! `--webhook-cert-poll-ms`, which also follows a Secret volume's symlink
//! swap) and on SIGHUP; a pair that does not load (unreadable, not PEM, key
//! not matching the certificate) is logged and counted, and the last good
//! pair keeps serving.
//!
//! The listener is bounded as `listener.rs` describes: a connection cap,
//! and deadlines for the handshake, each request head and the body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::inject::{self, Outcome, Sidecar};
use crate::listener::{ConnLimits, Gate};
use crate::recorder::{InjectLabel, Recorder};

/// Why a certificate/key pair was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file has a malformed PEM section.
    #[error("{path}: bad PEM certificate: {what}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        what: String,
    },
    /// The key file holds no usable private key.
    #[error("{path}: no usable PEM private key: {what}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        what: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key} does not match the certificate in {cert}: {what}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' complaint.
        what: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a PEM certificate chain and private key into a pair rustls can
/// serve, checking that the key is the certificate's.
pub fn parse_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadCertificate {
            path: cert_path.to_path_buf(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::BadKey {
        path: key_path.to_path_buf(),
        what: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| CertError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        what: e.to_string(),
    })
}

/// The pair being served, swapped whole on a good reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// What the sidecar-injection webhook is configured with.
#[derive(Debug, Clone)]
pub struct InjectSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// How often the files are checked for new content.
    pub poll: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Connection cap and read deadlines.
    pub limits: ConnLimits,
    /// The container injected.
    pub sidecar: Sidecar,
}

/// A running webhook's state: settings, the served pair, what the files
/// held at the last look.
#[derive(Debug)]
pub struct Webhook {
    settings: InjectSettings,
    current: Arc<Current>,
    seen: Mutex<Seen>,
    recorder: Arc<Recorder>,
    gate: Gate,
}

/// What the files held at the last look, so that a change is acted on (and
/// a bad state reported) once.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Certificate and key bytes.
    Files(Vec<u8>, Vec<u8>),
    /// A file could not be read (a Secret volume mid-update, a typo): why.
    Unreadable(String),
}

impl Webhook {
    /// Loads the pair; a bad pair at start-up is an error (there is no
    /// last good one to keep).
    pub fn new(settings: InjectSettings, recorder: Arc<Recorder>) -> Result<Self, CertError> {
        let (c, k) = (read(&settings.cert)?, read(&settings.key)?);
        let pair = parse_pair(&settings.cert, &c, &settings.key, &k)?;
        let gate = Gate::new("webhook", settings.limits.max_connections, recorder.clone());
        Ok(Webhook {
            gate,
            settings,
            current: Arc::new(Current(RwLock::new(Arc::new(pair)))),
            seen: Mutex::new(Seen::Files(c, k)),
            recorder,
        })
    }

    /// Re-reads the files; takes the pair if their content changed and it
    /// loads. `Ok(true)`: a new pair is served; `Ok(false)`: nothing
    /// changed. A bad pair is reported once per content change.
    pub fn reload(&self) -> Result<bool, CertError> {
        let files = read(&self.settings.cert).and_then(|c| Ok((c, read(&self.settings.key)?)));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Remembered even when bad, so one bad state is reported once; the
        // next change is looked at again.
        let (c, k) = match files {
            Err(e) => {
                let now = Seen::Unreadable(e.to_string());
                if *seen == now {
                    return Ok(false);
                }
                *seen = now;
                return Err(e);
            }
            Ok((c, k)) => (c, k),
        };
        if matches!(&*seen, Seen::Files(sc, sk) if *sc == c && *sk == k) {
            return Ok(false);
        }
        let pair = parse_pair(&self.settings.cert, &c, &self.settings.key, &k);
        *seen = Seen::Files(c, k);
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair?);
        Ok(true)
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(true) => {
                info!(cert = %self.settings.cert.display(), why, "webhook certificate reloaded")
            }
            Ok(false) => debug!(why, "webhook certificate unchanged"),
            Err(e) => {
                self.recorder.metrics.webhook_cert_errors.inc();
                warn!(error = %e, why, "webhook certificate not reloaded; the last good one stays in use");
            }
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.current.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(cfg))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if path != "/inject" && !path.starts_with("/inject/") {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the webhook serves /inject",
            );
        }
        if req.method() != Method::POST {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST",
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return r;
        }
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ctype.split(';').next().map(str::trim) != Some("application/json") {
            self.count("rejected");
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("invalid Content-Type {ctype:?}, want application/json"),
            );
        }
        let max = self.settings.max_body_bytes;
        let limit = self.settings.limits.body_timeout;
        let read = tokio::time::timeout(limit, Limited::new(req.into_body(), max).collect());
        let Ok(read) = read.await else {
            self.count("rejected");
            self.gate.timed_out();
            let mut r = text(
                StatusCode::REQUEST_TIMEOUT,
                &format!("request body not received within {limit:?}"),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        };
        let body = match read {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.count("rejected");
                if e.is::<http_body_util::LengthLimitError>() {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body larger than {max} bytes"),
                    );
                }
                return text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"));
            }
        };
        if body.is_empty() {
            self.count("rejected");
            return text(
                StatusCode::BAD_REQUEST,
                "no body: expected an AdmissionReview",
            );
        }
        match inject::review(&body, &path, &self.settings.sidecar) {
            Ok(r) => {
                match &r.outcome {
                    Outcome::Injected => {
                        self.count("injected");
                        info!(pod = %r.pod, "sidecar injected");
                    }
                    Outcome::Skipped(why) => {
                        self.count("skipped");
                        info!(pod = %r.pod, why = %why, "injection skipped");
                    }
                    Outcome::NotPatchable(why) => {
                        self.count("not_patchable");
                        warn!(pod = %r.pod, why = %why, "pod allowed without the sidecar");
                    }
                    Outcome::Denied(why) => {
                        self.count("denied");
                        warn!(pod = %r.pod, why = %why, "pod refused");
                    }
                }
                let mut resp = Response::new(Full::new(Bytes::from(r.review.to_string())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => {
                self.count("rejected");
                warn!(path = %path, error = %e, "malformed injection request");
                text(StatusCode::BAD_REQUEST, &e.to_string())
            }
        }
    }

    fn count(&self, result: &str) {
        self.recorder
            .metrics
            .injections
            .get_or_create(&InjectLabel {
                result: result.to_string(),
            })
            .inc();
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Re-reads the pair every `poll` and on SIGHUP, until `stop`.
pub async fn watch_certificate(wh: Arc<Webhook>, stop: impl std::future::Future<Output = ()>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(wh.settings.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => wh.reload_logged("file check"),
            _ = hup_recv => wh.reload_logged("SIGHUP"),
        }
    }
}

/// Serves HTTPS on `listener` until `stop`; each connection gets its own
/// task (a slow handshake holds up no one else), up to the cap.
pub async fn serve(
    listener: TcpListener,
    wh: Arc<Webhook>,
    stop: impl std::future::Future<Output = ()>,
) {
    let acceptor = wh.acceptor();
    let gate = wh.gate.clone();
    tokio::pin!(stop);
    loop {
        let (tcp, peer, permit) = tokio::select! {
            _ = &mut stop => return,
            c = gate.accept(&listener) => c,
        };
        let (acceptor, wh, gate) = (acceptor.clone(), wh.clone(), gate.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(acceptor, wh, tcp, peer, &gate).await {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    wh: Arc<Webhook>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    gate: &Gate,
) -> anyhow::Result<()> {
    let head = wh.settings.limits.head_timeout;
    let Ok(tls) = tokio::time::timeout(head, acceptor.accept(tcp)).await else {
        gate.timed_out();
        anyhow::bail!("TLS handshake from {peer} not done within {head:?}");
    };
    let tls = tls?;
    let svc = hyper::service::service_fn(move |req| {
        let wh = wh.clone();
        async move { Ok::<_, Infallible>(wh.handle(req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head)
        .serve_connection(TokioIo::new(tls), svc)
        .await;
    if let Err(e) = served {
        if e.is_timeout() {
            gate.timed_out();
        }
        return Err(e.into());
    }
    Ok(())
}
