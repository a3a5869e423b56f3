/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The packet path of one pod, on the node side of its veth pair (tcx):
 *
 *   mb_from_container (tc ingress of the host veth): what the pod sends.
 *     The source must be one of the endpoint's own addresses (a pod must
 *     not borrow another's identity); the destination's identity comes from
 *     the node ipcache; conntrack lets later packets and replies of known
 *     flows through; a flow's first packet is decided by the endpoint's
 *     EGRESS policy.
 *   mb_to_container (tc egress of the host veth): what goes to the pod.
 *     The source identity is the one the overlay carried in skb->mark, or
 *     the ipcache's; replies of the pod's own flows pass; a flow's first
 *     packet is decided by the endpoint's INGRESS policy. REDIRECT passes:
 *     inside the pod, sk_lookup hands the connection to the sidecar with
 *     its original destination, and the sidecar decides L7.
 *
 * Services (lib/lb.h, lib/nodeport.h): from-container translates a packet
 * to a ClusterIP frontend to its backend before conntrack and policy, and a
 * pod's replies to hairpin and NodePort flows back after them;
 * to-container gives replies to a client pod the frontend as their source,
 * and decides a pod's hairpin flow (to itself through its service) with the
 * pod's own identity as the source.
 *
 * One instance per endpoint: loaded with the endpoint's mb_policy,
 * mb_config, mb_events and mb_lxc (its pin directory) and the node's maps
 * (mb_node_config, mb_ipcache, mb_endpoints, mb_ct, mb_tc_stats). Nothing
 * is dropped by policy unless the node's MB_NODE_F_POLICY and the
 * endpoint's MB_CFG_POLICY_ENFORCE are both set; spoofed and malformed
 * packets are always dropped.
 */
#include "lib/tc_policy.h"
#include "lib/encap.h"
#include "lib/nodeport.h"

/* Count a forwarded packet and let the kernel carry on. */
static __always_inline int mb_lxc_pass(const struct mb_pkt *p)
{
	mb_tc_count(MB_RSN_NONE, p->len);
	return TC_ACT_OK;
}

/*
 * Forward a packet the pod sent and policy allowed. Toward another node's
 * pod (the destination's ipcache entry names its node: tunnel_ip4) in an
 * overlay mode it is encapsulated with the pod's identity in the VNI and
 * sent (lib/encap.h); else the kernel routes it: native routing.
 */
static __always_inline int mb_lxc_to_network(struct __sk_buff *skb, const struct mb_pkt *p,
					     const struct mb_node_config *cfg, __u32 src_id,
					     __u32 dst_id, __u32 tunnel_ip4)
{
	struct mb_l3 l3 = {};

	if (!tunnel_ip4)
		return mb_lxc_pass(p);
	if (!cfg || cfg->overlay == MB_OVERLAY_NATIVE)
		return mb_lxc_pass(p);
	mb_ip_copy(l3.src, p->t.src_ip);
	mb_ip_copy(l3.dst, p->t.dst_ip);
	l3.sport = p->t.src_port;
	l3.dport = p->t.dst_port;
	l3.family = p->t.family;
	l3.proto = p->t.proto;
	l3.src_identity = src_id;
	l3.dst_identity = dst_id;
	return mb_encap_to_remote(skb, cfg, tunnel_ip4, &l3, MB_PROG_FROM_CONTAINER);
}

/* What conntrack knows of a packet (mb_lxc_track). */
struct mb_lxc_ct {
	struct mb_ct_value *v; /* the flow's entry (forward or reply hit), else 0 */
	int hit;               /* MB_CT_HIT_FWD, MB_CT_HIT_REPLY, or MB_CT_MISS */
};

/*
 * Whether a packet is more likely a reply than a packet of a flow its
 * sender opened, so that conntrack looks for the flow it replies to first
 * and a hit costs one lookup, not a cold miss and then the hit. A SYN-ACK
 * answers a SYN; a SYN opens a flow; otherwise a packet from the lower
 * port to the higher is taken for a server's answer to a client's
 * ephemeral port. Only the order of the two lookups follows: a wrong guess
 * costs the second lookup, never a verdict.
 */
static __always_inline int mb_lxc_likely_reply(const struct mb_pkt *p)
{
	if (p->kind != MB_PKT_FLOW)
		return 0;
	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & MB_TCP_SYN))
		return !!(p->tcp_flags & MB_TCP_ACK);
	return p->t.src_port < p->t.dst_port;
}

/* mb_lxc_track's answers besides drop reasons (> 0). */
#define MB_LXC_KNOWN 0 /* a tracked flow's packet (or a related ICMP error): pass */
#define MB_LXC_NEW (-1) /* a new flow (or an ICMP message that opens none): policy */

/*
 * Conntrack for one parsed IP packet at endpoint `lxc`, seen on `side`
 * (MB_DIR_EGRESS: the pod sent it; MB_DIR_INGRESS: it goes to the pod). A
 * packet of a known flow updates its entry and needs nothing else: no
 * identity, no policy, no event (the established path).
 */
static __always_inline int mb_lxc_track(const struct mb_pkt *p, const struct mb_lxc_config *lxc,
					__u8 side, int enforce, __u64 now, struct mb_lxc_ct *ct)
{
	struct mb_ct_value *v = 0;
	int hit;

	switch (p->kind) {
	case MB_PKT_ICMP_ERROR:
		/* Related: the quoted packet went the other way through this
		 * same endpoint (the pod sent what an error to it quotes). */
		hit = mb_ct_lookup(&p->inner, lxc->endpoint_id,
				   side == MB_DIR_EGRESS ? MB_DIR_INGRESS : MB_DIR_EGRESS, 0, &v, now);
		return hit || !enforce ? MB_LXC_KNOWN : MB_RSN_CT_NO_FLOW;
	case MB_PKT_ECHO_REPLY:
		hit = mb_ct_lookup(&p->t, lxc->endpoint_id, side, 1, &v, now);
		if (hit == MB_CT_HIT_REPLY && v) {
			mb_ct_update(v, p->t.proto, 0, 1, p->len, now);
			ct->v = v;
			ct->hit = hit;
			return MB_LXC_KNOWN;
		}
		return enforce ? MB_RSN_CT_NO_FLOW : MB_LXC_KNOWN;
	case MB_PKT_FLOW:
	case MB_PKT_ECHO_REQ:
		hit = mb_ct_lookup(&p->t, lxc->endpoint_id, side, mb_lxc_likely_reply(p), &v, now);
		if (hit && v) {
			mb_ct_update(v, p->t.proto, p->tcp_flags, hit == MB_CT_HIT_REPLY, p->len,
				     now);
			ct->v = v;
			ct->hit = hit;
			return MB_LXC_KNOWN;
		}
		return MB_LXC_NEW;
	case MB_PKT_ICMP_OTHER:
		return MB_LXC_NEW;
	default:
		return MB_LXC_KNOWN;
	}
}

/*
 * Policy for a new flow (or an ICMP message that opens none) at endpoint
 * `lxc`, and its conntrack entry (`rev_nat_id`: see mb_ct_value). Returns
 * 0 to forward, or the reason to drop.
 */
static __always_inline int mb_lxc_admit(const struct mb_pkt *p, const struct mb_lxc_config *lxc,
					__u8 side, __u8 prog, __u32 src_id, __u32 dst_id,
					int enforce, __u32 rev_nat_id, __u64 now)
{
	__u32 remote_id = side == MB_DIR_EGRESS ? dst_id : src_id;
	__u8 verdict = 0;

	if (enforce) {
		verdict = mb_policy_lookup(side, p->t.proto, remote_id, mb_pkt_policy_port(p));
		mb_tc_verdict_event(p, prog, src_id, dst_id, verdict);
		if (!mb_verdict_allows(verdict))
			return verdict == MB_VERDICT_DENY ? MB_RSN_TC_POLICY_DENY
							  : MB_RSN_TC_NO_POLICY;
	}
	if (p->kind == MB_PKT_ICMP_OTHER)
		return 0;
	if (mb_ct_create(&p->t, lxc->endpoint_id, side, p->tcp_flags, remote_id, verdict,
			 rev_nat_id, p->len, now) &&
	    enforce)
		/* Its replies would be decided as new flows of the other side. */
		return MB_RSN_CT_CREATE;
	return 0;
}

/*
 * Whether a packet the pod sent may be a reply that the load balancer
 * translates in from-container (hairpin, NodePort to this pod): asked of
 * mb_lb_rev once per flow (the first reply), the answer kept in the entry.
 * A forward packet never is one; an untracked packet is asked every time.
 */
static __always_inline int mb_lxc_lb_reply_wanted(const struct mb_lxc_ct *ct)
{
	if (ct->hit == MB_CT_HIT_FWD)
		return 0;
	if (ct->hit == MB_CT_HIT_REPLY && ct->v && (ct->v->flags & MB_CT_F_LB_CHECKED))
		return ct->v->flags & MB_CT_F_LB_REPLY;
	return 1;
}

static __always_inline void mb_lxc_lb_reply_seen(const struct mb_lxc_ct *ct, int translated)
{
	if (ct->hit != MB_CT_HIT_REPLY || !ct->v || (ct->v->flags & MB_CT_F_LB_CHECKED))
		return;
	ct->v->flags |= MB_CT_F_LB_CHECKED | (translated ? MB_CT_F_LB_REPLY : 0);
}

/*
 * to-container, a new flow whose source the ipcache calls world: the pod's
 * own hairpin flow (lib/lb.h, mb_lb_hairpin)? Its request is decided by the
 * pod's ingress policy with the pod's own identity as the source (*src_id),
 * not the frontend address's; its reply, translated back in from-container,
 * belongs to the flow the pod's from-container tracked, whose entry it
 * updates as a reply (MB_LXC_KNOWN). Anything else: MB_LXC_NEW, unchanged.
 */
static __always_inline int mb_lxc_hairpin(const struct mb_pkt *p, const struct mb_lxc_config *lxc,
					  __u64 now, __u32 *src_id)
{
	struct mb_ct_key sent = {}, k = {};
	struct mb_ct_value *v;

	switch (mb_lb_hairpin(&p->t, &sent)) {
	case MB_LB_HAIRPIN_REQUEST:
		*src_id = lxc->identity;
		return MB_LXC_NEW;
	case MB_LB_HAIRPIN_REPLY:
		v = mb_ct_find(&k, &sent, lxc->endpoint_id, MB_DIR_EGRESS, 0, now);
		if (!v)
			return MB_LXC_NEW;
		mb_ct_update(v, p->t.proto, p->tcp_flags, 1, p->len, now);
		*src_id = lxc->identity;
		return MB_LXC_KNOWN;
	}
	return MB_LXC_NEW;
}

/* Reasons that drop only while policy is enforced (they mean "cannot be
 * decided"); the others drop always. */
static __always_inline int mb_lxc_undecidable(const struct mb_pkt *p)
{
	switch (p->kind) {
	case MB_PKT_FRAGMENT:
		return MB_RSN_FRAGMENT;
	case MB_PKT_UNKNOWN_L4:
		return MB_RSN_UNSUPPORTED_L4;
	case MB_PKT_UNKNOWN_L3:
		return MB_RSN_UNSUPPORTED_L3;
	}
	return 0;
}

SEC("classifier")
int mb_from_container(struct __sk_buff *skb)
{
	const struct mb_ipcache_value *dst = 0;
	const struct mb_node_config *cfg;
	const struct mb_endpoint_value *ep;
	const struct mb_lxc_config *lxc;
	struct mb_lxc_ct ct = {};
	struct mb_pkt p = {};
	__u32 zero = 0, src_id, dst_id = MB_ID_WORLD, rev_nat_id = 0, tunnel_ip4 = 0;
	int enforce, rc, lb, known_dst = 0;
	__u64 now;

	lxc = bpf_map_lookup_elem(&mb_lxc, &zero);
	rc = mb_parse(skb, &p);
	if (!lxc || !lxc->endpoint_id)
		return mb_lxc_pass(&p);
	if (rc)
		return mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, rc, lxc->identity, 0);
	if (p.kind == MB_PKT_PASS)
		return mb_lxc_pass(&p);
	enforce = mb_tc_enforcing();
	rc = mb_lxc_undecidable(&p);
	if (rc && p.kind == MB_PKT_UNKNOWN_L3)
		return enforce ? mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, rc, lxc->identity, 0)
			       : mb_lxc_pass(&p);

	/* Anti-spoofing: only the endpoint's own addresses may be a source
	 * (its IPv4 address is in its mb_lxc row: no lookup). */
	if (p.t.family == MB_AF_INET && lxc->ip4 && p.t.src_ip[0] == lxc->ip4) {
		src_id = lxc->identity;
	} else {
		ep = mb_endpoint_lookup(p.t.src_ip, p.t.family);
		if (!ep || ep->endpoint_id != lxc->endpoint_id)
			return mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, MB_RSN_SPOOFED,
					  lxc->identity, 0);
		src_id = ep->identity;
	}

	/* Service translation (lib/lb.h), before the destination's identity is
	 * looked up: policy and conntrack see the backend. The tuple follows
	 * the rewrite (no second parse). */
	lb = p.kind == MB_PKT_FLOW ? mb_lb_from_container(skb, &p.t, p.l4_off,
							 p.flags & MB_PKT_F_LB_SKIP, &rev_nat_id)
				   : MB_LB_CONTINUE;
	if (lb < 0)
		return mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, -lb, src_id, 0);

	cfg = mb_node_config_get();
	/* The destination's identity only where something needs it: a new
	 * flow's policy, a trace, an undecidable packet's event, or the tunnel
	 * toward another node's pod. Conntrack's entry has it for the rest. */
	if (rc || (cfg && ((cfg->flags & MB_NODE_F_TRACE) || cfg->overlay != MB_OVERLAY_NATIVE))) {
		dst = mb_ipcache_lookup(p.t.dst_ip, p.t.family);
		dst_id = dst ? dst->identity : MB_ID_WORLD;
		tunnel_ip4 = dst ? dst->tunnel_ip4 : 0;
		known_dst = 1;
		if (cfg && (cfg->flags & MB_NODE_F_TRACE))
			mb_tc_trace(&p, MB_PROG_FROM_CONTAINER, src_id, dst_id);
	}
	if (rc)
		return enforce ? mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, rc, src_id, dst_id)
			       : mb_lxc_to_network(skb, &p, cfg, src_id, dst_id, tunnel_ip4);
	now = mb_ct_now();
	rc = mb_lxc_track(&p, lxc, MB_DIR_EGRESS, enforce, now, &ct);
	if (rc == MB_LXC_NEW) {
		if (!known_dst) {
			dst_id = mb_ipcache_identity(p.t.dst_ip, p.t.family);
			known_dst = 1;
		}
		rc = mb_lxc_admit(&p, lxc, MB_DIR_EGRESS, MB_PROG_FROM_CONTAINER, src_id,
				  dst_id, enforce, rev_nat_id, now);
	} else if (ct.hit == MB_CT_HIT_FWD) {
		mb_ct_set_rev_nat(ct.v, rev_nat_id);
	}
	if (!known_dst && ct.v)
		dst_id = ct.v->identity;
	if (rc)
		return mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, rc, src_id, dst_id);

	/* A reply of a hairpin or NodePort flow, translated back now that
	 * conntrack matched it as it was sent (lib/nodeport.h). */
	if (!mb_lxc_lb_reply_wanted(&ct))
		return mb_lxc_to_network(skb, &p, cfg, src_id, dst_id, tunnel_ip4);
	lb = p.kind == MB_PKT_FLOW
		     ? mb_lb_reply_from_container(skb, &p.t, p.l4_off,
						  p.flags & MB_PKT_F_LB_SKIP,
						  cfg ? cfg->node_ip4 : 0)
		     : MB_LB_CONTINUE;
	mb_lxc_lb_reply_seen(&ct, lb != MB_LB_CONTINUE);
	if (lb < 0)
		return mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, -lb, src_id, dst_id);
	if (lb == MB_LB_TRANSLATED) {
		lb = mb_parse(skb, &p);
		if (lb)
			return mb_tc_drop(&p, MB_PROG_FROM_CONTAINER, lb, src_id, dst_id);
		dst = mb_ipcache_lookup(p.t.dst_ip, p.t.family);
		tunnel_ip4 = dst ? dst->tunnel_ip4 : 0;
	} else if (lb != MB_LB_CONTINUE) {
		/* Sent out by the FIB: forwarded. */
		mb_tc_count(MB_RSN_NONE, p.len);
		return lb;
	}
	return mb_lxc_to_network(skb, &p, cfg, src_id, dst_id, tunnel_ip4);
}

/* The source identity an earlier program on this node carried in the mark
 * (layout in membrane_abi.h), or 0. */
static __always_inline __u32 mb_mark_identity(__u32 mark)
{
	if ((mark & MB_MARK_MAGIC_MASK) != MB_MARK_MAGIC_IDENTITY)
		return 0;
	return (mark >> 16) | ((mark & 0xff) << 16);
}

SEC("classifier")
int mb_to_container(struct __sk_buff *skb)
{
	const struct mb_lxc_config *lxc;
	struct mb_lxc_ct ct = {};
	struct mb_pkt p = {};
	__u32 zero = 0, src_id;
	int enforce, rc;
	__u64 now;

	lxc = bpf_map_lookup_elem(&mb_lxc, &zero);
	src_id = mb_mark_identity(skb->mark);
	if (src_id)
		/* Read once: nothing after this hop may take it for its own. */
		skb->mark = 0;
	rc = mb_parse(skb, &p);
	if (!lxc || !lxc->endpoint_id)
		return mb_lxc_pass(&p);
	if (rc)
		return mb_tc_drop(&p, MB_PROG_TO_CONTAINER, rc, src_id, lxc->identity);
	if (p.kind == MB_PKT_PASS)
		return mb_lxc_pass(&p);
	enforce = mb_tc_enforcing();
	rc = mb_lxc_undecidable(&p);
	if (rc && p.kind == MB_PKT_UNKNOWN_L3)
		return enforce ? mb_tc_drop(&p, MB_PROG_TO_CONTAINER, rc, src_id, lxc->identity)
			       : mb_lxc_pass(&p);
	/* The source's identity only where something needs it (a new flow's
	 * policy, a trace, an event); conntrack's entry has it for the rest. */
	if (!src_id && (rc || (mb_node_flags() & MB_NODE_F_TRACE)))
		src_id = mb_ipcache_identity(p.t.src_ip, p.t.family);
	if (mb_node_flags() & MB_NODE_F_TRACE)
		mb_tc_trace(&p, MB_PROG_TO_CONTAINER, src_id, lxc->identity);
	if (rc)
		return enforce ? mb_tc_drop(&p, MB_PROG_TO_CONTAINER, rc, src_id, lxc->identity)
			       : mb_lxc_pass(&p);
	now = mb_ct_now();
	rc = mb_lxc_track(&p, lxc, MB_DIR_INGRESS, enforce, now, &ct);
	if (rc == MB_LXC_NEW) {
		if (!src_id)
			src_id = mb_ipcache_identity(p.t.src_ip, p.t.family);
		if (src_id == MB_ID_WORLD && p.kind == MB_PKT_FLOW)
			rc = mb_lxc_hairpin(&p, lxc, now, &src_id);
		if (rc == MB_LXC_NEW)
			rc = mb_lxc_admit(&p, lxc, MB_DIR_INGRESS, MB_PROG_TO_CONTAINER, src_id,
					  lxc->identity, enforce, 0, now);
	}
	if (!src_id && ct.v)
		src_id = ct.v->identity;
	if (rc)
		return mb_tc_drop(&p, MB_PROG_TO_CONTAINER, rc, src_id, lxc->identity);

	/* Reverse service translation toward a client pod (lib/lb.h): a reply
	 * of a flow its from-container translated, the frontend from the
	 * flow's entry (keyed by the backend, as from-container saw it after
	 * translation). */
	if (ct.hit == MB_CT_HIT_REPLY && ct.v && ct.v->rev_nat_id) {
		rc = mb_lb_rev_nat(skb, &p.t, p.l4_off, p.flags & MB_PKT_F_LB_SKIP,
				   ct.v->rev_nat_id);
		if (rc < 0)
			return mb_tc_drop(&p, MB_PROG_TO_CONTAINER, -rc, src_id, lxc->identity);
	}
	return mb_lxc_pass(&p);
}
