//! What the control plane's benchmarks share: the real `membrane-xds` under test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `bin` (a `membrane-xds`) on the source directory `dir`, polled every `poll_ms`, with
/// plaintext xDS (opted in: a loopback-only benchmark), and its gRPC address (the
/// `grpc=` word of its first line on stdout).
pub fn spawn_xds(bin: &Path, dir: &Path, poll_ms: usize) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["--plaintext-xds", "--grpc-addr", "127.0.0.1:0"])
        .args(["--debug-addr", "127.0.0.1:0", "--log", "warn"])
        .args(["--poll-ms", &poll_ms.to_string()])
        .arg("--source-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn membrane-xds");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("membrane-xds's first line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("grpc address")
        .to_string();
    (child, addr)
}
