//! Port ranges as the policy map holds them: a range is the smallest set of
//! aligned power-of-two blocks ("port prefixes") that covers it exactly, at most 30 for a
//! 16-bit range; reading the map back merges adjacent blocks into ranges again.

/// One port prefix: the ports whose first `bits` bits equal `port`'s (`bits` 16 = one port,
/// 0 = every port). `port`'s remaining bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPrefix {
    /// The first port of the block.
    pub port: u16,
    /// Prefix length in bits, 0..=16.
    pub bits: u8,
}

impl PortPrefix {
    /// The inclusive range of ports the block covers.
    pub fn range(self) -> (u16, u16) {
        let size = 1u32 << (16 - u32::from(self.bits));
        (self.port, (u32::from(self.port) + size - 1) as u16)
    }
}

/// The port prefixes that cover `lo..=hi` exactly, in port order. Empty when `lo > hi`.
pub fn range_to_prefixes(lo: u16, hi: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest block aligned at `lo` that does not run past `hi`.
        let mut size_bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out.push(PortPrefix {
            port: lo as u16,
            bits: (16 - size_bits) as u8,
        });
        lo += 1 << size_bits;
    }
    out
}

/// Merge blocks (each with a value) into maximal ranges of equal value: adjacent blocks
/// with the same value become one range. The blocks must not overlap.
pub fn merge_ranges<V: PartialEq + Copy>(
    blocks: impl IntoIterator<Item = (PortPrefix, V)>,
) -> Vec<((u16, u16), V)> {
    let mut ranges: Vec<((u16, u16), V)> =
        blocks.into_iter().map(|(p, v)| (p.range(), v)).collect();
    ranges.sort_by_key(|&((lo, _), _)| lo);
    let mut out: Vec<((u16, u16), V)> = Vec::with_capacity(ranges.len());
    for ((lo, hi), v) in ranges {
        match out.last_mut() {
            Some(((_, last_hi), last_v))
                if *last_v == v && u32::from(*last_hi) + 1 == u32::from(lo) =>
            {
                *last_hi = hi;
            }
            _ => out.push(((lo, hi), v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lo: u16, hi: u16) -> usize {
        let prefixes = range_to_prefixes(lo, hi);
        // Exact cover, in order, without overlap or gap.
        let mut next = u32::from(lo);
        for p in &prefixes {
            let (a, b) = p.range();
            assert_eq!(u32::from(a), next, "{lo}-{hi}: gap or overlap at {p:?}");
            assert_eq!(
                u32::from(p.port) & ((1u32 << (16 - p.bits)) - 1),
                0,
                "{p:?} unaligned"
            );
            next = u32::from(b) + 1;
        }
        assert_eq!(next, u32::from(hi) + 1, "{lo}-{hi}: not covered to the end");
        let merged = merge_ranges(prefixes.iter().map(|&p| (p, ())));
        assert_eq!(
            merged,
            vec![((lo, hi), ())],
            "{lo}-{hi} does not merge back"
        );
        prefixes.len()
    }

    #[test]
    fn ranges_become_prefixes_and_back() {
        let table: [(u16, u16, usize); 9] = [
            (80, 80, 1),
            (0, 65535, 1),
            (1, 65535, 16),
            (80, 83, 1),
            (80, 90, 3),
            (1024, 2047, 1),
            (8080, 8090, 3),
            (1, 65534, 30),
            (65535, 65535, 1),
        ];
        for (lo, hi, n) in table {
            assert_eq!(check(lo, hi), n, "{lo}-{hi}");
        }
        // Every range with an end near a power of two, and a sweep of others.
        let mut worst = 0;
        for lo in (0..=65535u32)
            .step_by(997)
            .chain([1, 2, 255, 256, 1023, 1024])
        {
            for hi in [lo, lo + 1, lo + 255, lo + 4096, 65535] {
                if hi <= 65535 {
                    worst = worst.max(check(lo as u16, hi as u16));
                }
            }
        }
        assert!(worst <= 30, "a range took {worst} prefixes");
        assert!(range_to_prefixes(90, 80).is_empty());
    }

    #[test]
    fn merging_keeps_different_values_and_gaps_apart() {
        let mut blocks: Vec<(PortPrefix, u8)> = Vec::new();
        blocks.extend(range_to_prefixes(80, 89).into_iter().map(|p| (p, 1)));
        blocks.extend(range_to_prefixes(90, 99).into_iter().map(|p| (p, 1)));
        blocks.extend(range_to_prefixes(100, 100).into_iter().map(|p| (p, 2)));
        blocks.extend(range_to_prefixes(102, 110).into_iter().map(|p| (p, 2)));
        blocks.reverse();
        assert_eq!(
            merge_ranges(blocks),
            vec![((80, 99), 1), ((100, 100), 2), ((102, 110), 2)]
        );
    }
}
