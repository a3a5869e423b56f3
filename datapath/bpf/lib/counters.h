/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Per-program counters. */
#ifndef MB_COUNTERS_H
#define MB_COUNTERS_H

#include "common.h"

/*
 * mb_counters: per-CPU array, MB_PROG_MAX rows.
 *   key:    __u32 enum mb_prog_index (the program that counts)
 *   value:  struct mb_counters (meaning per program: see membrane_abi.h)
 *   writer: the kernel programs only (increments); the agent reads and sums
 *           over CPUs. Pinned by name so every object and a restarted agent
 *           share one instance.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MB_PROG_MAX);
	__type(key, __u32);
	__type(value, struct mb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_counters SEC(".maps");

enum mb_counter_field {
	MB_CNT_REDIRECTED,
	MB_CNT_FALLBACK,
	MB_CNT_MISS,
	MB_CNT_REFUSED,
};

/* Per-CPU rows need no atomics: only this CPU writes its copy. */
static __always_inline void mb_count(__u32 prog, enum mb_counter_field field, __u64 bytes)
{
	struct mb_counters *c = bpf_map_lookup_elem(&mb_counters, &prog);

	if (!c)
		return;
	switch (field) {
	case MB_CNT_REDIRECTED:
		c->redirected++;
		c->redirected_bytes += bytes;
		break;
	case MB_CNT_FALLBACK:
		c->fallbacks++;
		break;
	case MB_CNT_MISS:
		c->misses++;
		break;
	case MB_CNT_REFUSED:
		c->refused++;
		break;
	}
}

#endif /* MB_COUNTERS_H */
