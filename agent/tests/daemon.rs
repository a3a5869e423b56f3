//! Privileged: the node daemon fed by a real membrane-xds, with pods registered through
//! the real membrane-cni ADD.
//!
//! - The maps hold the control plane's entries (read back as `membrane bpf policy get`
//!   does), the connect the policy denies is refused, the allowed one works, and DEL
//!   unpins the endpoint.
//! - Fail-static: membrane-xds killed, the maps stay and connects are still decided; a
//!   policy edit made meanwhile arrives when it is back, and the resync writes nothing
//!   that did not change.
//! - `monitor` on the daemon's socket merges the endpoints' event rings.
//! - Agent restart under load: a client hammers the server through four SIGKILLs of the
//!   agent and new agents' adoption (the last one without the recorded resources, so the
//!   control plane's full state is applied as a diff); no request fails, the denied flow
//!   is never let through, and no adoption writes a map entry.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Node, Xds, CLUSTER, LOAD_PY};
use membrane_datapath::api::Request;
use membrane_test_support::{wait_until, ChildGuard};
use serde_json::Value;

const CLIENT: &str = "default/client";
const SERVER: &str = "default/server";
const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(50);

/// A node with the cluster's source, membrane-xds, the agent and both pods registered and
/// enforced (the client's egress rule for the server on 8080 in the kernel map).
fn setup(ports: &[u16]) -> (Node, Xds) {
    let mut node = Node::new();
    std::fs::write(node.source().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(node.source().join("policy.yaml"), common::policy(ports)).unwrap();
    let xds = Xds::start(&node.source(), "127.0.0.1:0");
    node.two_pods("client", "server");
    node.pod("server").serve(&[8080, 9090]);
    node.start_agent(&xds.url());
    for pod in ["client", "server"] {
        let (ok, out) = node.cni("ADD", pod);
        assert!(ok, "ADD {pod}: {out}\nagent log:\n{}", node.log());
    }
    wait_until(LIMIT, EVERY, "both endpoints' policy in force", || {
        [CLIENT, SERVER]
            .iter()
            .all(|e| node.endpoint(e)["state"]["applied_revision"].is_u64())
            .then_some(())
    });
    (node, xds)
}

/// Whether the endpoint's kernel policy map allows `direction` TCP `port` from/to
/// `identity` (an entry for it whose range holds the port and whose verdict allows).
fn map_allows(map: &Value, direction: &str, identity: u64, port: u64) -> bool {
    map["rules"].as_array().unwrap().iter().any(|r| {
        r["direction"]
            .as_str()
            .is_some_and(|d| d.eq_ignore_ascii_case(direction))
            && r["remote_identity"].as_u64() == Some(identity)
            && r["proto"].as_u64() == Some(6)
            && r["ports"][0].as_u64().unwrap() <= port
            && port <= r["ports"][1].as_u64().unwrap()
            && r["verdict"]
                .as_str()
                .is_some_and(|v| !v.eq_ignore_ascii_case("deny"))
    })
}

#[test]
fn pods_registered_by_cni_are_enforced_from_the_control_plane() {
    let (mut node, _xds) = setup(&[8080]);
    let server_id = node.endpoint(SERVER)["identity"].as_u64().unwrap();
    let client_id = node.endpoint(CLIENT)["identity"].as_u64().unwrap();
    assert_ne!(server_id, client_id);
    let client_map = node.policy(CLIENT);
    assert!(
        map_allows(&client_map, "egress", server_id, 8080),
        "{client_map:#}"
    );
    assert!(
        !map_allows(&client_map, "egress", server_id, 9090),
        "{client_map:#}"
    );
    let server_map = node.policy(SERVER);
    assert!(
        map_allows(&server_map, "ingress", client_id, 8080),
        "{server_map:#}"
    );
    assert!(
        !map_allows(&server_map, "ingress", client_id, 9090),
        "{server_map:#}"
    );
    let ipcache = node.ask(&Request::IdentityList);
    let has = |ip: &str, id: u64| {
        ipcache["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["prefix"] == format!("{ip}/32") && e["identity"].as_u64() == Some(id))
    };
    assert!(
        has("10.201.0.1", client_id) && has("10.201.0.2", server_id),
        "{ipcache:#}"
    );

    let client = node.pods.iter().find(|p| p.name == "client").unwrap();
    assert_eq!(client.connect("10.201.0.2:8080"), "ok");
    assert_eq!(client.connect("10.201.0.2:9090"), "eperm");
    // Ingress, decided in the server's network namespace: the client's address carries
    // the client's identity, admitted on 8080 only.
    assert_eq!(client.connect_outside_cgroup("10.201.0.2:8080"), "ok");
    assert_ne!(client.connect_outside_cgroup("10.201.0.2:9090"), "ok");
    // The service, balanced at connect to the server's 8080, as the control plane says.
    let services = wait_until(LIMIT, EVERY, "the service", || {
        let s = node.ask(&Request::ServiceList);
        (!s.as_array().unwrap().is_empty()).then_some(s)
    });
    assert_eq!(services[0]["frontend"], "10.96.0.10:80", "{services:#}");
    assert_eq!(
        services[0]["backends"][0], "10.201.0.2:8080",
        "{services:#}"
    );
    assert_eq!(client.connect("10.96.0.10:80"), "ok");

    let status = node.ask(&Request::Status);
    assert_eq!(status["control_plane"]["connected"], true, "{status:#}");
    assert_eq!(status["endpoints"], 2, "{status:#}");

    // The CLI over the same socket: JSON as the agent answers, tables by default.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::sibling("membrane"))
            .args(args)
            .arg("--socket")
            .arg(node.socket())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "membrane {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json: Value =
        serde_json::from_str(&cli(&["bpf", "policy", "get", CLIENT, "-o", "json"])).unwrap();
    assert_eq!(json, client_map);
    let table = cli(&["bpf", "policy", "get", CLIENT]);
    let row = table
        .lines()
        .find(|l| l.contains(&server_id.to_string()) && l.contains("8080"))
        .unwrap_or_else(|| panic!("no row for the server on 8080:\n{table}"));
    assert!(
        row.to_lowercase().contains("egress") && row.to_lowercase().contains("allow"),
        "{table}"
    );
    let eps = cli(&["endpoint", "list"]);
    assert!(
        eps.contains(CLIENT) && eps.contains(SERVER) && eps.contains("enforcing"),
        "{eps}"
    );
    let svc = cli(&["service", "list"]);
    assert!(
        svc.contains("default/server:80/TCP") && svc.contains("10.201.0.2:8080"),
        "{svc}"
    );
    let ids = cli(&["identity", "list"]);
    assert!(ids.contains("10.201.0.2/32"), "{ids}");
    let st = cli(&["status"]);
    assert!(
        st.contains("control_plane.connected") && st.contains("true"),
        "{st}"
    );
    let missing = std::process::Command::new(common::sibling("membrane"))
        .args(["endpoint", "get", "default/nope", "--socket"])
        .arg(node.socket())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no endpoint default/nope"));

    let pins = node.bpffs().join("endpoints/default_server");
    assert!(pins.exists());
    let (ok, out) = node.cni("DEL", "server");
    assert!(ok, "DEL: {out}");
    assert!(!pins.exists(), "DEL unpins the endpoint");
    let (ok, out) = node.cni("DEL", "server");
    assert!(ok, "DEL twice: {out}");
    let list = node.ask(&Request::EndpointList);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    node.kill_agent();
}

#[test]
fn monitor_merges_every_endpoints_events() {
    use std::io::Write;
    let (node, _xds) = setup(&[8080]);
    let mut stream = std::os::unix::net::UnixStream::connect(node.socket()).unwrap();
    writeln!(stream, "{}", serde_json::json!({"request": "monitor"})).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut lines = BufReader::new(stream);
    let client = node.pods.iter().find(|p| p.name == "client").unwrap();
    // A denied connect from the client is reported by the client's endpoint, with the
    // node's name, through the daemon's one socket.
    let ev = wait_until(
        LIMIT,
        EVERY,
        "the client's denied connect in the monitor",
        || {
            assert_eq!(client.connect("10.201.0.2:9090"), "eperm");
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                let ev: Value = serde_json::from_str(line.trim()).unwrap();
                line.clear();
                if ev["type"] == "policy-verdict"
                    && ev["verdict"] == "denied"
                    && ev["dst"].as_str().is_some_and(|d| d.ends_with(":9090"))
                {
                    return Some(ev);
                }
            }
            None
        },
    );
    assert_eq!(ev["node"], "node-1", "{ev}");
}

#[test]
fn cni_add_without_cgroup_path_or_pod_name_fails_naming_it_and_del_without_an_agent_succeeds() {
    // No agent needed: these are refused before it is asked.
    let mut node = Node::new();
    node.two_pods("client", "server");
    let no_cgroup = |c: &mut Value| {
        c.as_object_mut().unwrap().remove("runtimeConfig");
    };
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=client";
    let (ok, out) = node.cni_with("ADD", "client", no_cgroup, args);
    assert!(!ok && out.contains("runtimeConfig.cgroupPath"), "{out}");
    let (ok, out) = node.cni_with("ADD", "client", |_| {}, "K8S_POD_NAMESPACE=default");
    assert!(!ok && out.contains("K8S_POD_NAME"), "{out}");
    // No agent listening: ADD is "try again later", DEL has nothing to undo.
    let (ok, out) = node.cni("ADD", "client");
    assert!(!ok && out.contains("\"code\":11"), "{out}");
    let (ok, out) = node.cni("DEL", "client");
    assert!(ok, "{out}");
}

#[test]
fn a_registration_with_a_bad_name_is_refused_naming_it_and_changes_nothing() {
    let (node, _xds) = setup(&[8080]);
    let bad = membrane_datapath::api::Registration {
        namespace: "Default".into(),
        pod: "x".into(),
        container_id: "c".into(),
        ifname: "eth0".into(),
        netns: "/run/netns/nope".into(),
        cgroup: "/sys/fs/cgroup/nope".into(),
        ips: vec![],
        host_ifname: None,
        mac: None,
    };
    let reply = node.ask(&Request::Register(bad));
    let e = reply["error"].as_str().unwrap_or_default();
    assert!(e.contains("namespace \"Default\""), "{reply}");
    // What was enforced stays.
    assert!(node.endpoint(CLIENT)["state"]["applied_revision"].is_u64());
}

#[test]
fn control_plane_away_the_maps_stay_and_it_resyncs_without_a_flush() {
    let (node, mut xds) = setup(&[8080]);
    let before = node.policy(CLIENT);
    let writes = |n: &Node, e: &str| n.endpoint(e)["state"]["writes"].as_u64().unwrap();
    let (cw, sw) = (writes(&node, CLIENT), writes(&node, SERVER));
    xds.kill();
    wait_until(
        LIMIT,
        EVERY,
        "the agent to see the control plane gone",
        || (node.ask(&Request::Status)["control_plane"]["connected"] == false).then_some(()),
    );
    let client = node.pods.iter().find(|p| p.name == "client").unwrap();
    assert_eq!(
        client.connect("10.201.0.2:8080"),
        "ok",
        "fail-static: allowed"
    );
    assert_eq!(
        client.connect("10.201.0.2:9090"),
        "eperm",
        "fail-static: denied"
    );
    assert_eq!(node.policy(CLIENT), before, "the maps keep their contents");

    // Back, unchanged: the resync writes nothing.
    let mut xds = Xds::start(&node.source(), &xds.addr.to_string());
    wait_until(LIMIT, EVERY, "the agent to reconnect", || {
        (node.ask(&Request::Status)["control_plane"]["connected"] == true).then_some(())
    });
    assert_eq!(node.policy(CLIENT), before);
    assert_eq!((writes(&node, CLIENT), writes(&node, SERVER)), (cw, sw));

    // An edit made while it is away arrives when it is back.
    xds.kill();
    std::fs::write(
        node.source().join("policy.yaml"),
        common::policy(&[8080, 9090]),
    )
    .unwrap();
    let _xds = Xds::start(&node.source(), &xds.addr.to_string());
    wait_until(LIMIT, EVERY, "9090 allowed after the resync", || {
        (client.connect("10.201.0.2:9090") == "ok").then_some(())
    });
    assert_eq!(client.connect("10.201.0.2:8080"), "ok");
}

#[test]
fn agent_restart_under_load_fails_no_request_and_never_lets_the_denied_flow_through() {
    let (mut node, xds) = setup(&[8080]);
    let stop = node.dir.path().join("stop");
    let client = node.pods.iter().find(|p| p.name == "client").unwrap();
    let mut load = ChildGuard(
        client
            .command(
                "python3",
                &[
                    "-c",
                    LOAD_PY,
                    "10.201.0.2",
                    "8080",
                    "9090",
                    stop.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(load.stdout.take().unwrap()).lines();
    let mut next = || -> Value {
        serde_json::from_str(&lines.next().expect("load client output").unwrap()).unwrap()
    };
    let ok_before = next()["ok"].as_u64().unwrap();
    assert!(ok_before > 0);

    for round in 0..4 {
        node.kill_agent();
        // Requests keep flowing with no agent at all.
        let mid = next()["ok"].as_u64().unwrap();
        if round == 3 {
            // The last agent also lost the resources it recorded (not the registrations):
            // the control plane sends the full state, applied as a diff to the pins.
            std::fs::remove_dir_all(node.state_dir().join("xds")).unwrap();
        }
        node.start_agent(&xds.url());
        wait_until(LIMIT, EVERY, "the new agent connected and resynced", || {
            let st = node.ask(&Request::Status);
            (st["control_plane"]["connected"] == true
                && st["resources"]["Endpoint"].as_u64() == Some(2)
                && st["resources"]["NetworkPolicyHosts"].as_u64() > Some(0))
            .then_some(())
        });
        for e in [CLIENT, SERVER] {
            let st = node.endpoint(e);
            assert_eq!(
                st["state"]["writes"],
                0,
                "round {round}: adoption and resync rewrote {e}'s maps: {st:#}\n{}",
                node.log()
            );
            assert!(st["state"]["applied_revision"].is_u64(), "{st:#}");
        }
        let after = next()["ok"].as_u64().unwrap();
        assert!(after > mid, "requests go on after restart {round}");
    }
    std::fs::write(&stop, "").unwrap();
    let last = loop {
        let v = next();
        if v["done"] == true {
            break v;
        }
    };
    eprintln!("load through 4 agent restarts: {last}");
    assert_eq!(last["failed"], 0, "{last}");
    assert_eq!(last["leaked"], 0, "{last}");
    assert!(last["denied"].as_u64().unwrap() > 0, "{last}");
    assert!(last["ok"].as_u64().unwrap() > ok_before, "{last}");
}
