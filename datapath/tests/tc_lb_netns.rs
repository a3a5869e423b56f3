//! Service load balancing in tc with real traffic: a node network namespace with pods on
//! routed veths (host veth in the node, a /32 route to the pod; the pod's default route via
//! a link-local gateway), their tc programs attached by `NodeDatapath::attach_endpoint`,
//! and a UDP ClusterIP service with two backend pods. A client pod sends datagrams without
//! connect (so the socket LB never sees them) and must get every answer, from both
//! backends, each carrying the frontend as its source. Privileged; every namespace, cgroup
//! and pin directory is the test's own and goes on drop.

mod common;
mod lb_common;
mod tc_common;

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use common::Env;
use lb_common::{sa, UDP};
use membrane_datapath::{
    lb::LbService, Datapath, DatapathSettings, LocalEndpoint, NodeDatapath, NodeSettings,
};
use membrane_test_support::{run, unique_name, Netns, PinDir};
use tc_common::in_netns;

/// A pod: its own namespace, cgroup and pin directory (`Env`), on a routed veth whose
/// host side `lxc<id>` is in the node's namespace.
struct Pod {
    ep: LocalEndpoint,
    dp: Datapath,
    env: Env,
}

/// The node's namespace and pins; pods are dropped (detached) before it.
struct Node {
    pods: Vec<Pod>,
    dp: NodeDatapath,
    ns: Netns,
    _pins: PinDir,
}

fn sh(cmd: &mut Command) -> String {
    run(cmd)
}

impl Node {
    fn new() -> Node {
        let name = unique_name();
        let ns = Netns::add(&format!("{name}-node"));
        sh(ns.exec("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
        let pins = PinDir::new(&format!("{name}-node"));
        membrane_datapath::ensure_bpffs(pins.path()).expect("bpffs");
        let dp = NodeDatapath::load(pins.path(), &NodeSettings::default()).expect("load node");
        Node {
            pods: Vec::new(),
            dp,
            ns,
            _pins: pins,
        }
    }

    /// Pod `id` with address 10.0.0.<id>, its tc programs attached.
    fn add_pod(&mut self, id: u8) -> &Pod {
        let env = Env::new();
        let dp = env.attach(&DatapathSettings::default());
        let host = format!("lxc{id}");
        let ip = format!("10.0.0.{id}");
        let host_mac = format!("02:00:00:00:01:{id:02x}");
        let pod_mac = format!("02:00:00:00:00:{id:02x}");
        sh(Command::new("ip").args([
            "link",
            "add",
            &host,
            "netns",
            &self.ns.name,
            "address",
            &host_mac,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &env.netns,
            "address",
            &pod_mac,
        ]));
        self.ns.ip(&["link", "set", &host, "up"]);
        self.ns
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &host]);
        for args in [
            vec!["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec![
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
            vec![
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ],
            vec![
                "neigh",
                "add",
                "169.254.1.1",
                "lladdr",
                &host_mac,
                "dev",
                "eth0",
            ],
        ] {
            env.ip(&args);
        }
        let ifindex = in_netns(&self.ns.path(), || {
            nix::net::if_::if_nametoindex(host.as_str())
        })
        .expect("host veth ifindex");
        let ep = LocalEndpoint {
            id: u16::from(id),
            ifindex,
            ips: vec![ip.parse().unwrap()],
            identity: 1000 + u32::from(id),
            mac: [2, 0, 0, 0, 0, id],
            node_mac: [2, 0, 0, 0, 1, id],
        };
        let node = self.dp.clone();
        in_netns(&self.ns.path(), || node.attach_endpoint(&dp, &ep)).expect("attach endpoint");
        self.pods.push(Pod { ep, dp, env });
        self.pods.last().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in self.pods.drain(..) {
            let node = self.dp.clone();
            let _ = in_netns(&self.ns.path(), || node.detach_endpoint(&p.dp, &p.ep));
        }
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// A node with the two backend pods every test here balances over (10.0.0.2 and
/// 10.0.0.3); their namespaces.
fn node_with_backends() -> (Node, [PathBuf; 2]) {
    let mut node = Node::new();
    let b2 = netns_path(&node.add_pod(2).env.netns);
    let b3 = netns_path(&node.add_pod(3).env.netns);
    (node, [b2, b3])
}

impl Node {
    /// Gives the node its underlay address (NodePort's and the node's own source).
    fn set_node_ip(&self, ip: &str) {
        let settings = self.dp.settings().expect("settings");
        self.dp
            .set_settings(&NodeSettings {
                node_ip4: ip.parse().unwrap(),
                ..settings
            })
            .expect("node address");
    }
}

/// How the backends answer.
#[derive(Clone, Copy)]
enum Answerer {
    /// Every datagram with the backend's name ([`udp_answerer`]).
    Udp,
    /// Every connection with the backend's name, then close ([`tcp_answerer`]).
    Tcp,
}

/// Runs `client` while both backends answer on `port` (each with its name, "b2" and
/// "b3"), then checks that every answer it collected came from `from` (the frontend, as
/// the client addressed it) and that both backends answered.
fn both_backends_answer(
    kind: Answerer,
    backends: [PathBuf; 2],
    port: u16,
    from: SocketAddr,
    client: impl FnOnce() -> Vec<(SocketAddr, String)>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let [b2, b3] = backends;
    let servers = match kind {
        Answerer::Udp => [
            udp_answerer(b2, port, "b2", stop.clone()),
            udp_answerer(b3, port, "b3", stop.clone()),
        ],
        Answerer::Tcp => [
            tcp_answerer(b2, port, "b2", stop.clone()),
            tcp_answerer(b3, port, "b3", stop.clone()),
        ],
    };
    let answers = client();
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("answerer");
    }
    for (src, _) in &answers {
        assert_eq!(*src, from, "an answer came from {src}, not {from}");
    }
    let names: BTreeSet<&str> = answers.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["b2", "b3"]),
        "{} flows reached {names:?}",
        answers.len()
    );
}

/// A UDP server in namespace `ns` on `port` answering every datagram with `name`, until
/// `stop`; returns once it is bound.
fn udp_answerer(
    ns: PathBuf,
    port: u16,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let (bound, ready) = mpsc::channel();
    let h = thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind answerer");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        bound.send(()).unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(name.as_bytes(), from);
            }
        }
    });
    ready.recv().expect("answerer bound");
    h
}

/// From namespace `ns`, `flows` sockets (each its own source port: its own flow) send a
/// datagram to `dst` without connecting, up to 3 tries each; every answer's source and
/// text. A flow that gets no answer is a failure.
fn ask(ns: PathBuf, dst: SocketAddr, flows: usize) -> Vec<(SocketAddr, String)> {
    in_netns(&ns, || {
        (0..flows)
            .map(|i| {
                let sock = UdpSocket::bind("0.0.0.0:0").expect("client socket");
                sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 64];
                for _ in 0..3 {
                    sock.send_to(b"who", dst).expect("send_to");
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        return (from, String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
                panic!("flow {i} to {dst}: no answer in 3 tries");
            })
            .collect()
    })
}

#[test]
fn udp_clusterip_without_connect_is_answered_by_both_backends_as_the_frontend() {
    let (mut node, backends) = node_with_backends();
    let client_ns = netns_path(&node.add_pod(1).env.netns);
    let vip = sa("10.96.0.10:53");
    node.dp
        .sync_services(&[LbService {
            frontend: vip,
            proto: UDP,
            node_port: 0,
            external_local: false,
            backends: vec![sa("10.0.0.2:5353"), sa("10.0.0.3:5353")],
        }])
        .expect("sync services");
    both_backends_answer(Answerer::Udp, backends, 5353, vip, || {
        ask(client_ns, vip, 24)
    });
}

/// A TCP server in namespace `ns` on `port` that answers each connection with `name` and
/// closes it, until `stop`; returns once it listens.
fn tcp_answerer(
    ns: PathBuf,
    port: u16,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    let (bound, ready) = mpsc::channel();
    let h = thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("listen");
        l.set_nonblocking(true).unwrap();
        bound.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    use std::io::Write;
                    let _ = s.write_all(name.as_bytes());
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready.recv().expect("answerer listening");
    h
}

#[test]
fn the_nodes_own_tcp_connections_to_a_clusterip_reach_both_backends() {
    use std::io::Read;
    let (node, backends) = node_with_backends();
    // The node's address and the service device: the service range routed to a device
    // without ARP (this kernel has no dummy module: one end of a veth pair, ARP off), with
    // the node's address as the source.
    node.ns.ip(&[
        "link", "add", "mbsvc", "type", "veth", "peer", "name", "mbsvc1",
    ]);
    node.ns.ip(&["link", "set", "mbsvc", "arp", "off", "up"]);
    node.ns.ip(&["link", "set", "mbsvc1", "up"]);
    node.ns
        .ip(&["addr", "add", "192.168.50.1/32", "dev", "mbsvc"]);
    node.ns.ip(&[
        "route",
        "add",
        "10.96.0.0/16",
        "dev",
        "mbsvc",
        "src",
        "192.168.50.1",
    ]);
    node.set_node_ip("192.168.50.1");
    let dev = in_netns(&node.ns.path(), || nix::net::if_::if_nametoindex("mbsvc")).expect("mbsvc");
    let dp = node.dp.clone();
    in_netns(&node.ns.path(), || dp.attach_service_device(dev)).expect("attach service device");
    let vip = sa("10.96.0.20:8080");
    node.dp
        .sync_services(&[LbService {
            frontend: vip,
            proto: lb_common::TCP,
            node_port: 0,
            external_local: false,
            backends: vec![sa("10.0.0.2:8080"), sa("10.0.0.3:8080")],
        }])
        .expect("sync services");

    both_backends_answer(Answerer::Tcp, backends, 8080, vip, || {
        in_netns(&node.ns.path(), || {
            (0..24)
                .map(|i| {
                    let mut s = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                        .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                    let mut text = String::new();
                    s.read_to_string(&mut text)
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    (s.peer_addr().unwrap(), text)
                })
                .collect()
        })
    });
    in_netns(&node.ns.path(), || node.dp.detach_service_device(dev)).expect("detach");
}

#[test]
fn nodeport_from_a_client_outside_the_node_is_answered_by_both_backends() {
    let (node, backends) = node_with_backends();
    let client = Netns::add(&format!("{}-client", unique_name()));
    membrane_test_support::sandbox::veth(
        &node.ns,
        "under0",
        "192.168.50.1/24",
        &client,
        "eth0",
        "192.168.50.2/24",
    );
    node.set_node_ip("192.168.50.1");
    let dp = node.dp.clone();
    in_netns(&node.ns.path(), || dp.attach_underlay("under0")).expect("attach underlay");
    node.dp
        .sync_services(&[LbService {
            frontend: sa("10.96.0.10:53"),
            proto: UDP,
            node_port: 30053,
            external_local: false,
            backends: vec![sa("10.0.0.2:5353"), sa("10.0.0.3:5353")],
        }])
        .expect("sync services");

    let np = sa("192.168.50.1:30053");
    both_backends_answer(Answerer::Udp, backends, 5353, np, || {
        ask(client.path(), np, 24)
    });
    let dp = node.dp.clone();
    in_netns(&node.ns.path(), || dp.detach_underlay()).expect("detach underlay");
}
