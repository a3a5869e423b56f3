/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Service load balancing per packet, for what the socket LB (lib/service.h,
 * cgroup connect4/6) never sees: UDP datagrams sent without connect, traffic
 * from other nodes and the host, NodePort from outside. The first packet of
 * a flow to a frontend picks a backend (at random, or by Maglev: a hash of
 * the 5-tuple into the service's lookup table, so every node with the same
 * backends picks the same one); the flow remembers it (backend address
 * included, so removing the backend from the service never moves or breaks
 * the flow), and its replies get the frontend back as their source: a pod
 * client's from the reverse NAT id its conntrack entry keeps (Cilium's
 * shape), every other client's from mb_lb_rev.
 *
 * TCP and UDP are translated, IPv4 and IPv6 alike on a pod's veth
 * (ClusterIP, reverse NAT, hairpin); the node's own and the underlay's
 * clients (lib/nodeport.h) are IPv4 only, NodePort being served on
 * node_ip4. Fragments, other protocols, and IPv6 packets with a Routing
 * header or AH (the L4 pseudo-header's destination is the routing header's
 * last address; AH would no longer verify) pass untouched. Checksums are
 * fixed incrementally: IPv4's header checksum and the L4 checksum's
 * pseudo-header; IPv6 has only the latter.
 *
 * Entry points (return: MB_LB_CONTINUE = go on, untouched;
 * MB_LB_TRANSLATED = go on, the packet was rewritten (parse it again);
 * < 0 = drop with reason -ret; other values = the tc verdict to return,
 * the packet was redirected):
 *   mb_lb_from_container: pod → frontend, before conntrack and policy
 *                         (they see the backend).
 *   mb_lb_rev_nat:        replies toward a client pod, after conntrack
 *                         found the flow and its reverse NAT id.
 *   mb_lb_hairpin:        to-container, a world-sourced packet of no
 *                         tracked flow: a hairpin flow of the pod itself?
 *   mb_lb_reply_from_container (lib/nodeport.h): a pod's replies to a
 *                         hairpin or NodePort flow, after conntrack.
 *   mb_lb_nodeport (lib/nodeport.h): the underlay's ingress.
 */
#ifndef MB_LB_H
#define MB_LB_H

#include <stddef.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>

#include "common.h"
#include "../include/membrane_lb.h"

/* Drop reasons of service load balancing (40-59, membrane_abi.h). */
#define MB_DROP_LB_NO_BACKEND 40  /* the frontend has no backend (or no local one) */
#define MB_DROP_LB_BACKEND_GONE 41 /* a slot names a backend the map no longer has */
#define MB_DROP_LB_NO_SNAT_PORT 42 /* NodePort: no free source port toward the backend */
#define MB_DROP_LB_NO_ROUTE 43    /* NodePort: no route to the backend or the client */
#define MB_DROP_LB_REWRITE 44     /* the packet could not be rewritten */

/*
 * The entry points and the larger steps have stack frames of their own
 * (not inlined): the calling programs' frames and the translation's would
 * not fit 512 bytes together. `unused`: a program may not need every one.
 */
#define MB_LB_SUBPROG static __noinline __attribute__((unused))

#define MB_LB_CONTINUE 0
#define MB_LB_TRANSLATED 256 /* beyond every TC_ACT_* value */

/*
 * mb_lb_svc: frontends.
 *   key:    struct mb_lb_svc_key (address, port, protocol, scope); NodePort
 *           frontends have address zero: any packet to this node's
 *           node_ip4 and that port. No wildcard otherwise.
 *   value:  struct mb_lb_svc_value (slot count, slot set, reverse NAT id,
 *           flags)
 *   writer: the agent (NodeDatapath::sync_services): a frontend is switched
 *           to a new slot set only once that set (and its Maglev row) is
 *           complete; the old set is deleted after.
 *   readers: from-container, from-netdev.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct mb_lb_svc_key);
	__type(value, struct mb_lb_svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_svc SEC(".maps");

/*
 * mb_lb_ports: the ports some frontend has, one bit per port (any
 * protocol, address and scope). Most packets a pod or the underlay sends
 * are to no frontend (every reply, every connect the socket LB translated
 * already); their port's bit is clear, so they skip the mb_lb_svc lookup,
 * whose miss reads a random bucket and walks frontends / buckets entries
 * on average (cold cache lines under load): the cost that grew with the
 * number of services is then paid only by packets to a frontend's port.
 *   key:    __u32 word, port / 32 (0 .. 2047)
 *   value:  __u32, bit port % 32 set while some frontend has that port
 *   writer: the agent (sync_services): a bit is set before the first
 *           frontend with its port is written and cleared after the last
 *           one is deleted, so no frontend is ever hidden; a stale set bit
 *           only costs the lookup every packet made before.
 *   readers: mb_lb_flow_get (an array: the verifier inlines the lookup).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_ports SEC(".maps");

/*
 * mb_lb_slots: the backends of a slot set, slot by slot.
 *   key:    struct mb_lb_slot_key (slot set, slot 0 .. count - 1)
 *   value:  __u32 backend id (mb_lb_backends)
 *   writer: the agent, a set in full before any frontend names it.
 *   readers: random selection.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mb_lb_slot_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_slots SEC(".maps");

/*
 * mb_lb_backends: every backend of every service, once.
 *   key:    __u32 backend id (never 0), stable while the backend exists
 *   value:  struct mb_lb_backend (address, port)
 *   writer: the agent, before a slot names it; deleted once no slot does.
 *   readers: selection of a new flow's backend (established flows keep
 *           the address in mb_lb_flows and never look here).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct mb_lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_backends SEC(".maps");

/*
 * mb_lb_rnat: reverse NAT, what replies carry as their source.
 *   key:    __u32 reverse NAT id of a frontend (stable for its life)
 *   value:  struct mb_addr_port, the frontend; address zero (NodePort) =
 *           this node's node_ip4
 *   writer: the agent, before the frontend names it.
 *   readers: reverse translation of replies.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_rnat SEC(".maps");

/*
 * mb_lb_maglev: Maglev lookup tables, one per slot set of a service in
 * Maglev mode (size and memory: MB_LB_MAGLEV_M in membrane_lb.h).
 *   key:    __u32 slot set
 *   value:  struct mb_lb_maglev_row, a backend id per table entry, computed
 *           by the agent (datapath/src/lb/maglev.rs) from the backends'
 *           addresses, so every node computes the same table
 *   writer: the agent, with the slot set, before the frontend names it.
 *   readers: selection, entry mb_lb_hash(tuple) % MB_LB_MAGLEV_M.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct mb_lb_maglev_row);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_maglev SEC(".maps");

/*
 * mb_lb_flows: per-flow memory of the backend (LRU).
 *   key:    struct mb_lb_tuple, the flow as the client sends it (to the
 *           frontend)
 *   value:  struct mb_lb_flow: backend address and port, its id, the
 *           frontend's reverse NAT id, the source translation if any
 *   writer: from-container, from-netdev and to-service on a flow's first
 *           packet.
 *   readers: the same, on every later packet, once mb_lb_svc says its
 *           frontend still exists; to-container, a hairpin flow's replies
 *           (mb_lb_hairpin). Entries of ended flows age out (LRU); a flow
 *           idle long enough to be evicted picks again.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct mb_lb_tuple);
	__type(value, struct mb_lb_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_flows SEC(".maps");

/*
 * mb_lb_rev: reverse translation of replies that no client pod's conntrack
 * entry translates (LRU).
 *   key:    struct mb_lb_tuple, a reply as the backend sends it (backend →
 *           client, or backend → node address and SNAT port)
 *   value:  struct mb_lb_rev: reverse NAT id (the new source), the client
 *           (the new destination when the source was translated too)
 *   writer: with mb_lb_flows, for hairpin flows (MB_LB_FLOW_SNAT) and
 *           clients that are no local pod (MB_LB_FLOW_EXTERNAL: NodePort,
 *           the host, the underlay); a pod's plain ClusterIP flow has none
 *           (its conntrack entry keeps the reverse NAT id). With
 *           MB_LB_FLOW_SNAT the key doubles as the source-port reservation
 *           (inserted only when free).
 *   readers: from-container (hairpin and local NodePort backends' replies:
 *           once per flow, then only when it found one, see
 *           MB_CT_F_LB_CHECKED), from-netdev (remote NodePort backends'
 *           replies), to-container (a world-sourced new flow: hairpin?
 *           mb_lb_hairpin).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct mb_lb_tuple);
	__type(value, struct mb_lb_rev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_rev SEC(".maps");

/* A parsed IPv4 TCP/UDP packet: its tuple and where to rewrite it. */
struct mb_lb_pkt {
	struct mb_lb_tuple t;
	__u32 l4_off;
	__u32 csum_off;
};

static __always_inline __u32 mb_lb_rol(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* One MurmurHash3 round; the same in datapath/src/lb/maglev.rs. */
static __always_inline __u32 mb_lb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = mb_lb_rol(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = mb_lb_rol(h, 13);
	return h * 5 + 0xe6546b64;
}

/*
 * The flow hash Maglev indexes with: MurmurHash3's rounds over the address
 * words (as stored: network order bytes), the ports and the protocol.
 * Mirrored by membrane_datapath::lb::flow_hash; a test checks they agree.
 */
MB_LB_SUBPROG __u32 mb_lb_hash(const struct mb_lb_tuple *t)
{
	__u32 h = 0x6d62; /* seed */

	/* The compiler barriers keep each word's load next to its round:
	 * hoisted together, the loads spill (this runs deep in a call chain,
	 * where the stack is short). */
	h = mb_lb_mix(h, t->saddr[0]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->saddr[1]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->saddr[2]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->saddr[3]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->daddr[0]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->daddr[1]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->daddr[2]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, t->daddr[3]);
	asm volatile("" ::: "memory");
	h = mb_lb_mix(h, ((__u32)t->sport << 16) | t->dport);
	h = mb_lb_mix(h, t->proto);
	h ^= 40;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Parse an IPv4 TCP or UDP packet behind an Ethernet header; -1: not one (or a fragment). */
static __always_inline int mb_lb_parse4(struct __sk_buff *skb, struct mb_lb_pkt *p)
{
	struct iphdr ip;
	__u16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -1;
	/* Fragments carry no ports after the first: not translated. */
	if (ip.ihl < 5 || (ip.frag_off & bpf_htons(0x3fff)))
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	p->l4_off = ETH_HLEN + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	p->csum_off = p->l4_off + (ip.protocol == IPPROTO_TCP ? 16 : 6);
	p->t.saddr[0] = ip.saddr;
	p->t.daddr[0] = ip.daddr;
	p->t.sport = bpf_ntohs(ports[0]);
	p->t.dport = bpf_ntohs(ports[1]);
	p->t.proto = ip.protocol;
	p->t.family = MB_AF_INET;
	return 0;
}

/*
 * The same from a tuple the caller parsed already (bpf_lxc.c's mb_parse:
 * `l4_off` where its L4 header starts, after any IPv6 extension headers;
 * `untranslatable` set for the first fragment of several and an IPv6
 * packet with a Routing header or AH), so a pod's packets are read once:
 * -1 when it is no IPv4 or IPv6 TCP or UDP packet the LB translates.
 */
static __always_inline int mb_lb_pkt_of(const struct mb_ct_key *t, __u32 l4_off,
					int untranslatable, struct mb_lb_pkt *p)
{
	if ((t->family != MB_AF_INET && t->family != MB_AF_INET6) || untranslatable ||
	    (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP))
		return -1;
	p->l4_off = l4_off;
	p->csum_off = l4_off + (t->proto == IPPROTO_TCP ? 16 : 6);
	mb_ip_copy(p->t.saddr, t->src_ip);
	mb_ip_copy(p->t.daddr, t->dst_ip);
	p->t.sport = t->src_port;
	p->t.dport = t->dst_port;
	p->t.proto = t->proto;
	p->t.family = t->family;
	return 0;
}

/* L4 checksum flags: a UDP checksum of zero means "none" and stays zero. */
static __always_inline __u64 mb_lb_l4_flags(const struct mb_lb_pkt *p)
{
	return p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* A new address into an IPv4 header: both checksums (the L4 one through its pseudo-header). */
static __always_inline int mb_lb_rewrite_ip4(struct __sk_buff *skb, const struct mb_lb_pkt *p,
					     int dst, __u32 old_ip, __u32 ip)
{
	__u32 off = ETH_HLEN + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

	if (bpf_l4_csum_replace(skb, p->csum_off, old_ip, ip,
				mb_lb_l4_flags(p) | BPF_F_PSEUDO_HDR | sizeof(ip)) < 0 ||
	    bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_ip, ip,
				sizeof(ip)) < 0 ||
	    bpf_skb_store_bytes(skb, off, &ip, sizeof(ip), 0) < 0)
		return -MB_DROP_LB_REWRITE;
	return MB_LB_CONTINUE;
}

/* A new address into an IPv6 header: no header checksum; the L4 checksum's
 * pseudo-header takes the difference of the 16 bytes. */
static __always_inline int mb_lb_rewrite_ip6(struct __sk_buff *skb, const struct mb_lb_pkt *p,
					     int dst, const __u32 *old_ip, const __u32 *ip)
{
	__u32 off = ETH_HLEN + (dst ? offsetof(struct ipv6hdr, daddr)
				    : offsetof(struct ipv6hdr, saddr));
	__s64 diff;

	diff = bpf_csum_diff((__be32 *)old_ip, 16, (__be32 *)ip, 16, 0);
	if (diff < 0 ||
	    bpf_l4_csum_replace(skb, p->csum_off, 0, (__u32)diff,
				mb_lb_l4_flags(p) | BPF_F_PSEUDO_HDR) < 0 ||
	    bpf_skb_store_bytes(skb, off, ip, 16, 0) < 0)
		return -MB_DROP_LB_REWRITE;
	return MB_LB_CONTINUE;
}

/*
 * Rewrite the source (dst = 0) or destination (dst = 1) address (`ip`, of
 * the packet's family: IPv4 in ip[0]) and port.
 */
MB_LB_SUBPROG int mb_lb_rewrite(struct __sk_buff *skb, struct mb_lb_pkt *p, int dst,
				const __u32 *ip, __u16 port)
{
	__u32 *old_ip = dst ? p->t.daddr : p->t.saddr;
	__u16 old_port = bpf_htons(dst ? p->t.dport : p->t.sport);
	__u16 new_port = bpf_htons(port);
	int ret = MB_LB_CONTINUE;

	if (p->t.family == MB_AF_INET6) {
		if (!mb_addr_eq(old_ip, ip))
			ret = mb_lb_rewrite_ip6(skb, p, dst, old_ip, ip);
	} else if (old_ip[0] != ip[0]) {
		ret = mb_lb_rewrite_ip4(skb, p, dst, old_ip[0], ip[0]);
	}
	if (ret < 0)
		return ret;
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, p->csum_off, old_port, new_port,
					mb_lb_l4_flags(p) | sizeof(new_port)) < 0 ||
		    bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &new_port, sizeof(new_port),
					0) < 0)
			return -MB_DROP_LB_REWRITE;
	}
	mb_ip_copy(old_ip, ip);
	if (dst)
		p->t.dport = port;
	else
		p->t.sport = port;
	return MB_LB_CONTINUE;
}

/* A new flow's backend id: the Maglev entry of its hash, or a random slot. */
MB_LB_SUBPROG int mb_lb_select(const struct mb_lb_svc_value *svc, const struct mb_lb_tuple *t,
			       __u32 *id)
{
	struct mb_lb_slot_key sk = {};
	struct mb_lb_maglev_row *row;
	__u32 set = svc->slot_set;
	__u32 *bid, idx;

	if (svc->count == 0)
		return -MB_DROP_LB_NO_BACKEND;
	if (svc->flags & MB_LB_F_MAGLEV) {
		row = bpf_map_lookup_elem(&mb_lb_maglev, &set);
		if (row) {
			idx = mb_lb_hash(t) % MB_LB_MAGLEV_M;
			/* The verifier tracks no bounds through %: state it
			 * where the compiler cannot fold the check away. */
			asm volatile("" : "+r"(idx));
			if (idx >= MB_LB_MAGLEV_M)
				return -MB_DROP_LB_BACKEND_GONE;
			*id = row->backend_id[idx];
			return *id ? MB_LB_CONTINUE : -MB_DROP_LB_BACKEND_GONE;
		}
		/* No row (the agent writes one with the set): fall back to random. */
	}
	sk.slot_set = set;
	sk.slot = bpf_get_prandom_u32() % svc->count;
	bid = bpf_map_lookup_elem(&mb_lb_slots, &sk);
	if (!bid)
		return -MB_DROP_LB_BACKEND_GONE;
	*id = *bid;
	return MB_LB_CONTINUE;
}

/* mb_lb_flow_get's answers besides drops. */
#define MB_LB_FLOW_KNOWN 0 /* a flow seen before: its backend */
#define MB_LB_FLOW_NONE 1  /* no flow and no frontend: not a service's */
#define MB_LB_FLOW_NEW 2   /* a new flow to a frontend: a backend chosen */

/*
 * The backend of a flow to the frontend (key_ip, of the tuple's family;
 * the tuple's port and protocol; scope): the one the flow remembers, or a new one chosen for
 * it. The frontend is looked up first, as Cilium does: mb_lb_svc is small
 * and its hot entries stay in cache, while mb_lb_flows is an LRU as large
 * as conntrack, so a packet to no frontend (most of them: pods whose
 * connects the socket LB translated already) costs one cheap miss instead
 * of a cold walk of that table. A frontend deleted takes its flows with
 * it (their packets pass untranslated); one whose backends change keeps
 * them. A new flow is not remembered yet: the caller commits it with its
 * reverse entry. A packet to a port no frontend has (mb_lb_ports) is no
 * service's without that lookup either.
 */
MB_LB_SUBPROG int mb_lb_flow_get(const struct mb_lb_tuple *t, const __u32 *key_ip, __u32 scope,
				 struct mb_lb_flow *out)
{
	struct mb_lb_svc_value *svc;
	struct mb_lb_svc_key key = {};
	struct mb_lb_backend *be;
	struct mb_lb_flow *f;
	__u32 id = 0, word = t->dport >> 5;
	__u32 *bits;
	int ret;

	bits = bpf_map_lookup_elem(&mb_lb_ports, &word);
	if (!bits || !(*bits & (1U << (t->dport & 31))))
		return MB_LB_FLOW_NONE;
	mb_ip_copy(key.ip, key_ip);
	key.port = t->dport;
	key.proto = t->proto;
	key.scope = scope;
	key.family = t->family;
	svc = bpf_map_lookup_elem(&mb_lb_svc, &key);
	if (!svc)
		return MB_LB_FLOW_NONE;
	f = bpf_map_lookup_elem(&mb_lb_flows, t);
	if (f) {
		*out = *f;
		return MB_LB_FLOW_KNOWN;
	}
	ret = mb_lb_select(svc, t, &id);
	if (ret < 0)
		return ret;
	be = bpf_map_lookup_elem(&mb_lb_backends, &id);
	if (!be || be->family != t->family)
		return -MB_DROP_LB_BACKEND_GONE;
	__builtin_memset(out, 0, sizeof(*out));
	mb_ip_copy(out->backend_ip, be->ip);
	out->backend_port = be->port;
	out->family = t->family;
	out->backend_id = id;
	out->rev_nat_id = svc->rev_nat_id;
	return MB_LB_FLOW_NEW;
}

/* The reply tuple of a flow translated to `f`: backend → (SNAT address or client). */
static __always_inline void mb_lb_reply_tuple(const struct mb_lb_tuple *t,
					      const struct mb_lb_flow *f, struct mb_lb_tuple *r)
{
	__builtin_memset(r, 0, sizeof(*r));
	mb_ip_copy(r->saddr, f->backend_ip);
	r->sport = f->backend_port;
	if (f->flags & MB_LB_FLOW_SNAT) {
		mb_ip_copy(r->daddr, f->snat_ip);
		r->dport = f->snat_port;
	} else {
		mb_ip_copy(r->daddr, t->saddr);
		r->dport = t->sport;
	}
	r->proto = t->proto;
	r->family = t->family;
}

/* Remember a new flow and how its replies translate back. */
MB_LB_SUBPROG int mb_lb_flow_commit(const struct mb_lb_tuple *t,
					     const struct mb_lb_flow *f, __u64 rev_flags)
{
	struct mb_lb_tuple r;
	struct mb_lb_rev rv = {};

	mb_lb_reply_tuple(t, f, &r);
	rv.rev_nat_id = f->rev_nat_id;
	mb_ip_copy(rv.client_ip, t->saddr);
	rv.client_port = t->sport;
	rv.flags = f->flags;
	/* SNAT: the reverse entry is the port reservation, taken only if free. */
	if (bpf_map_update_elem(&mb_lb_rev, &r, &rv,
				(f->flags & MB_LB_FLOW_SNAT) ? rev_flags : BPF_ANY) < 0)
		return -MB_DROP_LB_NO_SNAT_PORT;
	bpf_map_update_elem(&mb_lb_flows, t, f, BPF_ANY);
	return MB_LB_CONTINUE;
}

/* Translate a reply back: its source becomes the frontend; with SNAT its destination the client. */
MB_LB_SUBPROG int mb_lb_rev_apply(struct __sk_buff *skb, struct mb_lb_pkt *p,
					   const struct mb_lb_rev *rv, __u32 node_ip4)
{
	struct mb_addr_port *front;
	__u32 rid = rv->rev_nat_id;
	__u32 ip[4] = {};
	int ret;

	front = bpf_map_lookup_elem(&mb_lb_rnat, &rid);
	/* The service is gone (nothing to answer as), or the id was reused
	 * for a frontend of the other family since. */
	if (!front || front->family != p->t.family)
		return MB_LB_CONTINUE;
	mb_ip_copy(ip, front->ip);
	if (front->family == MB_AF_INET && !ip[0])
		ip[0] = node_ip4;
	ret = mb_lb_rewrite(skb, p, 0, ip, front->port);
	if (ret == MB_LB_CONTINUE && (rv->flags & MB_LB_FLOW_SNAT))
		ret = mb_lb_rewrite(skb, p, 1, rv->client_ip, rv->client_port);
	return ret < 0 ? ret : MB_LB_TRANSLATED;
}

/*
 * A pod's packet to a ClusterIP frontend: DNAT to the flow's backend; `out`
 * (the packet's conntrack tuple as parsed, `l4_off` and `untranslatable`
 * as mb_lb_pkt_of takes them) gets the addresses and ports it leaves with,
 * *rev_nat_id = the frontend's reverse
 * NAT id for the flow's conntrack entry (replies are translated back from
 * it in to-container, mb_lb_rev_nat), 0 when the replies come back some
 * other way. Hairpin (the backend is the sender itself): the source becomes
 * the frontend address too, or the pod would drop a packet from itself; the
 * pod's reply comes back through its from-container and is translated both
 * ways there (mb_lb_reply_from_container, lib/nodeport.h), the only kind of
 * pod flow with an mb_lb_rev entry.
 */
MB_LB_SUBPROG int mb_lb_from_container(struct __sk_buff *skb, struct mb_ct_key *out,
				       __u32 l4_off, int untranslatable, __u32 *rev_nat_id)
{
	struct mb_lb_pkt p = {};
	struct mb_lb_flow f;
	int ret;

	if (mb_lb_pkt_of(out, l4_off, untranslatable, &p) < 0)
		return MB_LB_CONTINUE;
	ret = mb_lb_flow_get(&p.t, p.t.daddr, MB_LB_SCOPE_CLUSTER, &f);
	if (ret == MB_LB_FLOW_NONE || ret < 0)
		return ret < 0 ? ret : MB_LB_CONTINUE;
	if (ret == MB_LB_FLOW_NEW) {
		if (mb_addr_eq(f.backend_ip, p.t.saddr)) {
			f.flags |= MB_LB_FLOW_SNAT;
			mb_ip_copy(f.snat_ip, p.t.daddr);
			f.snat_port = p.t.sport;
			ret = mb_lb_flow_commit(&p.t, &f, BPF_ANY);
			if (ret < 0)
				return ret;
		} else {
			bpf_map_update_elem(&mb_lb_flows, &p.t, &f, BPF_ANY);
		}
	}
	ret = mb_lb_rewrite(skb, &p, 1, f.backend_ip, f.backend_port);
	if (ret == MB_LB_CONTINUE && (f.flags & MB_LB_FLOW_SNAT))
		ret = mb_lb_rewrite(skb, &p, 0, f.snat_ip, f.snat_port);
	if (ret < 0)
		return ret;
	mb_ip_copy(out->src_ip, p.t.saddr);
	mb_ip_copy(out->dst_ip, p.t.daddr);
	out->src_port = p.t.sport;
	out->dst_port = p.t.dport;
	*rev_nat_id = (f.flags & MB_LB_FLOW_SNAT) ? 0 : f.rev_nat_id;
	return MB_LB_TRANSLATED;
}

/* mb_lb_hairpin's answers. */
#define MB_LB_HAIRPIN_NONE 0
#define MB_LB_HAIRPIN_REQUEST 1 /* the pod's own packet, to itself as the backend */
#define MB_LB_HAIRPIN_REPLY 2   /* its answer, to itself as the client */

/*
 * to-container, a packet of no tracked flow whose source the ipcache calls
 * world: whether it is a hairpin flow of the pod it goes to (the pod reached
 * itself through its service, and mb_lb_from_container gave it the frontend
 * address as its source), so that the pod's ingress policy decides it with
 * the pod's own identity, as Cilium does, not the frontend's (world). Both
 * directions have the same reversed tuple (pod → frontend address): a
 * request's is the flow's mb_lb_rev entry (source translated, no external
 * client, the client being the pod), a reply's (frontend port → the client's
 * port, translated back in from-container) is the flow as the pod sent it,
 * its mb_lb_flows entry. For a reply, `sent` gets the tuple the pod's
 * from-container tracked the flow as (frontend address and client port →
 * the pod as backend), for the caller to find its conntrack entry. A new
 * flow pays these lookups only when its source is world; nothing else does.
 */
MB_LB_SUBPROG int mb_lb_hairpin(const struct mb_ct_key *t, struct mb_ct_key *sent)
{
	struct mb_lb_tuple k = {};
	struct mb_lb_flow *f;
	struct mb_lb_rev *rv;

	if ((t->family != MB_AF_INET && t->family != MB_AF_INET6) ||
	    (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP))
		return MB_LB_HAIRPIN_NONE;
	mb_ip_copy(k.saddr, t->dst_ip);
	mb_ip_copy(k.daddr, t->src_ip);
	k.sport = t->dst_port;
	k.dport = t->src_port;
	k.proto = t->proto;
	k.family = t->family;
	rv = bpf_map_lookup_elem(&mb_lb_rev, &k);
	if (rv && (rv->flags & (MB_LB_FLOW_SNAT | MB_LB_FLOW_EXTERNAL)) == MB_LB_FLOW_SNAT &&
	    mb_addr_eq(rv->client_ip, t->dst_ip))
		return MB_LB_HAIRPIN_REQUEST;
	f = bpf_map_lookup_elem(&mb_lb_flows, &k);
	if (!f || (f->flags & (MB_LB_FLOW_SNAT | MB_LB_FLOW_EXTERNAL)) != MB_LB_FLOW_SNAT ||
	    !mb_addr_eq(f->backend_ip, t->dst_ip) || !mb_addr_eq(f->snat_ip, t->src_ip))
		return MB_LB_HAIRPIN_NONE;
	__builtin_memset(sent, 0, sizeof(*sent));
	mb_ip_copy(sent->src_ip, f->snat_ip);
	sent->src_port = f->snat_port;
	mb_ip_copy(sent->dst_ip, f->backend_ip);
	sent->dst_port = f->backend_port;
	sent->proto = t->proto;
	sent->family = t->family;
	return MB_LB_HAIRPIN_REPLY;
}

/*
 * A reply toward a client pod of a flow translated to a backend: the
 * frontend (reverse NAT id `rev_nat_id`, from the flow's conntrack entry)
 * becomes its source (`t`, `l4_off`, `untranslatable`: the packet as
 * parsed, mb_lb_pkt_of). A frontend deleted since leaves it untouched.
 */
MB_LB_SUBPROG int mb_lb_rev_nat(struct __sk_buff *skb, const struct mb_ct_key *t, __u32 l4_off,
				int untranslatable, __u32 rev_nat_id)
{
	struct mb_lb_pkt p = {};
	struct mb_lb_rev rv = {};

	if (mb_lb_pkt_of(t, l4_off, untranslatable, &p) < 0)
		return MB_LB_CONTINUE;
	rv.rev_nat_id = rev_nat_id;
	return mb_lb_rev_apply(skb, &p, &rv, 0);
}

#endif /* MB_LB_H */
