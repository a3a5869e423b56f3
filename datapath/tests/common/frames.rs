//! Crafted frames for BPF_PROG_TEST_RUN tests of the packet path: Ethernet, IPv4 (with
//! its checksum), IPv6, UDP, ICMP and Geneve, built byte by byte so a test states exactly
//! what the kernel program sees; and the Internet checksum to verify what it wrote.
#![allow(dead_code)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use membrane_datapath::abi::{MbEndpointValue, MbIpKey};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_TEB: u16 = 0x6558;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// The Internet checksum (RFC 1071) of `data`, folded and complemented.
pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet (no options) with a valid header checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, df: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    let total = (20 + payload.len()) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    if df {
        h[6] = 0x40;
    }
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram with checksum 0 (IPv4 allows it; nothing here checks it).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A TCP header (no options) with `flags`, checksum left 0.
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

/// An ICMP message of `kind` (type) and `code`, with a valid checksum.
pub fn icmp(kind: u8, code: u8, rest: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(payload);
    let c = csum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The fields of a Geneve header a test may get wrong on purpose.
#[derive(Clone, Copy)]
pub struct Geneve {
    pub version: u8,
    /// Option length in 4-byte words (0..63); that many zero words follow the header.
    pub opt_words: u8,
    pub flags: u8,
    pub proto: u16,
    pub vni: u32,
}

impl Geneve {
    pub fn new(vni: u32) -> Self {
        Geneve {
            version: 0,
            opt_words: 0,
            flags: 0,
            proto: ETH_P_TEB,
            vni,
        }
    }

    /// The header, its options (zeros) and `inner`.
    pub fn wrap(&self, inner: &[u8]) -> Vec<u8> {
        let mut g = vec![(self.version << 6) | (self.opt_words & 0x3f), self.flags];
        g.extend_from_slice(&self.proto.to_be_bytes());
        g.extend_from_slice(&self.vni.to_be_bytes()[1..]);
        g.push(0);
        g.extend(std::iter::repeat_n(0u8, usize::from(self.opt_words) * 4));
        g.extend_from_slice(inner);
        g
    }
}

/// The skb->mark that carries `identity` (MB_MARK_MAGIC_IDENTITY layout).
pub fn identity_mark(identity: u32) -> u32 {
    ((identity & 0xffff) << 16) | 0x0F00 | ((identity >> 16) & 0xff)
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// What one BPF_PROG_TEST_RUN gave: the verdict, the frame after it, `skb->mark`.
pub struct SkbOut {
    pub retval: u32,
    pub data: Vec<u8>,
    pub mark: u32,
}

/// Run the tc program pinned at `prog` once on `frame`, from `skb->mark = mark`.
pub fn run_tc(prog: &std::path::Path, frame: &[u8], mark: u32) -> SkbOut {
    // struct __sk_buff: 192 bytes, mark at offset 8.
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; 192];
    // Room for what encapsulation adds.
    let mut data = vec![0u8; frame.len() + 256];
    let p = SchedClassifier::from_pin(prog).expect("open pinned program");
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    data.truncate(r.data_size_out as usize);
    SkbOut {
        retval: r.return_value,
        data,
        mark: u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap()),
    }
}

/// Write `value` for `ip` into the node's `mb_endpoints` (under `node_dir`), as the
/// agent's attach would, without a device.
pub fn write_endpoint(node_dir: &Path, ip: IpAddr, value: MbEndpointValue) {
    let map = MapData::from_pin(node_dir.join("maps/mb_endpoints")).expect("open mb_endpoints");
    let mut m: HashMap<MapData, MbIpKey, MbEndpointValue> =
        HashMap::try_from(Map::HashMap(map)).expect("mb_endpoints");
    let mut key = MbIpKey::default();
    match ip {
        IpAddr::V4(a) => {
            key.ip[0] = u32::from_ne_bytes(a.octets());
            key.family = 2;
        }
        IpAddr::V6(a) => {
            for (i, w) in a.octets().chunks(4).enumerate() {
                key.ip[i] = u32::from_ne_bytes(w.try_into().unwrap());
            }
            key.family = 10;
        }
    }
    m.insert(key, value, 0).expect("write mb_endpoints");
}
