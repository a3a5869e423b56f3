//! The gRPC health-checking protocol's one call, `grpc.health.v1.Health/Check`, over h2c:
//! what a Kubernetes `grpc` probe asks (the kubelet, too, speaks plaintext HTTP/2 to it).

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: i32 = 1;
/// A health response is a few bytes; anything longer is not one.
const MAX_RESPONSE: usize = 4096;

/// Why the health check could not be asked or answered.
#[derive(Debug, thiserror::Error)]
pub enum GrpcHealthError {
    /// Connecting.
    #[error("connect {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP/2.
    #[error("grpc health check: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("grpc health check: {0}")]
    Request(#[from] http::Error),
    /// The server answered with a gRPC error (12: it does not implement health checks).
    #[error("grpc health check: grpc-status {status} {message}")]
    Status {
        /// `grpc-status`.
        status: String,
        /// `grpc-message`.
        message: String,
    },
    /// The answer was not a health response.
    #[error("grpc health check: {0}")]
    Malformed(String),
}

/// Asks the server at `addr` about `service`; true when it is SERVING.
pub async fn check(addr: SocketAddr, service: &str) -> Result<bool, GrpcHealthError> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| GrpcHealthError::Connect { addr, source })?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let msg = HealthCheckRequest {
        service: service.to_owned(),
    }
    .encode_to_vec();
    let mut body = BytesMut::with_capacity(5 + msg.len());
    body.put_u8(0);
    body.put_u32(msg.len() as u32);
    body.put_slice(&msg);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        )
        .header(header::TE, HeaderValue::from_static("trailers"))
        .body(Full::new(body.freeze()))?;
    let res = sender.send_request(req).await?;
    let (parts, body) = res.into_parts();
    let collected = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| GrpcHealthError::Malformed(e.to_string()))?;
    // Trailers-only answers carry the status in the headers.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match field("grpc-status").as_deref() {
        Some("0") => {}
        Some(s) => {
            return Err(GrpcHealthError::Status {
                status: s.to_owned(),
                message: field("grpc-message").unwrap_or_default(),
            })
        }
        None => {
            return Err(GrpcHealthError::Malformed(format!(
                "HTTP {} without grpc-status",
                parts.status
            )))
        }
    }
    let data: Bytes = collected.to_bytes();
    let msg = match data.get(..5) {
        Some(&[0, a, b, c, d]) => {
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            data.get(5..5 + len)
                .ok_or_else(|| GrpcHealthError::Malformed("truncated message".into()))?
        }
        _ => return Err(GrpcHealthError::Malformed("no uncompressed message".into())),
    };
    let resp =
        HealthCheckResponse::decode(msg).map_err(|e| GrpcHealthError::Malformed(e.to_string()))?;
    Ok(resp.status == SERVING)
}
