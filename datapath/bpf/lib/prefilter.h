/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The prefilter: packets whose source is in a denied prefix are dropped on
 * the underlay device before the stack sees them (bpf_xdp.c), as Cilium's
 * XDP prefilter does. Node-wide maps, created by bpf_node.c with the
 * others and pinned under <root>/node/maps; the agent keeps the deny maps
 * equal to the control plane's cluster-wide list joined with the CLI's.
 *
 * What passes, and why: anything that is not IPv4 or IPv6 by its
 * EtherType (ARP, LLDP: the prefilter judges sources, these have none it
 * knows); one 802.1Q/802.1ad tag is looked through. An IPv4 or IPv6 frame
 * too short for its fixed header is dropped (MB_RSN_PREFILTER_MALFORMED):
 * its source cannot be read, and the stack would drop it as well.
 */
#ifndef MB_PREFILTER_H
#define MB_PREFILTER_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "common.h"
#include "../include/membrane_prefilter.h"

/*
 * mb_prefilter4 / mb_prefilter6: the denied source prefixes, one trie per
 * family (an IPv4 lookup walks 32-bit keys only).
 *   key:    struct mb_pf_key4 / mb_pf_key6 (longest prefix)
 *   value:  __u32, 1 (a hit is a deny; the value is not read)
 *   writer: the agent (NodeDatapath::sync_prefilter: the new prefixes
 *           inserted first, the old ones deleted after, each an atomic
 *           update of one prefix, so a replaced set never passes through an
 *           empty or half state for an address both sets deny).
 *   reader: the prefilter programs. A miss passes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_pf_key4);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_prefilter4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_pf_key6);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_prefilter6 SEC(".maps");

/*
 * mb_prefilter_stats: per-CPU array, MB_PF_STAT_MAX rows (MB_PF_STAT_*).
 *   value:  struct mb_tc_stat (packets, bytes)
 *   writer: the prefilter programs (their own CPU's row, no atomics).
 *   reader: the agent (NodeDatapath::prefilter_stats sums the CPUs).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MB_PF_STAT_MAX);
	__type(key, __u32);
	__type(value, struct mb_tc_stat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_prefilter_stats SEC(".maps");

/* Kernel-only state of the drop-record rate limit. */
struct mb_pf_rl {
	__u64 last_ns; /* when this CPU last emitted a drop record */
	__u32 pending; /* drops since then, folded into the next record */
	__u32 pad;
};

/*
 * mb_prefilter_rl: per-CPU array, one row: the drop records' rate limit.
 *   writer and reader: the prefilter programs only.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_pf_rl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_prefilter_rl SEC(".maps");

/* What the prefilter saw of a packet, for its counters and drop record. */
struct mb_pf_pkt {
	__u32 src[4];
	__u32 dst[4];
	__u8 family; /* MB_AF_INET / MB_AF_INET6, 0 = neither */
	__u8 proto;
};

static __always_inline void mb_pf_count(__u32 row, __u64 bytes)
{
	struct mb_tc_stat *s = bpf_map_lookup_elem(&mb_prefilter_stats, &row);

	if (!s)
		return;
	s->packets++;
	s->bytes += bytes;
}

/*
 * The verdict on the frame [data, end): 0 = pass, else the drop reason
 * (MB_RSN_PREFILTER_*), with what was read of it in *p. Bounds are checked
 * against `end` before every read (the verifier's direct packet access).
 */
static __always_inline __u8 mb_pf_decide(void *data, void *end, struct mb_pf_pkt *p)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > end)
		return 0;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		/* TCI (2 bytes), then the inner EtherType. */
		__be16 *inner = data + off + 2;

		if ((void *)(inner + 1) > end)
			return 0;
		proto = *inner;
		off += 4;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		struct mb_pf_key4 k;

		if ((void *)(ip + 1) > end)
			return MB_RSN_PREFILTER_MALFORMED;
		p->family = MB_AF_INET;
		p->proto = ip->protocol;
		p->src[0] = ip->saddr;
		p->dst[0] = ip->daddr;
		k.prefixlen = 32;
		k.addr = ip->saddr;
		return bpf_map_lookup_elem(&mb_prefilter4, &k) ? MB_RSN_PREFILTER_DENIED : 0;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		struct mb_pf_key6 k;

		if ((void *)(ip6 + 1) > end)
			return MB_RSN_PREFILTER_MALFORMED;
		p->family = MB_AF_INET6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->src, &ip6->saddr, 16);
		__builtin_memcpy(p->dst, &ip6->daddr, 16);
		k.prefixlen = 128;
		__builtin_memcpy(k.addr, &ip6->saddr, 16);
		return bpf_map_lookup_elem(&mb_prefilter6, &k) ? MB_RSN_PREFILTER_DENIED : 0;
	}
	return 0;
}

#endif /* MB_PREFILTER_H */
