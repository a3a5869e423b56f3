//! The restart tests' load generator: workers send requests through a sidecar in a loop,
//! each on a fresh connection from a peer's own address (so every request goes through the
//! sidecar's identity lookup as well as its L7 rules), and check every answer against the
//! verdict the policy gives that request. Anything else, a wrong status or no answer at
//! all, is a failed request; the tests assert there are none.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A worker stops by itself after this long, even if nobody stops it.
const MAX_RUN: Duration = Duration::from_secs(180);
/// How many failures are kept with their detail (all are counted).
const KEPT: usize = 20;

/// One kind of request and the status the policy gives it.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// What the tally calls it.
    pub name: &'static str,
    /// The peer's address the request comes from.
    pub src: IpAddr,
    /// Method and path.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// The status the policy gives it (200 allowed, 403 denied at L7).
    pub want: u16,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests answered as the policy says, per probe.
    pub ok: BTreeMap<&'static str, u64>,
    /// Requests that were not.
    pub failed: u64,
    /// The first failures, with what happened.
    pub failures: Vec<String>,
}

impl Tally {
    /// Every request sent.
    pub fn sent(&self) -> u64 {
        self.ok.values().sum::<u64>() + self.failed
    }
}

/// Load running in the background on the current runtime.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` workers, each cycling through `probes` against `dst`.
    pub fn start(dst: SocketAddr, probes: &[Probe], workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let workers = (0..workers)
            .map(|w| {
                let (stop, sent, tally) = (stop.clone(), sent.clone(), tally.clone());
                let probes = probes.to_vec();
                tokio::spawn(async move {
                    let start = Instant::now();
                    // Workers start at different probes, so every probe is in flight.
                    for p in probes.iter().cycle().skip(w) {
                        if stop.load(Ordering::Relaxed) || start.elapsed() > MAX_RUN {
                            break;
                        }
                        let got = request(p.src, dst, p.method, p.path).await;
                        let mut t = tally.lock().unwrap();
                        match got {
                            Ok(code) if code == p.want => *t.ok.entry(p.name).or_default() += 1,
                            other => {
                                t.failed += 1;
                                if t.failures.len() < KEPT {
                                    t.failures.push(format!(
                                        "{} ({} {} from {}): wanted {}, got {other:?}",
                                        p.name, p.method, p.path, p.src, p.want
                                    ));
                                }
                            }
                        }
                        drop(t);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            tally,
            workers,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `n` more requests have been answered.
    pub async fn wait_for(&self, n: u64, what: &str) {
        let target = self.sent() + n;
        membrane_test_support::eventually(Duration::from_secs(60), what, || async {
            (self.sent() >= target).then_some(())
        })
        .await
    }

    /// Stops the workers and returns the tally.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("load worker");
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// One HTTP/1.1 request from `src` on a connection of its own: the status code, or what
/// went wrong.
pub(crate) async fn request(
    src: IpAddr,
    dst: SocketAddr,
    method: &str,
    path: &str,
) -> Result<u16, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind: {e}"))?;
    let exchange = async {
        let mut s = sock
            .connect(dst)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: deathstar\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad response {text:?}"))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5s".to_string())?
}
