//! Plain HTTP GETs to the debug endpoint of membrane-xds (15014) and to a
//! proxy's admin port (15000), both loopback-only by design.

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `http://{addr}{path}` and returns the body of a 200 answer; any
/// other status is an error quoting the server's words.
pub fn get(addr: &str, path: &str) -> Result<String> {
    get_with_headers(addr, path).map(|(body, _)| body)
}

/// [`get`], with the answer's headers.
pub fn get_with_headers(addr: &str, path: &str) -> Result<(String, hyper::HeaderMap)> {
    let url = format!("http://{addr}{path}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("bad address {addr:?}"))?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.get(uri))
            .await
            .with_context(|| format!("GET {url}: no answer within 30s"))?
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("GET {url}: reading the body"))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", text.trim());
        }
        Ok((text, headers))
    })
}
