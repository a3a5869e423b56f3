// Command gosort prints how the Go toolchain that runs it orders ties in
// sort.Slice: for every length 0..300 and each case below, (key, tag)
// pairs are sorted by a comparator that looks at the key only, and the
// tags are printed in their final order. membrane's Rust port of
// sort.Slice (cli/src/views/gosort.rs) must print the same lines; the
// inputs come from the same splitmix64 generator on both sides.
//
// Run by regen.sh; stdlib only.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sort"
)

type mix uint64

func (m *mix) next() uint64 {
	*m += 0x9e3779b97f4a7c15
	z := uint64(*m)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (m *mix) below(n int) int64 { return int64(m.next() % uint64(n)) }

type testCase struct {
	name string
	keys func(n int, r *mix) []int64
	less func(a, b int64) bool
}

func strict(a, b int64) bool { return a < b }

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

var cases = []testCase{
	{"ties4", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = r.below(4)
		}
		return k
	}, strict},
	{"ties", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = r.below(n/8 + 1)
		}
		return k
	}, strict},
	// Not an order at all: "<=".
	{"le4", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = r.below(4)
		}
		return k
	}, func(a, b int64) bool { return a <= b }},
	{"desc", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = int64((n - i) / 3)
		}
		return k
	}, strict},
	{"nearly", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = int64(i / 2)
		}
		for s := 0; s < 3; s++ {
			if n > 1 {
				x, y := r.below(n), r.below(n)
				k[x], k[y] = k[y], k[x]
			}
		}
		return k
	}, strict},
	// istioctl's route order: numbers ascending, a negative key (a
	// non-numeric name) unordered against everything.
	{"numeric", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = r.below(12) - 2
		}
		return k
	}, func(a, b int64) bool { return a >= 0 && b >= 0 && a < b }},
	{"organ", func(n int, r *mix) []int64 {
		k := make([]int64, n)
		for i := range k {
			k[i] = int64(min(i, n-1-i) / 2)
		}
		return k
	}, strict},
}

type item struct {
	key int64
	tag int
}

func main() {
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "# sort.Slice of %s %s/%s (cli/tests/golden/gosort/regen.sh)\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH)
	for n := 0; n <= 300; n++ {
		for c, tc := range cases {
			r := mix(uint64(n*16 + c))
			keys := tc.keys(n, &r)
			items := make([]item, n)
			for i, k := range keys {
				items[i] = item{k, i}
			}
			less := tc.less
			sort.Slice(items, func(i, j int) bool { return less(items[i].key, items[j].key) })
			fmt.Fprintf(w, "%s %d:", tc.name, n)
			for _, it := range items {
				fmt.Fprintf(w, " %d", it.tag)
			}
			fmt.Fprintln(w)
		}
	}
}
