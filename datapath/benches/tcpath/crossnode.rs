//! Benchmark 3: TCP between pods on two nodes: throughput (iperf3, one stream) and
//! one-byte request/response latency (a ping-pong over one connection, `tcpath worker
//! rr` against `tcp-serve --echo`).
//!
//! Each variant has its own pair of node namespaces joined by an underlay veth pair, a
//! pod on each (routed veths), so no variant pays for another's hooks:
//! - `plain`: no BPF; each node routes the other's pod CIDR via the other's underlay
//!   address (the reference);
//! - `native`, `vxlan`, `geneve`: the tc programs on the pods' veths (and the overlay
//!   and underlay devices), the node ipcache naming the remote pod's node as its tunnel
//!   endpoint; native routing keeps the plain routes, the overlays need none. Pods get
//!   the MTU the mode leaves them (underlay − 50 with an overlay).

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::Stdio;

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use membrane_datapath::node::{device, ensure_vxlan_device, pod_mtu};
use membrane_datapath::policy_map::{Direction, MapVerdict, PolicyRule};
use membrane_datapath::{IpNet, IpcacheEntry, NodeSettings, Overlay};
use membrane_test_support::sandbox::{unique_name, Netns};
use membrane_test_support::ChildGuard;

use crate::mbnode::{in_netns, MbNode};

use crate::report::{median, num, ratio, reps, Report};
use crate::{argv, topo, worker_json, worker_server, Common};

/// The cross-node benchmark's options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Overlay modes.
    #[arg(long, value_delimiter = ',', default_value = "native,vxlan,geneve")]
    modes: Vec<Overlay>,
    /// Request/response round trips per measurement.
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
}

pub const NODE1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
pub const NODE2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 2);
pub const POD1_IP: Ipv4Addr = Ipv4Addr::new(10, 3, 1, 2);
pub const POD2_IP: Ipv4Addr = Ipv4Addr::new(10, 3, 2, 2);
const RR_PORT: u16 = 7000;

/// Two nodes, a pod on each, servers in pod 2.
pub struct Bed {
    _servers: Vec<ChildGuard>,
    // membrane's node datapaths, if any: their pins go before the namespaces.
    _mb: Vec<MbNode>,
    pub pod1: topo::Pod,
    // Kept for their lifetime: dropped after the servers, pods before their nodes.
    _pod2: topo::Pod,
    _node1: Netns,
    _node2: Netns,
}

/// The nodes and pods of a variant, servers not started yet.
pub fn nodes(tag: &str) -> (Netns, Netns, topo::Pod, topo::Pod) {
    let base = unique_name();
    let node1 = topo::node(&format!("{base}-{tag}1"));
    let node2 = topo::node(&format!("{base}-{tag}2"));
    topo::underlay(&node1, NODE1_IP, &node2, NODE2_IP);
    let pod1 = topo::routed_pod(&node1, &format!("{base}-{tag}1p"), "lxc1", POD1_IP);
    let pod2 = topo::routed_pod(&node2, &format!("{base}-{tag}2p"), "lxc2", POD2_IP);
    (node1, node2, pod1, pod2)
}

/// Each node routes the other's pod CIDR (/24) via the other's underlay address.
pub fn native_routes(node1: &Netns, node2: &Netns) {
    node1.ip(&["route", "add", "10.3.2.0/24", "via", &NODE2_IP.to_string()]);
    node2.ip(&["route", "add", "10.3.1.0/24", "via", &NODE1_IP.to_string()]);
}

/// Starts the echo server and iperf3 in pod 2.
pub fn with_servers(node1: Netns, node2: Netns, pod1: topo::Pod, pod2: topo::Pod) -> Result<Bed> {
    let echo = worker_server(
        &pod2.ns,
        None,
        &argv(&[
            "tcp-serve",
            "--echo",
            "--threads",
            "1",
            "--listen",
            &format!("{POD2_IP}:{RR_PORT}"),
        ]),
    )?;
    let mut iperf = ChildGuard(
        pod2.ns
            .exec("iperf3")
            .args(["-s", "--forceflush", "-B", &POD2_IP.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn iperf3 -s (apt-get install iperf3)")?,
    );
    let mut lines = BufReader::new(iperf.stdout.take().context("iperf3 stdout")?).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("Server listening") => break,
            Some(Ok(_)) => {}
            _ => bail!("iperf3 -s in {} ended before listening", pod2.ns.name),
        }
    }
    // iperf3 keeps writing its per-test reports: keep draining them.
    std::thread::spawn(move || for _ in lines {});
    Ok(Bed {
        _mb: Vec::new(),
        _servers: vec![echo, iperf],
        pod1,
        _pod2: pod2,
        _node1: node1,
        _node2: node2,
    })
}

/// The plain reference: routes, no BPF.
pub fn plain() -> Result<Bed> {
    let (n1, n2, p1, p2) = nodes("pl");
    native_routes(&n1, &n2);
    with_servers(n1, n2, p1, p2)
}

/// Identities of the two pods.
const POD1_ID: u32 = 801;
const POD2_ID: u32 = 802;

/// membrane in `overlay` mode on both nodes, as the agent sets it up: the underlay
/// device's program, the VXLAN device (vxlan), the pods' tc programs with policy enforced
/// (pod 1 may reach pod 2 over TCP, pod 2 accepts pod 1), each node's ipcache naming the
/// other node as the remote pod's tunnel endpoint, the pods' MTU what the mode leaves.
pub fn membrane(overlay: Overlay) -> Result<Bed> {
    let tag = match overlay {
        Overlay::Native => "na",
        Overlay::Vxlan => "vx",
        Overlay::Geneve => "ge",
    };
    let (n1, n2, p1, p2) = nodes(tag);
    if overlay == Overlay::Native {
        native_routes(&n1, &n2);
    }
    let mut mbs = Vec::new();
    for (ns, ip, pod, id, peer) in [
        (&n1, NODE1_IP, &p1, POD1_ID, (POD2_IP, POD2_ID, NODE2_IP)),
        (&n2, NODE2_IP, &p2, POD2_ID, (POD1_IP, POD1_ID, NODE1_IP)),
    ] {
        let settings = in_netns(&ns.path(), || {
            let dev = device("ul0")?;
            let overlay_ifindex = match overlay {
                Overlay::Vxlan => ensure_vxlan_device(dev.mtu)?,
                _ => 0,
            };
            Ok(NodeSettings {
                node_ip4: ip,
                underlay_ifindex: dev.ifindex,
                overlay_ifindex,
                underlay_mtu: dev.mtu,
                underlay_mac: dev.mac,
                overlay,
                policy: true,
                ..NodeSettings::default()
            })
        })?;
        pod.ns.ip(&[
            "link",
            "set",
            "eth0",
            "mtu",
            &pod_mtu(overlay, settings.underlay_mtu).to_string(),
        ]);
        let mut mb = MbNode::load(ns, &settings)?;
        mb.in_node(|n| {
            n.attach_underlay("ul0")?;
            n.setup_overlay()?;
            Ok(())
        })
        .context("underlay and overlay devices")?;
        let e = mb.attach(pod, 1, id)?;
        let (peer_ip, peer_id, peer_node) = peer;
        let host = |ip: Ipv4Addr, identity, tunnel| IpcacheEntry {
            prefix: IpNet::from(IpAddr::V4(ip)),
            identity,
            tunnel,
        };
        mb.node
            .sync_ipcache(&[
                host(pod.ip, id, None),
                host(peer_ip, peer_id, Some(peer_node)),
            ])
            .context("sync the node ipcache")?;
        let direction = if id == POD1_ID {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        mb.eps[e]
            .dp
            .sync_policy(&[PolicyRule {
                direction,
                remote_identity: peer_id,
                proto: 6,
                ports: (1, 65535),
                verdict: MapVerdict::Allow,
            }])
            .context("sync the pod's policy")?;
        mbs.push(mb);
    }
    let mut bed = with_servers(n1, n2, p1, p2)?;
    bed._mb = mbs;
    Ok(bed)
}

/// Throughput pod 1 → pod 2 in Gbit/s (iperf3, one stream, the receiver's count).
fn throughput(bed: &Bed, secs: f64) -> Result<f64> {
    let out = bed
        .pod1
        .ns
        .exec("iperf3")
        .args([
            "-c",
            &POD2_IP.to_string(),
            "-J",
            "-t",
            &format!("{}", secs.ceil() as u64),
        ])
        .output()
        .context("iperf3 -c")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 in {}: {e}", bed.pod1.ns.name);
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 sum_received")?;
    Ok(bps / 1e9)
}

/// Request/response p50 in µs.
fn latency(bed: &Bed, iters: usize) -> Result<f64> {
    let v = worker_json(
        &bed.pod1.ns,
        None,
        &argv(&[
            "rr",
            "--to",
            &format!("{POD2_IP}:{RR_PORT}"),
            "--iters",
            &iters.to_string(),
        ]),
    )?;
    v["p50_us"].as_f64().context("rr p50")
}

/// Runs the benchmark and writes its page.
pub fn run(a: &Args) -> Result<()> {
    let mut r =
        Report::new("Cross-node TCP: throughput and latency per overlay mode vs a plain route");
    let mut beds: Vec<(String, Bed)> = vec![("plain veth route, no BPF".into(), plain()?)];
    for o in a.modes.iter().copied() {
        beds.push((format!("membrane, {o}"), membrane(o)?));
    }
    let mut tput = vec![Vec::new(); beds.len()];
    let mut lat = vec![Vec::new(); beds.len()];
    for rep in 0..a.common.reps {
        let mut order: Vec<usize> = (0..beds.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            tput[i].push(throughput(&beds[i].1, a.common.secs)?);
            lat[i].push(latency(&beds[i].1, a.iters)?);
        }
    }
    r.line(format!(
        "{} repetitions per cell (the order of the variants turning round every repetition), \
         iperf3 {} s one stream, {} one-byte round trips; median reported.",
        a.common.reps,
        a.common.secs.ceil(),
        a.iters
    ));
    r.line("");
    let (t0, l0) = (median(&tput[0]), median(&lat[0]));
    let mut table = Vec::new();
    for (i, (name, _)) in beds.iter().enumerate() {
        let (t, l) = (median(&tput[i]), median(&lat[i]));
        table.push(vec![
            name.clone(),
            num(t, 2),
            ratio(t, t0),
            num(l, 1),
            ratio(l, l0),
            reps(&tput[i], 2),
            reps(&lat[i], 1),
        ]);
    }
    r.table(
        &[
            "variant",
            "Gbit/s",
            "vs plain",
            "RR p50 µs",
            "vs plain (latency)",
            "per-rep Gbit/s",
            "per-rep p50 µs",
        ],
        &table,
    );
    r.finish(&a.common.out)
}
