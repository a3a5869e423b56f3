//! The sink against real files and a real pipe: lines arrive whole and in order, on the
//! timer and at the end, overflow is counted without blocking, rotation is followed.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

fn settings(path: &Path, flush_interval: Duration, max_buffered: usize) -> Settings {
    Settings {
        destination: Destination::File(path.to_owned()),
        flush_interval,
        max_buffered,
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn record(log: &AccessLog, n: u64) {
    log.record(|l| {
        l.str("type", "Request").u64("n", n);
    });
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_line_appears_on_the_timer_and_every_line_at_the_end_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let drops = Drops::default();
    // Room for every line: none is dropped however far the writer falls behind.
    let log = AccessLog::open(
        &settings(&path, Duration::from_millis(50), 64 << 20),
        drops.clone(),
    )
    .unwrap();
    // One line, nothing else: the timer writes it.
    record(&log, 0);
    eventually("the first line is written", || lines(&path).len() == 1);
    // From several threads, more than a block: every line, whole.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let log = log.clone();
            s.spawn(move || (0..5_000).for_each(|i| record(&log, 1 + t * 5_000 + i)));
        }
    });
    // The handle's drop is the process exit: it waits for the writer.
    drop(log);
    let got = lines(&path);
    assert_eq!(drops.overflow.get(), 0);
    assert_eq!(got.len(), 20_001);
    let mut seen: Vec<u64> = got.iter().map(|l| l["n"].as_u64().unwrap()).collect();
    // Each thread's lines in the order it recorded them.
    for t in 0..4u64 {
        let own: Vec<u64> = seen
            .iter()
            .copied()
            .filter(|n| (1 + t * 5_000..1 + (t + 1) * 5_000).contains(n))
            .collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "thread {t} out of order"
        );
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20_001).collect::<Vec<_>>());
}

#[test]
fn flush_writes_what_was_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    // A timer that never fires within the test.
    let log = AccessLog::open(
        &settings(&path, Duration::from_secs(3600), 1 << 20),
        Drops::default(),
    )
    .unwrap();
    (0..3).for_each(|i| record(&log, i));
    assert!(log.flush(Duration::from_secs(5)));
    assert_eq!(lines(&path).len(), 3);
}

#[test]
fn a_stalled_reader_never_blocks_recording_and_overflow_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // A reader that reads nothing for now: the writer blocks once the pipe is full.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let drops = Drops::default();
    let log = AccessLog::open(
        &settings(&path, Duration::from_millis(10), 256 * 1024),
        drops.clone(),
    )
    .unwrap();
    // Far more than the pipe and the buffer hold; this returns (nothing waits on the
    // reader), with lines dropped and counted.
    let recorded = 20_000u64;
    (0..recorded).for_each(|i| record(&log, i));
    let dropped = drops.overflow.get();
    assert!(dropped > 0, "nothing dropped");
    assert!(dropped < recorded, "everything dropped");
    // The reader catches up: every line not counted as dropped arrives, whole.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let want = recorded - dropped;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (got.iter().filter(|&&b| b == b'\n').count() as u64) < want {
        assert!(
            Instant::now() < deadline,
            "only part of the kept lines arrived"
        );
        match reader.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let text = String::from_utf8(got).unwrap();
    assert_eq!(text.lines().count() as u64, want);
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    assert_eq!(drops.write_failed.get(), 0);
}

#[test]
fn a_rotated_file_is_followed_and_a_failed_reopen_keeps_the_open_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let log = AccessLog::open(
        &settings(&path, Duration::from_millis(10), 1 << 20),
        Drops::default(),
    )
    .unwrap();
    record(&log, 0);
    assert!(log.flush(Duration::from_secs(5)));
    // logrotate's `create`: moved away, then the proxy told (SIGHUP).
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    record(&log, 1);
    assert!(log.flush(Duration::from_secs(5)));
    assert_eq!(lines(&rotated).len(), 1);
    assert_eq!(lines(&path).len(), 1);
    // Moved away without a signal: noticed within a second or so.
    std::fs::rename(&path, &rotated).unwrap();
    eventually("lines go to the new file", || {
        record(&log, 2);
        log.flush(Duration::from_secs(5));
        !lines(&path).is_empty()
    });
    // A reopen that fails (the directory is gone) keeps writing to the open file.
    let moved_dir = tempfile::tempdir().unwrap();
    let kept = moved_dir.path().join("d");
    std::fs::rename(dir.path(), &kept).unwrap();
    log.reopen();
    let before = lines(&kept.join("access.log")).len();
    record(&log, 3);
    assert!(log.flush(Duration::from_secs(5)));
    assert_eq!(lines(&kept.join("access.log")).len(), before + 1);
}

#[test]
fn a_path_that_cannot_be_opened_is_named() {
    let e = AccessLog::open(
        &settings(
            Path::new("/nonexistent-dir/access.log"),
            Duration::from_secs(1),
            1 << 20,
        ),
        Drops::default(),
    )
    .err()
    .unwrap();
    let msg = e.to_string();
    assert!(
        msg.starts_with("--access-log-path /nonexistent-dir/access.log: "),
        "{msg}"
    );
}
