//! Harness of the packet-path tests: a node pin directory beside endpoint pin
//! directories (each an `Env`: netns + cgroup + bpffs dir, cleaned up on drop), host
//! veths inside the test's own network namespace, and crafted frames for
//! `BPF_PROG_TEST_RUN`. Nothing touches a host interface: the tc programs attach to
//! veths that exist only in the test namespace, from a thread that entered it.
#![allow(dead_code)]

pub mod echo;
pub mod packet;

use std::{fs::File, net::IpAddr, path::Path};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use membrane_datapath::{
    events::Event,
    policy_map::{Direction, MapVerdict, PolicyRule},
    Datapath, DatapathSettings, IpcacheEntry, LocalEndpoint, NodeDatapath, NodeSettings, TcStat,
};
use membrane_test_support::{Netns, PinDir};

use crate::common::Env;

/// `TC_ACT_OK` / `TCX_PASS`.
pub const PASS: u32 = 0;
/// `TC_ACT_SHOT` / `TCX_DROP`.
pub const DROP: u32 = 2;

/// A rule of an endpoint's policy.
pub fn rule(
    direction: Direction,
    remote_identity: u32,
    proto: u8,
    lo: u16,
    hi: u16,
    verdict: MapVerdict,
) -> PolicyRule {
    PolicyRule {
        direction,
        remote_identity,
        proto,
        ports: (lo, hi),
        verdict,
    }
}

/// Packets of one reason's row (0 = forwarded).
pub fn stat(stats: &[TcStat], reason: u8) -> u64 {
    stats
        .iter()
        .find(|s| s.reason == reason)
        .map_or(0, |s| s.packets)
}

/// Run `f` on a thread inside the network namespace at `ns` (a thread's namespace is its
/// own: the test's other threads stay where they are).
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(ns).expect("open netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// One endpoint: its `Env` (pin dir, cgroup, netns), its host veth in that netns, and its
/// tc programs opened from their pins for test runs.
pub struct TcEndpoint {
    pub ep: LocalEndpoint,
    pub dp: Datapath,
    from: SchedClassifier,
    to: SchedClassifier,
    pub env: Env,
}

/// A node with endpoints. Field order is drop order: endpoints (and their namespaces)
/// first, then the node's namespace and pins.
pub struct TcNode {
    pub eps: Vec<TcEndpoint>,
    /// With [`TcNode::routed`]: the node's own namespace, where the host veths live and
    /// routes to the pods; otherwise each host veth lives in its endpoint's namespace.
    pub node_ns: Option<Netns>,
    pub node: NodeDatapath,
    _pins: PinDir,
}

/// The node side's address on every host veth (the pods' gateway, on-link).
pub const GATEWAY: &str = "169.254.1.1";
/// The node side's IPv6 link-local address on every host veth (the pods' IPv6 gateway).
pub const GATEWAY6: &str = "fe80::1/64";

impl TcNode {
    /// A node with `policy` enforcement (MB_NODE_F_POLICY) and no endpoint yet.
    pub fn new(policy: bool) -> Self {
        let pins = PinDir::new(&format!("{}-node", membrane_test_support::unique_name()));
        membrane_datapath::ensure_bpffs(pins.path()).expect("bpffs");
        let node = NodeDatapath::load(
            pins.path(),
            &NodeSettings {
                policy,
                ..NodeSettings::default()
            },
        )
        .expect("load node");
        TcNode {
            eps: Vec::new(),
            node_ns: None,
            node,
            _pins: pins,
        }
    }

    /// A node whose pods are real network namespaces routed by a node namespace: each
    /// pod's `eth0` has its /32 and a default route via [`GATEWAY`] on-link, each host veth
    /// has the gateway as a /32 and the node routes the pod's /32 to it.
    pub fn routed(policy: bool) -> Self {
        let mut n = Self::new(policy);
        let ns = Netns::add(&format!("{}-n", membrane_test_support::unique_name()));
        membrane_test_support::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]));
        n.node_ns = Some(ns);
        n
    }

    /// Add endpoint `id` with `identity` and addresses `ips`, its own enforcement switch
    /// `enforce` (MB_CFG_POLICY_ENFORCE), attached to a host veth `h<id>` in its netns.
    pub fn add(&mut self, id: u16, identity: u32, ips: &[&str], enforce: bool) -> usize {
        let env = Env::new();
        let dp = env.attach(&DatapathSettings {
            policy_enforce: enforce,
            pod_identity: identity,
            ..DatapathSettings::default()
        });
        let host = format!("h{id}");
        let ns = match &self.node_ns {
            None => {
                let peer = format!("p{id}");
                // Left down: test runs need no carrier, and a link that is up sends
                // IPv6 neighbour discovery and MLD through the programs, which would
                // make the counters' exact values racy.
                env.ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
                Path::new("/run/netns").join(&env.netns)
            }
            Some(node) => {
                node.ip(&[
                    "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns",
                    &env.netns,
                ]);
                node.ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", &host]);
                node.ip(&["link", "set", &host, "up"]);
                env.ip(&["link", "set", "eth0", "up"]);
                for ip in ips {
                    if ip.contains(':') {
                        let ip = format!("{ip}/128");
                        node.ip(&["-6", "route", "add", &ip, "dev", &host]);
                        env.ip(&["addr", "add", &ip, "dev", "eth0", "nodad"]);
                    } else {
                        let ip = format!("{ip}/32");
                        node.ip(&["route", "add", &ip, "dev", &host]);
                        env.ip(&["addr", "add", &ip, "dev", "eth0"]);
                    }
                }
                env.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"]);
                env.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]);
                if ips.iter().any(|ip| ip.contains(':')) {
                    // IPv6: the gateway is the host veth's link-local address, found
                    // by neighbour discovery through the programs.
                    node.ip(&["addr", "add", GATEWAY6, "dev", &host, "nodad"]);
                    env.ip(&[
                        "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
                    ]);
                }
                node.path()
            }
        };
        let ifindex = in_netns(&ns, || nix::net::if_::if_nametoindex(host.as_str()))
            .expect("host veth ifindex");
        let ep = LocalEndpoint {
            id,
            ifindex,
            ips: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
            identity,
            mac: [2, 0, 0, 0, 0, id as u8],
            node_mac: [2, 0, 0, 0, 1, id as u8],
        };
        let node = self.node.clone();
        in_netns(&ns, || node.attach_endpoint(&dp, &ep)).expect("attach endpoint");
        let from = SchedClassifier::from_pin(dp.dir().join("progs/mb_from_container"))
            .expect("open from-container");
        let to = SchedClassifier::from_pin(dp.dir().join("progs/mb_to_container"))
            .expect("open to-container");
        self.eps.push(TcEndpoint {
            ep,
            dp,
            from,
            to,
            env,
        });
        self.eps.len() - 1
    }
}

impl TcNode {
    /// Make the node ipcache (and every endpoint's own `mb_identity`, which the socket
    /// hooks read) hold `entries`: prefix → identity, no tunnels.
    pub fn ipcache(&self, entries: &[(&str, u32)]) {
        let e: Vec<IpcacheEntry> = entries
            .iter()
            .map(|(p, id)| IpcacheEntry {
                prefix: p.parse().unwrap(),
                identity: *id,
                tunnel: None,
            })
            .collect();
        self.node.sync_ipcache(&e).expect("sync node ipcache");
        let pairs: Vec<(membrane_datapath::IpNet, u32)> =
            e.iter().map(|e| (e.prefix, e.identity)).collect();
        for ep in &self.eps {
            ep.dp.sync_ipcache(&pairs).expect("sync endpoint ipcache");
        }
    }
}

impl TcEndpoint {
    /// Run `mb_from_container` on `frame` (the pod sends it); the program's return value.
    pub fn send(&self, frame: &[u8]) -> u32 {
        run(&self.from, frame, 0)
    }

    /// Run `mb_to_container` on `frame` with `skb->mark = mark`.
    pub fn deliver_marked(&self, frame: &[u8], mark: u32) -> u32 {
        run(&self.to, frame, mark)
    }

    /// Run `mb_to_container` on `frame` (it goes to the pod).
    pub fn deliver(&self, frame: &[u8]) -> u32 {
        run(&self.to, frame, 0)
    }

    /// Every event the endpoint's ring buffer holds now.
    pub fn events(&self) -> Vec<Event> {
        let mut r = self.dp.events().expect("events reader");
        r.drain("test", 10_000).expect("drain events")
    }
}

/// `sizeof(struct __sk_buff)` on the kernels this runs on; `mark` is at offset 8.
const SKB_CTX: usize = 192;

fn run(p: &SchedClassifier, frame: &[u8], mark: u32) -> u32 {
    let mut ctx = [0u8; SKB_CTX];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    r.return_value
}

/// The one-endpoint fixture of the test-run suites: the pod (`ONE_POD`, `ONE_POD6`,
/// identity `ONE_POD_ID`) enforcing `rules`, nothing else allowed in either direction;
/// peers in 10.2/24 and fd00:2::/64 are `ONE_PEER_ID`, 10.3/24 is `ONE_OTHER_ID`, the rest
/// of the world is 2.
pub fn one_pod(rules: &[PolicyRule]) -> TcNode {
    let mut n = TcNode::new(true);
    n.add(1, ONE_POD_ID, &[ONE_POD, ONE_POD6], true);
    n.ipcache(&[
        ("10.1.0.10/32", ONE_POD_ID),
        ("fd00:1::10/128", ONE_POD_ID),
        ("10.2.0.0/24", ONE_PEER_ID),
        ("fd00:2::/64", ONE_PEER_ID),
        ("10.3.0.0/24", ONE_OTHER_ID),
    ]);
    n.eps[0].dp.sync_policy(rules).expect("sync policy");
    n
}
/// The fixture pod's addresses and identity.
pub const ONE_POD: &str = "10.1.0.10";
/// See [`ONE_POD`].
pub const ONE_POD6: &str = "fd00:1::10";
/// See [`ONE_POD`].
pub const ONE_POD_ID: u32 = 1000;
/// The identity of the fixture's peers (10.2/24, fd00:2::/64).
pub const ONE_PEER_ID: u32 = 2000;
/// The identity of 10.3/24 in the fixture.
pub const ONE_OTHER_ID: u32 = 3000;
