//! Returning freed heap memory to the kernel.
//!
//! glibc's allocator keeps memory that was freed inside its heap: after a burst (many
//! connections, many upstream requests in flight) the process stays at its peak RSS even
//! when the connections are gone, because the heap only shrinks from its top and the freed
//! chunks sit between live ones. A periodic check compares the process's resident anonymous
//! memory with what glibc has handed out and, when at least a threshold more is resident,
//! has glibc release its free pages (`malloc_trim`, which also madvises pages inside the
//! heap away). Comparing with resident memory, not with glibc's count of free bytes, keeps a
//! heap whose free pages were already released from being trimmed again and again. Measured on the proxy benchmark after an h2load burst: RSS
//! 28.2 MiB before, 14.4 MiB after one trim. mimalloc as the global allocator was measured
//! instead and was worse (20.7 MiB idle, 27 MiB after the same burst).
//!
//! A trim holds the allocator's locks for milliseconds, so it must not run while traffic
//! flows: the check waits until no request is in flight and none has started for
//! `--memory-trim-idle`, and the trim itself runs on tokio's blocking pool, never on the
//! event loop.
//!
//! With `busypoll`, this is one of the two modules of the crate that use `unsafe`: the two
//! glibc calls, which take no pointers and have no preconditions.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Resident memory beyond what the allocator has handed out that makes a trim worth its
/// cost (a trim takes 0.3–2.5 ms on the benchmark machine and holds the allocator's locks).
pub const TRIM_THRESHOLD: usize = 1024 * 1024;

/// Bytes handed out by the allocator (in use by the program, heap and mmapped blocks).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn allocated_bytes() -> usize {
    // SAFETY: mallinfo2 takes no arguments and only reads allocator state under its locks.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// Bytes handed out by the allocator (not known on this platform).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn allocated_bytes() -> usize {
    0
}

/// Resident anonymous memory of this process (resident minus file-backed pages), from
/// `/proc/self/statm`.
pub fn resident_anon_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut f = statm.split_whitespace().skip(1);
    let resident: usize = f.next()?.parse().ok()?;
    let shared: usize = f.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared) * 4096)
}

/// Resident memory the allocator holds free: resident anonymous memory beyond what is
/// handed out (an estimate: thread stacks and other anonymous mappings count too).
pub fn resident_free_bytes() -> usize {
    resident_anon_bytes()
        .unwrap_or(0)
        .saturating_sub(allocated_bytes())
}

/// Releases free heap pages to the kernel; returns whether any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes a plain size and only touches allocator state under its locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Releases free heap pages to the kernel (no-op on this platform).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Runs `f` on tokio's blocking pool (a thread it starts on demand and retires after a
/// while idle), so the event loop never waits for the allocator.
async fn off_loop<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Every `interval`, trims the heap when the resident memory not in use (freed chunks whose
/// pages are still resident) has grown by at least [`TRIM_THRESHOLD`] over what was left
/// after the last trim (at start: what was there then; anonymous memory that is not heap,
/// such as thread stacks, stays in that floor).
///
/// Both wait for quiet: `idle` says how long the proxy has had no request in flight and
/// none starting (`None` while one is in flight), and nothing happens until that reaches
/// `quiet`. The measurement (`mallinfo2`, tens of microseconds) then runs in place, with
/// no request to delay; a due trim (milliseconds, holding the allocator's locks) runs
/// off the event loop ([`off_loop`]), so a request arriving meanwhile is served. Under
/// constant traffic nothing is trimmed; the memory is returned after the burst. `trimmed`
/// is called for each trim. Runs until `shutdown` turns true.
pub async fn trim_loop(
    interval: Duration,
    quiet: Duration,
    idle: impl Fn() -> Option<Duration>,
    trimmed: impl Fn(),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut floor = resident_free_bytes();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // Wait out traffic: sleep until `quiet` could have passed since the last request
        // started (a request in flight: at least `quiet` more).
        loop {
            let wait = match idle() {
                Some(d) if d >= quiet => break,
                Some(d) => quiet - d,
                None => quiet,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let free = resident_free_bytes();
        if free < floor + TRIM_THRESHOLD {
            floor = floor.min(free);
            continue;
        }
        let started = Instant::now();
        let Some(released) = off_loop(trim).await else {
            return;
        };
        floor = resident_free_bytes();
        trimmed();
        tracing::debug!(
            resident_free_before = free,
            resident_free_after = floor,
            released,
            duration_us = started.elapsed().as_micros() as u64,
            "heap trimmed"
        );
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn trim_returns_freed_heap_pages() {
        // 16 MB in small blocks (below the mmap threshold, so they live in the heap), written
        // so their pages are resident; then a block above them pins the heap's top, so
        // freeing the rest cannot shrink the heap: only a trim returns those pages.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![(i % 255) as u8 + 1; 4000]).collect();
        let pin = vec![1u8; 4000];
        drop(blocks);
        let free = resident_free_bytes();
        assert!(free >= 15_000_000, "{free} bytes resident but not in use");
        let before = rss_bytes();
        assert!(trim(), "malloc_trim released nothing");
        let after = rss_bytes();
        assert!(
            before.saturating_sub(after) >= 8 * 1024 * 1024,
            "RSS {before} before the trim, {after} after"
        );
        assert!(
            resident_free_bytes() < free - 8 * 1024 * 1024,
            "the trim did not lower the resident free estimate"
        );
        drop(pin);
    }
}
