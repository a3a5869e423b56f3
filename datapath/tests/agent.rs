//! Privileged: `membrane-agent attach` with Istio's capture annotations from
//! a downward API file. The exclusions reach the maps and the traffic; a bad
//! value is refused naming the annotation and the value, and the settings in
//! force stay as they were; re-attaching says what it changed. And
//! `membrane-agent run`'s unix socket against clients that send an endless
//! line or hold every place: each is refused with an error line, and the
//! agent keeps serving the others.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Env, AGENT};
use membrane_datapath::{Datapath, InboundPorts};
use membrane_test_support::ChildGuard;

fn agent(env: &Env, args: &[&str]) -> Output {
    let annotations = annotations_path(env);
    Command::new(&*AGENT)
        .arg("--bpffs")
        .arg(&env.bpffs)
        .args([
            "attach",
            "--capture",
            "--proxy-uid",
            "4294967294",
            "--cgroup",
        ])
        .arg(&env.cgroup)
        .arg("--pod-annotations")
        .arg(&annotations)
        .args(args)
        .output()
        .unwrap()
}

fn annotations_path(env: &Env) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.annotations", env.name))
}

fn write_annotations(env: &Env, text: &str) {
    std::fs::write(annotations_path(env), text).unwrap();
}

#[test]
fn annotations_program_capture_and_bad_values_change_nothing() {
    let mut env = Env::new();
    let _cleanup = Cleanup(annotations_path(&env));
    env.add_pod_iface(&["10.77.0.1/24", "10.78.0.1/24"]);
    env.server(&["hello", "--listen", "10.77.0.1:8080"]);
    env.server(&["hello", "--listen", "10.77.0.1:8081"]);
    env.server(&["hello", "--listen", "10.78.0.1:8080"]);
    write_annotations(
        &env,
        "kubernetes.io/config.source=\"api\"\n\
         traffic.sidecar.istio.io/excludeOutboundPorts=\"8081\"\n\
         traffic.sidecar.istio.io/excludeOutboundIPRanges=\"10.78.0.0/16\"\n\
         traffic.sidecar.istio.io/excludeInboundPorts=\"8443\"\n",
    );
    let out = agent(&env, &[]);
    assert!(out.status.success(), "{out:?}");
    let dp = Datapath::open(&env.bpffs).unwrap();
    let good = dp.settings().unwrap();
    let c = good.capture.as_ref().unwrap();
    assert_eq!(c.exclude_ports, vec![8081]);
    assert_eq!(c.exclude_cidrs, vec!["10.78.0.0/16".parse().unwrap()]);
    assert_eq!(
        good.inbound_ports,
        InboundPorts::AllExcept(vec![8443, 15020, 15021, 15090])
    );

    env.server(&["capture-proxy", "--listen", "[::]:15001", "--mark", "1337"]);
    let fetch = |a: &str| env.client(&["fetch", "--connect", a]);
    assert!(fetch("10.77.0.1:8080").starts_with("proxy orig=10.77.0.1:8080\n"));
    assert_eq!(fetch("10.77.0.1:8081"), "hello from 10.77.0.1:8081\n");
    assert_eq!(fetch("10.78.0.1:8080"), "hello from 10.78.0.1:8080\n");

    // A bad value: refused, named, and the settings in force are untouched.
    write_annotations(
        &env,
        "traffic.sidecar.istio.io/excludeOutboundPorts=\"9000\"\n\
         traffic.sidecar.istio.io/includeOutboundIPRanges=\"10.0.0.0/8,10.300.0.0/16\"\n",
    );
    let out = agent(&env, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("traffic.sidecar.istio.io/includeOutboundIPRanges")
            && err.contains("\"10.300.0.0/16\" is not an IP range"),
        "{err}"
    );
    assert_eq!(dp.settings().unwrap(), good, "nothing half-applied");
    assert_eq!(fetch("10.77.0.1:8081"), "hello from 10.77.0.1:8081\n");

    // Re-attaching the same cgroup keeps it attached and says what changed.
    write_annotations(&env, "traffic.sidecar.istio.io/excludeOutboundPorts=\"\"\n");
    let out = agent(&env, &[]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("already attached"), "{said}");
    assert!(
        said.contains("settings changed: capture:") && said.contains("\"exclude_ports\":[8081]"),
        "{said}"
    );
    assert!(fetch("10.77.0.1:8081").starts_with("proxy orig=10.77.0.1:8081\n"));
    // Unchanged settings: nothing reported as changed.
    let out = agent(&env, &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("settings changed"), "{said}");
}

/// Removes the annotations file however the test ends.
struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `request` and reads the reply until the agent closes (at most 3 s);
/// `None` when it kept the connection open and silent.
fn ask(socket: &std::path::Path, request: &[u8]) -> Option<String> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // A refused line is not read to its end: writing the rest may fail.
    let _ = s.write_all(request);
    // The agent closes with the rest of a refused line unread, so the read
    // after its reply may fail (ECONNRESET); the reply counts.
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => break,
            Err(_) => return None,
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// [`ask`] again every 20 ms until `done` holds for the reply, for at most 5 s; the last
/// reply. The agent frees a client's place a moment after the client closes, so a client
/// told "too many clients; try again" does so.
fn ask_until(
    socket: &std::path::Path,
    request: &[u8],
    done: impl Fn(Option<&str>) -> bool,
) -> Option<String> {
    let start = Instant::now();
    loop {
        let r = ask(socket, request);
        if done(r.as_deref()) || start.elapsed() > Duration::from_secs(5) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error_of(reply: &Option<String>) -> String {
    let line = reply
        .as_deref()
        .unwrap_or_else(|| panic!("no reply: {reply:?}"));
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {v}"))
        .to_owned()
}

#[test]
fn api_socket_refuses_overlong_lines_and_clients_past_the_cap() {
    let env = Env::new();
    let socket = std::env::temp_dir().join(format!("{}.sock", env.name));
    let _cleanup = Cleanup(socket.clone());
    // DatapathSettings as environment variables, so an older agent still starts.
    // Declared after the `Env` so it goes first and the cgroup can be removed.
    let _agent = ChildGuard(
        Command::new(&*AGENT)
            .arg("--bpffs")
            .arg(&env.bpffs)
            .arg("--socket")
            .arg(&socket)
            .args(["--node", "n1", "run", "--interval", "3600", "--cgroup"])
            .arg(&env.cgroup)
            .env("MEMBRANE_AGENT_MAX_REQUEST_BYTES", "256")
            .env("MEMBRANE_AGENT_MAX_CLIENTS", "2")
            .env("MEMBRANE_AGENT_REQUEST_TIMEOUT_MS", "1000")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no agent socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = b"{\"request\":\"status\"}\n";

    // 64 KiB without a newline: an error naming the limit, then closed.
    let reply = ask(&socket, &vec![b'a'; 64 << 10]);
    assert_eq!(
        error_of(&reply),
        "request longer than 256 bytes; expected one JSON line"
    );
    // The others are served as before. The clients just gone (the start-up probes, the
    // overlong line) hold their places until the agent has seen them close, a moment
    // later: a client told "too many clients; try again" asks again (bounded).
    let reply = ask_until(&socket, status, |r| {
        r.is_some_and(|r| !r.contains("too many clients"))
    })
    .expect("status");
    assert!(reply.contains("\"node\":\"n1\""), "{reply}");

    // A line trickled a byte every 300 ms: cut at the 1 s deadline for the
    // whole line, however often bytes come.
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        if slow.write_all(b" ").is_err() {
            break;
        }
        let mut chunk = [0u8; 512];
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "still reading after {took:?}"
    );
    assert_eq!(
        error_of(&Some(String::from_utf8_lossy(&answer).into_owned())),
        "no complete request line within 1s"
    );

    // Two monitor streams take both places; a third client is told so.
    let mut monitors = Vec::new();
    for _ in 0..2 {
        let mut m = UnixStream::connect(&socket).unwrap();
        m.write_all(b"{\"request\":\"monitor\"}\n").unwrap();
        monitors.push(m);
    }
    // The agent takes a place when it accepts a client, and a client that just left frees
    // its own a moment after closing: ask until the monitors are seen (bounded).
    let reply = ask_until(&socket, status, |r| {
        r.is_some_and(|r| r.contains("too many clients"))
    });
    assert_eq!(
        error_of(&reply),
        "too many clients: the agent serves at most 2 at once; try again"
    );
    drop(monitors);
    let status_reply = ask_until(&socket, status, |r| {
        r.is_some_and(|r| !r.contains("too many clients"))
    })
    .expect("status");
    let v: serde_json::Value = serde_json::from_str(status_reply.trim()).unwrap();
    assert_eq!(v["api"]["refused_too_long"], 1, "{v}");
    // At least the one above; retries while the agent noticed are too.
    assert!(v["api"]["refused_busy"].as_u64().unwrap() >= 1, "{v}");
}
