/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Services for clients that are no pod of this node: NodePort and
 * ClusterIPs routed to this node, on the underlay device's ingress
 * (bpf_host.c, mb_lb_from_netdev), and the node's own processes, on the
 * service device's egress (bpf_svc.c, mb_lb_from_host).
 *   - A local backend (in mb_endpoints): DNAT, delivered straight to the
 *     pod's host veth; the client's address is kept, and the pod's replies
 *     get the frontend back as their source in from-container
 *     (mb_lb_reply_from_container), which sends them out by a FIB lookup
 *     (a packet from the node's own address would be a martian if routed;
 *     a reply to the host itself is delivered locally).
 *   - A remote backend of an underlay client: DNAT and SNAT to node_ip4 (the
 *     client's port when free toward that backend, else a random one), so
 *     the reply comes back here and is translated both ways. Natively
 *     routed by FIB lookup (the backend's node calls it remote-node, by its
 *     ipcache). In the overlay modes, a backend behind a tunnel endpoint
 *     gets it through the tunnel with world as the VNI (Cilium: service
 *     traffic from outside the cluster is world in tunnel mode; node_ip4
 *     as source does not make it the node's own), and a packet too big for
 *     the tunnel is refused with ICMP before anything is translated, so the
 *     error quotes the client's own packet. The backend's replies go to
 *     node_ip4, a node address the underlay routes: natively.
 *   - A remote backend of the host: DNAT only (the source already is
 *     node_ip4), out by the FIB: in the overlay modes the agent's route to
 *     the backend's pod CIDR leads to the underlay, whose mb_to_netdev
 *     tunnels it as remote-node (the host's own traffic).
 *   - external_traffic_local: the agent writes only local backends into the
 *     NodePort's slots; none → drop (no backend).
 * Needs mb_endpoints (lib/node.h) from the including program.
 */
#ifndef MB_NODEPORT_H
#define MB_NODEPORT_H

#include <linux/if_ether.h>

#include "lb.h"
#include "encap.h"

/* Overlay modes, an underlay client's packet for a backend behind a tunnel
 * endpoint: translated, the caller (bpf_host.c) encapsulates it with world
 * as the VNI; or untouched and too big for the tunnel, the caller refuses it
 * with ICMP. The tunnel's and the ICMP's stack frames stack on the caller's,
 * not on the LB's (the verifier's 512 bytes for the deepest chain). */
#define MB_LB_TUNNEL 257
#define MB_LB_TOO_BIG 258

/* Source ports tried for a remote backend after the client's own. */
#define MB_LB_SNAT_TRIES 8
#define MB_LB_SNAT_PORT_MIN 32768
#define MB_LB_SNAT_PORT_SPAN 28232 /* up to 60999, as Linux's default ephemeral range */

/*
 * Send a translated packet out where the FIB routes its destination; a
 * destination on this node goes on up the stack (MB_LB_TRANSLATED).
 */
MB_LB_SUBPROG int mb_lb_fib_redirect(struct __sk_buff *skb, const struct mb_lb_pkt *p)
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
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return MB_LB_TRANSLATED;
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
	f->snat_ip[0] = node_ip4;
	f->snat_port = t->sport;
	for (i = 0; i < MB_LB_SNAT_TRIES; i++) {
		if (mb_lb_flow_commit(t, f, BPF_NOEXIST) == MB_LB_CONTINUE)
			return MB_LB_CONTINUE;
		f->snat_port = MB_LB_SNAT_PORT_MIN + bpf_get_prandom_u32() % MB_LB_SNAT_PORT_SPAN;
	}
	return -MB_DROP_LB_NO_SNAT_PORT;
}

/*
 * Whether a backend that is no local pod is reached through the tunnel
 * (overlay modes, an ipcache entry with a tunnel endpoint), and then the
 * tunnel's MTU in `mtu`.
 */
static __always_inline int mb_lb_tunneled(__u32 backend_ip4, __u32 *mtu)
{
	const struct mb_node_config *cfg = mb_node_config_get();
	const struct mb_ipcache_value *v;
	__u32 ip[4] = { backend_ip4, 0, 0, 0 };

	if (!cfg || cfg->overlay == MB_OVERLAY_NATIVE)
		return 0;
	v = mb_ipcache_lookup(ip, MB_AF_INET);
	if (!v || !v->tunnel_ip4)
		return 0;
	*mtu = mb_inner_mtu(cfg->underlay_mtu);
	return 1;
}

/*
 * A client that is no local pod to a frontend (key_ip, the packet's port
 * and protocol, scope): DNAT (plus SNAT for an underlay client and a
 * remote backend, `snat`), then delivered to the local backend's veth,
 * sent through the tunnel (an underlay client's, overlay modes) or out by
 * the FIB. MB_LB_CONTINUE when it is no frontend's.
 */
MB_LB_SUBPROG int mb_lb_external(struct __sk_buff *skb, struct mb_lb_pkt *p,
				 const __u32 *key_ip, __u32 scope, __u32 node_ip4, int snat)
{
	struct mb_endpoint_value *ep;
	struct mb_lb_flow f;
	int ret, tunnel = 0;
	__u32 mtu = 0;

	ret = mb_lb_flow_get(&p->t, key_ip, scope, &f);
	if (ret < 0 || ret == MB_LB_FLOW_NONE)
		return ret < 0 ? ret : MB_LB_CONTINUE;
	ep = mb_lb_local_endpoint(f.backend_ip[0]);
	if (!ep && snat)
		tunnel = mb_lb_tunneled(f.backend_ip[0], &mtu);
	/* Before the flow is remembered or the packet rewritten: the ICMP error
	 * quotes the client's own packet. */
	if (tunnel && mb_too_big(skb, mtu))
		return MB_LB_TOO_BIG;
	if (ret == MB_LB_FLOW_NEW) {
		f.flags |= MB_LB_FLOW_EXTERNAL;
		if (ep || !snat)
			ret = mb_lb_flow_commit(&p->t, &f, BPF_ANY);
		else
			ret = mb_lb_snat_commit(&p->t, &f, node_ip4);
		if (ret < 0)
			return ret;
	}
	ret = mb_lb_rewrite(skb, p, 1, f.backend_ip, f.backend_port);
	if (ret < 0)
		return ret;
	if (f.flags & MB_LB_FLOW_SNAT) {
		ret = mb_lb_rewrite(skb, p, 0, f.snat_ip, f.snat_port);
		if (ret < 0)
			return ret;
	}
	if (ep)
		return mb_lb_deliver_local(skb, ep);
	if (tunnel)
		return MB_LB_TUNNEL;
	return mb_lb_fib_redirect(skb, p);
}

/*
 * The underlay's ingress: a remote backend's reply to a flow this node
 * translated (to an underlay client: both ways and out by the FIB; to the
 * host: its source, then up the stack), or a client's packet to a
 * NodePort (node_ip4) or to a ClusterIP routed to this node.
 */
MB_LB_SUBPROG int mb_lb_from_netdev(struct __sk_buff *skb, __u32 node_ip4)
{
	struct mb_lb_pkt p = {};
	__u32 any[4] = {};
	struct mb_lb_rev *rv;
	int ret;

	if (!node_ip4 || mb_lb_parse4(skb, &p) < 0)
		return MB_LB_CONTINUE;
	if (p.t.daddr[0] == node_ip4) {
		rv = bpf_map_lookup_elem(&mb_lb_rev, &p.t);
		if (rv && (rv->flags & MB_LB_FLOW_EXTERNAL)) {
			ret = mb_lb_rev_apply(skb, &p, rv, node_ip4);
			if (ret < 0 || !(rv->flags & MB_LB_FLOW_SNAT))
				return ret;
			return mb_lb_fib_redirect(skb, &p);
		}
		return mb_lb_external(skb, &p, any, MB_LB_SCOPE_NODEPORT, node_ip4, 1);
	}
	return mb_lb_external(skb, &p, p.t.daddr, MB_LB_SCOPE_CLUSTER, node_ip4, 1);
}

/*
 * The service device's egress: the node's own processes (source node_ip4,
 * by the route the agent adds for the service range) to a ClusterIP. The
 * replies come back through the backend's from-container (local backend)
 * or the underlay (remote backend) and are delivered to the host.
 */
MB_LB_SUBPROG int mb_lb_from_host(struct __sk_buff *skb, __u32 node_ip4)
{
	struct mb_lb_pkt p = {};

	if (mb_lb_parse4(skb, &p) < 0)
		return MB_LB_CONTINUE;
	return mb_lb_external(skb, &p, p.t.daddr, MB_LB_SCOPE_CLUSTER, node_ip4, 0);
}

/*
 * from-container, after conntrack: a pod's reply to a flow translated both
 * ways. Hairpin (the pod reached itself through its service): source and
 * destination back to the frontend and the pod, routed normally. A local
 * backend's reply to a client that is no local pod: the frontend as its
 * source, sent out by the FIB (routed normally, a packet from the node's
 * own address would be a martian; one to the host goes up the stack).
 * Plain ClusterIP replies are left to the client's to-container. `t`,
 * `l4_off`, `untranslatable`: the packet as parsed (mb_lb_pkt_of). IPv6:
 * hairpin only (no client outside the node's pods reaches an IPv6
 * frontend through this node's tc).
 */
MB_LB_SUBPROG int mb_lb_reply_from_container(struct __sk_buff *skb, const struct mb_ct_key *t,
					     __u32 l4_off, int untranslatable, __u32 node_ip4)
{
	struct mb_lb_pkt p = {};
	struct mb_lb_rev *rv;
	int ret;

	if (mb_lb_pkt_of(t, l4_off, untranslatable, &p) < 0)
		return MB_LB_CONTINUE;
	rv = bpf_map_lookup_elem(&mb_lb_rev, &p.t);
	if (!rv)
		return MB_LB_CONTINUE;
	if (!(rv->flags & MB_LB_FLOW_EXTERNAL)) {
		if (!(rv->flags & MB_LB_FLOW_SNAT))
			return MB_LB_CONTINUE;
		return mb_lb_rev_apply(skb, &p, rv, node_ip4);
	}
	/* A remote backend's replies arrive on the underlay, never here; the
	 * FIB redirect below is IPv4's. */
	if ((rv->flags & MB_LB_FLOW_SNAT) || p.t.family != MB_AF_INET)
		return MB_LB_CONTINUE;
	ret = mb_lb_rev_apply(skb, &p, rv, node_ip4);
	return ret < 0 ? ret : mb_lb_fib_redirect(skb, &p);
}

#endif /* MB_NODEPORT_H */
