//! The reporter: each HTTP request's outcome, as the access log records it, sent to the
//! node agent's records socket (`--records-socket`) as one monitor event of type `l7`, so
//! `membrane monitor` shows a request's L7 fate beside its L3/L4 one.
//!
//! The request path only copies the record's fields, length-prefixed, into one pending
//! buffer under a lock held for the copy (no JSON, no allocation once the buffer has
//! grown); the `records` thread takes the buffer every `--records-flush-interval`, turns
//! each entry into a [`membrane_api::monitor::Event`] and writes the batch as JSON lines.
//! The request path never waits: while no agent is connected (the socket is absent, the
//! agent restarts) records are skipped, and beyond `--records-max-buffered` bytes not yet
//! sent they are dropped; both are counted
//! (`membrane_l7_records_dropped_total{reason="disconnected"|"overflow"|"write_failed"}`).
//! The thread reconnects with exponential backoff (100 ms to 5 s).
//!
//! The agent believes nothing here about who sent it (it attributes the connection by its
//! network namespace), so the reporter claims no pod names.

mod wire;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

pub use wire::Entry;

/// The reporter's first and longest reconnect delays.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A batch the agent does not take within this long is dropped (the agent never blocks
/// on its reader, so this is a stuck agent).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the reporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The thread could not be started.
    #[error("--records-socket: cannot start the reporter thread: {0}")]
    Thread(std::io::Error),
}

/// How the reporter runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agent's records socket.
    pub socket: PathBuf,
    /// A record is sent at the latest this long after it was made.
    pub flush_interval: Duration,
    /// Bytes recorded and not yet sent beyond which new records are dropped.
    pub max_buffered: usize,
}

/// The counters of records lost and sent.
#[derive(Clone, Default)]
pub struct Counters {
    /// No agent connected.
    pub disconnected: Counter,
    /// More than `max_buffered` bytes waiting.
    pub overflow: Counter,
    /// The agent went away with the batch.
    pub write_failed: Counter,
    /// Records the agent took.
    pub sent: Counter,
}

/// A handle on the reporter; clones share it.
#[derive(Clone)]
pub struct Reporter(Arc<Inner>);

struct Inner {
    pending: Mutex<Vec<u8>>,
    /// The thread waits here for a first record.
    wake: Condvar,
    /// An agent is connected: records are taken.
    connected: AtomicBool,
    max_buffered: usize,
    counters: Counters,
}

impl Reporter {
    /// Starts the reporter thread (it connects when the socket appears).
    pub fn start(settings: Settings, counters: Counters) -> Result<Self, RecordsError> {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Vec::with_capacity(64 << 10)),
            wake: Condvar::new(),
            connected: AtomicBool::new(false),
            max_buffered: settings.max_buffered,
            counters,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("records".into())
            .spawn(move || run(weak, settings))
            .map_err(RecordsError::Thread)?;
        Ok(Reporter(inner))
    }

    /// Records one request's outcome. Never blocks on the agent.
    pub fn record(&self, e: &Entry<'_>) {
        let inner = &*self.0;
        if !inner.connected.load(Ordering::Relaxed) {
            inner.counters.disconnected.inc();
            return;
        }
        let mut p = inner.lock();
        if p.len() + e.max_len() > inner.max_buffered {
            drop(p);
            inner.counters.overflow.inc();
            return;
        }
        let first = p.is_empty();
        e.encode(&mut p, SystemTime::now());
        drop(p);
        if first {
            inner.wake.notify_one();
        }
    }

    /// Whether an agent is connected now.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reporter thread: connect, then send batches until the last handle is gone.
fn run(inner: std::sync::Weak<Inner>, settings: Settings) {
    let mut backoff = BACKOFF.0;
    let mut taken: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut logged = false;
    loop {
        let conn = match UnixStream::connect(&settings.socket) {
            Ok(c) => c,
            Err(e) => {
                if !logged {
                    tracing::info!(socket = %settings.socket.display(), "records: no agent yet ({e}); retrying");
                    logged = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF.1);
                if inner.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
        tracing::info!(socket = %settings.socket.display(), "records: connected to the agent");
        logged = false;
        let Some(i) = inner.upgrade() else { return };
        i.connected.store(true, Ordering::Relaxed);
        drop(i);
        match send_batches(&inner, &settings, &conn, &mut taken, &mut out) {
            Ok(()) => return, // every handle is gone
            Err(e) => {
                if let Some(i) = inner.upgrade() {
                    i.connected.store(false, Ordering::Relaxed);
                }
                tracing::warn!(socket = %settings.socket.display(), "records: the agent connection failed: {e}; reconnecting");
                backoff = BACKOFF.0;
                std::thread::sleep(backoff);
            }
        }
    }
}

/// Sends batches on `conn` until it fails (`Err`) or the last handle is dropped (`Ok`).
fn send_batches(
    weak: &std::sync::Weak<Inner>,
    settings: &Settings,
    mut conn: &UnixStream,
    taken: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    loop {
        let Some(inner) = weak.upgrade() else {
            return Ok(());
        };
        {
            let p = inner.lock();
            // Wait for a first record; wake now and then to see whether the handles
            // are gone or the agent hung up.
            let (p, _) = inner
                .wake
                .wait_timeout_while(p, Duration::from_secs(1), |p| p.is_empty())
                .unwrap_or_else(PoisonError::into_inner);
            let empty = p.is_empty();
            drop(p);
            if empty {
                drop(inner);
                if agent_hung_up(conn) {
                    return Err(std::io::ErrorKind::ConnectionReset.into());
                }
                continue;
            }
        }
        // Let the batch grow for one interval, then take it whole.
        std::thread::sleep(settings.flush_interval);
        taken.clear();
        std::mem::swap(&mut *inner.lock(), taken);
        out.clear();
        let n = wire::to_json_lines(taken, out);
        if let Err(e) = conn.write_all(out) {
            inner.connected.store(false, Ordering::Relaxed);
            inner.counters.write_failed.inc_by(n);
            return Err(e);
        }
        inner.counters.sent.inc_by(n);
        // Keep the grown buffer for the next batch if the request path has none yet.
        let mut p = inner.lock();
        if p.is_empty() && p.capacity() < taken.capacity() {
            std::mem::swap(&mut *p, taken);
        }
    }
}

/// The agent closed the connection (or refused it with an error line, logged here).
fn agent_hung_up(conn: &UnixStream) -> bool {
    let mut buf = [0u8; 512];
    let _ = conn.set_nonblocking(true);
    let r = std::io::Read::read(&mut &*conn, &mut buf);
    let _ = conn.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(n) => {
            tracing::warn!(
                "records: the agent says {}",
                String::from_utf8_lossy(&buf[..n]).trim()
            );
            true
        }
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}
