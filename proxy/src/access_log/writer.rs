//! The access log's writer thread and its output: one `write` per block, partial blocks
//! on a timer, a file reopened when told to or when its path names another file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AccessLogError, Destination, Msg, State};

/// How often a file's path is checked for having been rotated away.
const ROTATION_CHECK: Duration = Duration::from_secs(1);
/// Written blocks kept for reuse.
const SPARES: usize = 4;

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) state: Arc<State>,
    pub(super) rx: Receiver<Msg>,
    pub(super) output: Output,
    pub(super) interval: Duration,
    /// The last write failed (the next failure is not logged again).
    pub(super) failing: bool,
    /// Messages taken off the channel early (while writing the partial block), handled
    /// next, in their order.
    pub(super) backlog: VecDeque<Msg>,
}

impl Writer {
    /// Runs until [`Msg::Stop`] or the last handle is gone, writing everything first.
    pub(super) fn run(mut self) {
        // When the partial block is due; none when the pending buffer was empty.
        let mut due: Option<Instant> = None;
        loop {
            let msg = match (self.backlog.pop_front(), due) {
                (Some(m), _) => Some(m),
                (None, None) => self.rx.recv().ok(),
                (None, Some(at)) => {
                    match self
                        .rx
                        .recv_timeout(at.saturating_duration_since(Instant::now()))
                    {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => {
                            due = None;
                            self.write_pending();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => None,
                    }
                }
            };
            match msg {
                Some(Msg::Block(block)) => self.write_block(block),
                Some(Msg::Wake) => {
                    due.get_or_insert_with(|| Instant::now() + self.interval);
                }
                Some(Msg::Flush(ack)) => {
                    self.write_pending();
                    let _ = ack.send(());
                }
                Some(Msg::Reopen) => self.output.reopen(),
                Some(Msg::Stop) | None => {
                    self.write_pending();
                    return;
                }
            }
        }
    }

    /// Writes the partial block, after every full block handed over before it: blocks are
    /// sent under the pending lock, so those still in the channel are taken here under the
    /// same lock and written first, and lines stay in the order they were recorded.
    fn write_pending(&mut self) {
        let mut earlier = Vec::new();
        let block = {
            let mut p = self.state.lock();
            p.armed = false;
            while let Ok(m) = self.rx.try_recv() {
                match m {
                    Msg::Block(b) => earlier.push(b),
                    other => self.backlog.push_back(other),
                }
            }
            if p.buf.is_empty() {
                None
            } else {
                let next = p.spare.pop().unwrap_or_default();
                Some(std::mem::replace(&mut p.buf, next))
            }
        };
        for b in earlier {
            self.write_block(b);
        }
        if let Some(block) = block {
            self.state.queued.fetch_add(block.len(), Ordering::Relaxed);
            self.write_block(block);
        }
    }

    fn write_block(&mut self, mut block: Vec<u8>) {
        match self.output.write(&block) {
            Ok(()) => self.failing = false,
            Err(e) => {
                let lines = block.iter().filter(|&&b| b == b'\n').count();
                self.state.drops.write_failed.inc_by(lines as u64);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e, lines, "access log: write failed, lines lost (counted until writes succeed again)");
                }
            }
        }
        self.state.queued.fetch_sub(block.len(), Ordering::Relaxed);
        block.clear();
        let mut p = self.state.lock();
        if p.spare.len() < SPARES {
            p.spare.push(block);
        }
    }
}

/// Where the writer writes.
pub(super) enum Output {
    Stdout(std::io::Stdout),
    File(FileOutput),
}

/// A file destination and what tells whether its path still names it.
pub(super) struct FileOutput {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`.
    id: (u64, u64),
    checked: Instant,
}

impl Output {
    /// Opens `destination` (a file is created when missing and appended to).
    pub(super) fn open(destination: &Destination) -> Result<Self, AccessLogError> {
        match destination {
            Destination::Stdout => Ok(Output::Stdout(std::io::stdout())),
            Destination::File(path) => {
                let (file, id) = open_file(path).map_err(|source| AccessLogError::Open {
                    path: path.clone(),
                    source,
                })?;
                Ok(Output::File(FileOutput {
                    path: path.clone(),
                    file,
                    id,
                    checked: Instant::now(),
                }))
            }
        }
    }

    fn write(&mut self, block: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(block)?;
                out.flush()
            }
            Output::File(f) => {
                if f.checked.elapsed() >= ROTATION_CHECK {
                    f.checked = Instant::now();
                    let same = std::fs::metadata(&f.path).is_ok_and(|m| (m.dev(), m.ino()) == f.id);
                    if !same {
                        tracing::info!(path = %f.path.display(), "access log: file rotated away, reopening");
                        f.reopen();
                    }
                }
                f.file.write_all(block)
            }
        }
    }

    fn reopen(&mut self) {
        if let Output::File(f) = self {
            f.reopen()
        }
    }
}

impl FileOutput {
    /// Opens the path anew; on failure the open file stays in use.
    fn reopen(&mut self) {
        match open_file(&self.path) {
            Ok((file, id)) => {
                self.file = file;
                self.id = id;
            }
            Err(e) => tracing::error!(
                path = %self.path.display(),
                error = %e,
                "access log: cannot reopen; writing on to the file already open"
            ),
        }
        self.checked = Instant::now();
    }
}

fn open_file(path: &Path) -> std::io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let m = file.metadata()?;
    Ok((file, (m.dev(), m.ino())))
}
