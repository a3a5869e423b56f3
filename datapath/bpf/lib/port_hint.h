/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Port hints: services where splicing was seen to lose (a small-write
 * stream, lib/flow_switch.h). New connections to a hinted service port are
 * not spliced at all until the hint is mb_config.hint_ttl_secs old; then
 * one is spliced again and re-probes.
 */
#ifndef MB_PORT_HINT_H
#define MB_PORT_HINT_H

#include "common.h"
#include "config.h"

/* How long a learned "do not splice" hint holds unless configured. */
#define MB_HINT_TTL_DEFAULT_SECS 600

/*
 * mb_port_hint: services where splicing was seen to lose.
 *   key:    __u32 service (accepting side) port, host order
 *   value:  __u64 bpf_ktime_get_ns() when a small-write stream was seen
 *   writer: bpf_sk_msg.c; read by bpf_sockops.c; the agent may delete
 *           entries (to force a re-probe) and lists them.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_port_hint SEC(".maps");

/* sockops: 1 when a fresh hint says splicing this service loses. */
static __always_inline int mb_hint_says_plain(__u16 service_port)
{
	__u32 port = service_port;
	__u64 *marked = bpf_map_lookup_elem(&mb_port_hint, &port);
	const struct mb_config *cfg;
	__u64 ttl = MB_HINT_TTL_DEFAULT_SECS;

	if (!marked)
		return 0;
	cfg = mb_config_get();
	if (cfg && cfg->hint_ttl_secs)
		ttl = cfg->hint_ttl_secs;
	return bpf_ktime_get_ns() - *marked < ttl * 1000000000ULL;
}

/* sk_msg: remember that splicing this service lost, as of now. */
static __always_inline void mb_port_hint_learn(__u16 service_port)
{
	__u32 port = service_port;
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&mb_port_hint, &port, &now, BPF_ANY);
}

#endif /* MB_PORT_HINT_H */
