//! What one downstream connection's I/O wrapper ([`crate::h1guard::H1Guard`]), its request
//! handler and its watchdog loop share: when the pending request head began (the header read
//! timeout), whether any byte moved lately (the stream idle timeout), and, on HTTP/1, the
//! verdict on an upgrade request the guard is holding the rest of the stream back for.
//!
//! Plain atomics, written by the I/O path and read by a coarse periodic check, rather than a
//! timer per request: re-arming tokio's timer on every request costs an eventfd wake-up each
//! time (the benchmark saw it).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

/// No upgrade request is being held.
const GATE_NONE: u8 = 0;
/// An upgrade request was passed to hyper; the bytes after it wait for the verdict.
const GATE_WAITING: u8 = 1;
/// A 101 is being sent: the rest of the stream is the tunnel's.
const GATE_UPGRADED: u8 = 2;
/// Answered without 101: the rest of the stream is HTTP/1 again and is checked as such.
const GATE_REFUSED: u8 = 3;

/// The verdict on a held upgrade request, as the guard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing held, or no verdict yet.
    Waiting,
    /// Switch to an opaque tunnel.
    Upgraded,
    /// Keep parsing HTTP/1.
    Refused,
}

/// Shared per-connection state; see the module docs.
#[derive(Debug)]
pub struct ConnWatch {
    epoch: Instant,
    /// Milliseconds since `epoch` + 1 at which the pending head began; 0: none pending.
    head_since: AtomicU64,
    /// Bumped on every read that returned data and every write that took some.
    progress: AtomicU64,
    gate: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Default for ConnWatch {
    fn default() -> Self {
        ConnWatch {
            epoch: Instant::now(),
            head_since: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            gate: AtomicU8::new(GATE_NONE),
            waker: Mutex::new(None),
        }
    }
}

impl ConnWatch {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// How long the pending head has been arriving, if one is.
    pub fn head_pending_for(&self) -> Option<Duration> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now().saturating_sub(t))),
        }
    }

    /// Notes whether a partial head is buffered now; the clock starts at its first byte.
    pub(crate) fn head_partial(&self, partial: bool) {
        let cur = self.head_since.load(Ordering::Relaxed);
        if partial && cur == 0 {
            self.head_since.store(self.now(), Ordering::Relaxed);
        } else if !partial && cur != 0 {
            self.head_since.store(0, Ordering::Relaxed);
        }
    }

    /// A count that changes whenever the connection moves bytes.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    pub(crate) fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// The guard passed an upgrade request (`Upgrade:` or CONNECT) to hyper.
    pub(crate) fn hold_for_upgrade(&self) {
        self.gate.store(GATE_WAITING, Ordering::Release);
    }

    /// The verdict, registering `waker` while there is none.
    pub(crate) fn poll_gate(&self, waker: &Waker) -> Gate {
        match self.gate.load(Ordering::Acquire) {
            GATE_UPGRADED => return Gate::Upgraded,
            GATE_REFUSED => return Gate::Refused,
            _ => {}
        }
        if let Ok(mut w) = self.waker.lock() {
            *w = Some(waker.clone());
        }
        // The handler may have decided between the load and the registration.
        match self.gate.load(Ordering::Acquire) {
            GATE_UPGRADED => Gate::Upgraded,
            GATE_REFUSED => Gate::Refused,
            _ => Gate::Waiting,
        }
    }

    /// The guard consumed a refusal: the next upgrade request starts from scratch.
    pub(crate) fn clear_gate(&self) {
        self.gate.store(GATE_NONE, Ordering::Release);
    }

    /// The handler's verdict on the upgrade request: `true` only when a 101 is being sent.
    pub fn upgrade_decided(&self, upgraded: bool) {
        let v = if upgraded {
            GATE_UPGRADED
        } else {
            GATE_REFUSED
        };
        if self
            .gate
            .compare_exchange(GATE_WAITING, v, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
                w.wake();
            }
        }
    }
}

/// Held by the handler of a request that may upgrade: reports "refused" when dropped unless
/// [`UpgradeVerdict::upgraded`] was called, so every early return resumes the guard.
pub struct UpgradeVerdict(Option<Arc<ConnWatch>>);

impl UpgradeVerdict {
    /// For a request the guard holds the stream after (`watch` is `None` on HTTP/2).
    pub fn new(watch: Option<Arc<ConnWatch>>) -> Self {
        UpgradeVerdict(watch)
    }

    /// A 101 is being returned: the rest of the connection is the tunnel's.
    pub fn upgraded(mut self) {
        if let Some(w) = self.0.take() {
            w.upgrade_decided(true);
        }
    }
}

impl Drop for UpgradeVerdict {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.upgrade_decided(false);
        }
    }
}
