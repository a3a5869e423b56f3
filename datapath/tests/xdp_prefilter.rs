//! The XDP prefilter on crafted frames (BPF_PROG_TEST_RUN): IPv4 and IPv6 sources in and
//! out of denied prefixes, the longest prefix, VLAN-tagged frames, truncated headers and
//! frames that are not IP; its counters and rate-limited drop records; a deny set replaced
//! while packets run without a window; its tc twin deciding the same. Each test has a node
//! pin directory of its own; nothing is attached to a device.

#[path = "common/frames.rs"]
mod frames;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use frames::*;
use ipnet::IpNet;
use membrane_datapath::{
    ensure_bpffs,
    node::{parse_prefixes, NodeDatapath, NodeSettings, PrefilterStats},
};
use membrane_test_support::{unique_name, wait_until, PinDir};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 1);

struct Node {
    node: NodeDatapath,
    xdp: PathBuf,
    tc: PathBuf,
    _pins: PinDir,
}

impl Node {
    fn new() -> Node {
        let pins = PinDir::new(&unique_name());
        ensure_bpffs(pins.path()).expect("bpffs");
        let node = NodeDatapath::load(pins.path().join("node"), &NodeSettings::default())
            .expect("load node maps");
        let (xdp, tc) = node.load_prefilter_programs().expect("load prefilter");
        Node {
            node,
            xdp,
            tc,
            _pins: pins,
        }
    }

    fn deny(&self, cidrs: &[&str]) {
        let set = parse_prefixes(cidrs).expect("valid CIDRs");
        self.node.sync_prefilter(&set).expect("sync prefilter");
        assert_eq!(self.node.prefilter().unwrap(), set, "read back");
    }

    fn stats(&self) -> PrefilterStats {
        self.node.prefilter_stats().unwrap()
    }
}

fn run_xdp(prog: &std::path::Path, frame: &[u8]) -> u32 {
    let p = Xdp::from_pin(prog, aya_obj::programs::XdpAttachType::Interface).expect("open pin");
    let mut out = vec![0u8; frame.len() + 64];
    p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    })
    .expect("BPF_PROG_TEST_RUN")
    .return_value
}

fn udp4(src: Ipv4Addr) -> Vec<u8> {
    eth(
        MAC_A,
        MAC_B,
        ETH_P_IP,
        &ipv4(src, NODE_IP, IPPROTO_UDP, false, &udp(4000, 53, b"x")),
    )
}

fn udp6(src: Ipv6Addr) -> Vec<u8> {
    eth(
        MAC_A,
        MAC_B,
        ETH_P_IPV6,
        &ipv6(src, NODE_IP6, IPPROTO_UDP, &udp(4000, 53, b"x")),
    )
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn ipv4_sources_in_denied_prefixes_are_dropped_and_the_rest_pass() {
    let n = Node::new();
    // An empty deny set passes everything.
    assert_eq!(run_xdp(&n.xdp, &udp4(v4("10.1.2.3"))), XDP_PASS);
    n.deny(&["10.0.0.0/8", "192.0.2.7/32"]);
    for (src, want) in [
        ("10.1.2.3", XDP_DROP),
        ("10.255.255.255", XDP_DROP),
        ("11.0.0.1", XDP_PASS),
        ("192.0.2.7", XDP_DROP),
        ("192.0.2.8", XDP_PASS),
        ("9.255.255.255", XDP_PASS),
    ] {
        assert_eq!(run_xdp(&n.xdp, &udp4(v4(src))), want, "source {src}");
    }
    // The destination is not what is judged: a denied destination passes.
    let to_denied = eth(
        MAC_A,
        MAC_B,
        ETH_P_IP,
        &ipv4(
            v4("11.0.0.1"),
            v4("10.0.0.1"),
            IPPROTO_UDP,
            false,
            &udp(1, 2, b""),
        ),
    );
    assert_eq!(run_xdp(&n.xdp, &to_denied), XDP_PASS);
    let s = n.stats();
    assert_eq!((s.denied_v4, s.denied_v6, s.malformed), (3, 0, 0), "{s:?}");
    assert_eq!(s.passed, 5, "{s:?}");
    assert_eq!(s.dropped_bytes, 3 * udp4(v4("10.1.2.3")).len() as u64);
}

#[test]
fn ipv6_sources_are_judged_by_their_own_trie() {
    let n = Node::new();
    n.deny(&["2001:db8::/32", "fd00:1::5", "10.0.0.0/8"]);
    for (src, want) in [
        ("2001:db8::1", XDP_DROP),
        ("2001:db8:ffff::1", XDP_DROP),
        ("2001:db9::1", XDP_PASS),
        ("fd00:1::5", XDP_DROP),
        ("fd00:1::6", XDP_PASS),
        // The IPv4 prefix does not cover its v4-mapped form: IPv6 packets are judged by
        // the IPv6 deny set alone.
        ("::ffff:10.0.0.1", XDP_PASS),
    ] {
        assert_eq!(run_xdp(&n.xdp, &udp6(v6(src))), want, "source {src}");
    }
    let s = n.stats();
    assert_eq!((s.denied_v4, s.denied_v6), (0, 3), "{s:?}");
}

#[test]
fn the_longest_prefix_decides_and_a_default_route_denies_one_family() {
    let n = Node::new();
    n.deny(&["10.1.2.0/24", "10.1.2.128/25", "10.1.2.200/32"]);
    for (src, want) in [
        ("10.1.2.1", XDP_DROP),
        ("10.1.2.129", XDP_DROP),
        ("10.1.2.200", XDP_DROP),
        ("10.1.3.1", XDP_PASS),
        ("10.1.1.255", XDP_PASS),
    ] {
        assert_eq!(run_xdp(&n.xdp, &udp4(v4(src))), want, "source {src}");
    }
    // Without the /24, only the longer prefixes are left.
    n.deny(&["10.1.2.128/25", "10.1.2.200/32"]);
    assert_eq!(run_xdp(&n.xdp, &udp4(v4("10.1.2.1"))), XDP_PASS);
    assert_eq!(run_xdp(&n.xdp, &udp4(v4("10.1.2.129"))), XDP_DROP);
    // 0.0.0.0/0 denies every IPv4 source and no IPv6 one.
    n.deny(&["0.0.0.0/0"]);
    assert_eq!(run_xdp(&n.xdp, &udp4(v4("203.0.113.9"))), XDP_DROP);
    assert_eq!(run_xdp(&n.xdp, &udp6(v6("2001:db8::1"))), XDP_PASS);
}

#[test]
fn vlan_tags_are_looked_through_truncated_headers_dropped_and_non_ip_passes() {
    let n = Node::new();
    n.deny(&["10.0.0.0/8", "2001:db8::/32"]);
    // One 802.1Q tag: the inner IPv4 source is judged.
    let inner = ipv4(v4("10.0.0.9"), NODE_IP, IPPROTO_UDP, false, &udp(1, 2, b""));
    let mut tagged = vec![0x00, 0x05];
    tagged.extend_from_slice(&ETH_P_IP.to_be_bytes());
    tagged.extend_from_slice(&inner);
    assert_eq!(
        run_xdp(&n.xdp, &eth(MAC_A, MAC_B, 0x8100, &tagged)),
        XDP_DROP
    );
    // IPv4 by its EtherType, 19 bytes of header: its source cannot be read.
    let short4 = eth(MAC_A, MAC_B, ETH_P_IP, &inner[..19]);
    assert_eq!(run_xdp(&n.xdp, &short4), XDP_DROP);
    let v6 = ipv6(v6("2001:db9::1"), NODE_IP6, IPPROTO_UDP, &[]);
    let short6 = eth(MAC_A, MAC_B, ETH_P_IPV6, &v6[..39]);
    assert_eq!(run_xdp(&n.xdp, &short6), XDP_DROP);
    // A header exactly long enough is judged (this one's source is allowed).
    let exact = eth(MAC_A, MAC_B, ETH_P_IPV6, &v6[..40]);
    assert_eq!(run_xdp(&n.xdp, &exact), XDP_PASS);
    // A tag with nothing behind it, ARP, and a bare Ethernet header pass.
    assert_eq!(
        run_xdp(&n.xdp, &eth(MAC_A, MAC_B, 0x8100, &[0, 5])),
        XDP_PASS
    );
    assert_eq!(
        run_xdp(&n.xdp, &eth(MAC_A, MAC_B, ETH_P_ARP, &[0; 28])),
        XDP_PASS
    );
    assert_eq!(run_xdp(&n.xdp, &eth(MAC_A, MAC_B, ETH_P_IP, &[])), XDP_DROP);
    assert_eq!(run_xdp(&n.xdp, &eth(MAC_A, MAC_B, 0x88cc, &[])), XDP_PASS);
    let s = n.stats();
    assert_eq!((s.denied_v4, s.malformed), (1, 3), "{s:?}");
}

#[test]
fn drops_are_reported_to_the_node_ring_rate_limited() {
    let n = Node::new();
    n.deny(&["198.51.100.0/24"]);
    let mut events = n.node.events().expect("node event ring");
    for _ in 0..50 {
        assert_eq!(run_xdp(&n.xdp, &udp4(v4("198.51.100.7"))), XDP_DROP);
    }
    let got = wait_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "a prefilter drop record",
        || {
            let evs = events.drain("n1", 1024).unwrap();
            (!evs.is_empty()).then_some(evs)
        },
    );
    let e = &got[0];
    assert_eq!(e.kind, "drop", "{e:?}");
    assert_eq!(e.reason, "prefilter-denied", "{e:?}");
    assert_eq!(e.program, "xdp", "{e:?}");
    assert_eq!(e.proto, IPPROTO_UDP, "{e:?}");
    assert_eq!(e.src.as_deref(), Some("198.51.100.7:0"), "{e:?}");
    assert_eq!(e.dst.as_deref(), Some(&*format!("{NODE_IP}:0")), "{e:?}");
    // 50 drops within far less than 10 ms per CPU would be one record each without the
    // limit; with it, a few records at most, and the counter has them all.
    assert!(got.len() < 50, "{} records for 50 drops", got.len());
    assert_eq!(n.stats().denied_v4, 50);
}

#[test]
fn a_replaced_deny_set_never_lets_an_address_both_sets_deny_through() {
    let n = Node::new();
    // Both sets deny 10.9.0.0/16, by different prefixes: a replacement that deleted
    // before inserting would open a window for 10.9.1.1 and 10.9.200.1.
    // Each set has 250 prefixes of its own besides, so that a delete-first replacement
    // would leave the window open for 250 map updates.
    let filler = |net: u8| (0..250).map(move |i| format!("172.{net}.{i}.0/24"));
    let a: Vec<String> = ["10.9.0.0/16", "fd09::/32"]
        .iter()
        .map(|s| s.to_string())
        .chain(filler(16))
        .collect();
    let b: Vec<String> = [
        "10.9.0.0/17",
        "10.9.128.0/17",
        "fd09::/33",
        "fd09:0:8000::/33",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(filler(17))
    .collect();
    let (a, b) = (parse_prefixes(&a).unwrap(), parse_prefixes(&b).unwrap());
    n.node.sync_prefilter(&a).unwrap();
    let stop = AtomicBool::new(false);
    let frames = [
        udp4(v4("10.9.1.1")),
        udp4(v4("10.9.200.1")),
        udp6(v6("fd09::1")),
        udp6(v6("fd09:0:ffff::1")),
    ];
    let runs = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let p = Xdp::from_pin(&n.xdp, aya_obj::programs::XdpAttachType::Interface).unwrap();
            let mut out = vec![0u8; 256];
            let mut runs = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, f) in frames.iter().enumerate() {
                    let r = p.test_run(TestRunOptions {
                        data_in: Some(f),
                        data_out: Some(&mut out),
                        ..TestRunOptions::default()
                    });
                    assert_eq!(
                        r.expect("BPF_PROG_TEST_RUN").return_value,
                        XDP_DROP,
                        "a window in the replacement for frame {i}"
                    );
                    runs += 1;
                }
            }
            runs
        });
        for i in 0..100 {
            let (want, other) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
            let c = n.node.sync_prefilter(want).unwrap();
            assert_eq!((c.added, c.deleted), (want.len(), other.len()));
        }
        stop.store(true, Ordering::Relaxed);
        prober.join().expect("no window")
    });
    assert!(runs > 0);
    assert_eq!(n.node.prefilter().unwrap(), a);
    // Syncing what is in force writes nothing.
    let c = n.node.sync_prefilter(&a).unwrap();
    assert_eq!((c.added, c.deleted), (0, 0));
    let empty = BTreeSet::<IpNet>::new();
    n.node.sync_prefilter(&empty).unwrap();
    assert_eq!(run_xdp(&n.xdp, &frames[0]), XDP_PASS);
}

#[test]
fn the_tc_twin_decides_the_same() {
    let n = Node::new();
    n.deny(&["10.0.0.0/8", "2001:db8::/32"]);
    for (frame, want) in [
        (udp4(v4("10.0.0.1")), TC_ACT_SHOT),
        (udp4(v4("11.0.0.1")), TC_ACT_OK),
        (udp6(v6("2001:db8::1")), TC_ACT_SHOT),
        (udp6(v6("2001:db9::1")), TC_ACT_OK),
    ] {
        assert_eq!(run_tc(&n.tc, &frame, 0).retval, want);
    }
    let s = n.stats();
    assert_eq!((s.denied_v4, s.denied_v6, s.passed), (1, 1, 2), "{s:?}");
}
