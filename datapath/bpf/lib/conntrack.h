/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Connection tracking of the packet path: which flows an endpoint's policy
 * already allowed, so that only a flow's first packet is decided and its
 * replies (and the ICMP errors about it) pass.
 */
#ifndef MB_CONNTRACK_H
#define MB_CONNTRACK_H

#include "common.h"

/*
 * mb_ct: node-wide LRU hash, both families.
 *   key:    struct mb_ct_key: the flow as its first packet went, scoped to
 *           the endpoint that decided it and that endpoint's direction
 *           (a pod-to-pod flow on one node has two entries: the client's
 *           egress one and the server's ingress one)
 *   value:  struct mb_ct_value: state, expiry, counters, the verdict, and
 *           for a service flow the reverse NAT id its replies are
 *           translated back with (Cilium's rev_nat_index): to-container
 *           finds it with the conntrack lookup it does anyway, so replies
 *           and packets of flows no service translated take no extra
 *           lookup for reverse NAT
 *   writer: bpf_lxc.c (create on an allowed first packet, update on every
 *           packet); the agent deletes expired entries (NodeDatapath::ct_gc)
 *           and the kernel evicts the least recently used when it is full.
 *   reader: bpf_lxc.c; the agent (NodeDatapath::conntrack).
 *   No wildcard; an expired entry counts as absent.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct mb_ct_key);
	__type(value, struct mb_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_ct SEC(".maps");

/* TCP flag bits (byte 13 of the TCP header). */
#define MB_TCP_FIN 0x01
#define MB_TCP_SYN 0x02
#define MB_TCP_RST 0x04
#define MB_TCP_ACK 0x10

/* mb_ct_lookup results. */
#define MB_CT_MISS 0
#define MB_CT_HIT_FWD 1   /* a later packet of a flow in its own direction */
#define MB_CT_HIT_REPLY 2 /* a packet of a flow's reverse direction */

#define MB_NS_PER_SEC 1000000000ULL

/*
 * Conntrack's clock: CLOCK_MONOTONIC as of the last timer tick. Lifetimes
 * are seconds, so a tick's resolution is plenty, and it spares every
 * packet the clock source read bpf_ktime_get_ns makes (a TSC read, slow in
 * a VM: ~8 % of the programs' time under a connection storm). The agent's
 * ct_gc compares with CLOCK_MONOTONIC, which is never behind it.
 */
static __always_inline __u64 mb_ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

static __always_inline void mb_ct_reverse(struct mb_ct_key *dst, const struct mb_ct_key *src)
{
	dst->src_ip[0] = src->dst_ip[0];
	dst->src_ip[1] = src->dst_ip[1];
	dst->src_ip[2] = src->dst_ip[2];
	dst->src_ip[3] = src->dst_ip[3];
	dst->dst_ip[0] = src->src_ip[0];
	dst->dst_ip[1] = src->src_ip[1];
	dst->dst_ip[2] = src->src_ip[2];
	dst->dst_ip[3] = src->src_ip[3];
	dst->src_port = src->dst_port;
	dst->dst_port = src->src_port;
	dst->proto = src->proto;
	dst->family = src->family;
}

static __always_inline __u64 mb_ct_lifetime(const struct mb_ct_value *v, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return MB_CT_LIFETIME_NONTCP;
	if (v->state == MB_CT_ESTABLISHED)
		return MB_CT_LIFETIME_TCP_EST;
	if (v->state == MB_CT_CLOSING)
		return MB_CT_LIFETIME_CLOSING;
	return MB_CT_LIFETIME_TCP_SYN;
}

/*
 * Advance an entry's state by one packet (`reply`: of the reverse
 * direction) and push its expiry out. Two CPUs may update one entry at
 * once; the state then follows one of the two packets, which a later
 * packet corrects, and the counters use atomic adds.
 */
static __always_inline void mb_ct_update(struct mb_ct_value *v, __u8 proto, __u8 tcp_flags,
					 int reply, __u32 len, __u64 now)
{
	__u8 flags = v->flags;
	__u8 state = v->state;

	if (reply)
		flags |= MB_CT_F_SEEN_REPLY;
	if (proto == IPPROTO_TCP) {
		if (tcp_flags & MB_TCP_RST) {
			flags |= MB_CT_F_RST;
			state = MB_CT_CLOSING;
		} else if (tcp_flags & MB_TCP_FIN) {
			flags |= reply ? MB_CT_F_FIN_REV : MB_CT_F_FIN_FWD;
			if ((flags & (MB_CT_F_FIN_FWD | MB_CT_F_FIN_REV)) ==
			    (MB_CT_F_FIN_FWD | MB_CT_F_FIN_REV))
				state = MB_CT_CLOSING;
		} else if ((tcp_flags & (MB_TCP_SYN | MB_TCP_ACK)) == MB_TCP_SYN && !reply &&
			   state == MB_CT_CLOSING) {
			/* The same tuple opened again (port reuse): a new connection. */
			state = MB_CT_NEW;
			flags = 0;
		}
		if (state == MB_CT_NEW && (flags & MB_CT_F_SEEN_REPLY) &&
		    (tcp_flags & (MB_TCP_SYN | MB_TCP_ACK)) == MB_TCP_ACK)
			state = MB_CT_ESTABLISHED;
	} else if (flags & MB_CT_F_SEEN_REPLY) {
		state = MB_CT_ESTABLISHED;
	}
	v->flags = flags;
	v->state = state;
	v->expires_ns = now + mb_ct_lifetime(v, proto) * MB_NS_PER_SEC;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
}

/* The entry of `t` at `ep` as a packet of its own direction (`reply` 0:
 * the key is t on `side`) or as a reply (the reverse of t on the other
 * side); expired entries are misses. `k` is scratch. */
static __always_inline struct mb_ct_value *mb_ct_find(struct mb_ct_key *k,
						      const struct mb_ct_key *t, __u16 ep,
						      __u8 side, int reply, __u64 now)
{
	struct mb_ct_value *v;

	if (reply) {
		mb_ct_reverse(k, t);
		k->dir = side == MB_DIR_EGRESS ? MB_DIR_INGRESS : MB_DIR_EGRESS;
	} else {
		__builtin_memcpy(k, t, sizeof(*k));
		k->dir = side;
	}
	k->endpoint_id = ep;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	v = bpf_map_lookup_elem(&mb_ct, k);
	return v && v->expires_ns > now ? v : 0;
}

/*
 * Find the flow a packet belongs to, seen at endpoint `ep` on its `side`
 * (MB_DIR_EGRESS: the pod sent it; MB_DIR_INGRESS: it goes to the pod).
 * `t` is the packet's own tuple (scope fields ignored). A later packet of a
 * flow the same side opened matches (t, side); a reply matches the reverse
 * of t in the other direction's scope. Expired entries are misses.
 * `reply_first`: the packet is likely a reply (a TCP SYN-ACK, a server
 * port's answer: mb_lxc_likely_reply), so that lookup goes first and a hit
 * costs one, not two (each a walk of a bucket of a large, mostly cold map).
 */
static __always_inline int mb_ct_lookup(const struct mb_ct_key *t, __u16 ep, __u8 side,
					int reply_first, struct mb_ct_value **out, __u64 now)
{
	struct mb_ct_key k = {};
	struct mb_ct_value *v;

	v = mb_ct_find(&k, t, ep, side, reply_first, now);
	if (v) {
		*out = v;
		return reply_first ? MB_CT_HIT_REPLY : MB_CT_HIT_FWD;
	}
	v = mb_ct_find(&k, t, ep, side, !reply_first, now);
	if (v) {
		*out = v;
		return reply_first ? MB_CT_HIT_FWD : MB_CT_HIT_REPLY;
	}
	return MB_CT_MISS;
}

/* Record a new flow allowed at `ep` on `side` (`rev_nat_id`: see
 * mb_ct_value); 0 or a negative error. */
static __always_inline int mb_ct_create(const struct mb_ct_key *t, __u16 ep, __u8 side,
					__u8 tcp_flags, __u32 identity, __u8 verdict,
					__u32 rev_nat_id, __u32 len, __u64 now)
{
	struct mb_ct_key k = {};
	struct mb_ct_value v = {};

	__builtin_memcpy(&k, t, sizeof(k));
	k.endpoint_id = ep;
	k.dir = side;
	k.pad[0] = k.pad[1] = k.pad[2] = 0;
	v.identity = identity;
	v.verdict = verdict;
	v.rev_nat_id = rev_nat_id;
	v.state = MB_CT_NEW;
	v.packets = 1;
	v.bytes = len;
	if (t->proto == IPPROTO_TCP && (tcp_flags & MB_TCP_RST)) {
		v.state = MB_CT_CLOSING;
		v.flags = MB_CT_F_RST;
	}
	v.expires_ns = now + mb_ct_lifetime(&v, t->proto) * MB_NS_PER_SEC;
	return bpf_map_update_elem(&mb_ct, &k, &v, BPF_ANY);
}

/*
 * A forward packet of a flow says whether the load balancer translated it
 * (`rev_nat_id`, 0 = not): the entry follows, so that a client port reused
 * for a connection straight to the backend a service flow went to gets its
 * replies untranslated, and the port's next service flow translated again.
 * Written only when it changes (the entry is shared between CPUs).
 */
static __always_inline void mb_ct_set_rev_nat(struct mb_ct_value *v, __u32 rev_nat_id)
{
	if (v->rev_nat_id != rev_nat_id)
		v->rev_nat_id = rev_nat_id;
}

#endif /* MB_CONNTRACK_H */
