//! Go's `sort.Slice`, comparison for comparison and swap for swap, so that
//! a table sorted by one of istioctl's comparators comes out in istioctl's
//! order even where the comparator calls two rows equal or is not an order
//! at all (the route table's "numeric names ascending, anything else
//! unordered"). A stable sort would agree with Go only on strict orders.
//!
//! Since Go 1.19 `sort.Slice` is a pattern-defeating quicksort (pdqsort,
//! Orson Peters) without the BlockQuicksort partitioning. What follows is
//! that algorithm as Go runs it, written from its description:
//!
//! - the work limit is the bit length of the slice's length; a range of at
//!   most 12 elements is insertion-sorted (so for short tables Go's sort is
//!   stable);
//! - the pivot is the element at a quarter, a half or three quarters for
//!   ranges under 8, the median of those three from 8, and the median of
//!   the three medians of their neighbourhoods (Tukey's ninther) from 50;
//!   the comparisons that found it say whether the range looked ascending
//!   (no swap) or descending (all 12 swapped), and a descending range is
//!   reversed in place first;
//! - a range that looked ascending after a balanced, already-partitioned
//!   step gets a partial insertion sort: up to five out-of-order neighbours
//!   are fixed (only on ranges of 50 or more) before giving up;
//! - when the element just left of the range is not less than the pivot,
//!   the range is split into "equal to the pivot" and "greater" and only
//!   the greater part is sorted further;
//! - otherwise a Hoare partition around the pivot; the shorter side is
//!   sorted by recursion and the longer one by the loop; a side shorter
//!   than an eighth of the range marks the step unbalanced;
//! - after an unbalanced step three elements around the middle are swapped
//!   with positions drawn from a xorshift generator seeded with the range's
//!   length (masked to the next power of two, wrapped into the range), and
//!   the limit drops by one; at zero the range is heapsorted.
//!
//! Go versions: 1.19 introduced pdqsort in `sort` and it has kept the shape
//! above since. The generator changed once: Go 1.19 to 1.23 shift by 13, 17
//! and 5 (a 32-bit xorshift's triple on a 64-bit state); golang/go#70144
//! (filed against 1.23.2) replaced it with the 64-bit triple 13, 7, 17,
//! which is what current Go ships. Which release first shipped the fix was
//! not confirmed here; it was filed during the Go 1.24 cycle, and Istio
//! 1.27's istioctl is built with Go 1.24, so [`go_sort`] uses the new
//! triple ([`ISTIOCTL`]). [`Generator::Go119`] is checked against a
//! real Go 1.19 (`cli/tests/golden/gosort/`); the two differ only in the
//! generator, and only on slices where a partition came out unbalanced.

/// The xorshift step Go's pattern breaking uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// Go 1.19 to 1.23: `x ^= x << 13; x ^= x >> 17; x ^= x << 5` (what the
    /// golden from a real Go 1.19 checks).
    #[cfg_attr(not(test), allow(dead_code))]
    Go119,
    /// Go 1.24 on: `x ^= x << 13; x ^= x >> 7; x ^= x << 17`.
    Go124,
}

impl Generator {
    fn step(self, x: &mut u64) -> u64 {
        let (a, b, c) = match self {
            Generator::Go119 => (13, 17, 5),
            Generator::Go124 => (13, 7, 17),
        };
        *x ^= *x << a;
        *x ^= *x >> b;
        *x ^= *x << c;
        *x
    }
}

/// The generator of the Go istioctl 1.27 is built with (see the module docs).
pub const ISTIOCTL: Generator = Generator::Go124;

/// Go's `sort.Slice(v, less)` as istioctl 1.27's Go runs it.
pub fn go_sort<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    sort_slice(v, less, ISTIOCTL);
}

/// Go's `sort.Slice(v, less)` with `generator`'s pattern breaking; returns
/// which of the algorithm's paths the sort took.
pub fn sort_slice<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool, generator: Generator) -> Paths {
    let n = v.len();
    let mut s = Sorter {
        v,
        less,
        generator,
        paths: Paths::default(),
    };
    s.pdqsort(0, n, bit_len(n));
    s.paths
}

/// How often a sort took each of pdqsort's paths (for tests to show that
/// their inputs reach every one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Paths {
    /// Ranges of at most 12 insertion-sorted.
    pub insertion: u32,
    /// Ranges heapsorted after the limit ran out.
    pub heapsort: u32,
    /// Pattern breaks after an unbalanced partition.
    pub break_patterns: u32,
    /// Ranges reversed because they looked descending.
    pub reversed: u32,
    /// Partial insertion sorts that moved elements.
    pub partial_shifts: u32,
    /// Partial insertion sorts that found the range sorted.
    pub partial_sorted: u32,
    /// Splits into "equal to the pivot" and "greater".
    pub partition_equal: u32,
    /// Ordinary partitions.
    pub partition: u32,
}

/// `bits.Len`: the number of bits needed to write `n`.
fn bit_len(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

#[derive(PartialEq)]
enum Hint {
    Unknown,
    Increasing,
    Decreasing,
}

struct Sorter<'a, T, F> {
    v: &'a mut [T],
    less: F,
    generator: Generator,
    paths: Paths,
}

impl<T, F: Fn(&T, &T) -> bool> Sorter<'_, T, F> {
    fn less(&self, i: usize, j: usize) -> bool {
        (self.less)(&self.v[i], &self.v[j])
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.v.swap(i, j);
    }

    /// Sorts `[a, b)`; `limit` bad pivots are allowed before heapsort.
    fn pdqsort(&mut self, mut a: usize, mut b: usize, mut limit: u32) {
        const MAX_INSERTION: usize = 12;
        let mut was_balanced = true;
        let mut was_partitioned = true;
        loop {
            let length = b - a;
            if length <= MAX_INSERTION {
                self.paths.insertion += 1;
                self.insertion_sort(a, b);
                return;
            }
            if limit == 0 {
                self.paths.heapsort += 1;
                self.heapsort(a, b);
                return;
            }
            if !was_balanced {
                self.break_patterns(a, b);
                limit -= 1;
            }
            let (mut pivot, mut hint) = self.choose_pivot(a, b);
            if hint == Hint::Decreasing {
                self.paths.reversed += 1;
                self.reverse(a, b);
                // The pivot keeps its distance from the other end.
                pivot = (b - 1) - (pivot - a);
                hint = Hint::Increasing;
            }
            if was_balanced
                && was_partitioned
                && hint == Hint::Increasing
                && self.partial_insertion_sort(a, b)
            {
                return;
            }
            // Not less than the element before the range (a pivot placed
            // earlier): only "equal" and "greater" can be left here.
            if a > 0 && !self.less(a - 1, pivot) {
                self.paths.partition_equal += 1;
                a = self.partition_equal(a, b, pivot);
                continue;
            }
            self.paths.partition += 1;
            let (mid, already) = self.partition(a, b, pivot);
            was_partitioned = already;
            let (left, right) = (mid - a, b - mid);
            let threshold = length / 8;
            if left < right {
                was_balanced = left >= threshold;
                self.pdqsort(a, mid, limit);
                a = mid + 1;
            } else {
                was_balanced = right >= threshold;
                self.pdqsort(mid + 1, b, limit);
                b = mid;
            }
        }
    }

    fn insertion_sort(&mut self, a: usize, b: usize) {
        for i in a + 1..b {
            let mut j = i;
            while j > a && self.less(j, j - 1) {
                self.swap(j, j - 1);
                j -= 1;
            }
        }
    }

    /// Restores the max-heap property below `root` in the heap of `hi`
    /// elements that starts at `first`.
    fn sift_down(&mut self, mut root: usize, hi: usize, first: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= hi {
                return;
            }
            if child + 1 < hi && self.less(first + child, first + child + 1) {
                child += 1;
            }
            if !self.less(first + root, first + child) {
                return;
            }
            self.swap(first + root, first + child);
            root = child;
        }
    }

    fn heapsort(&mut self, a: usize, b: usize) {
        let hi = b - a;
        for i in (0..=(hi - 1) / 2).rev() {
            self.sift_down(i, hi, a);
        }
        for i in (0..hi).rev() {
            self.swap(a, a + i);
            self.sift_down(0, i, a);
        }
    }

    fn break_patterns(&mut self, a: usize, b: usize) {
        let length = b - a;
        if length < 8 {
            return;
        }
        self.paths.break_patterns += 1;
        let mut random = length as u64;
        let mask = (1u64 << bit_len(length)) - 1;
        let middle = a + (length / 4) * 2;
        for idx in middle - 1..=middle + 1 {
            // The mask keeps the draw under twice the length.
            let mut other = (self.generator.step(&mut random) & mask) as usize;
            if other >= length {
                other -= length;
            }
            self.swap(idx, a + other);
        }
    }

    /// The pivot's index, and what the comparisons made on the way say
    /// about the range's order.
    fn choose_pivot(&mut self, a: usize, b: usize) -> (usize, Hint) {
        const SHORTEST_NINTHER: usize = 50;
        const MAX_SWAPS: u32 = 4 * 3;
        let l = b - a;
        let mut swaps = 0;
        let mut i = a + l / 4;
        let mut j = a + l / 4 * 2;
        let mut k = a + l / 4 * 3;
        if l >= 8 {
            if l >= SHORTEST_NINTHER {
                i = self.median(i - 1, i, i + 1, &mut swaps);
                j = self.median(j - 1, j, j + 1, &mut swaps);
                k = self.median(k - 1, k, k + 1, &mut swaps);
            }
            j = self.median(i, j, k, &mut swaps);
        }
        let hint = match swaps {
            0 => Hint::Increasing,
            MAX_SWAPS => Hint::Decreasing,
            _ => Hint::Unknown,
        };
        (j, hint)
    }

    /// `(x, y)` ordered by one comparison, counting the exchange.
    fn order2(&self, x: usize, y: usize, swaps: &mut u32) -> (usize, usize) {
        if self.less(y, x) {
            *swaps += 1;
            (y, x)
        } else {
            (x, y)
        }
    }

    /// The index of the median of three, by three comparisons.
    fn median(&self, x: usize, y: usize, z: usize, swaps: &mut u32) -> usize {
        let (x, y) = self.order2(x, y, swaps);
        let (y, _) = self.order2(y, z, swaps);
        let (_, y) = self.order2(x, y, swaps);
        y
    }

    fn reverse(&mut self, a: usize, b: usize) {
        let (mut i, mut j) = (a, b - 1);
        while i < j {
            self.swap(i, j);
            i += 1;
            j -= 1;
        }
    }

    /// Fixes up to five out-of-order neighbours; true if `[a, b)` ends up
    /// sorted.
    fn partial_insertion_sort(&mut self, a: usize, b: usize) -> bool {
        const MAX_STEPS: usize = 5;
        const SHORTEST_SHIFTING: usize = 50;
        let mut i = a + 1;
        for _ in 0..MAX_STEPS {
            while i < b && !self.less(i, i - 1) {
                i += 1;
            }
            if i == b {
                self.paths.partial_sorted += 1;
                return true;
            }
            if b - a < SHORTEST_SHIFTING {
                return false;
            }
            self.paths.partial_shifts += 1;
            self.swap(i, i - 1);
            // The smaller one moves left. Go's loop runs down to index 1
            // of the whole slice, not to `a + 1`; kept as Go has it, though
            // it never moves anything across `a`: the element before a
            // range is an earlier pivot that nothing in the range is less
            // than (partitioning keeps that for any comparator).
            if i - a >= 2 {
                let mut j = i - 1;
                while j >= 1 && self.less(j, j - 1) {
                    self.swap(j, j - 1);
                    j -= 1;
                }
            }
            // The greater one moves right.
            if b - i >= 2 {
                let mut j = i + 1;
                while j < b && self.less(j, j - 1) {
                    self.swap(j, j - 1);
                    j += 1;
                }
            }
        }
        false
    }

    /// Hoare partition of `[a, b)` around `pivot` (moved to `a` first):
    /// less before, not-less after. Returns the pivot's final index and
    /// whether nothing had to move.
    fn partition(&mut self, a: usize, b: usize, pivot: usize) -> (usize, bool) {
        self.swap(a, pivot);
        // `i` and `j` bound (inclusively) what is still unpartitioned; `j`
        // can step to `a`, never below it.
        let (mut i, mut j) = (a + 1, b - 1);
        while i <= j && self.less(i, a) {
            i += 1;
        }
        while i <= j && !self.less(j, a) {
            j -= 1;
        }
        if i > j {
            self.swap(j, a);
            return (j, true);
        }
        self.swap(i, j);
        i += 1;
        j -= 1;
        loop {
            while i <= j && self.less(i, a) {
                i += 1;
            }
            while i <= j && !self.less(j, a) {
                j -= 1;
            }
            if i > j {
                break;
            }
            self.swap(i, j);
            i += 1;
            j -= 1;
        }
        self.swap(j, a);
        (j, false)
    }

    /// Splits `[a, b)` (nothing in it less than the pivot) into elements
    /// equal to the pivot, then greater ones; returns where the greater
    /// ones start.
    fn partition_equal(&mut self, a: usize, b: usize, pivot: usize) -> usize {
        self.swap(a, pivot);
        let (mut i, mut j) = (a + 1, b - 1);
        loop {
            while i <= j && !self.less(a, i) {
                i += 1;
            }
            while i <= j && self.less(a, j) {
                j -= 1;
            }
            if i > j {
                break;
            }
            self.swap(i, j);
            i += 1;
            j -= 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64, the generator `cli/tests/golden/gosort/main.go` uses
    /// for the same inputs.
    struct Mix(u64);

    impl Mix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> i64 {
            (self.next() % n as u64) as i64
        }
    }

    /// The golden's cases: name, keys for length `n`, comparator on keys.
    type Case = (
        &'static str,
        fn(usize, &mut Mix) -> Vec<i64>,
        fn(i64, i64) -> bool,
    );

    fn cases() -> [Case; 7] {
        [
            (
                "ties4",
                |n, r| (0..n).map(|_| r.below(4)).collect(),
                |a, b| a < b,
            ),
            (
                "ties",
                |n, r| (0..n).map(|_| r.below(n / 8 + 1)).collect(),
                |a, b| a < b,
            ),
            // Not an order: "<=" on keys.
            (
                "le4",
                |n, r| (0..n).map(|_| r.below(4)).collect(),
                |a, b| a <= b,
            ),
            (
                "desc",
                |n, _| (0..n).map(|i| ((n - i) / 3) as i64).collect(),
                |a, b| a < b,
            ),
            (
                "nearly",
                |n, r| {
                    let mut k: Vec<i64> = (0..n).map(|i| (i / 2) as i64).collect();
                    for _ in 0..3 {
                        if n > 1 {
                            let (x, y) = (r.below(n), r.below(n));
                            k.swap(x as usize, y as usize);
                        }
                    }
                    k
                },
                |a, b| a < b,
            ),
            // istioctl's route comparator: numbers ascending, a negative key
            // (a non-numeric name) unordered against everything.
            (
                "numeric",
                |n, r| (0..n).map(|_| r.below(12) - 2).collect(),
                |a, b| a >= 0 && b >= 0 && a < b,
            ),
            (
                "organ",
                |n, _| (0..n).map(|i| (i.min(n - 1 - i) / 2) as i64).collect(),
                |a, b| a < b,
            ),
        ]
    }

    /// Sorts each case's `(key, tag)` pairs by key and yields
    /// `"CASE N: tags"`, the golden's lines.
    fn lines(generator: Generator, paths: &mut Paths) -> Vec<String> {
        let mut out = Vec::new();
        for n in 0..=300usize {
            for (c, (name, keys, less)) in cases().iter().enumerate() {
                let mut r = Mix((n * 16 + c) as u64);
                let mut v: Vec<(i64, usize)> = keys(n, &mut r).into_iter().zip(0..).collect();
                let p = sort_slice(&mut v, |x, y| less(x.0, y.0), generator);
                for (total, one) in [
                    (&mut paths.insertion, p.insertion),
                    (&mut paths.heapsort, p.heapsort),
                    (&mut paths.break_patterns, p.break_patterns),
                    (&mut paths.reversed, p.reversed),
                    (&mut paths.partial_shifts, p.partial_shifts),
                    (&mut paths.partial_sorted, p.partial_sorted),
                    (&mut paths.partition_equal, p.partition_equal),
                    (&mut paths.partition, p.partition),
                ] {
                    *total += one;
                }
                let tags: Vec<String> = v.iter().map(|(_, t)| t.to_string()).collect();
                out.push(
                    format!("{name} {n}: {}", tags.join(" "))
                        .trim_end()
                        .to_string(),
                );
            }
        }
        out
    }

    /// The generator of the Go that wrote `goX.Y.txt` (see the module docs).
    fn generator_of(file: &str) -> Generator {
        let minor: u32 = file
            .strip_prefix("go1.")
            .and_then(|v| v.strip_suffix(".txt"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{file}: not goX.Y.txt"));
        if minor >= 24 {
            Generator::Go124
        } else {
            Generator::Go119
        }
    }

    /// Every golden in `cli/tests/golden/gosort/` (`regen.sh` names it after the Go
    /// that wrote it: go1.19.txt from Debian's Go here; one from Go 1.24 or later is
    /// checked against [`Generator::Go124`] the same way once someone commits it).
    #[test]
    fn ties_come_out_in_gos_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/gosort");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("go") && f.ends_with(".txt"))
            .collect();
        files.sort();
        assert!(files.contains(&"go1.19.txt".to_string()), "{files:?}");
        for file in &files {
            let golden = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            let want: Vec<&str> = golden.lines().filter(|l| !l.starts_with('#')).collect();
            let mut paths = Paths::default();
            let got = lines(generator_of(file), &mut paths);
            assert_eq!(got.len(), want.len(), "{file} has {} cases", want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "differs from the sort.Slice that wrote {file}");
            }
            check_coverage(&paths);
        }
    }

    fn check_coverage(paths: &Paths) {
        // The inputs reach every path of the algorithm, so the golden
        // checks each of them.
        for (name, count) in [
            ("insertion", paths.insertion),
            ("heapsort", paths.heapsort),
            ("break_patterns", paths.break_patterns),
            ("reversed", paths.reversed),
            ("partial_shifts", paths.partial_shifts),
            ("partial_sorted", paths.partial_sorted),
            ("partition_equal", paths.partition_equal),
            ("partition", paths.partition),
        ] {
            assert!(count > 0, "no case takes the {name} path: {paths:?}");
        }
    }

    #[test]
    fn the_generator_matters_only_after_an_unbalanced_partition() {
        let (mut p19, mut p24) = (Paths::default(), Paths::default());
        let old = lines(Generator::Go119, &mut p19);
        let new = lines(Generator::Go124, &mut p24);
        let differ = old.iter().zip(&new).filter(|(a, b)| a != b).count();
        assert!(differ > 0, "Go 1.24's generator never changed an order");
        // Up to the first pattern break both run the same comparisons.
        for (a, b) in old.iter().zip(&new) {
            if a != b {
                let n: usize = a.split([' ', ':']).nth(1).unwrap().parse().unwrap();
                assert!(n > 12, "{a}");
            }
        }
    }

    #[test]
    fn strict_orders_sort_as_a_stable_sort_does() {
        // Distinct keys in many shapes: any correct sort agrees with a
        // stable one, so this checks go_sort sorts.
        let mut r = Mix(7);
        for n in 0..400usize {
            let shapes: [Vec<i64>; 5] = [
                (0..n as i64).map(|_| r.next() as i64).collect(),
                (0..n as i64).collect(),
                (0..n as i64).rev().collect(),
                (0..n as i64)
                    .map(|i| if i % 2 == 0 { i } else { -i })
                    .collect(),
                (0..n as i64)
                    .map(|i| (i * 7919) % (n as i64).max(1) * 1000 + i)
                    .collect(),
            ];
            for keys in shapes {
                let mut want = keys.clone();
                want.sort();
                want.dedup();
                if want.len() != keys.len() {
                    continue;
                }
                for generator in [Generator::Go119, Generator::Go124] {
                    let mut got = keys.clone();
                    sort_slice(&mut got, |a, b| a < b, generator);
                    assert_eq!(got, want, "n={n} {generator:?}");
                }
            }
        }
        // Ties under a strict weak order: sorted by key, every element kept.
        for n in 0..300usize {
            let mut v: Vec<(i64, usize)> = (0..n).map(|i| (r.below(5), i)).collect();
            go_sort(&mut v, |a, b| a.0 < b.0);
            assert!(v.windows(2).all(|w| w[0].0 <= w[1].0), "n={n}");
            let mut tags: Vec<usize> = v.iter().map(|x| x.1).collect();
            tags.sort();
            assert_eq!(tags, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn short_slices_sort_stably() {
        let mut v: Vec<(u8, char)> = vec![(1, 'a'), (0, 'b'), (1, 'c'), (0, 'd')];
        go_sort(&mut v, |a, b| a.0 < b.0);
        assert_eq!(v, [(0, 'b'), (0, 'd'), (1, 'a'), (1, 'c')]);
    }
}
