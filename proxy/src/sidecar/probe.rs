//! Application probes through the sidecar's status port, as Istio's agent answers them:
//! the injector rewrites each container's liveness/readiness/startup probe to
//! `GET :15020/app-health/CONTAINER/livez|readyz|startupz` and puts the original probes in
//! `ISTIO_KUBE_APP_PROBERS` (a JSON map from those paths to Kubernetes probe handlers). The
//! sidecar performs the original probe against the pod (its own address, as Istio ≥ 1.10
//! does, so an app bound to the pod IP only is probed as the kubelet would) and answers
//! with its outcome. The kubelet's probe thus never crosses the inbound capture, and keeps
//! working under a deny-all policy.
//!
//! `httpGet` answers with the app's status (a redirect as 200, as the kubelet counts it)
//! and up to 10 KiB of its body; `tcpSocket` and `grpc` (`grpc.health.v1.Health/Check`)
//! with 200 or 500. Every probe is bounded by its `timeoutSeconds` (1 s when unset, at
//! most 60 s). A path nobody configured is 404.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Longest app body passed back (Istio's limit).
const MAX_BODY: usize = 10 * 1024;
/// Longest accepted `timeoutSeconds`: a probe must not hold the status port's connection
/// slots for long.
const MAX_TIMEOUT_SECONDS: u64 = 60;

/// Why `ISTIO_KUBE_APP_PROBERS` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Not a JSON object of probers.
    #[error("not a JSON map of path to probe: {0}")]
    Syntax(String),
    /// One entry is not usable.
    #[error("{path}: {what}")]
    Entry {
        /// Its key.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// One probe as Kubernetes (and Istio's map) spells it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProbe {
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcp>,
    grpc: Option<RawGrpc>,
    timeout_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: serde_json::Value,
    host: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<RawHeader>,
}

#[derive(Debug, Deserialize)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct RawTcp {
    port: serde_json::Value,
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawGrpc {
    port: serde_json::Value,
    service: Option<String>,
}

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET` over HTTP or HTTPS (the certificate is not verified, as the kubelet's).
    Http {
        /// HTTPS.
        https: bool,
        /// The app's port.
        port: u16,
        /// Path and query.
        path: String,
        /// Host to dial instead of the pod's address.
        host: Option<String>,
        /// Extra request headers (`Host` among them overrides the authority).
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// A TCP connect.
    Tcp {
        /// Host to dial instead of the pod's address.
        host: Option<String>,
        /// The app's port.
        port: u16,
    },
    /// `grpc.health.v1.Health/Check` over h2c.
    Grpc {
        /// The app's port.
        port: u16,
        /// The service name asked about (empty: the server as a whole).
        service: String,
    },
}

/// One configured probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What it does.
    pub check: Check,
    /// Its bound.
    pub timeout: Duration,
}

/// The probes by status-port path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbers(pub BTreeMap<String, Probe>);

impl AppProbers {
    /// Parses Istio's JSON map; every entry is checked (path shape, exactly one handler,
    /// numeric ports: Istio's injector resolves named ports before it writes the map).
    pub fn parse(text: &str) -> Result<AppProbers, ProbeError> {
        if text.trim().is_empty() {
            return Ok(AppProbers::default());
        }
        let raw: BTreeMap<String, RawProbe> =
            serde_json::from_str(text).map_err(|e| ProbeError::Syntax(e.to_string()))?;
        raw.into_iter()
            .map(|(path, p)| {
                let probe = probe(&path, p).map_err(|what| ProbeError::Entry {
                    path: path.clone(),
                    what,
                })?;
                Ok((path, probe))
            })
            .collect::<Result<_, _>>()
            .map(AppProbers)
    }
}

/// Whether `path` is one Istio's agent serves: `/app-health/C/livez|readyz|startupz` or
/// `/app-lifecycle/C/prestopz|poststartz`.
fn path_ok(path: &str) -> bool {
    let mut parts = path.split('/');
    let (Some(""), Some(kind), Some(container), Some(what), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    !container.is_empty()
        && match kind {
            "app-health" => matches!(what, "livez" | "readyz" | "startupz"),
            "app-lifecycle" => matches!(what, "prestopz" | "poststartz"),
            _ => false,
        }
}

fn port(v: &serde_json::Value) -> Result<u16, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("port {n} is not 1-65535")),
        serde_json::Value::String(s) => Err(format!(
            "port {s:?}: a named port must be resolved to its number (the injector does)"
        )),
        other => Err(format!("port {other} is not a number")),
    }
}

fn probe(path: &str, p: RawProbe) -> Result<Probe, String> {
    if !path_ok(path) {
        return Err("not /app-health/CONTAINER/livez|readyz|startupz (or /app-lifecycle/CONTAINER/prestopz|poststartz)".into());
    }
    let timeout = match p.timeout_seconds {
        None | Some(0) => 1,
        Some(t) if t < 0 => return Err(format!("timeoutSeconds {t} is negative")),
        Some(t) => (t as u64).min(MAX_TIMEOUT_SECONDS),
    };
    let check = match (p.http_get, p.tcp_socket, p.grpc) {
        (Some(h), None, None) => {
            let https = match h.scheme.as_deref() {
                None | Some("HTTP") => false,
                Some("HTTPS") => true,
                Some(s) => return Err(format!("scheme {s:?} is not HTTP or HTTPS")),
            };
            let mut path = h.path.unwrap_or_default();
            if !path.starts_with('/') {
                path.insert(0, '/');
            }
            if path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(format!("path {path:?} is not a URL path"));
            }
            let headers = h
                .http_headers
                .into_iter()
                .map(|x| {
                    let name = HeaderName::try_from(x.name.as_str())
                        .map_err(|_| format!("header name {:?} is not a token", x.name))?;
                    let value = HeaderValue::try_from(x.value.as_str())
                        .map_err(|_| format!("header {:?}: value is not a header value", x.name))?;
                    Ok((name, value))
                })
                .collect::<Result<_, String>>()?;
            Check::Http {
                https,
                port: port(&h.port)?,
                path,
                host: h.host.filter(|h| !h.is_empty()),
                headers,
            }
        }
        (None, Some(t), None) => Check::Tcp {
            port: port(&t.port)?,
            host: t.host.filter(|h| !h.is_empty()),
        },
        (None, None, Some(g)) => Check::Grpc {
            port: port(&g.port)?,
            service: g.service.unwrap_or_default(),
        },
        _ => return Err("needs exactly one of httpGet, tcpSocket, grpc".into()),
    };
    Ok(Probe {
        check,
        timeout: Duration::from_secs(timeout),
    })
}

/// The probes with where they go: what the status port consults.
#[derive(Debug)]
pub struct Prober {
    probers: AppProbers,
    /// The pod's address (Istio's default destination), or localhost.
    destination: IpAddr,
    tls: Arc<rustls::ClientConfig>,
}

impl Prober {
    /// Probes go to `destination` unless a probe names its own host.
    pub fn new(probers: AppProbers, destination: IpAddr) -> Prober {
        Prober {
            probers,
            destination,
            tls: Arc::new(super::insecure_tls::client_config()),
        }
    }

    /// Whether a status-port path belongs here.
    pub fn handles(path: &str) -> bool {
        path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/")
    }

    /// Answers one status-port request for an app probe path.
    pub async fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let Some(p) = self.probers.0.get(path) else {
            return reply(StatusCode::NOT_FOUND, format!("no app probe for {path}\n"));
        };
        let outcome = tokio::time::timeout(p.timeout, self.run(&p.check, req)).await;
        match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(target: "probe", path, error = %e, "app probe failed");
                reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
            Err(_) => {
                tracing::warn!(target: "probe", path, timeout = ?p.timeout, "app probe timed out");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("no answer within {:?}\n", p.timeout),
                )
            }
        }
    }

    async fn target(&self, host: Option<&str>, port: u16) -> std::io::Result<SocketAddr> {
        match host {
            None => Ok(SocketAddr::new(self.destination, port)),
            Some(h) => tokio::net::lookup_host((h, port))
                .await?
                .next()
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{h}: no address"))
                }),
        }
    }

    async fn run<B>(
        &self,
        check: &Check,
        req: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, Error> {
        match check {
            Check::Tcp { host, port } => {
                let to = self.target(host.as_deref(), *port).await?;
                TcpStream::connect(to).await?;
                Ok(reply(StatusCode::OK, ""))
            }
            Check::Http {
                https,
                port,
                path,
                host,
                headers,
            } => {
                let to = self.target(host.as_deref(), *port).await?;
                self.http(to, *https, path, headers, req).await
            }
            Check::Grpc { port, service } => {
                let to = self.target(None, *port).await?;
                let serving = super::grpc_health::check(to, service).await?;
                Ok(if serving {
                    reply(StatusCode::OK, "")
                } else {
                    reply(StatusCode::INTERNAL_SERVER_ERROR, "not serving\n")
                })
            }
        }
    }

    async fn http<B>(
        &self,
        to: SocketAddr,
        https: bool,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        incoming: &Request<B>,
    ) -> Result<Response<Full<Bytes>>, Error> {
        // The kubelet's headers come along (the injector moved the probe's httpHeaders to
        // the rewritten probe), then the probe's own; Host as the kubelet would send it
        // to the app's port.
        let mut req = Request::get(path).body(Full::new(Bytes::new()))?;
        for (k, v) in incoming.headers() {
            if !is_hop_by_hop(k) && k != header::HOST {
                req.headers_mut().append(k, v.clone());
            }
        }
        req.headers_mut().insert(
            header::HOST,
            HeaderValue::try_from(to.to_string()).map_err(http::Error::from)?,
        );
        for (k, v) in headers {
            req.headers_mut().insert(k, v.clone());
        }
        let tcp = TcpStream::connect(to).await?;
        let res = if https {
            let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await?;
            send(TokioIo::new(tls), req).await?
        } else {
            send(TokioIo::new(tcp), req).await?
        };
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            // A larger body is cut, not an error: only the status matters.
            .unwrap_or_default();
        if status.is_redirection() {
            return Ok(reply(StatusCode::OK, ""));
        }
        Ok(reply(status, body))
    }
}

async fn send<IO>(
    io: TokioIo<IO>,
    req: Request<Full<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}

fn is_hop_by_hop(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A probe that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting or talking to the app.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// HTTP to the app.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// Building the request.
    #[error("{0}")]
    Request(#[from] http::Error),
    /// The gRPC health check.
    #[error("{0}")]
    Grpc(#[from] super::grpc_health::GrpcHealthError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_map_parses() {
        let p = AppProbers::parse(
            r#"{"/app-health/web/livez":{"httpGet":{"path":"healthz","port":8080,"scheme":"HTTP","httpHeaders":[{"name":"x-probe","value":"1"}]},"timeoutSeconds":3},
                "/app-health/web/readyz":{"tcpSocket":{"port":8080}},
                "/app-health/grpc/startupz":{"grpc":{"port":9090,"service":"app"},"timeoutSeconds":600}}"#,
        )
        .unwrap();
        let live = &p.0["/app-health/web/livez"];
        assert_eq!(live.timeout, Duration::from_secs(3));
        let Check::Http {
            path,
            port,
            headers,
            https,
            ..
        } = &live.check
        else {
            panic!("{live:?}")
        };
        assert_eq!((path.as_str(), *port, *https), ("/healthz", 8080, false));
        assert_eq!(headers[0].0, "x-probe");
        assert_eq!(
            p.0["/app-health/web/readyz"].timeout,
            Duration::from_secs(1)
        );
        assert_eq!(
            p.0["/app-health/grpc/startupz"],
            Probe {
                check: Check::Grpc {
                    port: 9090,
                    service: "app".into()
                },
                timeout: Duration::from_secs(MAX_TIMEOUT_SECONDS)
            }
        );
        assert_eq!(AppProbers::parse("").unwrap(), AppProbers::default());
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |t: &str| AppProbers::parse(t).unwrap_err().to_string();
        assert!(err("[]").starts_with("not a JSON map"));
        let e = err(r#"{"/healthz":{"tcpSocket":{"port":1}}}"#);
        assert!(e.starts_with("/healthz: not /app-health/"), "{e}");
        let e = err(r#"{"/app-health/a/livez":{"httpGet":{"port":"http"}}}"#);
        assert!(e.contains("named port"), "{e}");
        let e = err(r#"{"/app-health/a/livez":{"tcpSocket":{"port":0}}}"#);
        assert!(e.contains("not 1-65535"), "{e}");
        let e = err(r#"{"/app-health/a/livez":{"tcpSocket":{"port":1},"grpc":{"port":2}}}"#);
        assert!(e.contains("exactly one"), "{e}");
        let e = err(r#"{"/app-health/a/livez":{"httpGet":{"port":1,"scheme":"FTP"}}}"#);
        assert!(e.contains("FTP"), "{e}");
        let e = err(r#"{"/app-health/a/livez":{"tcpSocket":{"port":1},"timeoutSeconds":-1}}"#);
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn paths_istio_serves() {
        for ok in [
            "/app-health/a/livez",
            "/app-health/a/readyz",
            "/app-health/a/startupz",
            "/app-lifecycle/a/prestopz",
        ] {
            assert!(path_ok(ok), "{ok}");
        }
        for bad in [
            "/app-health//livez",
            "/app-health/a/b/livez",
            "/app-health/a/other",
            "app-health/a/livez",
            "/app-lifecycle/a/livez",
        ] {
            assert!(!path_ok(bad), "{bad}");
        }
    }
}
