//! The access log's sink: where records become bytes on stdout or in a file, at a cost the
//! request path barely notices. Which records there are, and what they say, is decided where
//! requests end (`server::layers::access_log`, and the L4 splice in `server::listener`).
//!
//! A record is formatted on the thread that makes it, into that thread's reused scratch
//! buffer ([`Line`]: JSON written directly, no allocation, no serializer), then appended to
//! one shared pending buffer under a lock held only for the copy, so lines keep the order
//! their requests ended in. A full block (64 KiB, Envoy's flush size) is handed to a writer
//! thread, which writes it with one `write`; a partial block is written within
//! `--access-log-flush-interval` of its first line, and on [`AccessLog::flush`] (the drain)
//! and when the last handle goes (process exit). The request path never waits for the
//! writer: lines beyond `--access-log-max-buffered` bytes not yet written are dropped and
//! counted (`membrane_access_log_dropped_total{reason="overflow"}`), as are lines whose write
//! failed (`reason="write_failed"`). A file destination is reopened on [`AccessLog::reopen`]
//! (SIGHUP) and when its path stops naming the open file (rotated away), as Envoy's file sink
//! is on SIGUSR1.

mod line;
mod writer;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

pub use line::Line;

/// Bytes handed to the writer at a time (Envoy's file sink flushes at 64 KiB too).
const BLOCK: usize = 64 * 1024;
/// How long the last handle's drop waits for the writer to catch up.
const EXIT_FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// Why the access log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file could not be opened for appending.
    #[error("--access-log-path {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("access log: cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's standard output.
    Stdout,
    /// A file, appended to (created when missing).
    File(PathBuf),
}

/// How the access log is written.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where.
    pub destination: Destination,
    /// A line is written at the latest this long after it was recorded.
    pub flush_interval: Duration,
    /// Bytes recorded but not yet written beyond which new lines are dropped.
    pub max_buffered: usize,
}

/// The counters of lines lost (`membrane_access_log_dropped_total{reason}`).
#[derive(Clone, Default)]
pub struct Drops {
    /// The writer fell `max_buffered` bytes behind.
    pub overflow: Counter,
    /// Writing failed (a full disk, a closed stdout).
    pub write_failed: Counter,
}

/// A handle on the access log; clones share it. The writer thread stops, having written
/// every line, when the last handle is dropped.
#[derive(Clone)]
pub struct AccessLog(Arc<Handle>);

struct Handle {
    state: Arc<State>,
    to_writer: Sender<Msg>,
    /// A flush timed out (the output is stalled): exit does not wait for it again.
    stalled: AtomicBool,
}

/// What the recording threads and the writer share.
struct State {
    pending: Mutex<Pending>,
    /// Bytes in blocks handed to the writer and not yet written.
    queued: AtomicUsize,
    max_buffered: usize,
    drops: Drops,
}

struct Pending {
    /// Lines recorded since the last hand-over.
    buf: Vec<u8>,
    /// The writer has been told there is a partial block to write when its timer fires.
    armed: bool,
    /// Written blocks, for reuse (so steady logging allocates nothing).
    spare: Vec<Vec<u8>>,
}

/// What the writer thread is sent.
enum Msg {
    /// Lines to write.
    Block(Vec<u8>),
    /// The pending buffer has lines: write them within the flush interval.
    Wake,
    /// Write everything recorded so far, then answer.
    Flush(SyncSender<()>),
    /// Reopen the file.
    Reopen,
    /// Write everything and end.
    Stop,
}

thread_local! {
    /// Each thread's line being formatted, and its clock.
    static SCRATCH: RefCell<(Vec<u8>, line::Clock)> = RefCell::new((Vec::with_capacity(1024), line::Clock::default()));
}

impl AccessLog {
    /// Opens the destination and starts the writer thread.
    pub fn open(settings: &Settings, drops: Drops) -> Result<Self, AccessLogError> {
        let output = writer::Output::open(&settings.destination)?;
        let state = Arc::new(State {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(BLOCK),
                armed: false,
                spare: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            max_buffered: settings.max_buffered,
            drops,
        });
        let (to_writer, rx) = mpsc::channel();
        let writer = writer::Writer {
            state: state.clone(),
            rx,
            output,
            interval: settings.flush_interval,
            failing: false,
            backlog: Default::default(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog(Arc::new(Handle {
            state,
            to_writer,
            stalled: AtomicBool::new(false),
        })))
    }

    /// Records one line: `fields` writes its fields in order (after the timestamp and level,
    /// before the target). Never blocks on the writer.
    pub fn record(&self, fields: impl FnOnce(&mut Line<'_>)) {
        let now = SystemTime::now();
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let (buf, clock) = &mut *scratch;
                buf.clear();
                let mut line = Line::start(buf, clock, now);
                fields(&mut line);
                line.finish();
                self.append(buf);
            }
            // Only if `fields` itself recorded a line: format that one on its own.
            Err(_) => {
                let mut buf = Vec::new();
                let mut line = Line::start(&mut buf, &mut line::Clock::default(), now);
                fields(&mut line);
                line.finish();
                self.append(&buf);
            }
        })
    }

    fn append(&self, line: &[u8]) {
        let state = &self.0.state;
        let mut msg = None;
        {
            let mut p = state.lock();
            let held = p.buf.len() + state.queued.load(Ordering::Relaxed);
            if held + line.len() > state.max_buffered {
                drop(p);
                state.drops.overflow.inc();
                return;
            }
            if p.buf.is_empty() && !p.armed {
                p.armed = true;
                msg = Some(Msg::Wake);
            }
            p.buf.extend_from_slice(line);
            if p.buf.len() >= BLOCK {
                let next = p.spare.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK));
                let block = std::mem::replace(&mut p.buf, next);
                state.queued.fetch_add(block.len(), Ordering::Relaxed);
                msg = Some(Msg::Block(block));
            }
            // Sent under the lock, so blocks reach the writer in the order they were taken
            // and the writer, taking the partial block under the same lock, finds every
            // earlier block in the channel (lines stay in order). The writer only ends
            // after every handle is gone.
            if let Some(m) = msg {
                let _ = self.0.to_writer.send(m);
            }
        }
    }

    /// Writes every line recorded so far; false when the writer did not finish within
    /// `within` (a stdout nobody reads).
    pub fn flush(&self, within: Duration) -> bool {
        self.0.flush(within)
    }

    /// Reopens a file destination (after it was rotated; SIGHUP). A failure keeps the open
    /// file and is logged.
    pub fn reopen(&self) {
        let _ = self.0.to_writer.send(Msg::Reopen);
    }
}

impl Handle {
    fn flush(&self, within: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        let flushed =
            self.to_writer.send(Msg::Flush(ack)).is_ok() && done.recv_timeout(within).is_ok();
        if !flushed {
            self.stalled.store(true, Ordering::Relaxed);
        }
        flushed
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let within = match self.stalled.load(Ordering::Relaxed) {
            true => Duration::ZERO,
            false => EXIT_FLUSH_WITHIN,
        };
        if !self.flush(within) {
            tracing::warn!("access log: lines recorded at exit could not all be written");
        }
        let _ = self.to_writer.send(Msg::Stop);
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves a buffer of whole lines: keep using it.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
