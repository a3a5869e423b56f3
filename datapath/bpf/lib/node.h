/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The node-wide maps of the packet path: node settings, the node ipcache,
 * the local endpoints and the packet counters. One instance per node,
 * pinned under <root>/node/maps and shared by every tc program (each pod's
 * bpf_lxc.c instance, bpf_overlay.c, bpf_host.c). bpf_node.c creates them
 * when the node is loaded; every other object finds them pinned.
 */
#ifndef MB_NODE_H
#define MB_NODE_H

#include "common.h"

/*
 * mb_node_config: array with one row.
 *   key:    __u32 0
 *   value:  struct mb_node_config (flags, underlay, overlay mode, LB algorithm)
 *   writer: the agent (NodeDatapath::load / set_settings).
 *   reader: every tc program. All zero (never written): no policy drops,
 *           native routing, no trace.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_node_config SEC(".maps");

/*
 * mb_ipcache: the node ipcache, address prefix -> identity and tunnel.
 *   key:    struct mb_cidr_key (longest prefix; v4-mapped as IPv4)
 *   value:  struct mb_ipcache_value (identity; remote node's underlay IPv4
 *           for prefixes behind another node, 0 = route natively)
 *   writer: the agent (NodeDatapath::sync_ipcache: upserts longest prefix
 *           first, then deletes shortest first, so a lookup sees an
 *           address's old entry or its new one, never a third).
 *   reader: every tc program. A miss is world (2) with no tunnel.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_cidr_key);
	__type(value, struct mb_ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ipcache SEC(".maps");

/*
 * mb_endpoints: the pods of this node, by each of their addresses.
 *   key:    struct mb_ip_key (exact address, v4-mapped as IPv4)
 *   value:  struct mb_endpoint_value (host veth, identity, endpoint id, MACs)
 *   writer: the agent (NodeDatapath::attach_endpoint / detach_endpoint).
 *   reader: from-container (anti-spoofing: the source must be an address
 *           of this very endpoint), and whoever delivers to a local pod.
 *   No wildcard: an address not in the map is no local pod's.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct mb_ip_key);
	__type(value, struct mb_endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_endpoints SEC(".maps");

/*
 * mb_tc_stats: per-CPU array, MB_RSN_TC_MAX rows, indexed by reason.
 *   key:    __u32 reason (MB_RSN_*); row 0 (MB_RSN_NONE) counts packets
 *           forwarded, every other row packets dropped for that reason
 *   value:  struct mb_tc_stat (packets, bytes)
 *   writer: every tc program (increments of its own CPU's row, no atomics).
 *   reader: the agent (NodeDatapath::tc_stats sums the CPUs).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MB_RSN_TC_MAX);
	__type(key, __u32);
	__type(value, struct mb_tc_stat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_tc_stats SEC(".maps");

static __always_inline const struct mb_node_config *mb_node_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mb_node_config, &zero);
}

/* The node's MB_NODE_F_* flags (0 when the row was never written). */
static __always_inline __u32 mb_node_flags(void)
{
	const struct mb_node_config *c = mb_node_config_get();

	return c ? c->flags : 0;
}

/* The ipcache entry of an address: its longest prefix, or NULL (world). */
static __always_inline const struct mb_ipcache_value *mb_ipcache_lookup(const __u32 ip[4],
									__u8 family)
{
	struct mb_cidr_key k = {};

	k.prefixlen = 32 + (family == MB_AF_INET ? 32 : 128);
	k.family = family;
	k.ip[0] = ip[0];
	k.ip[1] = ip[1];
	k.ip[2] = ip[2];
	k.ip[3] = ip[3];
	return bpf_map_lookup_elem(&mb_ipcache, &k);
}

/* The identity of an address by the node ipcache; a miss is world. */
static __always_inline __u32 mb_ipcache_identity(const __u32 ip[4], __u8 family)
{
	const struct mb_ipcache_value *v = mb_ipcache_lookup(ip, family);

	return v ? v->identity : MB_ID_WORLD;
}

/* The local endpoint owning an address, or NULL. */
static __always_inline const struct mb_endpoint_value *mb_endpoint_lookup(const __u32 ip[4],
									  __u8 family)
{
	struct mb_ip_key k = {};

	k.ip[0] = ip[0];
	k.ip[1] = ip[1];
	k.ip[2] = ip[2];
	k.ip[3] = ip[3];
	k.family = family;
	return bpf_map_lookup_elem(&mb_endpoints, &k);
}

/* Count one packet in row `reason` (0 = forwarded) of mb_tc_stats. */
static __always_inline void mb_tc_count(__u32 reason, __u64 bytes)
{
	struct mb_tc_stat *s = bpf_map_lookup_elem(&mb_tc_stats, &reason);

	if (!s)
		return;
	s->packets++;
	s->bytes += bytes;
}

#endif /* MB_NODE_H */
