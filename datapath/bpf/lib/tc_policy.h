/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The packet path's L3/L4 decisions on a pod's host veth: parsing a packet
 * into a flow tuple, the endpoint's policy for a flow's first packet (the
 * same mb_policy and lookup as the socket hooks, lib/policy.h), and the
 * events and counters of every decision. Owns the endpoint's mb_lxc row.
 */
#ifndef MB_TC_POLICY_H
#define MB_TC_POLICY_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>

#include "common.h"
#include "config.h"
#include "events.h"
#include "node.h"
#include "policy.h"
#include "conntrack.h"

/*
 * mb_lxc: array with one row, in the endpoint's pin directory.
 *   key:    __u32 0
 *   value:  struct mb_lxc_config (host veth, identity, endpoint id)
 *   writer: the agent (NodeDatapath::attach_endpoint), before attaching.
 *   reader: the endpoint's bpf_lxc.c programs. Never written (endpoint id
 *           0): the programs pass everything.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_lxc_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lxc SEC(".maps");

/* ICMP and ICMPv6 types (RFC 792, RFC 4443); <linux/icmp.h> drags in libc
 * headers a BPF target does not have. */
#define MB_ICMP_ECHOREPLY 0
#define MB_ICMP_DEST_UNREACH 3
#define MB_ICMP_ECHO 8
#define MB_ICMP_TIME_EXCEEDED 11
#define MB_ICMP_PARAMETERPROB 12
#define MB_ICMP6_DEST_UNREACH 1
#define MB_ICMP6_PARAMPROB 4
#define MB_ICMP6_ECHO_REQUEST 128
#define MB_ICMP6_ECHO_REPLY 129

/* What a parsed packet is. */
enum mb_pkt_kind {
	MB_PKT_FLOW = 0,    /* TCP, UDP, SCTP: a tuple with ports */
	MB_PKT_ECHO_REQ,    /* ICMP/ICMPv6 echo request: opens a flow (src_port = id) */
	MB_PKT_ECHO_REPLY,  /* ICMP/ICMPv6 echo reply: only a reply (dst_port = id) */
	MB_PKT_ICMP_ERROR,  /* ICMP/ICMPv6 error: `inner` is the packet it is about */
	MB_PKT_ICMP_OTHER,  /* other ICMP types: decided one by one (port = type) */
	MB_PKT_PASS,        /* ARP, IPv6 neighbour discovery and MLD: link-local, always pass */
	MB_PKT_FRAGMENT,    /* a non-first fragment: no L4 header */
	MB_PKT_UNKNOWN_L4,  /* an L4 protocol the policy cannot decide */
	MB_PKT_UNKNOWN_L3,  /* neither IPv4, IPv6 nor ARP */
};

/* mb_pkt.flags */
#define MB_PKT_F_FIRST_FRAG 1 /* the first fragment of several (more follow) */
#define MB_PKT_F_IP6_ROUTED 2 /* IPv6 with a Routing header or AH: the LB leaves its addresses */
/* What the service LB (lib/lb.h) does not translate: a first fragment (the
 * others carry no ports), a routed or authenticated IPv6 packet. */
#define MB_PKT_F_LB_SKIP (MB_PKT_F_FIRST_FRAG | MB_PKT_F_IP6_ROUTED)

struct mb_pkt {
	struct mb_ct_key t;     /* the packet's tuple (scope fields zero) */
	struct mb_ct_key inner; /* MB_PKT_ICMP_ERROR: the tuple of the packet it quotes */
	__u32 len;
	__u32 l4_off;           /* where the L4 header starts (MB_PKT_FLOW): the LB rewrites there */
	__u8 kind;              /* enum mb_pkt_kind */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 flags;             /* MB_PKT_F_* */
};

#define MB_IPV6_EXT_MAX 4 /* extension headers walked before giving up */

/* Load `n` bytes at `off`; nonzero when the packet is shorter. */
#define MB_LOAD(skb, off, dst, n) bpf_skb_load_bytes(skb, off, dst, n)

/* Ports (TCP, UDP, SCTP) or ICMP identifiers of the L4 header at `off`.
 * `quoted`: the header an ICMP error quotes, of which only 8 bytes are sure
 * to be there (no TCP flags). */
static __always_inline int mb_parse_l4(struct __sk_buff *skb, __u32 off, struct mb_ct_key *t,
				       __u8 *tcp_flags, __u8 *icmp_type, __u8 *kind, int quoted)
{
	__u16 w[2];
	__u8 b[2];

	switch (t->proto) {
	case IPPROTO_TCP:
		if (!quoted && MB_LOAD(skb, off + 13, tcp_flags, 1))
			return MB_RSN_MALFORMED;
		/* fallthrough */
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (MB_LOAD(skb, off, w, 4))
			return MB_RSN_MALFORMED;
		t->src_port = bpf_ntohs(w[0]);
		t->dst_port = bpf_ntohs(w[1]);
		*kind = MB_PKT_FLOW;
		return 0;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (MB_LOAD(skb, off, b, 2))
			return MB_RSN_MALFORMED;
		*icmp_type = b[0];
		if (MB_LOAD(skb, off + 4, w, 2))
			w[0] = 0;
		if ((t->proto == IPPROTO_ICMP && b[0] == MB_ICMP_ECHO) ||
		    (t->proto == IPPROTO_ICMPV6 && b[0] == MB_ICMP6_ECHO_REQUEST)) {
			t->src_port = bpf_ntohs(w[0]);
			*kind = MB_PKT_ECHO_REQ;
		} else if ((t->proto == IPPROTO_ICMP && b[0] == MB_ICMP_ECHOREPLY) ||
			   (t->proto == IPPROTO_ICMPV6 && b[0] == MB_ICMP6_ECHO_REPLY)) {
			t->dst_port = bpf_ntohs(w[0]);
			*kind = MB_PKT_ECHO_REPLY;
		} else if (t->proto == IPPROTO_ICMP
				   ? (b[0] == MB_ICMP_DEST_UNREACH || b[0] == MB_ICMP_TIME_EXCEEDED ||
				      b[0] == MB_ICMP_PARAMETERPROB)
				   : (b[0] >= MB_ICMP6_DEST_UNREACH && b[0] <= MB_ICMP6_PARAMPROB)) {
			*kind = MB_PKT_ICMP_ERROR;
		} else if (t->proto == IPPROTO_ICMPV6 &&
			   ((b[0] >= 130 && b[0] <= 137) || b[0] == 143)) {
			/* MLD (130-132, 143) and neighbour discovery (133-137). */
			*kind = MB_PKT_PASS;
		} else {
			*kind = MB_PKT_ICMP_OTHER;
		}
		return 0;
	default:
		*kind = MB_PKT_UNKNOWN_L4;
		return 0;
	}
}

/* The IPv4 header at `off` into `t`; *l4 = where its payload starts, *frag
 * = 1 for a non-first fragment, 2 for the first of several. */
static __always_inline int mb_parse_ip4(struct __sk_buff *skb, __u32 off, struct mb_ct_key *t,
					__u32 *l4, int *frag)
{
	struct iphdr ip;

	if (MB_LOAD(skb, off, &ip, sizeof(ip)))
		return MB_RSN_MALFORMED;
	if (ip.version != 4 || ip.ihl < 5)
		return MB_RSN_MALFORMED;
	t->family = MB_AF_INET;
	t->src_ip[0] = ip.saddr;
	t->dst_ip[0] = ip.daddr;
	t->proto = ip.protocol;
	*l4 = off + ip.ihl * 4;
	*frag = (bpf_ntohs(ip.frag_off) & 0x1fff) ? 1 : (bpf_ntohs(ip.frag_off) & 0x2000) ? 2 : 0;
	return 0;
}

/* The IPv6 header at `off` and its extension headers. `walk`: 0 for the
 * header an ICMPv6 error quotes (its extension headers are not walked).
 * *frag as mb_parse_ip4's; *flags gets MB_PKT_F_IP6_ROUTED for a Routing
 * header or AH. */
static __always_inline int mb_parse_ip6(struct __sk_buff *skb, __u32 off, struct mb_ct_key *t,
					__u32 *l4, int *frag, __u8 *flags, int walk)
{
	struct ipv6hdr ip;
	__u8 nh;
	int i;

	if (MB_LOAD(skb, off, &ip, sizeof(ip)))
		return MB_RSN_MALFORMED;
	if (ip.version != 6)
		return MB_RSN_MALFORMED;
	t->family = MB_AF_INET6;
	__builtin_memcpy(t->src_ip, &ip.saddr, 16);
	__builtin_memcpy(t->dst_ip, &ip.daddr, 16);
	nh = ip.nexthdr;
	off += sizeof(ip);
	*frag = 0;
	if (!walk) {
		t->proto = nh;
		*l4 = off;
		return 0;
	}
#pragma unroll
	for (i = 0; i < MB_IPV6_EXT_MAX; i++) {
		__u8 h[2];
		__u16 fo;

		switch (nh) {
		case IPPROTO_ROUTING:
			*flags |= MB_PKT_F_IP6_ROUTED;
			/* fallthrough */
		case IPPROTO_HOPOPTS:
		case IPPROTO_DSTOPTS:
			if (MB_LOAD(skb, off, h, 2))
				return MB_RSN_MALFORMED;
			nh = h[0];
			off += (h[1] + 1) * 8;
			break;
		case IPPROTO_AH:
			*flags |= MB_PKT_F_IP6_ROUTED;
			if (MB_LOAD(skb, off, h, 2))
				return MB_RSN_MALFORMED;
			nh = h[0];
			off += (h[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (MB_LOAD(skb, off, h, 2) || MB_LOAD(skb, off + 2, &fo, 2))
				return MB_RSN_MALFORMED;
			nh = h[0];
			off += 8;
			if (bpf_ntohs(fo) & 0xfff8)
				*frag = 1;
			else if (bpf_ntohs(fo) & 1)
				*frag = 2;
			break;
		default:
			t->proto = nh;
			*l4 = off;
			return 0;
		}
	}
	return MB_RSN_IPV6_EXTHDR;
}

/*
 * The packet it quotes, for an ICMP error at `off` (the ICMP header): the
 * embedded IP header and the first bytes of its L4 header, as the tuple of
 * that packet. 0, or MB_RSN_MALFORMED when it quotes too little.
 */
static __always_inline int mb_parse_quoted(struct __sk_buff *skb, __u32 off, __u8 icmp_proto,
					   struct mb_ct_key *in)
{
	__u8 type = 0, kind = 0, flags = 0, pflags = 0;
	__u32 l4 = 0;
	int frag = 0, rc;

	off += 8;
	if (icmp_proto == IPPROTO_ICMP)
		rc = mb_parse_ip4(skb, off, in, &l4, &frag);
	else
		rc = mb_parse_ip6(skb, off, in, &l4, &frag, &pflags, 0);
	if (rc)
		return rc;
	rc = mb_parse_l4(skb, l4, in, &flags, &type, &kind, 1);
	if (rc)
		return rc;
	if (kind != MB_PKT_FLOW && kind != MB_PKT_ECHO_REQ && kind != MB_PKT_ECHO_REPLY)
		return MB_RSN_CT_NO_FLOW;
	return 0;
}

/* Parse an Ethernet frame into `p`: 0, or the reason to drop it. */
static __always_inline int mb_parse(struct __sk_buff *skb, struct mb_pkt *p)
{
	__u16 proto;
	__u32 l4 = 0;
	int frag = 0, rc;

	p->len = skb->len;
	if (MB_LOAD(skb, 12, &proto, 2))
		return MB_RSN_MALFORMED;
	switch (bpf_ntohs(proto)) {
	case ETH_P_ARP:
		p->kind = MB_PKT_PASS;
		return 0;
	case ETH_P_IP:
		rc = mb_parse_ip4(skb, ETH_HLEN, &p->t, &l4, &frag);
		break;
	case ETH_P_IPV6:
		rc = mb_parse_ip6(skb, ETH_HLEN, &p->t, &l4, &frag, &p->flags, 1);
		break;
	default:
		p->kind = MB_PKT_UNKNOWN_L3;
		return 0;
	}
	if (rc)
		return rc;
	if (frag == 1) {
		p->kind = MB_PKT_FRAGMENT;
		return 0;
	}
	if (frag == 2)
		p->flags |= MB_PKT_F_FIRST_FRAG;
	p->l4_off = l4;
	rc = mb_parse_l4(skb, l4, &p->t, &p->tcp_flags, &p->icmp_type, &p->kind, 0);
	if (rc)
		return rc;
	if (p->kind == MB_PKT_ICMP_ERROR && mb_parse_quoted(skb, l4, p->t.proto, &p->inner))
		/* Quotes nothing a flow could match: no flow it can be related to. */
		p->kind = MB_PKT_ICMP_OTHER;
	return 0;
}

/* The port a new flow's policy lookup uses: the accepting side's port, or
 * the ICMP type (as Cilium's ICMP rules match types). */
static __always_inline __u16 mb_pkt_policy_port(const struct mb_pkt *p)
{
	if (p->t.proto == IPPROTO_ICMP || p->t.proto == IPPROTO_ICMPV6)
		return p->icmp_type;
	return p->t.dst_port;
}

/* Fill an event about packet `p` seen by `prog`. */
static __always_inline void mb_tc_event_fill(struct mb_event *e, const struct mb_pkt *p,
					     __u8 prog, __u32 src_id, __u32 dst_id)
{
	const struct mb_config *cfg = mb_config_get();

	e->prog = prog;
	e->family = p->t.family;
	e->proto = p->t.proto;
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->revision = cfg ? cfg->policy_revision : 0;
	mb_ip_copy(e->src_ip, p->t.src_ip);
	mb_ip_copy(e->dst_ip, p->t.dst_ip);
	e->src_port = p->t.src_port;
	e->dst_port = p->t.dst_port;
}

/* A per-packet trace record (MB_NODE_F_TRACE only). */
static __always_inline void mb_tc_trace(const struct mb_pkt *p, __u8 prog, __u32 src_id,
					__u32 dst_id)
{
	struct mb_event e = {};

	e.type = MB_EVT_TRACE;
	mb_tc_event_fill(&e, p, prog, src_id, dst_id);
	mb_event_emit(&e);
}

/* A new flow's policy verdict, as the socket hooks report theirs. */
static __always_inline void mb_tc_verdict_event(const struct mb_pkt *p, __u8 prog, __u32 src_id,
						__u32 dst_id, __u8 verdict)
{
	struct mb_event e = {};

	e.type = MB_EVT_POLICY_VERDICT;
	mb_tc_event_fill(&e, p, prog, src_id, dst_id);
	if (mb_verdict_allows(verdict)) {
		e.verdict = MB_VERDICT_ALLOW;
		e.reason = MB_RSN_POLICY_ALLOW;
	} else {
		e.verdict = MB_VERDICT_DENY;
		e.reason = verdict == MB_VERDICT_DENY ? MB_RSN_POLICY_DENY : MB_RSN_NO_DECISION;
	}
	mb_event_emit(&e);
}

/* Count, report and drop. */
static __always_inline int mb_tc_drop(const struct mb_pkt *p, __u8 prog, __u8 reason,
				      __u32 src_id, __u32 dst_id)
{
	struct mb_event e = {};

	mb_tc_count(reason, p->len);
	e.type = MB_EVT_DROP;
	e.reason = reason;
	mb_tc_event_fill(&e, p, prog, src_id, dst_id);
	mb_event_emit(&e);
	return TC_ACT_SHOT;
}

/* Policy is enforced on packets only with both switches on: the node's
 * MB_NODE_F_POLICY and the endpoint's MB_CFG_POLICY_ENFORCE (the same one
 * the socket hooks obey, so both paths decide the same endpoints). */
static __always_inline int mb_tc_enforcing(void)
{
	const struct mb_config *cfg = mb_config_get();

	return (mb_node_flags() & MB_NODE_F_POLICY) && cfg && (cfg->flags & MB_CFG_POLICY_ENFORCE);
}

#endif /* MB_TC_POLICY_H */
