//! `membrane monitor` against running `membrane-agent`s: each agent attached to a cgroup of
//! this test's own, with the pod's connects made inside a network namespace of its own (root
//! only, as CI runs). Two agents stand in for two nodes. Everything (agents, monitors,
//! cgroups, pins, namespaces, sockets) is removed on drop, also when a test fails.

use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use membrane_datapath::{cgroup2_mount, ensure_bpffs, Datapath};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);
const POD: u32 = 4242;
const SERVER: u32 = 5151;

/// The pod's egress rule for TCP connects to SERVER on `port`.
fn egress(port: u16, verdict: MapVerdict) -> PolicyRule {
    PolicyRule {
        direction: Direction::Egress,
        remote_identity: SERVER,
        proto: 6,
        ports: (port, port),
        verdict,
    }
}

/// `membrane-agent`, a binary of another package (membrane-agent), so Cargo gives this
/// test no `CARGO_BIN_EXE_` for it: a workspace build (`make test`'s `cargo build
/// --workspace --bins`, or any `cargo test`/`nextest run --workspace`, which builds the
/// datapath's binaries for its own tests) puts it next to `membrane`. Building it from
/// inside the test would race the build that runs the test, so a missing binary is an
/// error that says how to get it.
fn agent_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_membrane")).with_file_name("membrane-agent");
    assert!(
        bin.exists(),
        "{} missing: build the workspace's binaries first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// One "node": a cgroup, a netns, a pin directory, an agent socket and the processes.
struct Node {
    cgroup: PathBuf,
    bpffs: PathBuf,
    netns: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(dp) = Datapath::open(&self.bpffs) {
            let _ = dp.detach(&self.cgroup);
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
        for _ in 0..100 {
            if !self.cgroup.exists() || std::fs::remove_dir(&self.cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    fn new() -> Self {
        let name = format!(
            "membrane-mon-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let n = Node {
            cgroup: cgroup2_mount().expect("a cgroup2 mount").join(&name),
            bpffs: PathBuf::from("/sys/fs/bpf").join(&name),
            netns: name.clone(),
            dir: std::env::temp_dir().join(&name),
            children: Vec::new(),
        };
        ensure_bpffs(&n.bpffs).unwrap();
        std::fs::create_dir(&n.cgroup).unwrap();
        std::fs::create_dir_all(&n.dir).unwrap();
        for args in [
            vec!["netns", "add", &n.netns],
            vec!["-n", &n.netns, "link", "set", "lo", "up"],
        ] {
            assert!(Command::new("ip").args(&args).status().unwrap().success());
        }
        n
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Start `membrane-agent run` with enforcement on; decisions: 9001 allowed, 9002 denied.
    fn start_agent(&mut self, node: &str) {
        self.start_agent_with(node, &[]);
    }

    fn start_agent_with(&mut self, node: &str, extra: &[&str]) {
        let child = Command::new(agent_bin())
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(self.socket())
            .args(["--node", node, "run", "--interval", "3600", "--cgroup"])
            .arg(&self.cgroup)
            .args(["--policy-enforce", "--pod-identity", &POD.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        wait_for(
            || UnixStream::connect(self.socket()).is_ok(),
            "the agent's socket",
        );
        let dp = Datapath::open(&self.bpffs).unwrap();
        dp.sync_ipcache(&[("127.0.0.1/32".parse().unwrap(), SERVER)])
            .unwrap();
        dp.sync_policy(&[
            egress(9001, MapVerdict::Allow),
            egress(9002, MapVerdict::Deny),
        ])
        .unwrap();
    }

    /// SIGKILL the agents started so far (its socket file stays behind, stale).
    fn kill_agents(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn status(&self) -> serde_json::Value {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        writeln!(s, r#"{{"request":"status"}}"#).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    fn wait_subscribers(&self, n: u64) {
        wait_for(
            || UnixStream::connect(self.socket()).is_ok() && self.status()["subscribers"] == n,
            "monitor subscriptions",
        );
    }

    /// Run a python script inside the pod (cgroup + netns); its stdout, trimmed.
    fn python(&self, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && exec ip netns exec "$2" timeout 10 python3 -c "$3""#)
            .args(["sh"])
            .arg(&self.cgroup)
            .arg(&self.netns)
            .arg(script)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Listen on `port` and connect to it from inside the pod (cgroup + netns); "ok" or
    /// "eperm".
    fn connect(&self, port: u16) -> String {
        let script = format!(
            "import socket\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\nl.bind(('127.0.0.1', {port}))\nl.listen(1)\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port}))\n    print('ok')\nexcept PermissionError:\n    print('eperm')\nexcept OSError as e:\n    print('error', e.errno)\n"
        );
        self.python(&script)
    }
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `membrane monitor`, killed on drop unless it was finished.
struct Monitor(Option<Child>);

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn monitor(args: &[&str]) -> Monitor {
    Monitor(Some(
        Command::new(env!("CARGO_BIN_EXE_membrane"))
            .arg("monitor")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

/// Wait (bounded) for a monitor started with --count to finish; its stdout and stderr.
fn finish(mut m: Monitor) -> (String, String) {
    let mut child = m.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "membrane monitor did not finish: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[test]
fn denied_connect_shows_up_in_monitor_even_when_started_before_the_agent() {
    let mut node = Node::new();
    let sock = node.socket();
    let sock = sock.to_str().unwrap();
    // Started first: the socket is not there yet; it reports that and retries.
    let json = monitor(&[
        "--socket", sock, "--type", "drop", "--count", "1", "-o", "json",
    ]);
    let text = monitor(&["--socket", sock, "--type", "drop", "--count", "1"]);
    node.start_agent("node-a");
    node.wait_subscribers(2);

    assert_eq!(node.connect(9001), "ok");
    assert_eq!(node.connect(9002), "eperm");

    let (out, err) = finish(json);
    assert!(
        err.contains("retrying"),
        "the missing socket was reported: {err}"
    );
    let evs = json_lines(&out);
    assert_eq!(evs.len(), 1, "{out}");
    let e = &evs[0];
    assert_eq!(e["type"], "policy-verdict", "{e}");
    assert_eq!(e["verdict"], "denied");
    assert_eq!(e["reason"], "policy-denied");
    assert_eq!(e["node"], "node-a");
    assert_eq!(e["dst"], "127.0.0.1:9002");
    assert_eq!(
        (e["src_identity"].as_u64(), e["dst_identity"].as_u64()),
        (Some(4242), Some(5151))
    );
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");

    let (out, _) = finish(text);
    assert!(
        out.contains("[node-a] Policy verdict: DENIED (policy-denied)")
            && out.contains("identity 4242->5151 -> 127.0.0.1:9002"),
        "{out}"
    );

    // The status request: attachments, settings and counters of this node.
    let st = node.status();
    assert_eq!(st["node"], "node-a");
    assert_eq!(st["cgroup"], node.cgroup.to_str().unwrap());
    assert_eq!(st["settings"]["policy_enforce"], true);
    assert_eq!(st["attachments"].as_array().map(Vec::len), Some(1), "{st}");
    let refused = st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["program"] == "mb_connect4")
        .map(|c| c["refused"].clone());
    assert_eq!(refused, Some(serde_json::json!(1)), "{st}");
}

#[test]
fn allowed_captured_connect_shows_verdict_and_capture_with_the_original_destination() {
    let mut node = Node::new();
    for args in [
        vec!["link", "add", "mbpod0", "type", "bridge"],
        vec!["addr", "add", "10.77.0.1/24", "dev", "mbpod0"],
        vec!["link", "set", "mbpod0", "up"],
    ] {
        let ok = Command::new("ip")
            .args(["-n", &node.netns])
            .args(&args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    }
    node.start_agent_with("node-a", &["--capture", "--proxy-uid", "4294967294"]);
    let dp = Datapath::open(&node.bpffs).unwrap();
    dp.sync_ipcache(&[("10.77.0.1/32".parse().unwrap(), SERVER)])
        .unwrap();
    dp.sync_policy(&[egress(8080, MapVerdict::Allow)]).unwrap();
    let sock = node.socket();
    let sock = sock.to_str().unwrap();
    let verdicts = monitor(&[
        "--socket",
        sock,
        "--type",
        "policy-verdict",
        "--count",
        "1",
        "-o",
        "json",
    ]);
    let captures = monitor(&[
        "--socket", sock, "--type", "capture", "--count", "1", "-o", "json",
    ]);
    node.wait_subscribers(2);

    // The "proxy" listens on the outbound capture port; the app connects to
    // 10.77.0.1:8080, where nothing listens, and lands on the proxy.
    let out = node.python(
        "import socket\n\
         p = socket.socket(); p.bind(('127.0.0.1', 15001)); p.listen(1)\n\
         c = socket.create_connection(('10.77.0.1', 8080))\n\
         a, _ = p.accept()\n\
         print('proxy accepted', a.getsockname()[1])\n",
    );
    assert_eq!(out, "proxy accepted 15001");

    let (out, _) = finish(verdicts);
    let v = &json_lines(&out)[0];
    assert_eq!(
        (v["verdict"].as_str(), v["dst"].as_str()),
        (Some("allowed"), Some("10.77.0.1:8080")),
        "{v}"
    );
    let (out, _) = finish(captures);
    let c = &json_lines(&out)[0];
    assert_eq!(c["dst"], "10.77.0.1:8080", "the original destination: {c}");
    assert_eq!(c["to"], "127.0.0.1:15001");
    assert_eq!(c["reason"], "outbound");
    assert_eq!(
        (c["src_identity"].as_u64(), c["dst_identity"].as_u64()),
        (Some(4242), Some(5151))
    );
    assert_eq!(c["cookie"], v["cookie"], "same socket");
}

#[test]
fn monitor_reconnects_to_a_restarted_agent() {
    let mut node = Node::new();
    node.start_agent("node-a");
    let sock = node.socket();
    let mon = monitor(&[
        "--socket",
        sock.to_str().unwrap(),
        "--type",
        "drop",
        "--count",
        "1",
        "-o",
        "json",
    ]);
    node.wait_subscribers(1);
    node.kill_agents();
    assert!(sock.exists(), "a killed agent leaves its socket file");
    // The new agent replaces the stale socket; the monitor finds it again.
    node.start_agent("node-a");
    node.wait_subscribers(1);
    assert_eq!(node.connect(9002), "eperm");
    let (out, err) = finish(mon);
    assert!(err.contains("closed the stream; reconnecting"), "{err}");
    let evs = json_lines(&out);
    assert_eq!(evs.len(), 1, "{out}");
    assert_eq!(evs[0]["dst"], "127.0.0.1:9002");
}

#[test]
fn two_agents_merge_into_one_view() {
    let mut a = Node::new();
    let mut b = Node::new();
    a.start_agent("node-a");
    b.start_agent("host-b");
    let (sa, sb) = (a.socket(), b.socket());
    let agent_b = format!("node-b={}", sb.display());
    let mon = monitor(&[
        "--socket",
        sa.to_str().unwrap(),
        "--agent",
        &agent_b,
        "--type",
        "policy-verdict",
        "--count",
        "4",
        "-o",
        "json",
    ]);
    a.wait_subscribers(1);
    b.wait_subscribers(1);

    assert_eq!(a.connect(9002), "eperm");
    assert_eq!(b.connect(9002), "eperm");
    assert_eq!(a.connect(9001), "ok");
    assert_eq!(b.connect(9001), "ok");

    let (out, _) = finish(mon);
    let evs = json_lines(&out);
    let got = |node: &str, verdict: &str| {
        evs.iter()
            .filter(|e| e["node"] == node && e["verdict"] == verdict)
            .count()
    };
    assert_eq!(
        (got("node-a", "denied"), got("node-a", "allowed")),
        (1, 1),
        "{out}"
    );
    assert_eq!(
        (got("node-b", "denied"), got("node-b", "allowed")),
        (1, 1),
        "--agent names the node: {out}"
    );
}

#[test]
fn monitor_rejects_a_malformed_agent_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(["monitor", "--agent", "no-equals-sign"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected NODE=PATH"), "{err}");
}
