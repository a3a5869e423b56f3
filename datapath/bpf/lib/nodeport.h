/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * NodePort on the underlay device's ingress (bpf_host.c): a packet to this
 * node's node_ip4 and a NodePort goes to a backend of the service.
 *   - A local backend (in mb_endpoints): DNAT, delivered straight to the
 *     pod's host veth; the client's address is kept, and the pod's replies
 *     get node_ip4:NodePort back as their source in from-container
 *     (mb_lb_reply_from_container), which sends them out by a FIB lookup (a
 *     packet from the node's own address would be a martian if routed).
 *   - A remote backend: DNAT and SNAT to node_ip4 (the client's port when
 *     free toward that backend, else a random one), so the reply comes back
 *     here and is translated both ways (mb_lb_nodeport). Forwarded by FIB
 *     lookup (native routing; an overlay would encapsulate here).
 *   - external_traffic_local: the agent writes only local backends into the
 *     NodePort's slots; none → drop (no backend).
 * Needs mb_endpoints (the node's pods) from the including program.
 */
#ifndef MB_NODEPORT_H
#define MB_NODEPORT_H

#include <linux/if_ether.h>

#include "lb.h"

/* Source ports tried for a remote backend after the client's own. */
#define MB_LB_SNAT_TRIES 8
#define MB_LB_SNAT_PORT_MIN 32768
#define MB_LB_SNAT_PORT_SPAN 28232 /* up to 60999, as Linux's default ephemeral range */

/* Send a translated packet out where the FIB routes its destination. */
static __always_inline int mb_lb_fib_redirect(struct __sk_buff *skb, const struct mb_lb_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	long rc;

	fib.family = AF_INET;
	fib.l4_protocol = p->t.proto;
	fib.sport = bpf_htons(p->t.sport);
	fib.dport = bpf_htons(p->t.dport);
	fib.ipv4_src = p->t.saddr[0];
	fib.ipv4_dst = p->t.daddr[0];
	fib.ifindex = skb->ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
			return -MB_DROP_LB_REWRITE;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	return -MB_DROP_LB_NO_ROUTE;
}

/* Deliver to a local pod: its MAC, from its host veth's, out of that veth. */
static __always_inline int mb_lb_deliver_local(struct __sk_buff *skb,
					       const struct mb_endpoint_value *ep)
{
	if (bpf_skb_store_bytes(skb, 0, ep->mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, ep->node_mac, ETH_ALEN, 0) < 0)
		return -MB_DROP_LB_REWRITE;
	return bpf_redirect(ep->ifindex, 0);
}

static __always_inline struct mb_endpoint_value *mb_lb_local_endpoint(__u32 ip4)
{
	struct mb_ip_key k = {};

	k.ip[0] = ip4;
	k.family = MB_AF_INET;
	return bpf_map_lookup_elem(&mb_endpoints, &k);
}

/* A new remote flow's source port toward its backend, reserved in mb_lb_rev. */
static __always_inline int mb_lb_snat_commit(const struct mb_lb_tuple *t, struct mb_lb_flow *f,
					     __u32 node_ip4)
{
	int i;

	f->flags |= MB_LB_FLOW_SNAT;
	f->snat_ip = node_ip4;
	f->snat_port = t->sport;
	for (i = 0; i < MB_LB_SNAT_TRIES; i++) {
		if (mb_lb_flow_commit(t, f, BPF_NOEXIST) == MB_LB_CONTINUE)
			return MB_LB_CONTINUE;
		f->snat_port = MB_LB_SNAT_PORT_MIN + bpf_get_prandom_u32() % MB_LB_SNAT_PORT_SPAN;
	}
	return -MB_DROP_LB_NO_SNAT_PORT;
}

/*
 * The underlay's ingress: a remote backend's reply to a NodePort flow, or
 * a client's packet to a NodePort. MB_LB_CONTINUE for everything else.
 */
static __always_inline int mb_lb_nodeport(struct __sk_buff *skb, __u32 node_ip4)
{
	struct mb_endpoint_value *ep;
	struct mb_lb_svc_key key = {};
	struct mb_lb_svc_value *svc;
	struct mb_lb_pkt p = {};
	struct mb_lb_rev *rv;
	struct mb_lb_flow f;
	int fresh, ret;

	if (!node_ip4 || mb_lb_parse4(skb, &p) < 0 || p.t.daddr[0] != node_ip4)
		return MB_LB_CONTINUE;
	rv = bpf_map_lookup_elem(&mb_lb_rev, &p.t);
	if (rv && (rv->flags & MB_LB_FLOW_NODEPORT) && (rv->flags & MB_LB_FLOW_SNAT)) {
		ret = mb_lb_rev_apply(skb, &p, rv, node_ip4);
		return ret < 0 ? ret : mb_lb_fib_redirect(skb, &p);
	}

	key.port = p.t.dport;
	key.proto = p.t.proto;
	key.scope = MB_LB_SCOPE_NODEPORT;
	key.family = MB_AF_INET;
	svc = bpf_map_lookup_elem(&mb_lb_svc, &key);
	if (!svc && !bpf_map_lookup_elem(&mb_lb_flows, &p.t))
		return MB_LB_CONTINUE;
	ret = mb_lb_flow_get(svc, &p.t, &f, &fresh);
	if (ret < 0)
		return ret;
	ep = mb_lb_local_endpoint(f.backend_ip[0]);
	if (fresh) {
		f.flags |= MB_LB_FLOW_NODEPORT;
		if (ep)
			ret = mb_lb_flow_commit(&p.t, &f, BPF_ANY);
		else
			ret = mb_lb_snat_commit(&p.t, &f, node_ip4);
		if (ret < 0)
			return ret;
	}
	ret = mb_lb_rewrite(skb, &p, 1, f.backend_ip[0], f.backend_port);
	if (ret < 0)
		return ret;
	if (f.flags & MB_LB_FLOW_SNAT) {
		ret = mb_lb_rewrite(skb, &p, 0, f.snat_ip, f.snat_port);
		if (ret < 0)
			return ret;
	}
	if (ep)
		return mb_lb_deliver_local(skb, ep);
	return mb_lb_fib_redirect(skb, &p);
}

/*
 * from-container, after conntrack: a pod's reply to a flow translated both
 * ways. Hairpin (the pod reached itself through its service): source and
 * destination back to the frontend and the pod, routed normally. A local
 * NodePort backend's reply to an outside client: node_ip4:NodePort as its
 * source, sent out by the FIB (routed normally, a packet from the node's
 * own address would be a martian). Plain ClusterIP replies are left to
 * the client's to-container.
 */
static __always_inline int mb_lb_reply_from_container(struct __sk_buff *skb, __u32 node_ip4)
{
	struct mb_lb_pkt p = {};
	struct mb_lb_rev *rv;
	int ret;

	if (mb_lb_parse4(skb, &p) < 0)
		return MB_LB_CONTINUE;
	rv = bpf_map_lookup_elem(&mb_lb_rev, &p.t);
	if (!rv)
		return MB_LB_CONTINUE;
	if (!(rv->flags & MB_LB_FLOW_NODEPORT)) {
		if (!(rv->flags & MB_LB_FLOW_SNAT))
			return MB_LB_CONTINUE;
		return mb_lb_rev_apply(skb, &p, rv, node_ip4);
	}
	/* A remote backend's replies arrive on the underlay, never here. */
	if (rv->flags & MB_LB_FLOW_SNAT)
		return MB_LB_CONTINUE;
	ret = mb_lb_rev_apply(skb, &p, rv, node_ip4);
	return ret < 0 ? ret : mb_lb_fib_redirect(skb, &p);
}

#endif /* MB_NODEPORT_H */
