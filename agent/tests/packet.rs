//! Privileged: the node daemon runs the packet path from the control plane. A node as a
//! network namespace (the agent inside it, membrane-xds listening inside it), pods on
//! routed veths registered through the real membrane-cni ADD with their host veth:
//!
//! - each registered endpoint gets its tc programs on its host veth and its row in the
//!   node's endpoints map, with the control plane's identity;
//! - the node ipcache is NPHDS joined with the Node resources: another node's pod carries
//!   that node's tunnel endpoint (vxlan) or none and a route via the node (native), node
//!   addresses are host / remote-node;
//! - the packet path enforces what the socket hooks cannot see (UDP without connect), the monitor
//!   shows the drop with both identities, and the counters and conntrack are read back;
//! - an agent restart adopts all of it writing nothing, and enforcement holds throughout;
//! - DEL detaches.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::tc::{two_nodes_yaml, TcNode};
use membrane_datapath::api::Request;
use membrane_test_support::wait_until;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);

/// Two nodes: node-1 (this one, pods 10.202.0.0/24) with the client and the server,
/// node-2 (10.203.0.0/24) with `remote`, and the NodePort service `server`. The client may
/// reach the server on TCP 8080 only; nothing allows ICMP.
fn cluster() -> String {
    let nodes = two_nodes_yaml(
        "192.168.77",
        &[
            ("client", "node-1", "10.202.0.1"),
            ("server", "node-1", "10.202.0.2"),
            ("remote", "node-2", "10.203.0.5"),
        ],
    );
    format!("{nodes}---\n{SERVICE}")
}

const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: server, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
"#;

fn setup(overlay: &str) -> (TcNode, common::Xds) {
    let mut n = TcNode::new("192.168.77.1");
    std::fs::write(n.node.source().join("cluster.yaml"), cluster()).unwrap();
    std::fs::write(n.node.source().join("policy.yaml"), common::policy(&[8080])).unwrap();
    let xds = n.xds();
    n.pod("client", "10.202.0.1");
    n.pod("server", "10.202.0.2");
    n.node.pod("server").serve(&[8080, 9090]);
    n.start_agent(
        &xds.url(),
        &["--overlay", overlay, "--underlay-device", "ul0"],
    );
    for pod in ["client", "server"] {
        let (ok, out) = n.cni_add(pod);
        assert!(ok, "ADD {pod}: {out}\nagent log:\n{}", n.node.log());
    }
    wait_until(
        LIMIT,
        EVERY,
        "both endpoints' policy and tc in force",
        || {
            let st = n.node.ask(&Request::Status);
            let tc = st["packet_path"]["tc_endpoints"].as_array()?.clone();
            (["default/client", "default/server"]
                .iter()
                .all(|e| n.node.endpoint(e)["state"]["applied_revision"].is_u64())
                && tc.len() == 2
                && tc.iter().all(|e| e["identity"].as_u64() != Some(5)))
            .then_some(())
        },
    );
    (n, xds)
}

/// Packets the packet path dropped, all reasons.
fn drops(n: &TcNode) -> u64 {
    let stats = n.node.ask(&Request::TcStats);
    stats["stats"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] != 0)
        .map(|r| r["packets"].as_u64().unwrap())
        .sum()
}

fn ipcache(n: &TcNode) -> Vec<Value> {
    n.node.ask(&Request::IdentityList)["entries"]
        .as_array()
        .unwrap()
        .clone()
}

fn row(entries: &[Value], prefix: &str) -> Value {
    entries
        .iter()
        .find(|e| e["prefix"] == prefix)
        .cloned()
        .unwrap_or_else(|| panic!("no {prefix} in {entries:?}"))
}

#[test]
fn endpoints_get_tc_and_the_node_ipcache_from_the_control_plane() {
    let (mut n, _xds) = setup("native");
    let client_id = n.node.endpoint("default/client")["identity"]
        .as_u64()
        .unwrap();
    let server_id = n.node.endpoint("default/server")["identity"]
        .as_u64()
        .unwrap();

    // The endpoints map holds both pods with their identities and host veths.
    let st = n.node.ask(&Request::Status);
    let pp = &st["packet_path"];
    assert_eq!(pp["overlay"], "native", "{st}");
    assert_eq!(pp["node_ip"], "192.168.77.1", "{st}");
    let tc = pp["tc_endpoints"].as_array().unwrap();
    let ids: Vec<u64> = tc.iter().map(|e| e["identity"].as_u64().unwrap()).collect();
    assert!(
        ids.contains(&client_id) && ids.contains(&server_id),
        "{tc:?}"
    );
    // The tcx links are the endpoint's: pinned in its directory, present on its veth.
    let links = n.ip(&["-d", "link", "show", "dev", &n.veth("client")]);
    assert!(!links.is_empty());
    let pins = std::fs::read_dir(n.node.bpffs().join("endpoints/default_client/links"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("tc-"));
    assert!(pins, "no tc links pinned for the client");

    // The node ipcache: NPHDS joined with the nodes. Native routing: no tunnel, a route.
    let c = ipcache(&n);
    let remote = row(&c, "10.203.0.5/32");
    assert!(remote["tunnel"].is_null(), "{remote}");
    assert_eq!(
        row(&c, "192.168.77.1/32")["identity"],
        1,
        "this node is host"
    );
    assert_eq!(
        row(&c, "192.168.77.2/32")["identity"],
        6,
        "node-2 is remote-node"
    );
    let routes = n.ip(&["route", "show", "10.203.0.0/24"]);
    assert!(routes.contains("via 192.168.77.2"), "{routes}");

    // What the socket hooks never see: a datagram on an unconnected UDP socket. No rule
    // allows it, so tc drops it, and the monitor shows the drop with both identities.
    let mon = std::os::unix::net::UnixStream::connect(n.node.socket()).unwrap();
    {
        use std::io::Write;
        (&mon).write_all(b"{\"request\":\"monitor\"}\n").unwrap();
    }
    mon.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut lines = BufReader::new(&mon);
    // Until the subscription is in place a drop is not sent to it: ping again.
    let ev = wait_until(LIMIT, EVERY, "the ping's drop in the monitor", || {
        n.udp_send("client", "10.202.0.2:5353");
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|r| r > 0) {
            let ev: Value = serde_json::from_str(line.trim()).unwrap();
            line.clear();
            if ev["type"] == "drop" && ev["program"] == "from-container" {
                return Some(ev);
            }
        }
        None
    });
    assert_eq!(ev["proto"], 17, "{ev}");
    let text = ev.to_string();
    assert!(
        text.contains(&client_id.to_string()) && text.contains(&server_id.to_string()),
        "both identities in {text}"
    );
    // Allowed TCP from outside the client's cgroup (no socket hook decides it): the
    // packet path lets it through, replies included, and tracks it.
    assert_eq!(
        n.node.pods[0].connect_outside_cgroup("10.202.0.2:8080"),
        "ok"
    );
    let ct = n.node.ask(&Request::CtList);
    let flows = ct["entries"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["dst"] == "10.202.0.2:8080" && f["proto"] == 6),
        "{ct}"
    );
    let dropped = drops(&n);
    assert!(dropped >= 1, "{}", n.node.ask(&Request::TcStats));
    // The operator's view of the same: the CLI over the agent's socket.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::sibling("membrane"))
            .args(args)
            .arg("--socket")
            .arg(n.node.socket())
            .output()
            .unwrap();
        assert!(out.status.success(), "membrane {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ct = cli(&["bpf", "ct", "list"]);
    assert!(
        ct.lines()
            .any(|l| l.contains("10.202.0.2:8080") && l.contains("egress")),
        "{ct}"
    );
    let stats = cli(&["bpf", "tc", "stats"]);
    assert!(stats.lines().any(|l| l.contains("forwarded")), "{stats}");
    let status = cli(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("packet_path.overlay") && l.ends_with("native")),
        "{status}"
    );
    let ids = cli(&["identity", "list"]);
    assert!(ids.lines().next().unwrap().contains("TUNNEL"), "{ids}");

    // A restart adopts: no endpoint write, the links and the routes stay.
    let before = n.ip(&["-d", "link", "show", "dev", &n.veth("client")]);
    n.node.kill_agent();
    let xds_url = _xds.url();
    n.start_agent(
        &xds_url,
        &["--overlay", "native", "--underlay-device", "ul0"],
    );
    wait_until(LIMIT, EVERY, "the new agent connected", || {
        n.node.ask(&Request::Status)["control_plane"]["connected"]
            .as_bool()
            .filter(|c| *c)
    });
    for e in ["default/client", "default/server"] {
        let st = n.node.endpoint(e);
        assert_eq!(st["state"]["writes"], 0, "{e} adopted with writes: {st}");
    }
    assert_eq!(
        before,
        n.ip(&["-d", "link", "show", "dev", &n.veth("client")])
    );
    n.udp_send("client", "10.202.0.2:5353");
    wait_until(
        LIMIT,
        EVERY,
        "the datagram dropped after the restart",
        || (drops(&n) > dropped).then_some(()),
    );

    // DEL detaches: the endpoints map forgets the client.
    let (ok, out) = n.node.cni("DEL", "client");
    assert!(ok, "DEL: {out}");
    let st = n.node.ask(&Request::Status);
    let tc = st["packet_path"]["tc_endpoints"].as_array().unwrap();
    assert!(
        tc.iter().all(|e| e["identity"].as_u64() != Some(client_id)),
        "{tc:?}"
    );
    assert!(
        !n.node.bpffs().join("endpoints/default_client").exists(),
        "the client's pins (and so its tc links) are gone"
    );
}

#[test]
fn vxlan_mode_tunnels_to_the_pods_node_and_balances_services_in_tc() {
    let (n, _xds) = setup("vxlan");
    let st = n.node.ask(&Request::Status);
    let pp = &st["packet_path"];
    assert_eq!(pp["overlay"], "vxlan", "{st}");
    // The collect_md device, made by the agent in the node's namespace.
    let dev = n.ip(&["-d", "link", "show", "mb_vxlan"]);
    assert!(dev.contains("external"), "{dev}");
    // Another node's pod goes to that node's address; its pod CIDR too (world).
    let c = ipcache(&n);
    assert_eq!(row(&c, "10.203.0.5/32")["tunnel"], "192.168.77.2");
    let cidr = row(&c, "10.203.0.0/24");
    assert_eq!(
        (cidr["identity"].as_u64(), cidr["tunnel"].as_str()),
        (Some(2), Some("192.168.77.2"))
    );
    assert!(
        row(&c, "10.202.0.2/32")["tunnel"].is_null(),
        "local pods are not tunnelled"
    );
    // Overlay mode: node-2's pod CIDR routed via its tunnel endpoint with the pods' MTU,
    // for the node's own packets (the underlay's tc egress encapsulates them).
    let routes = n.ip(&["route", "show", "proto", "77"]);
    let mtu = pp["underlay_mtu"].as_u64().unwrap() - 50;
    assert!(
        routes.contains("10.203.0.0/24 via 192.168.77.2")
            && routes.contains(&format!("mtu {mtu}"))
            && routes.lines().count() == 1,
        "{routes}"
    );
    // The service, with its node port, in the tc load balancer.
    let lb = pp["lb_services"].as_array().unwrap();
    let svc = lb
        .iter()
        .find(|s| s["frontend"] == "10.96.0.20:80")
        .unwrap_or_else(|| panic!("{lb:?}"));
    assert_eq!(svc["node_port"], 30080);
    assert_eq!(svc["backends"], serde_json::json!(["10.202.0.2:8080"]));
}
