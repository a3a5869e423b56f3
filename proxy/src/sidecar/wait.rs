//! `membrane-proxy wait`: blocks until the sidecar is ready, for Istio's
//! `holdApplicationUntilProxyStarts`. The injector makes it the sidecar container's
//! `postStart` hook (as Istio runs `pilot-agent wait`), and the kubelet starts the app's
//! containers only once the hook returns, so the app's first connections find a sidecar
//! whose first policy is in force. Plain blocking I/O: it runs once per pod start, without
//! a runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::parse_duration;

/// `membrane-proxy wait --help`.
pub const HELP: &str =
    "Polls the sidecar's readiness (GET /healthz/ready on 15021 by default) until it \
answers 200, which it does once the control plane's first policy is in force; exits 0 then, \
1 when --timeout passes first. Made the sidecar container's postStart hook, it holds the \
app's containers until the sidecar enforces its policy.";

/// `membrane-proxy wait` flags (Istio's `pilot-agent wait`'s, by meaning).
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// The readiness endpoint's address.
    #[arg(long, default_value = "127.0.0.1:15021")]
    pub address: SocketAddr,
    /// Give up after this long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Time between attempts.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub period: Duration,
    /// Bound on each attempt.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub request_timeout: Duration,
}

/// Why waiting ended without a ready sidecar.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The timeout passed.
    #[error("sidecar at {address} not ready after {waited:?} (last: {last})")]
    NotReady {
        /// Where it was asked.
        address: SocketAddr,
        /// How long.
        waited: Duration,
        /// The last answer, or why there was none.
        last: String,
    },
    /// A setting that cannot work.
    #[error("--{0} must be longer than 0s")]
    Zero(&'static str),
}

/// One `GET /healthz/ready`: the status line's code, or why there is none.
fn ready_status(address: SocketAddr, bound: Duration) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&address, bound).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(bound)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(bound))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

impl WaitArgs {
    /// Polls until ready (Ok) or the timeout passes.
    pub fn run(&self) -> Result<(), WaitError> {
        for (flag, d) in [
            ("timeout", self.timeout),
            ("period", self.period),
            ("request-timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(WaitError::Zero(flag));
            }
        }
        let start = Instant::now();
        loop {
            let last = match ready_status(self.address, self.request_timeout) {
                Ok(200) => return Ok(()),
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e,
            };
            if start.elapsed() + self.period > self.timeout {
                return Err(WaitError::NotReady {
                    address: self.address,
                    waited: start.elapsed(),
                    last,
                });
            }
            std::thread::sleep(self.period);
        }
    }
}
