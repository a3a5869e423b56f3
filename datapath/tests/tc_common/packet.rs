//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`: IPv4 and IPv6 with TCP, UDP, SCTP,
//! ICMP/ICMPv6 (echo, errors quoting another packet), extension headers and fragments.
//! Checksums stay zero: the programs under test never verify them.

use std::net::IpAddr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMP6: u8 = 58;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// The IP packet (no Ethernet header) carrying `l4` of protocol `proto`.
pub fn ip_packet(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    ip_packet_ext(src, dst, proto, &[], l4)
}

/// Same, with IPv6 extension headers `ext` (already chained: each is (next header, bytes)
/// where the bytes' first byte is overwritten with the following header's number).
pub fn ip_packet_ext(src: &str, dst: &str, proto: u8, ext: &[(u8, Vec<u8>)], l4: &[u8]) -> Vec<u8> {
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
            let total = (20 + l4.len()) as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(l4);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut chain = Vec::new();
            for (i, (_, bytes)) in ext.iter().enumerate() {
                let mut b = bytes.clone();
                b[0] = ext.get(i + 1).map_or(proto, |(n, _)| *n);
                chain.extend_from_slice(&b);
            }
            let first = ext.first().map_or(proto, |(n, _)| *n);
            let mut p = vec![0x60, 0, 0, 0];
            let plen = (chain.len() + l4.len()) as u16;
            p.extend_from_slice(&plen.to_be_bytes());
            p.push(first);
            p.push(64);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&chain);
            p.extend_from_slice(l4);
            p
        }
        _ => panic!("{src} and {dst}: mixed families"),
    }
}

/// An Ethernet frame around `ip`.
pub fn eth(ip: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

pub fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = flags;
    h
}

/// A UDP (or SCTP: same port layout) header with 8 payload bytes.
pub fn ports_hdr(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&16u16.to_be_bytes());
    h
}

pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    eth(&ip_packet(src, dst, TCP, &tcp_hdr(sport, dport, flags)))
}

pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    eth(&ip_packet(src, dst, UDP, &ports_hdr(sport, dport)))
}

pub fn sctp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    eth(&ip_packet(src, dst, SCTP, &ports_hdr(sport, dport)))
}

fn icmp_proto(src: &str) -> u8 {
    if ip(src).is_ipv6() {
        ICMP6
    } else {
        ICMP
    }
}

/// ICMP(v6) echo request (`request`) or reply with identifier `id`.
pub fn echo(src: &str, dst: &str, id: u16, request: bool) -> Vec<u8> {
    let v6 = ip(src).is_ipv6();
    let ty = match (v6, request) {
        (false, true) => 8,
        (false, false) => 0,
        (true, true) => 128,
        (true, false) => 129,
    };
    let mut h = vec![ty, 0, 0, 0, 0, 0, 0, 1];
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0u8; 8]);
    eth(&ip_packet(src, dst, icmp_proto(src), &h))
}

/// An ICMP(v6) message of `ty`/`code` from `src` to `dst` quoting `quoted` (an IP packet,
/// cut to its IP header and 8 bytes of L4, as routers do).
pub fn icmp_error(src: &str, dst: &str, ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let ihl = if quoted[0] >> 4 == 6 {
        40
    } else {
        usize::from(quoted[0] & 0x0f) * 4
    };
    let cut = &quoted[..(ihl + 8).min(quoted.len())];
    let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(cut);
    eth(&ip_packet(src, dst, icmp_proto(src), &h))
}

/// An ICMP(v6) message of another type (e.g. timestamp, router solicitation).
pub fn icmp_other(src: &str, dst: &str, ty: u8) -> Vec<u8> {
    eth(&ip_packet(
        src,
        dst,
        icmp_proto(src),
        &[ty, 0, 0, 0, 0, 0, 0, 0],
    ))
}

/// An IPv4 non-first fragment of a UDP datagram.
pub fn ip4_fragment(src: &str, dst: &str) -> Vec<u8> {
    let mut p = ip_packet(src, dst, UDP, &[0u8; 16]);
    p[6..8].copy_from_slice(&(185u16).to_be_bytes()); // offset 185 * 8 bytes
    eth(&p)
}

/// An IPv6 hop-by-hop or destination options header (8 bytes, PadN).
pub fn ext_opts(kind: u8) -> (u8, Vec<u8>) {
    (kind, vec![0, 0, 1, 4, 0, 0, 0, 0])
}

/// An IPv6 fragment header at `offset` (in 8-byte units).
pub fn ext_fragment(offset: u16) -> (u8, Vec<u8>) {
    let mut b = vec![0u8; 8];
    b[2..4].copy_from_slice(&(offset << 3).to_be_bytes());
    (44, b)
}

/// An ARP request.
pub fn arp() -> Vec<u8> {
    let mut f = vec![
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 2, 0x08, 0x06,
    ];
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0u8; 20]);
    f
}

/// An IPv6 neighbour solicitation.
pub fn neighbour_solicitation(src: &str, dst: &str) -> Vec<u8> {
    eth(&ip_packet(
        src,
        dst,
        ICMP6,
        &[
            135, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ))
}

/// A frame of another ethertype (IPX-ish).
pub fn other_l3() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x37];
    f.extend_from_slice(&[0u8; 46]);
    f
}
