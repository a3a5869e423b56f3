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

/*
 * mb_pod_addr: the pod's own addresses.
 *   key:    struct mb_ip_key (v4-mapped normalised to IPv4)
 *   value:  __u8 1
 *   writer: the agent, from the settings (replaced as a whole). Read by
 *           connect4/6: the sidecar's own connect to one of them delivers an
 *           inbound connection it has already decided to the app, inside
 *           the pod, and is not an egress flow to decide at L3/L4.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct mb_ip_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_pod_addr SEC(".maps");

/* 1 when `ip` is one of the pod's own addresses. */
static __always_inline int mb_is_pod_addr(const __u32 ip[4], __u8 family)
{
	struct mb_ip_key k = {};

	k.ip[0] = ip[0];
	k.ip[1] = ip[1];
	k.ip[2] = ip[2];
	k.ip[3] = ip[3];
	k.family = family;
	return bpf_map_lookup_elem(&mb_pod_addr, &k) != 0;
}

static __always_inline const struct mb_config *mb_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mb_config, &zero);
}

#endif /* MB_CONFIG_H */
