//! Frames for the service load balancing tests, with real IPv4 and TCP/UDP
//! checksums (the programs rewrite addresses and ports and fix the
//! checksums incrementally: the tests recompute them from scratch), their
//! parsing back, and `BPF_PROG_TEST_RUN` keeping the program's output
//! frame and letting the test pick the skb's device.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use membrane_datapath::abi::{self, MbLbTuple};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
/// `TC_ACT_OK`.
pub const PASS: u32 = 0;
/// `TC_ACT_SHOT`.
pub const DROP: u32 = 2;
/// `TC_ACT_REDIRECT`: the program called bpf_redirect.
pub const REDIRECT: u32 = 7;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The L4 checksum of an IPv4 packet (`ip`: from the IP header on), with
/// the checksum field itself taken as zero.
fn l4_checksum(ip: &[u8]) -> u16 {
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let proto = ip[9];
    let mut l4 = ip[ihl..].to_vec();
    let off = if proto == TCP { 16 } else { 6 };
    l4[off] = 0;
    l4[off + 1] = 0;
    let mut acc = sum16(&ip[12..20], 0);
    acc += u32::from(proto) + l4.len() as u32;
    let c = fold(sum16(&l4, acc));
    if proto == UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// An Ethernet frame with an IPv4 TCP (a SYN) or UDP packet from `src` to
/// `dst` carrying 8 payload bytes, checksums filled.
pub fn frame(proto: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let mut l4 = if proto == TCP {
        let mut h = vec![0u8; 20];
        h[12] = 5 << 4;
        h[13] = 0x02;
        h
    } else {
        let mut h = vec![0u8; 8];
        h[4..6].copy_from_slice(&16u16.to_be_bytes());
        h
    };
    l4[0..2].copy_from_slice(&s.port().to_be_bytes());
    l4[2..4].copy_from_slice(&d.port().to_be_bytes());
    l4.extend_from_slice(b"membrane");
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&s.ip().octets());
    ip.extend_from_slice(&d.ip().octets());
    ip.extend_from_slice(&l4);
    let hc = fold(sum16(&ip[..20], 0));
    ip[10..12].copy_from_slice(&hc.to_be_bytes());
    let c = l4_checksum(&ip);
    let off = 20 + if proto == TCP { 16 } else { 6 };
    ip[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f
}

/// A frame's addresses: (source, destination).
pub fn addrs(f: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = &f[14..];
    let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let p = |o: usize| u16::from_be_bytes([ip[20 + o], ip[21 + o]]);
    (
        SocketAddr::V4(SocketAddrV4::new(a(12), p(0))),
        SocketAddr::V4(SocketAddrV4::new(a(16), p(2))),
    )
}

/// Both checksums of a frame are right (a UDP checksum of zero: none).
pub fn checksums_ok(f: &[u8]) -> bool {
    let ip = &f[14..];
    let header_ok = fold(sum16(&ip[..20], 0)) == 0;
    let off = 20 + if ip[9] == TCP { 16 } else { 6 };
    let have = u16::from_be_bytes([ip[off], ip[off + 1]]);
    header_ok && ((ip[9] == UDP && have == 0) || have == l4_checksum(ip))
}

/// The destination MAC of a frame.
pub fn dst_mac(f: &[u8]) -> [u8; 6] {
    f[0..6].try_into().unwrap()
}

/// A flow's tuple as the kernel keys it (the Maglev hash's input).
pub fn tuple(proto: u8, src: SocketAddr, dst: SocketAddr) -> MbLbTuple {
    let (saddr, family) = abi::encode_ip(src.ip());
    let (daddr, _) = abi::encode_ip(dst.ip());
    MbLbTuple {
        saddr,
        daddr,
        sport: src.port(),
        dport: dst.port(),
        proto,
        family,
        pad: [0; 2],
    }
}

/// `sizeof(struct __sk_buff)`; `mark` at 8, `ifindex` at 40.
const SKB_CTX: usize = 192;

/// Run `prog` on `frame` as if it arrived on device `ifindex` (0: none):
/// the return value and the frame as the program left it.
pub fn run(prog: &SchedClassifier, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut ctx = [0u8; SKB_CTX];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}
