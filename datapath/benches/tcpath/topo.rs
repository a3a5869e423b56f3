//! Topologies of the packet-path benchmarks, all inside network namespaces this process
//! creates (removed when their guards drop, failures included): a node namespace with
//! pods on routed veths (Cilium's and Calico's shape: the pod's default route points at
//! a gateway address the host side of its veth holds, the node routes each pod's /32 to
//! its veth), and two nodes joined by an underlay veth pair.

use std::net::Ipv4Addr;
use std::process::Command;

use membrane_test_support::{process::run, sandbox::Netns};

/// The pods' gateway on every node: the host side of each pod veth holds it as a /32.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// A pod: its namespace, address and the two ends of its veth.
pub struct Pod {
    /// The pod's address (a /32 on its `eth0`).
    pub ip: Ipv4Addr,
    /// MAC of the pod's `eth0`.
    pub mac: [u8; 6],
    /// MAC of the host-side veth.
    pub host_mac: [u8; 6],
    /// ifindex of the host-side veth, in the node's namespace.
    pub host_ifindex: u32,
    /// The pod's namespace (last: dropped after everything attached to it).
    pub ns: Netns,
}

/// A node: its namespace with forwarding on and reverse-path filtering off.
pub fn node(name: &str) -> Netns {
    let ns = Netns::add(name);
    sysctl(&ns, "net.ipv4.ip_forward", "1");
    sysctl(&ns, "net.ipv4.conf.all.rp_filter", "0");
    sysctl(&ns, "net.ipv4.conf.default.rp_filter", "0");
    ns
}

/// `sysctl -w KEY=VALUE` inside `ns`.
pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    run(ns
        .exec("sysctl")
        .args(["-q", "-w", &format!("{key}={value}")]));
}

/// A pod namespace `name` on `node`, joined by the veth `host_if` (node side) / `eth0`
/// (pod side), routed: pod `ip/32`, default route via [`GATEWAY`]; node route `ip/32` via
/// `host_if`.
pub fn routed_pod(node: &Netns, name: &str, host_if: &str, ip: Ipv4Addr) -> Pod {
    let ns = Netns::add(name);
    run(Command::new("ip").args([
        "link", "add", host_if, "netns", &node.name, "type", "veth", "peer", "name", "eth0",
        "netns", &ns.name,
    ]));
    let gw = format!("{GATEWAY}/32");
    node.ip(&["addr", "add", &gw, "dev", host_if]);
    node.ip(&["link", "set", host_if, "up"]);
    sysctl(node, &format!("net.ipv4.conf.{host_if}.rp_filter"), "0");
    node.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if]);
    ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&[
        "route",
        "add",
        &GATEWAY.to_string(),
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &GATEWAY.to_string(),
        "dev",
        "eth0",
    ]);
    let (host_mac, host_ifindex) = link(node, host_if);
    let (mac, _) = link(&ns, "eth0");
    Pod {
        ip,
        mac,
        host_mac,
        host_ifindex,
        ns,
    }
}

/// Joins two nodes with the underlay veth pair `ul0`, addressed `a_ip/24` and `b_ip/24`.
pub fn underlay(a: &Netns, a_ip: Ipv4Addr, b: &Netns, b_ip: Ipv4Addr) {
    run(Command::new("ip").args([
        "link", "add", "ul0", "netns", &a.name, "type", "veth", "peer", "name", "ul0", "netns",
        &b.name,
    ]));
    for (ns, ip) in [(a, a_ip), (b, b_ip)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"]);
        ns.ip(&["link", "set", "ul0", "up"]);
        sysctl(ns, "net.ipv4.conf.ul0.rp_filter", "0");
    }
}

/// (MAC, ifindex) of `dev` in `ns`.
pub fn link(ns: &Netns, dev: &str) -> ([u8; 6], u32) {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link output");
    let l = &v[0];
    let mac = parse_mac(l["address"].as_str().expect("link address"));
    let ifindex = l["ifindex"].as_u64().expect("link ifindex") as u32;
    (mac, ifindex)
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("mac octet");
    }
    mac
}
