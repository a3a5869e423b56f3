//! Privileged: the sidecars' request records in the node's event stream. A real agent
//! (`--records-socket`) fed by a real membrane-xds, a real membrane-proxy in the server
//! pod's network namespace reporting to it, and `membrane monitor -o json` reading the
//! agent's stream:
//!
//! - the client's denied `PUT /v1/exhaust-port` and allowed `GET /public` through the
//!   server's sidecar appear as `l7` events, attributed to the server pod (its identity,
//!   the client pod named on the other side), with the deciding rule on the denial;
//! - a record forged in the client pod's network namespace, claiming to be the server's,
//!   comes out as the client's own;
//! - a process in no endpoint's namespace (this test, on the node) is refused and
//!   counted, and its record never appears.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, Xds, CLUSTER};
use membrane_datapath::api::Request;
use membrane_test_support::{wait_until, ChildGuard};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(200);

/// What the server's sidecar enforces (standalone, from a file): GET /public on its
/// upstream port, from anyone; everything else is denied by the rule's HTTP rules.
const SIDECAR_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deathstar-l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [all]
    toPorts:
    - ports: [{port: "9000", protocol: TCP}]
      rules: {http: [{method: GET, path: /public}]}
"#;

/// Sends argv[2] as one line to the unix socket argv[1].
const SEND_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
s.shutdown(socket.SHUT_WR)
s.recv(4096)
"#;

fn forged(path: &str) -> String {
    json!({
        "node": "somewhere-else",
        "type": "l7",
        "program": "sk_lookup",
        "verdict": "allowed",
        "src": "192.0.2.7:41000",
        "dst": "10.201.0.2:8080",
        "src_pod": "default/client",
        "dst_pod": "default/server",
        "dst_identity": 1,
        "l7": {"direction": "ingress", "protocol": "HTTP/1.1", "method": "GET",
               "path": path, "status": 200, "rule": "default/made-up"},
    })
    .to_string()
}

#[test]
fn sidecar_records_join_the_stream_attributed_by_network_namespace() {
    let mut node = Node::new();
    std::fs::write(node.source().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(node.source().join("policy.yaml"), common::policy(&[8080])).unwrap();
    let xds = Xds::start(&node.source(), "127.0.0.1:0");
    node.two_pods("client", "server");
    let records = node.dir.path().join("sidecar").join("records.sock");
    node.start_agent_with(&xds.url(), &["--records-socket", records.to_str().unwrap()]);
    for pod in ["client", "server"] {
        let (ok, out) = node.cni("ADD", pod);
        assert!(ok, "ADD {pod}: {out}\nagent log:\n{}", node.log());
    }
    let identity = |e: &str| {
        wait_until(LIMIT, EVERY, "the endpoint's identity", || {
            node.endpoint(e)["identity"].as_u64()
        })
    };
    let (client_id, server_id) = (identity("default/client"), identity("default/server"));

    // The server's sidecar, in the server pod, reporting to the agent.
    let policy = node.dir.path().join("sidecar-policy.yaml");
    std::fs::write(&policy, SIDECAR_POLICY).unwrap();
    let proxy_log = std::fs::File::create(node.dir.path().join("proxy.log")).unwrap();
    let server = node.pods.iter().find(|p| p.name == "server").unwrap();
    let _proxy = ChildGuard(
        server
            .command(
                common::sibling("membrane-proxy").to_str().unwrap(),
                &[
                    "standalone",
                    "--listen",
                    "10.201.0.2:8080",
                    "--upstream",
                    "127.0.0.1:9000",
                    "--admin",
                    "127.0.0.1:0",
                    "--metrics",
                    "127.0.0.1:0",
                    "--health",
                    "127.0.0.1:0",
                    "--policy",
                    policy.to_str().unwrap(),
                    "--endpoint-labels",
                    "k8s:app=server",
                    "--access-log",
                    "false",
                    "--records-socket",
                    records.to_str().unwrap(),
                    "--records-flush-interval",
                    "20ms",
                ],
            )
            .stdout(Stdio::null())
            .stderr(proxy_log)
            .spawn()
            .expect("spawn membrane-proxy"),
    );

    // Everything the agent streams, as `membrane monitor -o json` prints it.
    let mut monitor = std::process::Command::new(common::sibling("membrane"))
        .args(["monitor", "-o", "json", "--socket"])
        .arg(node.socket())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn membrane monitor");
    let out = monitor.stdout.take().unwrap();
    let _monitor = ChildGuard(monitor);
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    seen.lock().unwrap().push(v);
                }
            }
        });
    }
    let find = |path: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "l7" && e["l7"]["path"] == path)
            .cloned()
    };

    // Repeated until seen: the monitor and the sidecar's connection come up meanwhile.
    let client = node.pods.iter().find(|p| p.name == "client").unwrap();
    let curl = |method: &str, path: &str| {
        let out = client
            .command("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-m", "5", "-X", method])
            .arg(format!("http://10.201.0.2:8080{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let denied = wait_until(LIMIT, EVERY, "the sidecar's denial in the stream", || {
        assert_ne!(curl("PUT", "/v1/exhaust-port"), "200");
        find("/v1/exhaust-port")
    });
    let proxy_log = || std::fs::read_to_string(node.dir.path().join("proxy.log")).unwrap();
    assert_eq!(denied["verdict"], "denied", "{denied:#}");
    assert_eq!(denied["node"], "node-1", "{denied:#}");
    assert_eq!(denied["program"], "sidecar", "{denied:#}");
    assert_eq!(denied["dst_pod"], "default/server", "{denied:#}");
    assert_eq!(denied["src_pod"], "default/client", "{denied:#}");
    assert_eq!(denied["dst_identity"], server_id, "{denied:#}");
    assert_eq!(denied["l7"]["method"], "PUT", "{denied:#}");
    assert_eq!(denied["l7"]["status"], 403, "{denied:#}");
    assert_eq!(denied["l7"]["direction"], "ingress", "{denied:#}");
    assert!(
        denied["l7"]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("deathstar-l7")),
        "{denied:#}\n{}",
        proxy_log()
    );
    let allowed = wait_until(LIMIT, EVERY, "the sidecar's allow in the stream", || {
        curl("GET", "/public");
        find("/public")
    });
    assert_eq!(allowed["verdict"], "allowed", "{allowed:#}");
    assert_eq!(allowed["l7"]["status"], 503, "no upstream: {allowed:#}");
    assert_eq!(allowed["dst_pod"], "default/server", "{allowed:#}");

    // Forged in the client pod: whatever it claims, it speaks for the client.
    let line = forged("/forged-in-client");
    let f = wait_until(LIMIT, EVERY, "the client's forged record", || {
        let sock = records.to_str().unwrap();
        let _ = client
            .command("python3", &["-c", SEND_PY, sock, &line])
            .output();
        find("/forged-in-client")
    });
    assert_eq!(f["dst_pod"], "default/client", "{f:#}");
    assert_eq!(f["dst_identity"], client_id, "{f:#}");
    assert_eq!(f["dst"], "10.201.0.1:8080", "{f:#}");
    assert_eq!(
        f["src_pod"],
        Value::Null,
        "nobody here has 192.0.2.7: {f:#}"
    );
    assert_eq!(
        (&f["node"], &f["program"]),
        (&json!("node-1"), &json!("sidecar"))
    );

    // From the node itself (no endpoint's namespace): refused with a reason, counted.
    let mut s = UnixStream::connect(&records).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = writeln!(s, "{}", forged("/forged-on-node"));
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("no endpoint"), "{reply:?}");
    let status = node.ask(&Request::Status);
    let counters = &status["sidecar_records"];
    assert!(
        counters["refused_unknown_peer"].as_u64() >= Some(1),
        "{status:#}"
    );
    assert!(counters["published"].as_u64() >= Some(3), "{status:#}");
    // The stream goes on (another denial arrives after it) without the refused record.
    seen.lock().unwrap().clear();
    wait_until(LIMIT, EVERY, "a later record", || {
        curl("PUT", "/v1/exhaust-port");
        find("/v1/exhaust-port")
    });
    assert!(find("/forged-on-node").is_none());
}
