//! Privileged: two nodes, each a network namespace running its own agent, joined by an
//! underlay veth, the control plane on node-1 reached by node-2's agent over the
//! underlay. Everything the packet path holds comes from the control plane:
//!
//! - a pod on node-1 reaches a pod on node-2 over VXLAN or Geneve (the ipcache's tunnel
//!   endpoint, the identity in the VNI) or natively (the agents' routes);
//! - a pod on node-2 gets node-1's own answers (node-1's packets to node-2's pods go
//!   through the tunnel, natively by the agent's route);
//! - a datagram the receiving pod's ingress policy does not admit is dropped by node-2's
//!   to-container, and node-2's monitor shows it with both identities; tshark on the
//!   underlay decodes VXLAN / Geneve with the VNI = the sending pod's identity;
//! - each agent killed and restarted under a bounded loop of cross-node connections: no
//!   allowed connection fails and the denied one is never let through.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::tc::{two_nodes_yaml, TcNode};
use common::LOAD_PY;
use membrane_datapath::api::Request;
use membrane_test_support::{wait_until, ChildGuard};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);

/// node-1 (192.168.78.1) with the client and the xwing, node-2 (192.168.78.2) with the
/// server.
fn cluster() -> String {
    two_nodes_yaml(
        "192.168.78",
        &[
            ("client", "node-1", "10.202.0.1"),
            ("xwing", "node-1", "10.202.0.3"),
            ("server", "node-2", "10.203.0.2"),
        ],
    )
}

/// A server on argv[1]:argv[2] in the node's namespace: each connection gets 200,000
/// bytes and is closed.
const BULK_PY: &str = r#"
import socket, sys, threading
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(16)
print("READY", flush=True)
def serve(c):
    c.sendall(b"x" * 200000)
    c.close()
while True:
    c, _ = l.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Connect to argv[1]:argv[2] (3 s), read to the end, print how many bytes came.
const FETCH_PY: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(3)
n = 0
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    while True:
        d = s.recv(65536)
        if not d:
            break
        n += len(d)
    print("got %d" % n)
except Exception as e:
    print("failed after %d: %s" % (n, e))
"#;

fn applied(n: &TcNode, endpoints: &[&str]) -> bool {
    endpoints
        .iter()
        .all(|e| n.node.endpoint(e)["state"]["applied_revision"].is_u64())
}

#[test]
fn vxlan_between_two_nodes_enforced_by_the_receiving_node_across_restarts() {
    two_nodes("vxlan");
}

#[test]
fn geneve_between_two_nodes_enforced_by_the_receiving_node_across_restarts() {
    two_nodes("geneve");
}

#[test]
fn native_routing_between_two_nodes_enforced_by_the_receiving_node_across_restarts() {
    two_nodes("native");
}

fn two_nodes(overlay: &str) {
    let flags = ["--overlay", overlay, "--underlay-device", "ul0"];
    let (mut n1, mut n2) = TcNode::pair("192.168.78.1", "192.168.78.2");
    std::fs::write(n1.node.source().join("cluster.yaml"), cluster()).unwrap();
    std::fs::write(
        n1.node.source().join("policy.yaml"),
        common::policy(&[8080]),
    )
    .unwrap();
    let xds = n1.xds_on("192.168.78.1:0");
    n1.pod("client", "10.202.0.1");
    n1.pod("xwing", "10.202.0.3");
    n2.pod("server", "10.203.0.2");
    n2.node.pod("server").serve(&[8080, 9090]);
    n1.start_agent(&xds.url(), &flags);
    n2.start_agent(&xds.url(), &flags);
    for (n, pod) in [(&n1, "client"), (&n1, "xwing"), (&n2, "server")] {
        let (ok, out) = n.cni_add(pod);
        assert!(ok, "ADD {pod}: {out}\nagent log:\n{}", n.node.log());
    }
    wait_until(LIMIT, EVERY, "every endpoint's policy in force", || {
        (applied(&n1, &["default/client", "default/xwing"]) && applied(&n2, &["default/server"]))
            .then_some(())
    });

    // Across the underlay: the client lands on the server.
    let client = n1.node.pods.iter().find(|p| p.name == "client").unwrap();
    wait_until(
        LIMIT,
        EVERY,
        "the client reaches the server on node-2",
        || (client.connect("10.203.0.2:8080") == "ok").then_some(()),
    );
    assert_eq!(client.connect("10.203.0.2:9090"), "eperm");

    // A pod on node-2 reaches node-1's own address and gets its answer: node-1's packets
    // to node-2's pod CIDR leave through the tunnel (the agent's route, with the pods'
    // MTU, and the underlay's tc egress), natively by the agent's route. 200 kB from
    // node-1, so full-size segments cross too.
    let mut bulk = ChildGuard(
        n1.ns
            .exec("python3")
            .args(["-c", BULK_PY, "192.168.78.1", "7070"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(bulk.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("READY"), "node-1's server: {ready:?}");
    let server = n2.node.pods.iter().find(|p| p.name == "server").unwrap();
    wait_until(
        LIMIT,
        EVERY,
        "the server pod on node-2 gets node-1's answer",
        || {
            let out = server
                .ns
                .exec("python3")
                .args(["-c", FETCH_PY, "192.168.78.1", "7070"])
                .output()
                .unwrap();
            (String::from_utf8_lossy(&out.stdout).trim() == "got 200000").then_some(())
        },
    );

    // The xwing's datagram (no socket hook decides it, no egress policy selects the
    // xwing) crosses the underlay and is dropped by node-2's to-container, on the source
    // identity the VNI carried (natively: node-2's ipcache).
    let xwing_id = n1.node.endpoint("default/xwing")["identity"]
        .as_u64()
        .unwrap();
    let server_id = n2.node.endpoint("default/server")["identity"]
        .as_u64()
        .unwrap();
    let mon = std::os::unix::net::UnixStream::connect(n2.node.socket()).unwrap();
    {
        use std::io::Write;
        (&mon).write_all(b"{\"request\":\"monitor\"}\n").unwrap();
    }
    mon.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut events = BufReader::new(&mon);
    let ev = wait_until(
        LIMIT,
        EVERY,
        "node-2's drop of the xwing's datagram",
        || {
            n1.udp_send("xwing", "10.203.0.2:5353");
            let mut line = String::new();
            while events.read_line(&mut line).is_ok_and(|r| r > 0) {
                let ev: Value = serde_json::from_str(line.trim()).unwrap();
                line.clear();
                if ev["type"] == "drop" && ev["program"] == "to-container" && ev["proto"] == 17 {
                    return Some(ev);
                }
            }
            None
        },
    );
    let text = ev.to_string();
    assert!(
        text.contains(&xwing_id.to_string()) && text.contains(&server_id.to_string()),
        "both identities in {text}"
    );
    assert_eq!(ev["node"], "node-2", "{text}");

    // On the wire, tshark decodes the tunnel and its VNI is the xwing's identity.
    if let Some((filter, vni)) = match overlay {
        "vxlan" => Some(("udp dst port 4789", "vxlan.vni")),
        "geneve" => Some(("udp dst port 6081", "geneve.vni")),
        _ => None,
    } {
        let fields = n2.tshark(filter, &[vni, "ip.src", "ip.dst"], || {
            n1.udp_send("xwing", "10.203.0.2:5353");
        });
        // tshark prints Geneve's VNI in hex, VXLAN's in decimal.
        let decoded = fields[0].strip_prefix("0x").map_or_else(
            || fields[0].parse().ok(),
            |h| u64::from_str_radix(h, 16).ok(),
        );
        assert_eq!(
            decoded,
            Some(xwing_id),
            "{overlay}: tshark fields {fields:?}"
        );
        // Outer and inner addresses, comma-separated.
        assert!(
            fields.len() == 3
                && fields[1] == "192.168.78.1,10.202.0.3"
                && fields[2] == "192.168.78.2,10.203.0.2",
            "{overlay}: tshark fields {fields:?}"
        );
    }

    // Each agent killed and started again while the client keeps connecting across the
    // nodes: the pinned programs and maps enforce throughout.
    let stop = n1.node.dir.path().join("stop-load");
    let mut load = ChildGuard(
        client
            .command(
                "python3",
                &[
                    "-c",
                    LOAD_PY,
                    "10.203.0.2",
                    "8080",
                    "9090",
                    stop.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(load.0.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        serde_json::from_str(&lines.next().expect("load client output").unwrap()).unwrap()
    };
    assert!(next()["ok"].as_u64().unwrap() > 0);
    for node in [&mut n2, &mut n1] {
        node.node.kill_agent();
        next();
        node.start_agent(&xds.url(), &flags);
        wait_until(LIMIT, EVERY, "the new agent connected", || {
            (node.node.ask(&Request::Status)["control_plane"]["connected"] == true).then_some(())
        });
        next();
    }
    std::fs::write(&stop, b"").unwrap();
    let last = loop {
        let v = next();
        if v["done"] == true {
            break v;
        }
    };
    assert!(last["ok"].as_u64().unwrap() >= 60, "{last}");
    assert_eq!(last["failed"], 0, "{last}");
    assert_eq!(last["leaked"], 0, "{last}");
    for (n, e) in [(&n1, "default/client"), (&n2, "default/server")] {
        assert_eq!(
            n.node.endpoint(e)["state"]["writes"],
            0,
            "{e} adopted with writes"
        );
    }
}
