//! membrane's packet path on a benchmark node, set up through the library as the agent
//! does: the node's pin directory ([`NodeDatapath::load`]), and per pod an endpoint pin
//! directory with its (empty) cgroup and the tc programs on its host veth
//! ([`NodeDatapath::attach_endpoint`], run from a thread inside the node's namespace).
//! Everything is removed when the guards drop: pins (which detaches the links), then the
//! cgroups.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::programs::SchedClassifier;
use membrane_datapath::{Datapath, DatapathSettings, LocalEndpoint, NodeDatapath, NodeSettings};
use membrane_test_support::sandbox::{unique_name, Cgroup, Netns, PinDir};

use crate::topo::Pod;

/// One pod's endpoint.
pub struct Endpoint {
    pub ep: LocalEndpoint,
    pub dp: Datapath,
    // Pins first (detaching the cgroup hooks and tc links), then the cgroup.
    _pins: PinDir,
    _cg: Cgroup,
}

impl Endpoint {
    /// One of its tc programs, opened from its pin (for BPF_PROG_TEST_RUN).
    pub fn prog(&self, name: &str) -> Result<SchedClassifier> {
        SchedClassifier::from_pin(self.dp.dir().join("progs").join(name))
            .with_context(|| format!("open {name} of endpoint {}", self.ep.id))
    }
}

/// A node's packet path.
pub struct MbNode {
    pub eps: Vec<Endpoint>,
    pub node: NodeDatapath,
    netns: PathBuf,
    _pins: PinDir,
}

/// Runs `f` on a thread inside the network namespace at `ns` (a thread's namespace is its
/// own; the rest of the process stays where it is).
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", ns.display()))?
    })
}

impl MbNode {
    /// Loads the node's packet path for the node namespace `ns` with `settings`.
    pub fn load(ns: &Netns, settings: &NodeSettings) -> Result<MbNode> {
        let pins = PinDir::new(&format!("{}-node", unique_name()));
        membrane_datapath::ensure_bpffs(pins.path()).context("bpffs")?;
        let node = NodeDatapath::load(pins.path(), settings).context("load the node datapath")?;
        Ok(MbNode {
            eps: Vec::new(),
            node,
            netns: ns.path(),
            _pins: pins,
        })
    }

    /// Runs `f` inside the node's namespace.
    pub fn in_node<T: Send>(&self, f: impl FnOnce(&NodeDatapath) -> Result<T> + Send) -> Result<T> {
        let node = &self.node;
        in_netns(&self.netns, || f(node))
    }

    /// Makes `pod` endpoint `id` with `identity`, policy enforced, tc attached to its host
    /// veth; its index in `eps`.
    pub fn attach(&mut self, pod: &Pod, id: u16, identity: u32) -> Result<usize> {
        let name = unique_name();
        let pins = PinDir::new(&name);
        membrane_datapath::ensure_bpffs(pins.path()).context("bpffs")?;
        let cg = Cgroup::create(&name);
        let dp = Datapath::attach(
            pins.path(),
            &cg.path,
            &DatapathSettings {
                policy_enforce: true,
                pod_identity: identity,
                ..DatapathSettings::default()
            },
        )
        .context("attach the endpoint datapath")?;
        let ep = LocalEndpoint {
            id,
            ifindex: pod.host_ifindex,
            ips: vec![IpAddr::V4(pod.ip)],
            identity,
            mac: pod.mac,
            node_mac: pod.host_mac,
        };
        {
            let (dp, ep) = (&dp, &ep);
            self.in_node(|n| {
                n.attach_endpoint(dp, ep)
                    .context("attach tc to the pod's veth")
            })?;
        }
        self.eps.push(Endpoint {
            ep,
            dp,
            _pins: pins,
            _cg: cg,
        });
        Ok(self.eps.len() - 1)
    }

    /// Packets the node's tc programs dropped so far, every reason summed.
    pub fn dropped(&self) -> Result<u64> {
        Ok(self
            .node
            .tc_stats()?
            .iter()
            .filter(|s| s.reason != 0)
            .map(|s| s.packets)
            .sum())
    }
}

/// An Ethernet + IPv4 + UDP frame, 64 bytes of payload, checksums right.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let payload = [0x5au8; 64];
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    // UDP checksum 0: none (IPv4 allows it).
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}
