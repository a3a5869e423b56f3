/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* iptables-free capture: where an app meant to connect, for SO_ORIGINAL_DST. */
#ifndef MB_CAPTURE_H
#define MB_CAPTURE_H

#include "common.h"

/*
 * mb_orig_ck: original destination of a steered connect, by socket cookie.
 *   key:    __u64 socket cookie of the app's connecting socket
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_cgroup_connect.c (connect4/connect6) inserts; bpf_sockops.c
 *           moves the entry to mb_orig_tp once the socket is established
 *           (its source port is known only then) and deletes it here. LRU,
 *           so connects that never establish age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_ck SEC(".maps");

/*
 * mb_orig_tp: original destination by the app socket's source address.
 *   key:    struct mb_addr_port, the app socket's local address and port,
 *           which is the remote address of the proxy's accepted socket
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_sockops.c on active establishment; read by
 *           bpf_cgroup_sockopt.c to answer SO_ORIGINAL_DST. LRU: a closed
 *           connection's entry is overwritten when its port is reused.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_addr_port);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_tp SEC(".maps");

/*
 * mb_cap_skip_port: outbound destination ports never captured (Istio's
 * traffic.sidecar.istio.io/excludeOutboundPorts).
 *   key:    __u32 destination port, host order
 *   value:  __u8 1
 *   writer: the agent, from the pod's settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_cap_skip_port SEC(".maps");

/*
 * mb_cap_skip_cidr: outbound destination prefixes never captured
 * (traffic.sidecar.istio.io/excludeOutboundIPRanges).
 *   key:    struct mb_cidr_key (longest-prefix match; v4-mapped as IPv4)
 *   value:  __u8 1
 *   writer: the agent, from the pod's settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_cap_skip_cidr SEC(".maps");

/*
 * mb_cap_incl_cidr: when mb_config has MB_CFG_OUTBOUND_ONLY_LISTED, only
 * destinations in these prefixes are captured
 * (traffic.sidecar.istio.io/includeOutboundIPRanges other than "*").
 * Exclusions above still win over an inclusion.
 *   key:    struct mb_cidr_key (longest-prefix match; v4-mapped as IPv4)
 *   value:  __u8 1
 *   writer: the agent, from the pod's settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_cap_incl_cidr SEC(".maps");

/* 1 when the destination is excluded from capture by port or prefix. */
static __always_inline int mb_capture_excluded(const struct mb_config *cfg,
					       const struct mb_addr_port *dst)
{
	__u32 port = dst->port;
	struct mb_cidr_key k = {};

	if (bpf_map_lookup_elem(&mb_cap_skip_port, &port))
		return 1;
	k.prefixlen = 32 + (dst->family == MB_AF_INET ? 32 : 128);
	k.family = dst->family;
	k.ip[0] = dst->ip[0];
	k.ip[1] = dst->ip[1];
	k.ip[2] = dst->ip[2];
	k.ip[3] = dst->ip[3];
	if (bpf_map_lookup_elem(&mb_cap_skip_cidr, &k))
		return 1;
	return (cfg->flags & MB_CFG_OUTBOUND_ONLY_LISTED) &&
	       !bpf_map_lookup_elem(&mb_cap_incl_cidr, &k);
}

/* Called from sockops on active establishment: cookie entry -> tuple entry. */
static __always_inline void mb_capture_established(struct bpf_sock_ops *skops,
						   const struct mb_sock_key *key)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct mb_addr_port *orig = bpf_map_lookup_elem(&mb_orig_ck, &cookie);
	struct mb_addr_port src = {};

	if (!orig)
		return;
	src.ip[0] = key->local_ip[0];
	src.ip[1] = key->local_ip[1];
	src.ip[2] = key->local_ip[2];
	src.ip[3] = key->local_ip[3];
	src.port = key->local_port;
	src.family = key->family;
	bpf_map_update_elem(&mb_orig_tp, &src, orig, BPF_ANY);
	bpf_map_delete_elem(&mb_orig_ck, &cookie);
}

#endif /* MB_CAPTURE_H */
