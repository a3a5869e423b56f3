//! The real binary's access log as a user runs it: to a file, every line written by the
//! time the process exits on SIGTERM; a reader that stalls never holds a request up, and
//! what could not be kept is counted; a rotated file is reopened on SIGHUP.

use std::os::unix::fs::OpenOptionsExt;

use super::*;

/// `n` GETs of `/v1/x` on one keep-alive connection; their status codes.
async fn requests(listen: &str, n: usize) -> Vec<String> {
    let url = format!("http://{listen}/v1/x");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), n).collect();
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
        ])
        .args(&urls)
        .output()
        .await
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The binary in front of a backend of its own, its access log going to `path`, with
/// `extra` flags.
async fn logging_to(path: &std::path::Path, extra: &[&str]) -> Binary {
    let backend = start_backend().await;
    let mut args = vec!["--access-log-path", path.to_str().unwrap()];
    args.extend(extra);
    spawn_binary(&policy_file(backend.port()), backend, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_log_line_is_in_the_file_when_the_process_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    // A timer that never fires: what is not a full block yet is written at exit only.
    let b = logging_to(&file, &["--access-log-flush-interval", "60m"]).await;
    let codes = requests(&b.listen, 300).await;
    assert_eq!(
        codes.iter().filter(|c| *c == "200").count(),
        300,
        "{codes:?}"
    );
    terminate(b, Duration::from_secs(10)).await;
    let r = records(&file);
    assert_eq!(r.len(), 600, "a Request and a Response record per request");
    let responses = r.iter().filter(|r| r["type"] == "Response").count();
    assert_eq!(responses, 300);
    assert!(r
        .iter()
        .all(|r| r["path"] == "/v1/x" && r["target"] == "access"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_access_log_reader_holds_no_request_up_and_lost_lines_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Opened for reading, never read: the proxy's writer blocks once the pipe is full.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let b = logging_to(&fifo, &["--access-log-max-buffered", "65536"]).await;
    // About 650 KB of lines against 64 KiB of pipe and 64 KiB of buffer.
    let codes = requests(&b.listen, 1000).await;
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), 1000);
    let (_, metrics) = get(&format!("http://{}/stats/prometheus", b.admin)).await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("membrane_access_log_dropped_total{reason=\"overflow\"} "))
        .unwrap_or_else(|| panic!("no overflow counter: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0, "nothing counted as dropped");
    assert!(dropped < 2000, "every line dropped: {dropped}");
    // Nothing waits on the reader at exit either (bounded).
    terminate(b, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_access_log_file_is_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let b = logging_to(&file, &["--access-log-flush-interval", "20ms"]).await;
    assert_eq!(requests(&b.listen, 1).await, ["200"]);
    let file2 = file.clone();
    membrane_test_support::eventually(Duration::from_secs(10), "the first lines", || {
        let n = records(&file2).len();
        async move { (n == 2).then_some(()) }
    })
    .await;
    // logrotate's default: move the file away, then signal.
    std::fs::rename(&file, &rotated).unwrap();
    signal(&b.child, "HUP");
    // The signal and the request race: the reopen may come after the request's lines.
    let file2 = file.clone();
    let listen = b.listen.clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let counted = sent.clone();
    membrane_test_support::eventually(Duration::from_secs(10), "lines in the new file", || {
        let (listen, file, sent) = (listen.clone(), file2.clone(), counted.clone());
        async move {
            assert_eq!(requests(&listen, 1).await, ["200"]);
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            (!records(&file).is_empty()).then_some(())
        }
    })
    .await;
    terminate(b, Duration::from_secs(10)).await;
    // Every line is in one file or the other.
    let (old, new) = (records(&rotated), records(&file));
    assert!(
        old.len() >= 2 && !new.is_empty(),
        "{} {}",
        old.len(),
        new.len()
    );
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(old.len() + new.len(), 2 * sent);
}

#[test]
fn an_access_log_path_that_cannot_be_opened_stops_startup_naming_it() {
    let out = standalone(
        &policy_file(1),
        &["--access-log-path", "/nonexistent-dir/access.log"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--access-log-path /nonexistent-dir/access.log: No such file or directory"),
        "{err}"
    );
}
