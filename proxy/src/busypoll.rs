//! Adaptive busy polling of the event loop.
//!
//! At low load a proxy's latency is dominated by sleeping and waking: every request makes
//! the event loop block in `epoll_wait` twice (waiting for the request, then for the
//! upstream's answer), and each wake-up of a sleeping core costs an inter-processor
//! interrupt, an exit from the idle state and a context switch (on a virtual machine, exits
//! to the hypervisor as well). When traffic is dense, the answer usually arrives a few tens
//! of microseconds after the loop runs out of work; spinning for that long instead of
//! sleeping keeps the core awake and turns both wake-ups into a plain return from
//! `epoll_wait`.
//!
//! Before the runtime parks, the hook polls the runtime's own epoll descriptor (readable
//! while its ready list is not empty) without blocking, until it becomes readable or the
//! budget runs out; the runtime's `epoll_wait` that follows then returns at once. Between
//! polls the thread yields the core, so a process that shares the core (the application,
//! the upstream) runs at once instead of waiting for the spin to end: measured with proxy,
//! wrk and nginx on one core, a spin with a CPU pause instead of a yield cost a quarter of
//! the requests per second; with the yield there is no difference. Spinning
//! is adaptive: a spin that runs out its whole budget turns spinning off, and it turns back
//! on only after [`REARM_STREAK`] parks in a row that each slept for less than a few
//! budgets, i.e. when traffic is dense again. One short sleep is not enough: at a moderate
//! rate (Istio's benchmark shape, 1,000 requests per second over 16 connections) every
//! request has one short sleep (waiting for the upstream's answer) and one long one
//! (waiting for the next request); re-arming after each short sleep made every request
//! spin out one whole budget before the long sleep, a wasted budget of CPU and, with
//! other processes runnable, a handful of yields (context switches) per request. A
//! connection whose requests follow each other back to back, or a high rate, parks
//! briefly every time and spins as before. An idle proxy therefore spins once per idle
//! period (one budget of CPU) and then sleeps as usual; under heavy load the loop rarely
//! parks at all.
//!
//! The runtime does not expose its epoll descriptor: it is found as the epoll instance that
//! building the runtime created (`/proc/self/fd` before and after; the driver keeps two
//! descriptors of one instance, told apart from a second instance by the descriptors each
//! watches). When it cannot be found unambiguously, busy polling stays off and the proxy
//! says so.
//!
//! This module and `memory` are the crate's only users of `unsafe`: one `poll(2)` on a
//! descriptor number, with a stack array, no lifetimes involved.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A park shorter than this many budgets counts as a short one (dense traffic).
const REARM_BUDGETS: u32 = 4;

/// This many short parks in a row re-arm spinning: the traffic is dense, not just one
/// answer that came back quickly between sparse requests.
pub const REARM_STREAK: u32 = 8;

/// The epoll descriptors of this process, by number.
pub fn epoll_fds() -> BTreeSet<RawFd> {
    let mut fds = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return fds;
    };
    for entry in dir.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.as_os_str() == "anon_inode:[eventpoll]" {
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                fds.insert(fd);
            }
        }
    }
    fds
}

/// The descriptors an epoll instance watches (`tfd:` lines of its fdinfo), which tell a
/// duplicate of an epoll descriptor from another instance.
fn watched(fd: RawFd) -> Option<Vec<String>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    Some(
        info.lines()
            .filter(|l| l.starts_with("tfd:"))
            .map(str::to_owned)
            .collect(),
    )
}

/// The one epoll instance among `created` (the epoll descriptors that building a runtime
/// added): the I/O driver makes its instance and keeps a duplicate of it for registrations,
/// so several descriptors that watch the same set are one instance. `None` when there is
/// none or more than one.
pub fn runtime_epoll(created: &BTreeSet<RawFd>) -> Option<RawFd> {
    let first = *created.first()?;
    let set = watched(first)?;
    created
        .iter()
        .all(|&fd| watched(fd).as_ref() == Some(&set))
        .then_some(first)
}

/// Busy-poll state shared by the park and unpark hooks of one runtime.
#[derive(Debug)]
pub struct BusyPoll {
    epfd: RawFd,
    budget: Duration,
    armed: AtomicBool,
    /// When the loop last went to sleep (ns since `origin`), for the re-arm rule.
    parked_at: AtomicU64,
    /// Short parks in a row while not armed.
    short_parks: AtomicU32,
    origin: Instant,
}

impl BusyPoll {
    /// Busy polling on `epfd` (the runtime's epoll descriptor) with `budget` per park.
    pub fn new(epfd: RawFd, budget: Duration) -> Arc<Self> {
        Arc::new(BusyPoll {
            epfd,
            budget,
            armed: AtomicBool::new(true),
            parked_at: AtomicU64::new(0),
            short_parks: AtomicU32::new(0),
            origin: Instant::now(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Whether the runtime's epoll has events ready, without blocking.
    fn ready(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.epfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack, count 1, timeout 0: poll only writes `revents`.
        // A descriptor number that was closed meanwhile yields POLLNVAL, which ends the spin.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n != 0
    }

    /// Whether the next park spins.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// The park hook: poll until the loop has work or the budget is spent, yielding the core
    /// between polls.
    pub fn before_park(&self) {
        if self.armed.load(Ordering::Relaxed) {
            let start = Instant::now();
            loop {
                if self.ready() {
                    return;
                }
                if start.elapsed() >= self.budget {
                    break;
                }
                std::thread::yield_now();
            }
            // Nothing came within the budget: sleep from now on until traffic is dense.
            self.armed.store(false, Ordering::Relaxed);
        }
        self.parked_at.store(self.now_ns(), Ordering::Relaxed);
    }

    /// The unpark hook: a run of short sleeps means dense traffic, so spin again.
    pub fn after_unpark(&self) {
        if self.armed.load(Ordering::Relaxed) {
            return;
        }
        let slept = self
            .now_ns()
            .saturating_sub(self.parked_at.load(Ordering::Relaxed));
        self.slept(Duration::from_nanos(slept));
    }

    /// The re-arm rule for a park that slept `slept` while spinning was off: [`REARM_STREAK`]
    /// short ones in a row turn it on; a long one starts the count again.
    pub fn slept(&self, slept: Duration) {
        if slept >= self.budget * REARM_BUDGETS {
            self.short_parks.store(0, Ordering::Relaxed);
            return;
        }
        if self.short_parks.fetch_add(1, Ordering::Relaxed) + 1 >= REARM_STREAK {
            self.short_parks.store(0, Ordering::Relaxed);
            self.armed.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(50);

    /// A `BusyPoll` whose spinning was turned off by an empty spin (the descriptor is never
    /// polled by the re-arm rule).
    fn disarmed() -> Arc<BusyPoll> {
        let bp = BusyPoll::new(-1, BUDGET);
        bp.armed.store(false, Ordering::Relaxed);
        bp
    }

    #[test]
    fn a_moderate_rate_with_one_short_sleep_per_request_does_not_rearm() {
        // 1,000 requests per second: the upstream answers within 100 µs, the next request
        // comes a millisecond later.
        let bp = disarmed();
        for _ in 0..1000 {
            bp.slept(Duration::from_micros(100));
            bp.slept(Duration::from_millis(1));
            assert!(!bp.armed(), "re-armed by sparse traffic");
        }
    }

    #[test]
    fn a_run_of_short_sleeps_rearms_and_a_long_one_restarts_the_count() {
        let bp = disarmed();
        for _ in 0..REARM_STREAK - 1 {
            bp.slept(Duration::from_micros(20));
        }
        assert!(!bp.armed(), "re-armed before {REARM_STREAK} short sleeps");
        bp.slept(BUDGET * REARM_BUDGETS);
        for _ in 0..REARM_STREAK - 1 {
            bp.slept(Duration::from_micros(20));
        }
        assert!(!bp.armed(), "a long sleep did not restart the count");
        bp.slept(Duration::from_micros(20));
        assert!(
            bp.armed(),
            "not re-armed after {REARM_STREAK} short sleeps in a row"
        );
    }
}
