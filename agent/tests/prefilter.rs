//! Privileged: the XDP prefilter on a node's underlay device, driven through the CLI. A
//! node namespace runs the agent (`--underlay-device ul0`, XDP mode auto: native on veth);
//! a peer namespace on the underlay sends UDP from an address in a denied CIDR and from
//! one outside it. `membrane prefilter add|delete|list` go over the agent socket:
//!
//! - the denied peer's datagrams never reach a server on the node, the other's do; the
//!   counter says how many were dropped and `membrane monitor` shows the drop (`xdp`,
//!   `prefilter-denied`, the peer's address);
//! - a request with one bad CIDR is refused naming it, and nothing of it is applied;
//! - a restarted agent keeps the entries and the attached program;
//! - a deleted entry lets the peer through again; deleting what was never added is an
//!   error.
//!
//! And fed from the control plane: a `PrefilterDenyList` in membrane-xds's source directory
//! reaches the agent over its ADS stream and is denied beside the CLI's entries (the
//! union, each shown with its source); the CLI cannot delete it; an edit with a bad CIDR
//! is refused by membrane-xds and the old list stays; an agent restarted while the
//! control plane is down keeps denying it; removing the object lets the peer through.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tc::{two_nodes_yaml, TcNode};
use membrane_datapath::api::Request;
use membrane_test_support::{wait_until, ChildGuard, Netns};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);
const NODE_IP: &str = "192.168.79.1";
const ALLOWED: &str = "192.168.79.7";
const DENIED: &str = "192.168.79.66";
const DENIED_CIDR: &str = "192.168.79.64/26";

/// A UDP server on argv[1]:9999 printing each datagram's source address.
const SERVER_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
print("READY", flush=True)
while True:
    _, (src, _) = s.recvfrom(2048)
    print(src, flush=True)
"#;

/// argv[3] datagrams from argv[1] to argv[2]:9999.
const SEND_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for _ in range(int(sys.argv[3])):
    s.sendto(b"x", (sys.argv[2], 9999))
"#;

fn membrane(socket: &Path, args: &[&str]) -> Output {
    Command::new(common::sibling("membrane"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run membrane")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "membrane failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn list(socket: &Path) -> Value {
    serde_json::from_str(&ok(&membrane(socket, &["prefilter", "list", "-o", "json"])))
        .expect("list is JSON")
}

fn cidrs(v: &Value) -> Vec<String> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cidr"].as_str().unwrap().to_owned())
        .collect()
}

/// Sources of the datagrams the node's server received, in order.
struct Received {
    got: Arc<Mutex<Vec<String>>>,
    _server: ChildGuard,
}

impl Received {
    fn count(&self, src: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|s| *s == src)
            .count()
    }
}

fn serve(node: &TcNode) -> Received {
    let mut child = ChildGuard(
        node.ns
            .exec("python3")
            .args(["-c", SERVER_PY, NODE_IP])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the server"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    Received {
        got,
        _server: child,
    }
}

fn send(peer: &Netns, src: &str, n: u32) {
    let st = peer
        .exec("python3")
        .args(["-c", SEND_PY, src, NODE_IP, &n.to_string()])
        .status()
        .expect("send");
    assert!(st.success(), "send from {src}");
}

/// A node namespace with the underlay's far end in a peer namespace that has an address
/// outside the denied CIDR and one inside it; the node's source directory holds the two
/// nodes.
fn node_and_peer() -> (TcNode, Netns) {
    let n = TcNode::new(NODE_IP);
    let peer = Netns::add(&format!("{}-peer", n.node.name));
    n.ip(&["link", "set", "ul0p", "netns", &peer.name]);
    for a in [ALLOWED, DENIED] {
        peer.ip(&["addr", "add", &format!("{a}/24"), "dev", "ul0p"]);
    }
    peer.ip(&["link", "set", "ul0p", "up"]);
    std::fs::write(
        n.node.source().join("cluster.yaml"),
        two_nodes_yaml("192.168.79", &[]),
    )
    .unwrap();
    (n, peer)
}

const AGENT_FLAGS: [&str; 4] = ["--overlay", "native", "--underlay-device", "ul0"];

/// Starts the agent and checks the prefilter runs in the driver.
fn start(n: &mut TcNode, xds_url: &str) {
    n.start_agent(xds_url, &AGENT_FLAGS);
    let st = n.node.ask(&Request::Status);
    assert_eq!(
        st["packet_path"]["prefilter"], "native",
        "veth runs XDP in the driver: {st}"
    );
}

/// `membrane monitor` shows a prefilter drop of the denied peer. A monitor that subscribed
/// after the first drops may have missed the rate-limited record, so more denied datagrams
/// follow until one is shown.
fn monitor_shows_a_drop(socket: &Path, peer: &Netns) {
    let mut monitor = ChildGuard(
        Command::new(common::sibling("membrane"))
            .args(["monitor", "-o", "json", "--type", "drop", "--count", "1"])
            .arg("--socket")
            .arg(socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn membrane monitor"),
    );
    let stdout = monitor.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let line = wait_until(
        LIMIT,
        Duration::from_millis(20),
        "a prefilter drop in monitor",
        || {
            send(peer, DENIED, 1);
            rx.recv_timeout(Duration::from_millis(100)).ok()
        },
    );
    let ev: Value = serde_json::from_str(&line).expect("monitor JSON");
    assert_eq!(ev["type"], "drop", "{ev}");
    assert_eq!(ev["program"], "xdp", "{ev}");
    assert_eq!(ev["reason"], "prefilter-denied", "{ev}");
    assert_eq!(ev["src"], format!("{DENIED}:0"), "{ev}");
    assert_eq!(ev["dst"], format!("{NODE_IP}:0"), "{ev}");
}

#[test]
fn a_denied_peer_on_the_underlay_gets_nothing_through_and_the_cli_round_trips() {
    let (mut n, peer) = node_and_peer();
    let xds = n.xds();
    start(&mut n, &xds.url());
    let socket = n.node.socket();
    let got = serve(&n);

    // Nothing denied yet: the peer's datagrams arrive from both addresses.
    send(&peer, DENIED, 3);
    wait_until(LIMIT, EVERY, "datagrams before the deny", || {
        (got.count(DENIED) == 3).then_some(())
    });

    let out = ok(&membrane(&socket, &["prefilter", "add", DENIED_CIDR]));
    assert!(out.contains(DENIED_CIDR), "{out}");
    assert!(out.contains("mode native"), "{out}");

    // One bad entry refuses the whole request: 10.0.0.0/8 is not added either.
    let bad = membrane(&socket, &["prefilter", "add", "10.0.0.0/8", "10.1.2.3/8"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("\"10.1.2.3/8\": host bits set (the prefix is 10.0.0.0/8)"),
        "{err}"
    );
    assert_eq!(cidrs(&list(&socket)), [DENIED_CIDR]);

    let before = list(&socket)["stats"]["denied_v4"].as_u64().unwrap();
    assert_eq!(before, 0);
    send(&peer, DENIED, 20);
    send(&peer, ALLOWED, 3);
    wait_until(LIMIT, EVERY, "the allowed peer's datagrams", || {
        (got.count(ALLOWED) == 3).then_some(())
    });
    // The denied datagrams went first on the same path: none arrived.
    assert_eq!(
        got.count(DENIED),
        3,
        "only the 3 sent before the deny arrived"
    );
    let l = list(&socket);
    assert_eq!(l["stats"]["denied_v4"], 20, "{l}");
    assert_eq!(l["entries"][0]["source"], "cli", "{l}");

    monitor_shows_a_drop(&socket, &peer);
    assert_eq!(got.count(DENIED), 3);

    // A restarted agent keeps the CLI's entries (recorded) and the attached program
    // (pinned link): the peer stays denied throughout.
    n.node.kill_agent();
    start(&mut n, &xds.url());
    let l = list(&socket);
    assert_eq!(cidrs(&l), [DENIED_CIDR], "{l}");
    assert_eq!(l["mode"], "native", "{l}");
    assert_eq!(l["entries"][0]["source"], "cli", "{l}");
    send(&peer, DENIED, 5);
    send(&peer, ALLOWED, 2);
    wait_until(LIMIT, EVERY, "the allowed peer after the restart", || {
        (got.count(ALLOWED) == 5).then_some(())
    });
    assert_eq!(
        got.count(DENIED),
        3,
        "a denied datagram got through the restart"
    );

    // Deleting what was never added is refused; deleting the entry lets the peer in.
    let bad = membrane(&socket, &["prefilter", "delete", "10.0.0.0/8"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("10.0.0.0/8 was not added"), "{err}");
    ok(&membrane(&socket, &["prefilter", "delete", DENIED_CIDR]));
    assert!(cidrs(&list(&socket)).is_empty());
    send(&peer, DENIED, 2);
    wait_until(LIMIT, EVERY, "datagrams after the delete", || {
        (got.count(DENIED) == 5).then_some(())
    });
}

/// A `PrefilterDenyList` named `name` holding `cidrs`, as YAML.
fn deny_list(name: &str, cidrs: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: membrane.io/v1alpha1\nkind: PrefilterDenyList\nmetadata:\n  name: {name}\n\
         spec:\n  cidrs:\n"
    );
    for c in cidrs {
        y.push_str(&format!("  - {c:?}\n"));
    }
    y
}

/// The list's entry for `cidr`.
fn entry(l: &Value, cidr: &str) -> Value {
    l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cidr"] == cidr)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn the_control_planes_deny_list_is_joined_with_the_cli_and_kept_fail_static() {
    const CLI_ONLY: &str = "198.51.100.0/24";
    const CANARY: &str = "203.0.113.0/24";
    let (mut n, peer) = node_and_peer();
    let source = n.node.source();
    let mut xds = n.xds();
    start(&mut n, &xds.url());
    let socket = n.node.socket();
    let got = serve(&n);
    send(&peer, DENIED, 2);
    wait_until(LIMIT, EVERY, "datagrams before the deny list", || {
        (got.count(DENIED) == 2).then_some(())
    });

    // The deny list in the cluster's source: membrane-xds serves it, the agent denies it.
    ok(&membrane(&socket, &["prefilter", "add", CLI_ONLY]));
    std::fs::write(source.join("deny.yaml"), deny_list("edge", &[DENIED_CIDR])).unwrap();
    let l = wait_until(LIMIT, EVERY, "the deny list at the agent", || {
        let l = list(&socket);
        (entry(&l, DENIED_CIDR) != Value::Null).then_some(l)
    });
    assert_eq!(
        entry(&l, DENIED_CIDR),
        serde_json::json!({"cidr": DENIED_CIDR, "source": "control-plane", "lists": ["edge"]}),
        "{l}"
    );
    assert_eq!(entry(&l, CLI_ONLY)["source"], "cli", "{l}");
    let table = ok(&membrane(&socket, &["prefilter", "list"]));
    assert!(
        table.contains(&format!("{DENIED_CIDR:<44} control-plane (edge)")),
        "{table}"
    );
    send(&peer, DENIED, 10);
    send(&peer, ALLOWED, 3);
    wait_until(LIMIT, EVERY, "the allowed peer's datagrams", || {
        (got.count(ALLOWED) == 3).then_some(())
    });
    assert_eq!(got.count(DENIED), 2, "a denied datagram got through");
    assert_eq!(list(&socket)["stats"]["denied_v4"], 10);
    monitor_shows_a_drop(&socket, &peer);

    // The CLI cannot delete what the control plane denies.
    let bad = membrane(&socket, &["prefilter", "delete", DENIED_CIDR]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(&format!(
            "prefilter entry {DENIED_CIDR} comes from the control plane (PrefilterDenyList \
             edge); delete it there"
        )),
        "{err}"
    );
    assert_ne!(entry(&list(&socket), DENIED_CIDR), Value::Null);

    // An edit with a bad CIDR is refused by membrane-xds; the old list stays. The canary
    // list, written after it, shows the edit has been read.
    std::fs::write(
        source.join("deny.yaml"),
        deny_list("edge", &["10.1.2.3/8", "192.168.79.0/28"]),
    )
    .unwrap();
    std::fs::write(source.join("canary.yaml"), deny_list("canary", &[CANARY])).unwrap();
    let l = wait_until(LIMIT, EVERY, "the canary list at the agent", || {
        let l = list(&socket);
        (entry(&l, CANARY) != Value::Null).then_some(l)
    });
    assert_eq!(
        cidrs(&l),
        [DENIED_CIDR, CLI_ONLY, CANARY],
        "the bad edit changed the deny set: {l}"
    );
    send(&peer, DENIED, 2);
    send(&peer, ALLOWED, 1);
    wait_until(LIMIT, EVERY, "the allowed peer after the bad edit", || {
        (got.count(ALLOWED) == 4).then_some(())
    });
    assert_eq!(got.count(DENIED), 2, "a denied datagram got through");

    // Fail-static: the control plane goes away, the agent restarts without it, and the
    // recorded list stays in force.
    xds.kill();
    n.node.kill_agent();
    start(&mut n, &xds.url());
    let l = list(&socket);
    assert_eq!(entry(&l, DENIED_CIDR)["source"], "control-plane", "{l}");
    assert_eq!(cidrs(&l), [DENIED_CIDR, CLI_ONLY, CANARY], "{l}");
    send(&peer, DENIED, 3);
    send(&peer, ALLOWED, 1);
    wait_until(LIMIT, EVERY, "the allowed peer after the restart", || {
        (got.count(ALLOWED) == 5).then_some(())
    });
    assert_eq!(got.count(DENIED), 2, "a denied datagram got through");

    // The control plane back, the list removed from the source: the peer passes again,
    // the CLI's entry stays.
    std::fs::remove_file(source.join("deny.yaml")).unwrap();
    let xds = n.xds_on(&xds.addr.to_string());
    let l = wait_until(LIMIT, EVERY, "the deny list gone at the agent", || {
        let l = list(&socket);
        (entry(&l, DENIED_CIDR) == Value::Null).then_some(l)
    });
    assert_eq!(cidrs(&l), [CLI_ONLY, CANARY], "{l}");
    assert_eq!(entry(&l, CLI_ONLY)["source"], "cli", "{l}");
    send(&peer, DENIED, 2);
    wait_until(LIMIT, EVERY, "datagrams after the removal", || {
        (got.count(DENIED) == 4).then_some(())
    });
    drop(xds);
}
