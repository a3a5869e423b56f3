//! Frames for the service load balancing tests, IPv4 and IPv6 (with
//! extension headers), with real TCP/UDP checksums (the programs rewrite
//! addresses and ports and fix the checksums incrementally: the tests
//! recompute them from scratch), their parsing back, and
//! `BPF_PROG_TEST_RUN` keeping the program's output frame and letting the
//! test pick the skb's device.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

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

/// TCP flags of the SYN [`frame`] sends.
pub const SYN: u8 = 0x02;
/// TCP flags of a SYN-ACK.
pub const SYN_ACK: u8 = 0x12;

/// A TCP header with `flags` or a UDP header from `sport` to `dport` with 8
/// payload bytes, checksum zero.
fn l4_segment(proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = if proto == TCP {
        let mut h = vec![0u8; 20];
        h[12] = 5 << 4;
        h[13] = flags;
        h
    } else {
        let mut h = vec![0u8; 8];
        h[4..6].copy_from_slice(&16u16.to_be_bytes());
        h
    };
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(b"membrane");
    l4
}

/// An Ethernet frame with a TCP (a SYN) or UDP packet from `src` to `dst`
/// carrying 8 payload bytes, checksums filled: IPv4 or IPv6 (no extension
/// header) by the addresses' family.
pub fn frame(proto: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    frame_flags(proto, src, dst, SYN)
}

/// [`frame`] with these TCP flags (UDP: ignored).
pub fn frame_flags(proto: u8, src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    let (s, d) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => (s, d),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => return frame6_flags(proto, s, d, &[], flags),
        _ => panic!("{src} -> {dst}: mixed families"),
    };
    let l4 = l4_segment(proto, s.port(), d.port(), flags);
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

/// An IPv6 extension header of [`frame6`]: its type and what follows its
/// next-header byte (a multiple of 8 bytes with it).
pub struct Ext {
    pub kind: u8,
    pub body: Vec<u8>,
}

/// Hop-by-Hop options (0) or Destination options (60): one PadN option.
pub fn ext_options(kind: u8) -> Ext {
    Ext {
        kind,
        body: vec![0, 1, 4, 0, 0, 0, 0],
    }
}

/// A Routing header (43), segments left 0.
pub fn ext_routing() -> Ext {
    Ext {
        kind: 43,
        body: vec![0, 4, 0, 0, 0, 0, 0],
    }
}

/// A Fragment header (44): offset in 8-byte units, more fragments.
pub fn ext_fragment(offset: u16, more: bool) -> Ext {
    let fo = (offset << 3) | u16::from(more);
    let mut body = vec![0];
    body.extend_from_slice(&fo.to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 7]);
    Ext { kind: 44, body }
}

/// The TCP/UDP checksum over the IPv6 pseudo-header of `src`, `dst` and
/// `l4` (its checksum field taken as zero).
fn l4_checksum6(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut l4 = l4.to_vec();
    let off = if proto == TCP { 16 } else { 6 };
    l4[off] = 0;
    l4[off + 1] = 0;
    let mut acc = sum16(&src.octets(), 0);
    acc = sum16(&dst.octets(), acc);
    acc += l4.len() as u32 + u32::from(proto);
    let c = fold(sum16(&l4, acc));
    if proto == UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// An Ethernet frame with an IPv6 TCP SYN or UDP packet from `src` to `dst`
/// behind the extension headers `ext` (in order), 8 payload bytes,
/// checksum filled.
pub fn frame6(proto: u8, src: SocketAddrV6, dst: SocketAddrV6, ext: &[Ext]) -> Vec<u8> {
    frame6_flags(proto, src, dst, ext, SYN)
}

fn frame6_flags(
    proto: u8,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    ext: &[Ext],
    flags: u8,
) -> Vec<u8> {
    let mut l4 = l4_segment(proto, src.port(), dst.port(), flags);
    let c = l4_checksum6(src.ip(), dst.ip(), proto, &l4);
    let off = if proto == TCP { 16 } else { 6 };
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut chain = Vec::new();
    for (i, e) in ext.iter().enumerate() {
        chain.push(ext.get(i + 1).map_or(proto, |n| n.kind));
        chain.extend_from_slice(&e.body);
    }
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
    f.push(ext.first().map_or(proto, |e| e.kind));
    f.push(64);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    f.extend_from_slice(&chain);
    f.extend_from_slice(&l4);
    f
}

/// An IPv6 frame's L4 protocol and where its L4 header starts (after the
/// extension headers [`frame6`] writes).
fn l4_of6(f: &[u8]) -> (u8, usize) {
    let mut nh = f[14 + 6];
    let mut off = 14 + 40;
    while matches!(nh, 0 | 43 | 44 | 60) {
        let len = if nh == 44 {
            8
        } else {
            (usize::from(f[off + 1]) + 1) * 8
        };
        nh = f[off];
        off += len;
    }
    (nh, off)
}

fn is_ipv6(f: &[u8]) -> bool {
    f[12..14] == [0x86, 0xdd]
}

/// A frame's addresses: (source, destination).
pub fn addrs(f: &[u8]) -> (SocketAddr, SocketAddr) {
    if is_ipv6(f) {
        let (_, l4) = l4_of6(f);
        let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[14 + o..14 + o + 16]).unwrap());
        let p = |o: usize| u16::from_be_bytes([f[l4 + o], f[l4 + o + 1]]);
        return (
            SocketAddr::V6(SocketAddrV6::new(a(8), p(0), 0, 0)),
            SocketAddr::V6(SocketAddrV6::new(a(24), p(2), 0, 0)),
        );
    }
    let ip = &f[14..];
    let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let p = |o: usize| u16::from_be_bytes([ip[20 + o], ip[21 + o]]);
    (
        SocketAddr::V4(SocketAddrV4::new(a(12), p(0))),
        SocketAddr::V4(SocketAddrV4::new(a(16), p(2))),
    )
}

/// Both checksums of a frame are right (a UDP checksum of zero: none); an
/// IPv6 frame has only the L4 one (which zero never is).
pub fn checksums_ok(f: &[u8]) -> bool {
    if is_ipv6(f) {
        let (proto, l4) = l4_of6(f);
        let (SocketAddr::V6(s), SocketAddr::V6(d)) = addrs(f) else {
            unreachable!()
        };
        let off = l4 + if proto == TCP { 16 } else { 6 };
        let have = u16::from_be_bytes([f[off], f[off + 1]]);
        return have != 0 && have == l4_checksum6(s.ip(), d.ip(), proto, &f[l4..]);
    }
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
