//! A node as a network namespace, for the packet path: the agent runs inside it (entered
//! with `nsenter --net`, keeping the host's bpffs and cgroup mounts, as the demo runs it),
//! membrane-xds in-process but with its listener bound inside it, an underlay device
//! (`ul0`, one end of a veth pair, holding the node's address), and pods on routed veths: the pod's `eth0`
//! with a /32, its default route via the gateway 169.254.1.1 on-link, the host veth
//! `lxcN` in the node holding that gateway, and the node's route to the pod's /32 on it.
//! The pods are registered through the real membrane-cni ADD with the previous result a
//! veth plugin gives: the host veth without `sandbox`, the pod's interface with it.

use std::process::{Command, Stdio};
use std::time::Duration;

use membrane_test_support::{run, wait_until, Cgroup, ChildGuard, Netns};

use super::{Node, Pod, Xds, AGENT};

/// The pods' gateway, on every host veth.
pub const GATEWAY: &str = "169.254.1.1";

/// The two nodes of the packet-path tests as the control plane reads them, then `pods`
/// (name, node, address; each labelled `app: NAME` in namespace `default`): `node-1` at
/// `UNDERLAY.1` with the pod CIDR 10.202.0.0/24, `node-2` at `UNDERLAY.2` with
/// 10.203.0.0/24 (`underlay` is the /24's first three octets, as [`TcNode::pair`] and
/// [`TcNode::new`] are given its addresses).
pub fn two_nodes_yaml(underlay: &str, pods: &[(&str, &str, &str)]) -> String {
    let mut docs: Vec<String> = [
        ("node-1", "10.202.0.0/24", 1),
        ("node-2", "10.203.0.0/24", 2),
    ]
    .iter()
    .map(|(name, cidr, host)| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n\
                 spec: {{podCIDRs: [{cidr}]}}\n\
                 status: {{addresses: [{{type: InternalIP, address: {underlay}.{host}}}]}}\n"
        )
    })
    .collect();
    docs.extend(pods.iter().map(|(name, node, ip)| {
        format!(
            "apiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {node}}}\nstatus: {{podIP: {ip}}}\n"
        )
    }));
    docs.join("---\n")
}

/// A node namespace with the agent's files (its [`Node`]) and pods on routed veths.
pub struct TcNode {
    /// The agent's files and pods (its own `pods` hold the namespaces and cgroups).
    pub node: Node,
    /// The node's network namespace.
    pub ns: Netns,
    /// The node's underlay address (on `ul0`).
    pub ip: String,
    /// Host veth per pod name.
    pub veths: Vec<(String, String)>,
    /// The node's name in the cluster (`--node`).
    pub cluster_name: String,
}

impl TcNode {
    /// A node namespace with the underlay address `ip` (a /24 on the dummy `ul0`), IPv4
    /// forwarding on.
    pub fn new(ip: &str) -> TcNode {
        let n = TcNode::bare(ip, "node-1");
        // This kernel has no dummy devices: a veth pair whose far end stays unused.
        n.ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
        n.ns.ip(&["link", "set", "ul0p", "up"]);
        n.underlay_up();
        n
    }

    /// Two nodes, `node-1` at `ip1` and `node-2` at `ip2`, their `ul0` the two ends of
    /// one veth pair: the underlay between them.
    pub fn pair(ip1: &str, ip2: &str) -> (TcNode, TcNode) {
        let (a, b) = (TcNode::bare(ip1, "node-1"), TcNode::bare(ip2, "node-2"));
        run(Command::new("ip").args([
            "link", "add", "ul0", "netns", &a.ns.name, "type", "veth", "peer", "name", "ul0",
            "netns", &b.ns.name,
        ]));
        a.underlay_up();
        b.underlay_up();
        (a, b)
    }

    fn bare(ip: &str, cluster_name: &str) -> TcNode {
        let node = Node::new();
        let ns = Netns::add(&format!("{}-node", node.name));
        run(ns
            .exec("sysctl")
            .args(["-q", "-w", "net.ipv4.ip_forward=1"]));
        TcNode {
            node,
            ns,
            ip: ip.into(),
            veths: Vec::new(),
            cluster_name: cluster_name.into(),
        }
    }

    fn underlay_up(&self) {
        self.ns
            .ip(&["addr", "add", &format!("{}/24", self.ip), "dev", "ul0"]);
        self.ns.ip(&["link", "set", "ul0", "up"]);
    }

    /// membrane-xds reading this node's source directory, its listener bound on the node
    /// namespace's loopback (the agent inside reaches it there).
    pub fn xds(&self) -> Xds {
        self.xds_on("127.0.0.1:0")
    }

    /// [`TcNode::xds`] listening on `addr` of the node namespace (its underlay address:
    /// the other nodes' agents reach it).
    pub fn xds_on(&self, addr: &str) -> Xds {
        let path = self.ns.path();
        let source = self.node.source();
        let addr = addr.to_owned();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open the node namespace");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            Xds::start(&source, &addr)
        })
        .join()
        .expect("start membrane-xds in the node namespace")
    }

    /// A pod `name` at `ip` on a routed veth; returns its host veth's name.
    pub fn pod(&mut self, name: &str, ip: &str) -> String {
        let n = format!("{}-{name}", self.node.name);
        let pod = Pod {
            name: name.into(),
            ip: ip.into(),
            cg: Cgroup::create(&n),
            ns: Netns::add(&n),
            children: Vec::new(),
        };
        let veth = format!("lxc{}", self.veths.len());
        run(Command::new("ip").args([
            "-n",
            &self.ns.name,
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.ns.name,
        ]));
        self.ns
            .ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", &veth]);
        self.ns.ip(&["link", "set", &veth, "up"]);
        self.ns
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &veth]);
        pod.ns
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        pod.ns.ip(&["link", "set", "eth0", "up"]);
        pod.ns.ip(&[
            "route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink",
        ]);
        self.node.pods.push(pod);
        self.veths.push((name.into(), veth.clone()));
        veth
    }

    /// Starts the agent inside the node namespace (`extra` flags after `run`); returns
    /// once its socket answers.
    pub fn start_agent(&mut self, xds_url: &str, extra: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.node.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path().display()))
            .arg(AGENT)
            .arg("--bpffs")
            .arg(self.node.bpffs())
            .arg("--socket")
            .arg(self.node.socket())
            .args([
                "--node",
                &self.cluster_name,
                "run",
                "--xds-address",
                xds_url,
            ])
            .args(["--xds-backoff-ms", "50", "--xds-backoff-max-ms", "500"])
            .arg("--state-dir")
            .arg(self.node.state_dir())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn membrane-agent");
        self.node.agent = Some(ChildGuard(child));
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            "the agent's socket",
            || {
                self.node
                    .try_ask(&membrane_datapath::api::Request::Status)
                    .ok()
            },
        );
    }

    /// `membrane-cni ADD` for pod `name`, its previous result naming its host veth.
    pub fn cni_add(&self, name: &str) -> (bool, String) {
        let veth = self.veth(name);
        let pod = self.node.pods.iter().find(|p| p.name == name).expect("pod");
        let netns = pod.ns.path();
        let pod_mac = run(pod.ns.exec("cat").arg("/sys/class/net/eth0/address"));
        self.node.cni_with(
            "ADD",
            name,
            |conf| {
                conf["prevResult"]["interfaces"] = serde_json::json!([
                    {"name": veth},
                    {"name": "eth0", "mac": pod_mac.trim(), "sandbox": netns},
                ]);
                conf["prevResult"]["ips"][0]["address"] =
                    serde_json::json!(format!("{}/32", pod.ip));
            },
            &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        )
    }

    /// The host veth of pod `name`.
    pub fn veth(&self, name: &str) -> String {
        self.veths
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, v)| v.clone())
            .expect("pod")
    }

    /// `ip ARGS` in the node namespace; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }

    /// One UDP datagram from pod `name` (in its cgroup) to `dst` (`IP:PORT`) on an
    /// unconnected socket: no socket hook decides it, only the packet path.
    pub fn udp_send(&self, name: &str, dst: &str) {
        let pod = self.node.pods.iter().find(|p| p.name == name).expect("pod");
        let (host, port) = dst.rsplit_once(':').expect("IP:PORT");
        let py = "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
                  .sendto(b'x', (sys.argv[1], int(sys.argv[2])))";
        let ok = pod
            .command("python3", &["-c", py, host, port])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "send a datagram from {name}");
    }

    /// The first `fields` of the first packet on the node's `ul0` matching the capture
    /// `filter`, decoded by tshark, once `send` has run after the capture started (at most
    /// 20 s: `-a duration`).
    pub fn tshark(&self, filter: &str, fields: &[&str], send: impl Fn()) -> Vec<String> {
        let mut c = self.ns.exec("tshark");
        c.args([
            "-n",
            "-l",
            "-i",
            "ul0",
            "-f",
            filter,
            "-c",
            "1",
            "-a",
            "duration:20",
        ])
        .args(["-T", "fields"]);
        for f in fields {
            c.args(["-e", f]);
        }
        let mut child = ChildGuard(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tshark"),
        );
        // Its "Capturing on" line says the capture runs; the pipe is drained until it
        // exits (a closed pipe would kill it).
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Capturing on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("tshark did not start capturing within 20 s");
        send();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.0.stdout.take().unwrap(), &mut out).unwrap();
        out.lines()
            .next()
            .unwrap_or_default()
            .split('\t')
            .map(str::to_owned)
            .collect()
    }
}
