//! Operator-facing behaviour: the admin/metrics/readiness endpoints, policy swaps, and the
//! real binary's access log, SIGTERM drain, SIGHUP reload and startup errors.

#[path = "../common/mod.rs"]
mod common;

mod access_log;
mod binary;
mod endpoints;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

async fn get(url: &str) -> (u16, String) {
    let (code, _, body) = curl(&[url]).await;
    (code, body)
}

/// The real binary, with its stdout (access log) and stderr (diagnostics) captured.
struct Binary {
    child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    listen: String,
    admin: String,
}

/// A test that fails half way must not leave the proxy running.
impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_binary(policy: &std::path::Path, backend: std::net::SocketAddr, extra: &[&str]) -> Binary {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_membrane-proxy"))
        .arg("standalone")
        .args(LOOPBACK_LISTENERS)
        .args([
            "--upstream",
            &backend.to_string(),
            "--endpoint-labels",
            "k8s:app=backend",
        ])
        .arg("--policy")
        .arg(policy)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("membrane-proxy starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("membrane-proxy started") {
                let _ = addr_tx.send(line.clone());
            }
            eprintln!("proxy: {line}");
        }
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started: serde_json::Value = serde_json::from_str(
        &addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("startup log line"),
    )
    .unwrap();
    Binary {
        child,
        stdout: rx,
        listen: started["listen"].as_str().unwrap().to_owned(),
        admin: started["admin"].as_str().unwrap().to_owned(),
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// Waits, off the async runtime, up to `within` for the binary to exit: its exit status,
/// or `None` when it had to be killed.
async fn exited(mut b: Binary, within: Duration) -> Option<ExitStatus> {
    tokio::task::spawn_blocking(move || wait_exit(&mut b.child, within))
        .await
        .unwrap()
}

/// SIGTERM, then a clean exit (status 0) within `within`.
async fn terminate(b: Binary, within: Duration) {
    signal(&b.child, "TERM");
    let status = exited(b, within).await;
    assert!(status.expect("exited after SIGTERM").success());
}

/// `membrane-proxy standalone` on loopback ports, an upstream nothing listens on and
/// `policy`, then `extra`: for the startup errors, which come before any traffic.
fn standalone(policy: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_membrane-proxy"));
    c.arg("standalone")
        .args(LOOPBACK_LISTENERS)
        .args([
            "--upstream",
            "127.0.0.1:1",
            "--endpoint-labels",
            "k8s:app=backend",
        ])
        .arg("--policy")
        .arg(policy)
        .args(extra);
    c
}

/// Voluntary context switches (sleeps) and CPU ticks of every thread of a process.
fn sleeps_and_ticks(pid: u32) -> (u64, u64) {
    let mut sleeps = 0;
    let mut ticks = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // utime and stime are fields 14 and 15; the name (field 2) ends with ')'.
        let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = after_name.split_whitespace().collect();
        if f.len() > 12 {
            ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    (sleeps, ticks)
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn procfs_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Connects and sends `bytes`; true if the listener closed the connection within `d`.
async fn cut_within(addr: std::net::SocketAddr, bytes: &[u8], d: Duration) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    closed_within(&mut s, d).await
}
