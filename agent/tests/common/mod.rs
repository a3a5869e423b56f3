//! Privileged harness for the node daemon's tests: one "node" with a real membrane-xds
//! (in-process, on a runtime of its own so that the test can kill it and start it again
//! on the same port), the real `membrane-agent run --xds-address` as a child process,
//! and pods (a network namespace and a cgroup each, joined by veth pairs) registered
//! through the real `membrane-cni` ADD. Everything is removed on drop, failures included:
//! processes first, then the pins, the cgroups and the namespaces.
#![allow(dead_code)]

pub mod tc;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use membrane_datapath::api::{self, Request};
use membrane_test_support::{unique_name, wait_until, Cgroup, ChildGuard, Netns, PinDir};

pub const AGENT: &str = env!("CARGO_BIN_EXE_membrane-agent");

/// A binary of another package (membrane-datapath's `membrane-cni`), which Cargo gives
/// these tests no `CARGO_BIN_EXE_` for: a workspace build (`make test`, `cargo build
/// --workspace --bins`, or `cargo build -p membrane-datapath --bins`) puts it next to
/// `membrane-agent`.
pub fn sibling(name: &str) -> PathBuf {
    membrane_test_support::process::sibling_bin(AGENT, name)
}

/// membrane-xds with a directory source, in this process on a runtime of its own.
pub struct Xds {
    rt: Option<tokio::runtime::Runtime>,
    running: Option<membrane_xds::app::Running>,
    /// The plaintext gRPC address (kept across a restart).
    pub addr: SocketAddr,
}

impl Xds {
    /// Starts it on `addr` (port 0: any) reading `source`.
    pub fn start(source: &Path, addr: &str) -> Xds {
        Xds::start_with(source, addr, &[])
    }

    /// [`Xds::start`] serving mTLS instead, with this server certificate and client CA.
    pub fn start_tls(source: &Path, cert: &Path, key: &Path, ca: &Path) -> Xds {
        let flags = [
            "--tls-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--ca-cert",
            ca.to_str().unwrap(),
        ];
        Xds::start_with(source, "", &flags)
    }

    fn start_with(source: &Path, addr: &str, extra: &[&str]) -> Xds {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut args = vec![
            "membrane-xds",
            "--source-dir",
            source.to_str().unwrap(),
            "--debug-addr",
            "127.0.0.1:0",
            "--poll-ms",
            "100",
        ];
        if extra.is_empty() {
            args.extend(["--plaintext-xds", "--grpc-addr", addr]);
        }
        args.extend_from_slice(extra);
        let cfg = membrane_xds::config::Config::parse_from(args);
        let running = rt
            .block_on(membrane_xds::app::start(&cfg))
            .expect("start membrane-xds");
        let addr = running
            .addrs
            .grpc
            .or(running.addrs.tls)
            .expect("an xDS address");
        Xds {
            rt: Some(rt),
            running: Some(running),
            addr,
        }
    }

    /// Kills it as a crash would: every task and stream gone at once.
    pub fn kill(&mut self) {
        drop(self.running.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Xds {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pod: a network namespace and a cgroup; its address is on `eth0`.
pub struct Pod {
    pub name: String,
    pub ip: String,
    pub cg: Cgroup,
    pub ns: Netns,
    children: Vec<ChildGuard>,
}

impl Pod {
    /// A command run inside the pod (its cgroup and network namespace).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut all = vec!["netns", "exec", self.ns.name.as_str(), program];
        all.extend_from_slice(args);
        self.cg.command("ip", &all)
    }

    /// Starts servers in the pod on `ports` of its address, answering `hello\n` to every
    /// connection; returns once they listen.
    pub fn serve(&mut self, ports: &[u16]) {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut args = vec!["-c", SERVER_PY, self.ip.as_str()];
        args.extend(ports.iter().map(String::as_str));
        let mut child = self
            .command("python3", &args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let out = child.stdout.take().unwrap();
        self.children.push(ChildGuard(child));
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY", "server in {}", self.name);
    }

    /// One connect from the pod's network namespace but outside its cgroup (so not
    /// decided by the pod's egress policy): `ok` or the failure's text.
    pub fn connect_outside_cgroup(&self, addr: &str) -> String {
        let out = self
            .ns
            .exec("python3")
            .args(["-c", CONNECT_PY, addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// One connect from the pod to `addr`: `ok`, `eperm`, or another failure's text.
    pub fn connect(&self, addr: &str) -> String {
        let out = self
            .command("python3", &["-c", CONNECT_PY, addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Servers: every connection gets `hello\n` and is closed.
const SERVER_PY: &str = r#"
import socket, sys, threading
def serve(l):
    while True:
        c, _ = l.accept()
        try:
            c.sendall(b"hello\n")
        finally:
            c.close()
for p in sys.argv[2:]:
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((sys.argv[1], int(p)))
    l.listen(1024)
    threading.Thread(target=serve, args=(l,), daemon=True).start()
print("READY", flush=True)
threading.Event().wait()
"#;

/// One connect: prints `ok` (greeting read), `eperm`, or the error.
const CONNECT_PY: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    s = socket.create_connection((host, int(port)), timeout=2)
    print("ok" if s.recv(16).startswith(b"hello") else "short read")
except PermissionError:
    print("eperm")
except Exception as e:
    print(repr(e))
"#;

/// The load client: until the stop file exists (at most 120 s), connects to ALLOWED and
/// reads the greeting, then tries DENIED; prints a JSON progress line every 20 rounds and
/// a final one.
pub const LOAD_PY: &str = r#"
import json, os, socket, sys, time
host = sys.argv[1]; allowed = int(sys.argv[2]); denied = int(sys.argv[3]); stop = sys.argv[4]
st = {"ok": 0, "failed": 0, "denied": 0, "leaked": 0, "errors": []}
deadline = time.time() + 120
rounds = 0
while time.time() < deadline and not os.path.exists(stop):
    rounds += 1
    try:
        s = socket.create_connection((host, allowed), timeout=3)
        data = s.recv(16)
        s.close()
        if data.startswith(b"hello"):
            st["ok"] += 1
        else:
            st["failed"] += 1; st["errors"].append("short read %r" % data)
    except Exception as e:
        st["failed"] += 1; st["errors"].append(repr(e))
    try:
        s = socket.create_connection((host, denied), timeout=1)
        s.close()
        st["leaked"] += 1
    except PermissionError:
        st["denied"] += 1
    except Exception as e:
        st["errors"].append("denied flow: " + repr(e)); st["denied"] += 1
    if rounds % 20 == 0:
        print(json.dumps(st), flush=True)
st["done"] = True
print(json.dumps(st), flush=True)
"#;

/// One node: the source directory, the agent's state, socket and pins, the pods.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub agent: Option<ChildGuard>,
    pub pods: Vec<Pod>,
    pins: PinDir,
}

impl Node {
    pub fn new() -> Node {
        let name = unique_name();
        Node {
            dir: tempfile::tempdir().unwrap(),
            pins: PinDir::new(&name),
            name,
            agent: None,
            pods: Vec::new(),
        }
    }

    pub fn source(&self) -> PathBuf {
        let p = self.dir.path().join("source");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn bpffs(&self) -> &Path {
        self.pins.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Adds two pods joined by a veth pair, `a` at 10.201.0.1 and `b` at 10.201.0.2.
    pub fn two_pods(&mut self, a: &str, b: &str) {
        self.two_pods_at((a, "10.201.0.1"), (b, "10.201.0.2"));
    }

    /// Adds two pods joined by a veth pair (on one /24), each `(name, address)`.
    pub fn two_pods_at(&mut self, a: (&str, &str), b: (&str, &str)) {
        let mk = |pod: &str, ip: &str| {
            let n = format!("{}-{pod}", self.name);
            Pod {
                name: pod.into(),
                ip: ip.into(),
                cg: Cgroup::create(&n),
                ns: Netns::add(&n),
                children: Vec::new(),
            }
        };
        let pa = mk(a.0, a.1);
        let pb = mk(b.0, b.1);
        membrane_test_support::sandbox::veth(
            &pa.ns,
            "eth0",
            &format!("{}/24", a.1),
            &pb.ns,
            "eth0",
            &format!("{}/24", b.1),
        );
        self.pods.push(pa);
        self.pods.push(pb);
    }

    pub fn pod(&mut self, name: &str) -> &mut Pod {
        self.pods.iter_mut().find(|p| p.name == name).expect("pod")
    }

    /// Starts `membrane-agent run --node node-1 --xds-address URL`; returns once its
    /// socket answers.
    pub fn start_agent(&mut self, xds_url: &str) {
        self.start_agent_with(xds_url, &[]);
    }

    /// [`Node::start_agent`] with more flags.
    pub fn start_agent_with(&mut self, xds_url: &str, extra: &[&str]) {
        self.start_agent_as("node-1", xds_url, extra);
    }

    /// [`Node::start_agent_with`] as node `node`.
    pub fn start_agent_as(&mut self, node: &str, xds_url: &str, extra: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(AGENT)
            .arg("--bpffs")
            .arg(self.bpffs())
            .arg("--socket")
            .arg(self.socket())
            .args(["--node", node, "run", "--xds-address", xds_url])
            .args(["--xds-backoff-ms", "50", "--xds-backoff-max-ms", "500"])
            .arg("--state-dir")
            .arg(self.state_dir())
            // These nodes have no underlay (the agent runs in the test's own network
            // namespace): native routing, so no overlay device is made.
            .args(if extra.contains(&"--overlay") {
                &[][..]
            } else {
                &["--overlay", "native"][..]
            })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn membrane-agent");
        self.agent = Some(ChildGuard(child));
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            "the agent's socket",
            || self.try_ask(&Request::Status).ok(),
        );
    }

    /// SIGKILL, as a crash.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.0.kill().unwrap();
            a.0.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn try_ask(&self, req: &Request) -> std::io::Result<serde_json::Value> {
        api::request(&self.socket(), req, Duration::from_secs(10))
    }

    pub fn ask(&self, req: &Request) -> serde_json::Value {
        self.try_ask(req)
            .unwrap_or_else(|e| panic!("{req:?}: {e}\nagent log:\n{}", self.log()))
    }

    /// Runs `membrane-cni` COMMAND for pod `name` (namespace `default`); its stdout and
    /// whether it succeeded.
    pub fn cni(&self, command: &str, name: &str) -> (bool, String) {
        self.cni_with(
            command,
            name,
            |_| {},
            &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        )
    }

    /// [`Node::cni`] with the configuration edited by `edit` and `CNI_ARGS` given.
    pub fn cni_with(
        &self,
        command: &str,
        name: &str,
        edit: impl FnOnce(&mut serde_json::Value),
        cni_args: &str,
    ) -> (bool, String) {
        let pod = self.pods.iter().find(|p| p.name == name).expect("pod");
        let mut conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "test",
            "type": "membrane-cni",
            "agentSocket": self.socket(),
            "runtimeConfig": {"cgroupPath": pod.cg.path},
            "prevResult": {"cniVersion": "1.0.0",
                           "interfaces": [{"name": "eth0", "sandbox": pod.ns.path()}],
                           "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}]},
        });
        edit(&mut conf);
        let mut child = Command::new(sibling("membrane-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("ctr-{name}"))
            .env("CNI_NETNS", pod.ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_ARGS", cni_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            conf.to_string().as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The endpoint's policy map as `membrane bpf policy get` reads it.
    pub fn policy(&self, endpoint: &str) -> serde_json::Value {
        self.ask(&Request::PolicyGet {
            endpoint: endpoint.into(),
        })
    }

    /// The endpoint's state (`applied_revision`, `writes`, ...).
    pub fn endpoint(&self, endpoint: &str) -> serde_json::Value {
        self.ask(&Request::EndpointGet {
            endpoint: endpoint.into(),
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.agent = None;
        for p in &mut self.pods {
            p.children.clear();
        }
        // The pins go with `pins`; the pods' cgroups and namespaces with `pods`.
        let _ = std::fs::remove_dir_all(self.pins.path());
    }
}

/// The cluster the tests' source directory describes: `client` and `server` on node-1,
/// the server's app on 8080 (allowed to the client) and 9090 (allowed to nobody), and the
/// service `server` (10.96.0.10:80 -> 8080); the client may reach the server on 8080 only
/// (egress), the server admits the client on 8080 only (ingress).
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: node-1}
status: {podIP: 10.201.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
spec: {nodeName: node-1, containers: [{name: app, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.201.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: default}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{port: 80, targetPort: http}]}
"#;

/// The policy: egress of the client and ingress of the server, TCP PORTS.
pub fn policy(ports: &[u16]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{port: \"{p}\", protocol: TCP}}"))
        .collect();
    let ports = ports.join(", ");
    format!(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-egress, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{app: server}}}}]
    toPorts: [{{ports: [{ports}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: server-ingress, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{ports}]}}]
"#
    )
}
