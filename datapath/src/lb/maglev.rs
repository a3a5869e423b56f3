//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): each backend
//! walks its own permutation of the table's entries (an offset and a skip
//! from two hashes of its name) and the backends take turns claiming the
//! next free entry of their walk until the table is full. Every backend
//! ends up with ⌊M/N⌋ or ⌈M/N⌉ entries, and removing one backend moves few
//! entries that were not its own.
//!
//! The hashes are written out here (MurmurHash3's 32-bit rounds) rather
//! than taken from a hashing crate: every node must compute the same table
//! for the same backends, across versions and builds, and the kernel's
//! flow hash (`mb_lb_hash` in `lib/lb.h`) must be the same function as
//! [`flow_hash`]; a crate's hash is free to change between releases.

use std::net::SocketAddr;

use crate::abi::MbLbTuple;

/// One MurmurHash3 round: mixes `k` into `h`.
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3's finaliser.
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 (x86, 32 bits) of `data` with `seed`.
fn murmur3(seed: u32, data: &[u8]) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    }
    // Lengths beyond u32 do not occur for backend names; truncation is harmless.
    fmix(h ^ data.len() as u32)
}

/// The hash the kernel indexes a service's Maglev table with, for a flow
/// as its packets carry it: the same function as `mb_lb_hash` in
/// `lib/lb.h` (address words as stored, then the ports, then the protocol).
pub fn flow_hash(t: &MbLbTuple) -> u32 {
    let mut h = 0x6d62;
    for w in t.saddr.iter().chain(t.daddr.iter()) {
        h = mix(h, *w);
    }
    h = mix(h, (u32::from(t.sport) << 16) | u32::from(t.dport));
    h = mix(h, u32::from(t.proto));
    fmix(h ^ 40)
}

/// The name a backend is hashed by: its address and port, as text, so the
/// table depends on the backends alone, never on ids local to a node.
fn name(b: &SocketAddr) -> String {
    b.to_string()
}

/// The Maglev table of `backends` with `m` entries (`m` a prime larger
/// than the number of backends): for each entry, the index into
/// `backends` of the backend it sends flows to. The table depends on the
/// order of `backends`; callers pass them sorted so that every node
/// computes the same one. Empty when there are no backends.
pub fn table(backends: &[SocketAddr], m: usize) -> Vec<usize> {
    let n = backends.len();
    if n == 0 || m < 2 {
        return Vec::new();
    }
    let m64 = m as u64;
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let nm = name(b);
            let offset = u64::from(murmur3(0x4d41_474c, nm.as_bytes())) % m64;
            let skip = u64::from(murmur3(0x534b_4950, nm.as_bytes())) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![usize::MAX; m];
    let mut filled = 0;
    // Each pass gives every backend one more entry; a walk visits every
    // entry once (m prime, skip in 1..m), so a free one is always found.
    loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = ((offset + next[i] * skip) % m64) as usize;
            while entry[c] != usize::MAX {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m64) as usize;
            }
            entry[c] = i;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return entry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: usize = crate::abi::LB_MAGLEV_M;

    fn backends(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                format!("10.1.{}.{}:8080", i / 200, i % 200 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Published test vectors of MurmurHash3_x86_32.
        assert_eq!(murmur3(0, b""), 0);
        assert_eq!(murmur3(1, b""), 0x514e_28b7);
        assert_eq!(murmur3(0, b"test"), 0xba6b_d213);
        assert_eq!(murmur3(0x9747_b28c, b"Hello, world!"), 0x2488_4cba);
    }

    #[test]
    fn every_entry_is_filled_and_shares_are_even() {
        for n in [1, 2, 3, 7, 40] {
            let t = table(&backends(n), M);
            assert_eq!(t.len(), M);
            let mut share = vec![0usize; n];
            for e in &t {
                assert!(*e < n, "entry names backend {e} of {n}");
                share[*e] += 1;
            }
            let (lo, hi) = (M / n, M.div_ceil(n));
            for (i, s) in share.iter().enumerate() {
                assert!(
                    (lo..=hi).contains(s),
                    "{n} backends: backend {i} has {s} entries, expected {lo}..={hi}"
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_little_else() {
        for n in [3, 10, 30] {
            let all = backends(n);
            let before = table(&all, M);
            let gone = n / 2;
            let rest: Vec<SocketAddr> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, b)| *b)
                .collect();
            let after = table(&rest, M);
            let mut moved = 0;
            let mut kept = 0;
            for (b, a) in before.iter().zip(&after) {
                if *b == gone {
                    continue;
                }
                kept += 1;
                if all[*b] != rest[*a] {
                    moved += 1;
                }
            }
            // Ideal is 0; the paper reports a few percent at this M / N.
            let share = moved as f64 / kept as f64;
            assert!(
                share < 0.05,
                "{n} backends: {moved} of {kept} entries of remaining backends moved"
            );
        }
    }

    #[test]
    fn the_table_depends_on_backends_not_on_the_run() {
        let b = backends(5);
        assert_eq!(table(&b, M), table(&b, M));
        assert!(table(&[], M).is_empty());
    }
}
