//! Bounded waits on a condition: a test waits for what it needs to see, for at most a
//! limit, never for a fixed moment.

use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`; panics naming
/// `what` when the limit passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` every `every` until it returns `Some`, for at most `limit`; panics naming
/// `what` when the limit passes. The blocking twin of [`eventually`].
pub fn wait_until<T>(
    limit: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}
