/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Agent-written configuration. */
#ifndef MB_CONFIG_H
#define MB_CONFIG_H

#include "common.h"

/*
 * mb_config: array with one row.
 *   key:    __u32 0
 *   value:  struct mb_config (flags, policy revision, proxy identity, ports)
 *   writer: the agent, at attach and on every policy or setting change.
 *           An all-zero row (never written) means: no capture, no policy
 *           enforcement, splice every node-local pair.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_config SEC(".maps");

static __always_inline const struct mb_config *mb_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mb_config, &zero);
}

#endif /* MB_CONFIG_H */
