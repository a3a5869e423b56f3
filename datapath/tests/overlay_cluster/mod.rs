//! A cluster of network namespaces for the overlay tests: an underlay (a bridge in a
//! namespace of its own) joining node namespaces (192.168.100.N/24 on `ulN`), each node
//! with the packet path loaded from its own pin directory (underlay program, VXLAN device
//! in vxlan mode), and pods (10.N.0.M/32) on routed veths (`lxcM` in the node, `eth0` in
//! the pod, the pod's default route via 169.254.1.1 on the link), attached with
//! `NodeDatapath::attach_endpoint`. Every node's ipcache knows every pod and its node.
//! Everything is removed on drop: pods (processes, pins), nodes (pins, namespaces),
//! the underlay. Nothing touches a host interface.
#![allow(dead_code)]

pub mod scripts;

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use membrane_datapath::{
    ensure_bpffs,
    node::{device, ensure_vxlan_device, pod_mtu},
    policy_map::PolicyRule,
    Datapath, DatapathSettings, IpcacheEntry, LocalEndpoint, NodeDatapath, NodeSettings, Overlay,
};
use membrane_test_support::{run, unique_name, ChildGuard, Netns, PinDir};

use crate::{common::Env, tc_common::in_netns};
use scripts::CAPTURE_MARKER;

/// The underlay's MTU (veth default).
pub const UNDERLAY_MTU: u16 = 1500;

pub struct Pod {
    children: Vec<ChildGuard>,
    pub dp: Datapath,
    pub ep: LocalEndpoint,
    pub ip: Ipv4Addr,
    /// fd00:N::M in the overlay modes (the underlay is IPv4: no native IPv6 here).
    pub ip6: Option<Ipv6Addr>,
    pub node: usize,
    pub identity: u32,
    pub env: Env,
}

pub struct Node {
    pub node: NodeDatapath,
    pub ip: Ipv4Addr,
    /// The underlay device's name in the node.
    pub ul: String,
    pods: u8,
    _pins: PinDir,
    pub ns: Netns,
}

/// Field order is drop order: pods, nodes, then the underlay.
pub struct Cluster {
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub overlay: Overlay,
    policy: bool,
    underlay: Netns,
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Cluster {
    /// `nodes` nodes in `overlay` mode; `policy`: nodes enforce L3/L4 policy on packets.
    pub fn new(nodes: u8, overlay: Overlay, policy: bool) -> Cluster {
        let underlay = Netns::add(&unique_name());
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let mut c = Cluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            overlay,
            policy,
            underlay,
        };
        for i in 1..=nodes {
            c.add_node(i);
        }
        c
    }

    fn add_node(&mut self, i: u8) {
        let ns = Netns::add(&unique_name());
        let ul = format!("ul{i}");
        self.plug_into_underlay(&ns, &ul, &format!("p{i}"));
        let ip = Ipv4Addr::new(192, 168, 100, i);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &ul]);
        ns.ip(&["link", "set", &ul, "up"]);
        run(ns.exec("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));

        let pins = PinDir::new(&unique_name());
        ensure_bpffs(pins.path()).expect("bpffs");
        let (overlay, policy) = (self.overlay, self.policy);
        let dir = pins.path().join("node");
        let node = in_netns(&ns.path(), || {
            let dev = device(&ul).expect("underlay device");
            let overlay_ifindex = match overlay {
                Overlay::Vxlan => ensure_vxlan_device(dev.mtu).expect("VXLAN device"),
                _ => 0,
            };
            let settings = NodeSettings {
                node_ip4: ip,
                underlay_ifindex: dev.ifindex,
                overlay_ifindex,
                underlay_mtu: dev.mtu,
                underlay_mac: dev.mac,
                overlay,
                policy,
                ..NodeSettings::default()
            };
            let node = NodeDatapath::load(&dir, &settings).expect("load node");
            node.attach_underlay(&ul).expect("attach underlay");
            node.setup_overlay().expect("set up overlay");
            node
        });
        self.nodes.push(Node {
            node,
            ip,
            ul,
            pods: 0,
            _pins: pins,
            ns,
        });
    }

    /// A veth pair from `dev` in `ns` to `port` on the underlay's bridge (up).
    fn plug_into_underlay(&self, ns: &Netns, dev: &str, port: &str) {
        run(Command::new("ip").args([
            "link",
            "add",
            dev,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.underlay.name,
        ]));
        self.underlay
            .ip(&["link", "set", port, "master", "br0", "up"]);
    }

    /// A pod on node `node` (0-based) with `identity`; its interface's MTU is the one the
    /// overlay calls for unless `mtu` says otherwise. Returns its index.
    pub fn add_pod(&mut self, node: usize, identity: u32, mtu: Option<u16>) -> usize {
        let n = &mut self.nodes[node];
        n.pods += 1;
        let j = n.pods;
        let ip = Ipv4Addr::new(10, node as u8 + 1, 0, j);
        let env = Env::new();
        let dp = env.attach(&DatapathSettings {
            policy_enforce: self.policy,
            pod_identity: identity,
            ..DatapathSettings::default()
        });
        let lxc = format!("lxc{j}");
        run(Command::new("ip").args([
            "link", "add", &lxc, "netns", &n.ns.name, "type", "veth", "peer", "name", "eth0",
            "netns", &env.netns,
        ]));
        let mtu = mtu
            .unwrap_or(pod_mtu(self.overlay, UNDERLAY_MTU))
            .to_string();
        env.ip(&["link", "set", "eth0", "mtu", &mtu, "up"]);
        env.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        n.ns.ip(&["link", "set", &lxc, "up"]);
        let pod_dev = in_netns(&env_path(&env), || device("eth0")).expect("pod eth0");
        let host_dev = in_netns(&n.ns.path(), || device(&lxc)).expect("host veth");
        env.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        env.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        env.ip(&[
            "neigh",
            "add",
            "169.254.1.1",
            "lladdr",
            &mac_str(host_dev.mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        n.ns.ip(&["route", "add", &format!("{ip}/32"), "dev", &lxc]);
        n.ns.ip(&[
            "neigh",
            "add",
            &ip.to_string(),
            "lladdr",
            &mac_str(pod_dev.mac),
            "dev",
            &lxc,
            "nud",
            "permanent",
        ]);
        let mut ips = vec![IpAddr::V4(ip)];
        let ip6 = (self.overlay != Overlay::Native)
            .then(|| Ipv6Addr::new(0xfd00, node as u16 + 1, 0, 0, 0, 0, 0, u16::from(j)));
        if let Some(ip6) = ip6 {
            // The pod's default route via a link-local gateway its host veth answers for.
            env.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip6}/128"),
                "dev",
                "eth0",
                "nodad",
            ]);
            env.ip(&[
                "-6",
                "neigh",
                "add",
                "fe80::1",
                "lladdr",
                &mac_str(host_dev.mac),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            env.ip(&[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ]);
            n.ns.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &lxc]);
            n.ns.ip(&[
                "-6",
                "neigh",
                "add",
                &ip6.to_string(),
                "lladdr",
                &mac_str(pod_dev.mac),
                "dev",
                &lxc,
                "nud",
                "permanent",
            ]);
            ips.push(IpAddr::V6(ip6));
        }
        let ep = LocalEndpoint {
            id: u16::from(j),
            ifindex: host_dev.ifindex,
            ips,
            identity,
            mac: pod_dev.mac,
            node_mac: host_dev.mac,
        };
        let nd = n.node.clone();
        in_netns(&n.ns.path(), || nd.attach_endpoint(&dp, &ep)).expect("attach endpoint");
        self.pods.push(Pod {
            children: Vec::new(),
            dp,
            ep,
            ip,
            ip6,
            node,
            identity,
            env,
        });
        self.pods.len() - 1
    }

    /// Every node's ipcache: every pod, with its node's address as tunnel endpoint when it
    /// is another node's, and every node's address (host or remote-node); `overrides` replace a pod's identity on one node's ipcache
    /// (node index, pod index, identity). Native mode: pod CIDRs routed via their nodes.
    pub fn finish(&self, overrides: &[(usize, usize, u32)]) {
        for (i, n) in self.nodes.iter().enumerate() {
            let mut entries = Vec::new();
            for (k, p) in self.pods.iter().enumerate() {
                let identity = overrides
                    .iter()
                    .find(|(on, pod, _)| *on == i && *pod == k)
                    .map_or(p.identity, |(_, _, id)| *id);
                let tunnel = (p.node != i).then_some(self.nodes[p.node].ip);
                let mut prefixes = vec![format!("{}/32", p.ip)];
                prefixes.extend(p.ip6.map(|a| format!("{a}/128")));
                for prefix in prefixes {
                    entries.push(IpcacheEntry {
                        prefix: prefix.parse().unwrap(),
                        identity,
                        tunnel,
                    });
                }
            }
            // The nodes' addresses, as the agent writes them from the Node resources:
            // this node's host (1), the others' remote-node (6), the only outer sources
            // whose tunnel packets the node believes.
            for (j, other) in self.nodes.iter().enumerate() {
                entries.push(IpcacheEntry {
                    prefix: format!("{}/32", other.ip).parse().unwrap(),
                    identity: if j == i { 1 } else { 6 },
                    tunnel: None,
                });
            }
            n.node.sync_ipcache(&entries).expect("sync ipcache");
            if self.overlay == Overlay::Native {
                for (j, other) in self.nodes.iter().enumerate() {
                    if j != i {
                        let cidr = format!("10.{}.0.0/24", j + 1);
                        n.ns.ip(&["route", "replace", &cidr, "via", &other.ip.to_string()]);
                    }
                }
            }
        }
    }

    /// In the overlay modes, what the agent adds on every node (`packet::node_routes`):
    /// each other node's pod CIDR routed via its address on the underlay, with the pods'
    /// MTU, so the node's own packets to remote pods leave by the underlay (where
    /// `mb_to_netdev` tunnels them). Native mode: `finish` routes them already.
    pub fn route_pod_cidrs(&self) {
        if self.overlay == Overlay::Native {
            return;
        }
        let mtu = pod_mtu(self.overlay, UNDERLAY_MTU).to_string();
        for (i, n) in self.nodes.iter().enumerate() {
            for (j, other) in self.nodes.iter().enumerate() {
                if j != i {
                    let cidr = format!("10.{}.0.0/24", j + 1);
                    let via = other.ip.to_string();
                    n.ns.ip(&["route", "replace", &cidr, "via", &via, "mtu", &mtu]);
                }
            }
        }
    }

    /// A host on the underlay that is no node: a namespace with `ip`/24 on a port of the
    /// underlay's bridge. Dropped by the caller (before the cluster).
    pub fn underlay_host(&self, ip: Ipv4Addr) -> Netns {
        let ns = Netns::add(&unique_name());
        self.plug_into_underlay(&ns, "eth0", &format!("s{}", ip.octets()[3]));
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns
    }

    /// Set pod `p`'s policy rules.
    pub fn policy(&self, p: usize, rules: &[PolicyRule]) {
        self.pods[p].dp.sync_policy(rules).expect("sync policy");
    }

    /// Run `argv` in pod `p`'s namespace (outside its cgroup: the socket hooks stay out of
    /// it, only the packet path decides), bounded; its stdout.
    pub fn exec(&self, p: usize, argv: &[&str]) -> String {
        exec_in(&self.pods[p].env.netns, argv)
    }

    /// Start `argv` in pod `p`'s namespace; returns once it printed a line starting with
    /// READY on stdout. Killed when the cluster drops.
    pub fn serve(&mut self, p: usize, argv: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.pods[p].env.netns])
            .args(argv)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        self.pods[p].children.push(ChildGuard(child));
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("READY"),
            "server {argv:?} did not start: {line:?}"
        );
    }

    /// Start tshark on node `n`'s underlay device with capture filter `filter`, printing
    /// `fields` of the first `count` packets; returns once it is capturing.
    ///
    /// tshark says "Capturing on" a little before it captures (a CI run under load lost
    /// the first packets sent after it), so the capture counts as started only once it
    /// has shown a marker frame sent out of that device (`CAPTURE_MARKER`, until one is
    /// seen, 20 s at most). Marker frames are never among the lines.
    pub fn tshark(&self, n: usize, filter: &str, fields: &[&str], count: usize) -> Capture {
        let node = &self.nodes[n];
        let mut c = node.ns.exec("tshark");
        c.args(["-n", "-l", "-i", &node.ul])
            .arg("-f")
            .arg(format!("({filter}) or ether proto {MARKER_ETHERTYPE:#x}"))
            .args(["-a", "duration:30", "-T", "fields", "-e", "eth.type"]);
        for f in fields {
            c.args(["-e", f]);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tshark (apt-get install tshark)");
        // Both pipes drained for as long as tshark runs (a closed pipe would kill it).
        let stderr = child.stderr.take().unwrap();
        let said = Arc::new(Mutex::new(String::new()));
        let to = said.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut to = to.lock().unwrap();
                to.push_str(&line);
                to.push('\n');
            }
        });
        // A line a packet, its ethertype first: None for a marker, else the fields asked.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let (eth_type, rest) = line.split_once('\t').unwrap_or((&line, ""));
                let marker = u32::from_str_radix(eth_type.trim_start_matches("0x"), 16)
                    == Ok(MARKER_ETHERTYPE);
                if tx.send((!marker).then(|| rest.to_owned())).is_err() {
                    break;
                }
            }
        });
        let mut capture = Capture {
            child: ChildGuard(child),
            packets: rx,
            count,
            lines: Vec::new(),
        };
        let mut sender = node.ns.exec("python3");
        sender
            .args(["-c", CAPTURE_MARKER, &node.ul])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _sender = ChildGuard(sender.spawn().expect("spawn the marker sender"));
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match capture
                .packets
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(None) => return capture,
                Ok(Some(line)) => capture.lines.push(line),
                Err(e) => panic!(
                    "tshark on node {n} showed no marker frame within 20 s ({e}): {}",
                    said.lock().unwrap()
                ),
            }
        }
    }
}

/// The marker frames' ethertype (see `scripts::CAPTURE_MARKER`).
const MARKER_ETHERTYPE: u32 = 0x88b5;

/// A running tshark; stopped when dropped.
pub struct Capture {
    child: ChildGuard,
    /// What tshark printed, a packet a message: `None` for a marker frame.
    packets: mpsc::Receiver<Option<String>>,
    count: usize,
    lines: Vec<String>,
}

impl Capture {
    /// The fields of the first `count` packets captured (fewer when tshark stopped at its
    /// 30 s first), tab-separated, a line a packet.
    pub fn lines(mut self) -> Vec<String> {
        while self.lines.len() < self.count {
            match self.packets.recv() {
                Ok(Some(line)) => self.lines.push(line),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        self.lines.truncate(self.count);
        std::mem::take(&mut self.lines)
    }
}

impl Drop for Capture {
    /// SIGTERM, so that tshark stops its dumpcap too (a SIGKILL would leave dumpcap
    /// capturing until its own 30 s were up), and the wait for it to exit (bounded by the
    /// same 30 s); the guard then has nothing left to kill.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.0.id().to_string()])
            .status();
        let _ = self.child.0.wait();
    }
}

/// tshark prints Geneve's VNI in hex and VXLAN's in decimal: a capture line whose first
/// field is the VNI, with that field in decimal either way.
pub fn decimal_vni(line: String) -> String {
    match line.split_once('\t') {
        Some((v, rest)) if v.starts_with("0x") => {
            format!("{}\t{rest}", u32::from_str_radix(&v[2..], 16).unwrap_or(0))
        }
        _ => line,
    }
}

/// Run `argv` in namespace `ns`, bounded (30 s); its stdout and stderr.
pub fn exec_in(ns: &str, argv: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["30", "ip", "netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap_or_else(|e| panic!("run {argv:?} in {ns}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn env_path(env: &Env) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(&env.netns)
}
