//! The overlay believes a tunnel's VNI only from a node (`overlay_cluster`, real VXLAN and
//! Geneve on an underlay bridge): a host on the underlay that is no node sends real VXLAN
//! and Geneve frames carrying the tiefighter's identity (and the tiefighter's address
//! inside) to a deathstar that admits only tiefighters; the deathstar gets none of them,
//! the receiving node counts and reports each drop (`overlay-unknown-node`, the outer
//! source and the identity it claimed), and the real tiefighter on node 1 still lands.

mod common;
mod overlay_cluster;
mod tc_common;

use std::{net::Ipv4Addr, time::Duration};

use membrane_datapath::{
    policy_map::{Direction::*, MapVerdict, PolicyRule},
    Overlay,
};
use membrane_test_support::wait_until;
use overlay_cluster::Cluster;

const TIEFIGHTER: u32 = 1001;
const DEATHSTAR: u32 = 1003;
/// The hostile host's address on the underlay (nodes are .1, .2).
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 99);

/// A UDP sink on argv[1]:5353 appending each datagram's payload as a line to argv[2].
const UDP_SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5353))
print("READY", flush=True)
while True:
    d, a = s.recvfrom(65535)
    with open(sys.argv[2], "ab") as f:
        f.write(d + b"\n")
"#;

/// Send argv[6] real tunnel packets (argv[1]: vxlan or geneve) to the node argv[2]
/// carrying VNI argv[3] and an inner UDP datagram argv[4] -> argv[5]:5353, "hostile N".
const TUNNEL_SENDER: &str = r#"
import socket, struct, sys
mode, node, vni, src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
v = struct.pack("!I", vni)[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    payload = b"hostile %d" % i
    udp = struct.pack("!HHHH", 40000, 5353, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frame = b"\x02\x00\x00\x00\x99\x01" + b"\x02\x00\x00\x00\x99\x02" + b"\x08\x00" + ip + udp
    if mode == "vxlan":
        s.sendto(b"\x08\x00\x00\x00" + v + b"\x00" + frame, (node, 4789))
    else:
        s.sendto(b"\x00\x00\x65\x58" + v + b"\x00" + frame, (node, 6081))
print("sent %d" % count)
"#;

/// Send one UDP datagram "friendly" to argv[1]:5353.
const FRIENDLY: &str = r#"
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"friendly", (sys.argv[1], 5353))
"#;

fn rule(direction: membrane_datapath::policy_map::Direction, id: u32, proto: u8) -> PolicyRule {
    PolicyRule {
        direction,
        remote_identity: id,
        proto,
        ports: (1, u16::MAX),
        verdict: MapVerdict::Allow,
    }
}

fn a_stranger_on_the_underlay_cannot_borrow_the_tiefighters_identity(overlay: Overlay) {
    const SENT: u64 = 5;
    let mut c = Cluster::new(2, overlay, true);
    let tie = c.add_pod(0, TIEFIGHTER, None);
    let ds = c.add_pod(1, DEATHSTAR, None);
    c.finish(&[]);
    c.policy(tie, &[rule(Egress, 0, 17)]);
    c.policy(ds, &[rule(Ingress, TIEFIGHTER, 17)]);
    let sink = tempfile::NamedTempFile::new().expect("sink file");
    let sink_path = sink.path().to_str().unwrap().to_owned();
    let server = c.pods[ds].ip.to_string();
    c.serve(ds, &["python3", "-c", UDP_SINK, &server, &sink_path]);
    let stranger = c.underlay_host(STRANGER);

    let node2 = c.nodes[1].ip.to_string();
    let tie_ip = c.pods[tie].ip.to_string();
    let out = stranger
        .exec("python3")
        .args(["-c", TUNNEL_SENDER, &overlay.to_string(), &node2])
        .args([&TIEFIGHTER.to_string(), &tie_ip, &server, &SENT.to_string()])
        .output()
        .expect("run the stranger's sender");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent 5"),
        "{overlay}: the stranger's sender: {out:?}"
    );
    let n2 = &c.nodes[1].node;
    let dropped = || {
        n2.tc_stats()
            .expect("tc stats")
            .iter()
            .find(|s| s.name == "overlay-unknown-node")
            .map_or(0, |s| s.packets)
    };
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "node 2 drops every packet of the stranger",
        || (dropped() >= SENT).then_some(()),
    );
    assert_eq!(dropped(), SENT, "{overlay}: one drop per packet");
    let events = n2.events().expect("node events").drain("test", 64).unwrap();
    let drop = events
        .iter()
        .find(|e| e.is_drop() && e.reason == "overlay-unknown-node")
        .unwrap_or_else(|| panic!("{overlay}: no drop event, got {events:?}"));
    assert_eq!(
        drop.src_identity, TIEFIGHTER,
        "{overlay}: the identity claimed"
    );
    assert!(
        drop.src
            .as_deref()
            .is_some_and(|s| s.starts_with(&STRANGER.to_string())),
        "{overlay}: the outer source reported: {drop:?}"
    );

    // The real tiefighter, behind node 1, lands.
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "the tiefighter's datagram arrives",
        || {
            c.exec(tie, &["python3", "-c", FRIENDLY, &server]);
            let got = std::fs::read_to_string(&sink_path).unwrap_or_default();
            got.contains("friendly").then_some(())
        },
    );
    let got = std::fs::read_to_string(&sink_path).unwrap();
    assert!(
        !got.contains("hostile"),
        "{overlay}: the stranger's datagrams reached the deathstar: {got}"
    );
    drop_in_order(stranger, c);
}

/// The stranger's namespace goes before the cluster's underlay it hangs on.
fn drop_in_order(stranger: membrane_test_support::Netns, c: Cluster) {
    drop(stranger);
    drop(c);
}

#[test]
fn a_stranger_on_the_underlay_cannot_borrow_an_identity_over_vxlan() {
    a_stranger_on_the_underlay_cannot_borrow_the_tiefighters_identity(Overlay::Vxlan);
}

#[test]
fn a_stranger_on_the_underlay_cannot_borrow_an_identity_over_geneve() {
    a_stranger_on_the_underlay_cannot_borrow_the_tiefighters_identity(Overlay::Geneve);
}
