//! Hot restart: the real `membrane-proxy` binary replaced by new processes under load
//! (`--handover-socket`), with a load generator counting every failed request. Three
//! upgrades in a row lose none (HTTP/1.1 keep-alive and per-request connections, HTTP/2), each process serves, a denied request stays denied; a new
//! process that cannot start leaves the running one serving.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use membrane_test_support::{eventually, wait_until, ChildGuard};

/// One membrane-proxy process and what its output tells.
struct Proc {
    child: ChildGuard,
    /// The fields of its "membrane-proxy started" log line.
    started: serde_json::Value,
    /// Requests it answered (its access log's Response and Denied entries).
    served: Arc<AtomicU64>,
    /// Its diagnostics, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn addr(&self, key: &str) -> String {
        self.started[key].as_str().unwrap().to_owned()
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit on its own; its status.
    fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_until(
            within,
            Duration::from_millis(50),
            "the process to exit",
            || child.try_wait().unwrap(),
        )
    }
}

/// Starts membrane-proxy with `listeners` (`--listen ADDR ...`), the handover socket `sock`
/// and `policy`; returns it once it logged its start, or its exit status and stderr when it
/// exited first.
fn spawn(
    backend: SocketAddr,
    policy: &Path,
    sock: &Path,
    listeners: &[String],
) -> Result<Proc, (std::process::ExitStatus, String)> {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_membrane-proxy"))
            .arg("standalone")
            .args(listeners)
            .args(["--upstream", &backend.to_string()])
            .args(["--endpoint-labels", "k8s:app=backend"])
            .arg("--policy")
            .arg(policy)
            .arg("--handover-socket")
            .arg(sock)
            .args(["--drain-timeout", "5s", "--access-log", "true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("membrane-proxy starts"),
    );
    let stderr_lines = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, started_rx) = mpsc::channel();
    let err = BufReader::new(child.stderr.take().unwrap());
    let lines = stderr_lines.clone();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if line.contains("membrane-proxy started") {
                let _ = started_tx.send(line.clone());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let served = Arc::new(AtomicU64::new(0));
    let out = BufReader::new(child.stdout.take().unwrap());
    let count = served.clone();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if line.contains(r#""type":"Response""#) || line.contains(r#""type":"Denied""#) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(line) = started_rx.recv_timeout(Duration::from_millis(50)) {
            return Ok(Proc {
                child,
                started: serde_json::from_str(&line).unwrap(),
                served,
                stderr: stderr_lines,
            });
        }
        if let Some(status) = child.try_wait().unwrap() {
            // Let the reader thread take in the last lines.
            let text = wait_until(
                Duration::from_secs(5),
                Duration::from_millis(20),
                "stderr of the exited process",
                || {
                    let l = stderr_lines.lock().unwrap();
                    (!l.is_empty()).then(|| l.join("\n"))
                },
            );
            return Err((status, text));
        }
        assert!(
            Instant::now() < deadline,
            "membrane-proxy never logged its start"
        );
    }
}

/// The first process's listener flags (ephemeral ports).
fn fresh_listeners() -> Vec<String> {
    LOOPBACK_LISTENERS.iter().map(|s| s.to_string()).collect()
}

/// A successor's listener flags: the addresses `p` listens on, as an operator restarting
/// with the same configuration would give them.
fn same_listeners(p: &Proc) -> Vec<String> {
    ["listen", "admin", "metrics", "health"]
        .iter()
        .flat_map(|k| [format!("--{k}"), p.addr(k)])
        .collect()
}

/// What the load generator saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }
}

/// A client connection to the proxy.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// hyper's pooling client: as every HTTP/2 client, it opens a new connection for the
    /// next request once the server shut one down (GOAWAY), and resends a request that was
    /// queued for the closing connection but never sent on it.
    H2(
        Box<
            hyper_util::client::legacy::Client<
                hyper_util::client::legacy::connect::HttpConnector,
                Full<Bytes>,
            >,
        >,
    ),
}

/// How a client uses its connections.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// HTTP/1.1, request after request on one connection until a response says
    /// `Connection: close`.
    KeepAlive,
    /// HTTP/1.1, one connection per request.
    PerRequest,
    /// HTTP/2 (prior knowledge), streams on one connection until it is shut down (GOAWAY),
    /// then on a new one.
    H2,
}

/// One request and its check: every 8th a PUT the policy denies (403, as before any
/// upgrade), the others a POST it allows whose body must come back whole. `Ok(close)`: the
/// response asked to close the connection.
async fn exchange(send: &mut Sender, addr: &str, n: u64) -> Result<bool, String> {
    let denied = n.is_multiple_of(8);
    let body = format!("landing {n} {}", "x".repeat((n % 97) as usize * 40));
    let path = if denied {
        "/v1/exhaust-port"
    } else {
        "/v1/request-landing"
    };
    let req = http::Request::builder().method(if denied { "PUT" } else { "POST" });
    let resp = match send {
        Sender::H1(s) => {
            let req = req.uri(path).header("host", addr);
            s.send_request(req.body(Full::new(Bytes::from(body.clone()))).unwrap())
                .await
                .map_err(|e| format!("request {n}: {e:?}"))
        }
        Sender::H2(s) => {
            let req = req.uri(format!("http://{addr}{path}"));
            let req = req.body(Full::new(Bytes::from(body.clone()))).unwrap();
            let mut attempt = 0;
            loop {
                match s.request(req.clone()).await {
                    // A stream the draining proxy's GOAWAY (NO_ERROR) left above its last
                    // stream id was never processed; an HTTP/2 client sends it again on a
                    // new connection (RFC 9113, 8.7), as Envoy and Go's client do. hyper's
                    // pooling client resends only what it never wrote, so the test does
                    // the rest. Anything else, or a second refusal, is a failure.
                    Err(e) if attempt < 2 && refused_unprocessed(&e) => attempt += 1,
                    r => break r.map_err(|e| format!("request {n}: {e:?}")),
                }
            }
        }
    }
    .map_err(|e| format!("request {n}: {e}"))?;
    let status = resp.status();
    let close = resp
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let got = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("request {n}: body: {e:?}"))?
        .to_bytes();
    match (denied, status.as_u16()) {
        (true, 403) => Ok(close),
        (false, 200) if got == body.as_bytes() => Ok(close),
        (false, 200) => Err(format!(
            "request {n}: body of {} bytes, sent {}",
            got.len(),
            body.len()
        )),
        (_, s) => Err(format!("request {n}: status {s} (denied: {denied})")),
    }
}

/// The error is the peer's graceful GOAWAY (NO_ERROR) refusing a stream it never processed.
fn refused_unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        cause = c.source();
    }
    false
}

async fn connect(addr: &str, mode: Mode) -> Result<Sender, String> {
    if mode == Mode::H2 {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http();
        return Ok(Sender::H2(Box::new(client)));
    }
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = TokioIo::new(s);
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(Sender::H1(send))
}

/// A client in `mode`, until `stop`, for at most two minutes.
async fn client(addr: String, mode: Mode, tally: Arc<Tally>, stop: Arc<AtomicBool>, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = seed * 1_000_000;
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        n += 1;
        let mut send = match conn.take() {
            Some(s) => s,
            None => match connect(&addr, mode).await {
                Ok(s) => s,
                Err(e) => {
                    tally.fail(e);
                    continue;
                }
            },
        };
        match exchange(&mut send, &addr, n).await {
            Ok(close) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if mode != Mode::PerRequest && !close {
                    conn = Some(send);
                }
            }
            Err(e) => tally.fail(e),
        }
    }
}

struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Five HTTP/1.1 keep-alive clients, two that open a connection per request and two on
/// HTTP/2.
fn start_load(addr: &str) -> Load {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let modes = [
        [Mode::KeepAlive; 5].as_slice(),
        &[Mode::PerRequest; 2],
        &[Mode::H2; 2],
    ]
    .concat();
    let tasks = modes
        .into_iter()
        .zip(0..)
        .map(|(mode, i)| {
            tokio::spawn(client(
                addr.to_owned(),
                mode,
                tally.clone(),
                stop.clone(),
                i,
            ))
        })
        .collect();
    Load { tally, stop, tasks }
}

impl Load {
    /// Waits until `more` requests beyond the current count have succeeded.
    async fn progress(&self, more: u64, what: &str) {
        let target = self.tally.ok.load(Ordering::Relaxed) + more;
        eventually(Duration::from_secs(30), what, || async {
            (self.tally.ok.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await
    }

    /// Stops the clients; (succeeded, failed, the first failures).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let t = &self.tally;
        (
            t.ok.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
            t.first_failures.lock().unwrap().clone(),
        )
    }
}

async fn restart_epoch(admin: &str) -> Option<u64> {
    let (status, _, body) = curl(&[&format!("http://{admin}/server_info")]).await;
    if status != 200 {
        return None;
    }
    let info: serde_json::Value = serde_json::from_str(&body).ok()?;
    info["command_line_options"]["restart_epoch"].as_u64()
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("proxy-handover.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_upgrades_under_load_fail_no_request() {
    let backend = start_backend().await;
    let policy = policy_file(backend.port());
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(&dir);
    let first =
        spawn(backend, &policy, &sock, &fresh_listeners()).unwrap_or_else(|e| panic!("{e:?}"));
    use std::os::unix::fs::PermissionsExt;
    let meta = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "the handover socket",
        || std::fs::metadata(&sock).ok(),
    );
    let mode = meta.permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the handover socket is for its owner only"
    );
    let listen = first.addr("listen");
    let admin = first.addr("admin");
    assert_eq!(restart_epoch(&admin).await, Some(0));
    let load = start_load(&listen);
    load.progress(300, "requests through the first process")
        .await;

    let mut procs = vec![first];
    for epoch in 1..=3u64 {
        let old = procs.last_mut().unwrap();
        let args = same_listeners(old);
        let new = spawn(backend, &policy, &sock, &args)
            .unwrap_or_else(|(s, err)| panic!("epoch {epoch} did not start ({s}): {err}"));
        assert_eq!(new.started["restart_epoch"], epoch, "{}", new.log());
        assert_eq!(new.addr("listen"), listen);
        let status = old.exit_status(Duration::from_secs(15));
        assert!(
            status.success(),
            "epoch {} exited with {status}: {}",
            epoch - 1,
            old.log()
        );
        assert!(
            old.log().contains("handed over; draining"),
            "epoch {} did not drain after a handover: {}",
            epoch - 1,
            old.log()
        );
        // Only the new process answers the admin port now.
        assert_eq!(restart_epoch(&admin).await, Some(epoch), "{}", new.log());
        procs.push(new);
        load.progress(300, &format!("requests through epoch {epoch}"))
            .await;
    }
    let last = procs.last().unwrap();
    eventually(
        Duration::from_secs(10),
        "the last process's access log",
        || async { (last.served.load(Ordering::Relaxed) > 0).then_some(()) },
    )
    .await;
    let (ok, failed, failures) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across three upgrades: {failures:#?}",
        ok + failed
    );
    let served: Vec<u64> = procs
        .iter()
        .map(|p| p.served.load(Ordering::Relaxed))
        .collect();
    assert!(
        served.iter().all(|&n| n > 0),
        "every process serves some of the load: {served:?}"
    );
    assert!(ok >= 1200, "{ok} requests");
    // The policy in force is the same: still denied, still allowed.
    let put = curl(&["-X", "PUT", &format!("http://{listen}/v1/exhaust-port")]).await;
    assert_eq!(put.0, 403);
    let get_ok = curl(&[&format!("http://{listen}/v1/x")]).await;
    assert_eq!(get_ok.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_cannot_start_leaves_the_running_proxy_serving() {
    let backend = start_backend().await;
    let policy = policy_file(backend.port());
    let dir = tempfile::tempdir().unwrap();
    let sock = socket_path(&dir);
    let mut first =
        spawn(backend, &policy, &sock, &fresh_listeners()).unwrap_or_else(|e| panic!("{e:?}"));
    let listen = first.addr("listen");
    let admin = first.addr("admin");
    let load = start_load(&listen);
    load.progress(200, "requests through the first process")
        .await;

    // A policy the new version refuses: it never asks for the sockets.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace(&format!("\"{}\"", backend.port()), "\"99999\""),
    )
    .unwrap();
    let (status, err) = match spawn(backend, &bad, &sock, &same_listeners(&first)) {
        Ok(p) => panic!("started with an invalid policy: {}", p.log()),
        Err(e) => e,
    };
    assert!(!status.success());
    assert!(
        err.contains("spec.ingress[0].toPorts[0].ports[0].port"),
        "{err}"
    );
    load.progress(200, "requests after the refused policy")
        .await;

    // A process configured for another listener receives the sockets, refuses to take
    // them over and exits: its copies go, the running proxy's queue stays.
    let other = ["--listen", "127.0.0.2:0", "--admin", "127.0.0.1:0"]
        .iter()
        .chain(&LOOPBACK_LISTENERS[4..])
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    let (status, err) = match spawn(backend, &policy, &sock, &other) {
        Ok(p) => panic!("took over another proxy's listeners: {}", p.log()),
        Err(e) => e,
    };
    assert!(!status.success());
    assert!(err.contains("not taking it over"), "{err}");
    load.progress(200, "requests after the refused handover")
        .await;
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the running proxy exited: {}",
        first.log()
    );
    assert_eq!(restart_epoch(&admin).await, Some(0));

    // The running proxy still hands over to a good successor.
    let next =
        spawn(backend, &policy, &sock, &same_listeners(&first)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(next.started["restart_epoch"], 1);
    assert!(
        first.exit_status(Duration::from_secs(15)).success(),
        "{}",
        first.log()
    );
    load.progress(200, "requests through the successor").await;
    let (ok, failed, failures) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {failures:#?}",
        ok + failed
    );
    assert!(
        next.served.load(Ordering::Relaxed) > 0 || {
            // The access log is written by a background thread: wait for it.
            eventually(
                Duration::from_secs(10),
                "the successor's access log",
                || async { (next.served.load(Ordering::Relaxed) > 0).then_some(()) },
            )
            .await;
            true
        }
    );
}
