//! A real gRPC client and server (Python grpcio) on the two sides of the proxy: unary and
//! server-streaming calls pass with their trailers, and a call the policy does not allow
//! fails with PERMISSION_DENIED as grpcio reports it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::config;

fn peer() -> std::path::PathBuf {
    common::package_path("tests/grpc_peer.py")
}

/// The grpcio server, stopped when dropped (its standard input closes).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, u16) {
    let mut child = Command::new("python3")
        .arg(peer())
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("grpc server did not start: {line:?}"));
    (Server(child), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_pass_with_trailers_and_a_denied_call_is_permission_denied() {
    let (_server, port) = start_server();
    let cfg = config(format!("127.0.0.1:{port}").parse().unwrap(), &[]);
    let enforcer = membrane_proxy::policy::load(&cfg).unwrap();
    let running = membrane_proxy::start(&cfg, enforcer, None).await.unwrap();

    let out = tokio::process::Command::new("python3")
        .arg(peer())
        .args(["client", &running.addrs.listen.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["echo"]["code"], "OK", "{got}");
    assert_eq!(got["echo"]["body"], "hello", "{got}");
    assert_eq!(got["echo"]["trailers"]["x-trailer"], "seen", "{got}");
    assert_eq!(got["stream"]["code"], "OK", "{got}");
    assert_eq!(
        got["stream"]["bodies"],
        serde_json::json!(["s0", "s1", "s2"]),
        "{got}"
    );
    assert_eq!(got["denied"]["code"], "PERMISSION_DENIED", "{got}");
    running.drain(std::time::Duration::from_millis(100)).await;
}
