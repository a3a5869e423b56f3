//! Where a ClusterIP connection's packet-path cost goes: BPF_PROG_TEST_RUN of the tc
//! programs on one connection's packets, in the order a real connection crosses them
//! (each program's output frame is the next one's input, so the backend's programs see
//! what the client's left), on the benchmark's own membrane nodes.
//!
//! Every run is `repeat = 1` (the kernel runs a test on one skb: repeated, a translated
//! packet would come round translated already), so each figure includes the test
//! timer's own overhead (tens of ns), the same in every row.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};

use crate::mbnode::Endpoint;

/// TCP flag bits.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// `TC_ACT_OK`.
const TC_ACT_OK: u32 = 0;

/// One connection's packets: (row name, endpoint index (0 client, 1 backend), program,
/// which frame goes in).
const STEPS: [(&str, usize, &str, Input); 8] = [
    (
        "client from-container: SYN (new flow)",
        0,
        FROM,
        Input::Fwd(SYN),
    ),
    ("backend to-container: SYN (new flow)", 1, TO, Input::Prev),
    (
        "backend from-container: SYN-ACK (first reply)",
        1,
        FROM,
        Input::Rev(SYN | ACK),
    ),
    (
        "client to-container: SYN-ACK (first reply)",
        0,
        TO,
        Input::Prev,
    ),
    (
        "client from-container: ACK (established)",
        0,
        FROM,
        Input::Fwd(ACK),
    ),
    (
        "backend to-container: ACK (established)",
        1,
        TO,
        Input::Prev,
    ),
    (
        "backend from-container: data (established reply)",
        1,
        FROM,
        Input::Rev(PSH | ACK),
    ),
    (
        "client to-container: data (established reply)",
        0,
        TO,
        Input::Prev,
    ),
];
const FROM: &str = "mb_from_container";
const TO: &str = "mb_to_container";

#[derive(Clone, Copy)]
enum Input {
    /// Client → where it connects, with these flags.
    Fwd(u8),
    /// Backend → client, with these flags.
    Rev(u8),
    /// The previous step's output.
    Prev,
}

/// The row names, in order.
pub fn rows() -> impl Iterator<Item = &'static str> {
    STEPS.iter().map(|s| s.0)
}

/// Runs `conns` connections from `client` (ports from `first_port` on) to `to`, answered
/// by the one of `backends` the first packet went to: the mean ns per run of every step,
/// in [`rows`] order. An error when a program drops a packet or leaves an address other
/// than a real connection's.
pub fn measure(
    eps: [&Endpoint; 2],
    client: Ipv4Addr,
    to: SocketAddrV4,
    backends: &[SocketAddrV4],
    first_port: u16,
    conns: u16,
) -> Result<Vec<f64>> {
    let progs = [
        [eps[0].prog(FROM)?, eps[0].prog(TO)?],
        [eps[1].prog(FROM)?, eps[1].prog(TO)?],
    ];
    let mut sums = vec![0f64; STEPS.len()];
    for i in 0..conns {
        let c = SocketAddrV4::new(client, first_port + i);
        let mut prev = Vec::new();
        let mut backend = backends[0];
        for (s, (name, ep, prog, input)) in STEPS.iter().enumerate() {
            let frame = match *input {
                Input::Fwd(flags) => tcp_frame(c, to, flags),
                Input::Rev(flags) => tcp_frame(backend, c, flags),
                Input::Prev => prev.clone(),
            };
            let p = &progs[*ep][usize::from(*prog == TO)];
            let mut out = vec![0u8; frame.len() + 256];
            let r = p
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })
                .with_context(|| format!("BPF_PROG_TEST_RUN: {name}"))?;
            if r.return_value != TC_ACT_OK {
                bail!("{name}: verdict {}, not a pass", r.return_value);
            }
            out.truncate(r.data_size_out as usize);
            // What a real connection's packet would be after this program.
            let (src, dst) = addrs(&out);
            if s == 0 {
                if !backends.contains(&dst) {
                    bail!("{name}: went to {dst}, no backend");
                }
                backend = dst;
            }
            let want = match (ep, prog) {
                (0, &FROM) => (c, backend),
                (1, &TO) => (c, backend),
                (1, &FROM) => (backend, c),
                _ => (to, c),
            };
            if (src, dst) != want {
                bail!(
                    "{name}: {src} -> {dst} out, expected {} -> {}",
                    want.0,
                    want.1
                );
            }
            sums[s] += r.duration.as_nanos() as f64;
            prev = out;
        }
    }
    Ok(sums.into_iter().map(|s| s / f64::from(conns)).collect())
}

/// An Ethernet + IPv4 + TCP frame (8 payload bytes with PSH) from `src` to `dst`,
/// checksums right.
fn tcp_frame(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    let payload: &[u8] = if flags & PSH != 0 { b"membrane" } else { b"" };
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&dst.port().to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = flags;
    l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
    l4.extend_from_slice(payload);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let hc = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&hc.to_be_bytes());
    let mut acc = sum16(&ip[12..20], 0) + 6 + l4.len() as u32;
    acc = sum16(&l4, acc);
    l4[16..18].copy_from_slice(&fold(acc).to_be_bytes());
    ip.extend_from_slice(&l4);
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A frame's (source, destination).
fn addrs(f: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let ip = &f[14..];
    let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let p = |o: usize| u16::from_be_bytes([ip[20 + o], ip[21 + o]]);
    (
        SocketAddrV4::new(a(12), p(0)),
        SocketAddrV4::new(a(16), p(2)),
    )
}
