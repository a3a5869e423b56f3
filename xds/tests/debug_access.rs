//! The debug endpoint (15014) bound to a non-loopback address: the views
//! that disclose pods' policy (config dumps, syncz, adsz, flightz, ...)
//! answer 403 to a client that is not on loopback, `/metrics` answers it.
//!
//! Privileged (root): the control plane and curl run in a network namespace
//! of the test's own, where a veth end holds 10.99.0.1 (a non-loopback
//! address that is still local); the namespace is deleted on drop.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// A network namespace with 10.99.0.1/24 on a veth pair; deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("mb-dbg-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = Netns(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ]);
        ip(&["-n", &name, "addr", "add", "10.99.0.1/24", "dev", "v0"]);
        ip(&["-n", &name, "link", "set", "v0", "up"]);
        ip(&["-n", &name, "link", "set", "v1", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The status curl gets for `url`, connecting from `src`, inside `ns`.
fn status_from(ns: &Netns, src: &str, url: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", "--interface", src, url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_non_loopback_debug_listener_serves_config_dumps_to_loopback_only() {
    let ns = Netns::new();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("cluster.yaml"), starwars::pods(8080)).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(env!("CARGO_BIN_EXE_membrane-xds"))
        .args(["--plaintext-xds", "--grpc-addr", "127.0.0.1:0"])
        .args(["--debug-addr", "0.0.0.0:0", "--poll-ms", "50"])
        .arg("--source-dir")
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn membrane-xds in the namespace");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    // `ip netns exec` execs the binary: this pid is membrane-xds'.
    let _xds = ChildGuard(child);
    let port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("debug="))
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no debug= in {line:?}"))
        .port();
    let node = "sidecar~127.0.0.2~deathstar-1.default~default.svc.cluster.local";
    let views = [
        format!("/debug/config_dump?proxyID={node}"),
        "/debug/syncz".to_string(),
        "/debug/adsz".to_string(),
        "/debug/flightz".to_string(),
        "/debug/stalez".to_string(),
        "/debug/sourcez".to_string(),
    ];
    for v in &views {
        let local = status_from(&ns, "127.0.0.1", &format!("http://127.0.0.1:{port}{v}"));
        assert_eq!(local, "200", "{v} from loopback");
        let remote = status_from(&ns, "10.99.0.1", &format!("http://10.99.0.1:{port}{v}"));
        assert_eq!(remote, "403", "{v} from 10.99.0.1");
    }
    let metrics = status_from(
        &ns,
        "10.99.0.1",
        &format!("http://10.99.0.1:{port}/metrics"),
    );
    assert_eq!(metrics, "200", "/metrics stays open");
}
