/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The node's underlay device. mb_from_netdev (tc ingress): what arrives at
 * the node from other nodes and the outside; mb_to_netdev (tc egress, at the
 * end): the node's own packets to other nodes' pods, into the tunnel.
 *
 * Geneve (geneve mode): a UDP datagram to this node's address (node_ip4)
 * and port 6081 is validated (version 0, lengths, options inside the
 * packet, inner protocol Ethernet, no control packet or critical option),
 * stripped of its outer headers and inner Ethernet header in one
 * bpf_skb_adjust_room, and delivered to the local pod that has its inner
 * destination, with the VNI (the source pod's identity) in skb->mark for
 * the pod's to-container (lib/encap.h). A bad one is dropped with its
 * reason (lib/geneve.h), counted and reported: nothing else on this node
 * listens on 6081 (this kernel has no geneve module). So is one whose outer
 * source is no other node's address (the VNI is believed only from a node)
 * or whose inner source that node cannot speak for (lib/encap.h).
 *
 * Services (lib/nodeport.h), first: a packet to a NodePort on node_ip4 or
 * to a ClusterIP routed here is translated to a backend (a local one's
 * veth; a remote one with the node's address as source, through the tunnel
 * with world as the VNI in the overlay modes, else out by the FIB), a
 * remote backend's reply to such a flow translated back.
 *
 * Everything else passes untouched (TC_ACT_OK): the node's own traffic,
 * VXLAN (the kernel's VXLAN device decapsulates it), natively routed pod
 * traffic (the kernel routes it to the pod's host veth, whose
 * to-container finds the source identity in the ipcache).
 */
#include "lib/common.h"
#include "lib/encap.h"
#include "lib/nodeport.h"

/* Decapsulate and deliver the Geneve packet whose UDP header is at l4
 * (`outer`: the outer packet, for the events of a bad one). */
static __always_inline int mb_from_geneve(struct __sk_buff *skb, const struct mb_node_config *cfg,
					  __u32 l4, struct mb_l3 *outer)
{
	const struct mb_endpoint_value *ep;
	struct mb_l3 l3 = {};
	__u32 vni = 0, inner = 0;
	__u64 flags = 0;
	__be16 proto;
	int ret;

	ret = mb_geneve_parse(skb, l4, &vni, &inner);
	if (ret)
		return mb_overlay_drop(skb, ret, MB_PROG_FROM_NETDEV, outer);
	outer->src_identity = vni;
	ret = mb_overlay_known_node(outer->src[0]);
	if (ret)
		return mb_overlay_drop(skb, ret, MB_PROG_FROM_NETDEV, outer);
	if (bpf_skb_load_bytes(skb, inner + 12, &proto, sizeof(proto)) < 0 ||
	    mb_l3_parse(skb, inner + ETH_HLEN, proto, &l3) < 0)
		return mb_overlay_drop(skb, MB_RSN_INNER_MALFORMED, MB_PROG_FROM_NETDEV, outer);
	l3.src_identity = vni;
	ret = mb_overlay_inner_trusted(outer->src[0], &l3);
	if (ret)
		return mb_overlay_drop(skb, ret, MB_PROG_FROM_NETDEV, &l3);
	ep = mb_local_endpoint(&l3);
	if (!ep)
		return mb_overlay_drop(skb, MB_RSN_NO_LOCAL_ENDPOINT, MB_PROG_FROM_NETDEV, &l3);
	l3.dst_identity = ep->identity;
	if (cfg->flags & MB_NODE_F_TRACE)
		mb_overlay_trace(MB_PROG_FROM_NETDEV, &l3);
	if (proto == bpf_htons(ETH_P_IPV6))
		flags = MB_ADJ_ROOM_DECAP_L3_IPV6;
	/* Outer IPv4, UDP, Geneve with its options and the inner Ethernet
	 * header go; the outer Ethernet header stays and is rewritten. */
	if (bpf_skb_adjust_room(skb, -(__s32)inner, BPF_ADJ_ROOM_MAC, flags) < 0)
		return mb_overlay_drop(skb, MB_RSN_DECAP_FAILED, MB_PROG_FROM_NETDEV, &l3);
	ret = mb_deliver_local(skb, ep, proto, vni);
	if (ret < 0)
		return mb_overlay_drop(skb, MB_RSN_DECAP_FAILED, MB_PROG_FROM_NETDEV, &l3);
	return ret;
}

/*
 * An underlay client's service packet for a backend behind another node
 * (lib/nodeport.h): translated (MB_LB_TUNNEL), into the tunnel with world
 * as the VNI, as Cilium sends service traffic from outside the cluster in
 * tunnel mode (the node's address as source does not make it the node's
 * own); still the client's and too big for the tunnel (MB_LB_TOO_BIG),
 * refused with ICMP "fragmentation needed" from node_ip4 back out of the
 * underlay, as a router on the path would. Not inlined: its frames stack
 * on mb_from_netdev's only.
 */
MB_SUBPROG int mb_lb_through_tunnel(struct __sk_buff *skb, const struct mb_node_config *cfg,
				    int lb)
{
	const struct mb_ipcache_value *v;
	struct mb_l3 l3 = {};

	if (!skb || !cfg)
		return TC_ACT_SHOT;
	if (mb_l3_parse(skb, ETH_HLEN, skb->protocol, &l3) < 0)
		return mb_overlay_drop(skb, MB_RSN_ENCAP_FAILED, MB_PROG_FROM_NETDEV, &l3);
	l3.src_identity = MB_ID_WORLD;
	if (lb == MB_LB_TOO_BIG)
		return mb_refuse_too_big(skb, cfg, mb_inner_mtu(cfg->underlay_mtu), &l3,
					 MB_PROG_FROM_NETDEV);
	v = mb_ipcache_lookup(l3.dst, l3.family);
	if (!v || !v->tunnel_ip4)
		return mb_overlay_drop(skb, MB_RSN_ENCAP_FAILED, MB_PROG_FROM_NETDEV, &l3);
	l3.dst_identity = v->identity;
	return mb_encap_to_remote(skb, cfg, v->tunnel_ip4, &l3, MB_PROG_FROM_NETDEV);
}

SEC("classifier")
int mb_from_netdev(struct __sk_buff *skb)
{
	const struct mb_node_config *cfg;
	struct mb_l3 outer = {};
	struct iphdr ip;
	__u32 l4;
	int lb;

	cfg = mb_node_config_get();
	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return TC_ACT_OK;

	/*
	 * Services for clients outside the node (lib/nodeport.h): NodePort,
	 * ClusterIPs routed here, and remote backends' replies to flows this
	 * node translated; before the tunnel decision, on the outer packet.
	 */
	lb = mb_lb_from_netdev(skb, cfg->node_ip4);
	if (lb < 0) {
		mb_l3_parse(skb, ETH_HLEN, skb->protocol, &outer);
		return mb_overlay_drop(skb, -lb, MB_PROG_FROM_NETDEV, &outer);
	}
	if (lb == MB_LB_TUNNEL || lb == MB_LB_TOO_BIG)
		return mb_lb_through_tunnel(skb, cfg, lb);
	if (lb == MB_LB_TRANSLATED)
		/* A reply to the node itself, its source the frontend again. */
		return TC_ACT_OK;
	if (lb != MB_LB_CONTINUE) {
		/* Redirected to a local backend or out by the FIB. */
		mb_tc_count(MB_RSN_NONE, skb->len);
		return lb;
	}

	if (cfg->overlay != MB_OVERLAY_GENEVE || ip.protocol != IPPROTO_UDP ||
	    ip.daddr != cfg->node_ip4 || (ip.frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK;
	l4 = ETH_HLEN + ip.ihl * 4;
	if (mb_l3_parse(skb, ETH_HLEN, skb->protocol, &outer) < 0 ||
	    outer.dport != MB_GENEVE_PORT)
		return TC_ACT_OK;
	return mb_from_geneve(skb, cfg, l4, &outer);
}

/*
 * The underlay device's tc egress: what the node itself sends to a pod
 * behind another node (its replies to a remote pod's connection too; in the
 * overlay modes the agent routes the other nodes' pod CIDRs out of the
 * underlay, with the pods' MTU) goes through the tunnel as the pods' own
 * traffic does, since the underlay does not route pod CIDRs. Its VNI is
 * the source's identity, host presented as remote-node, which is what the
 * receiving node calls this node (as Cilium does). Everything else passes
 * untouched: tunnel packets (to node addresses), the node's traffic to
 * nodes and the outside, every packet in native mode.
 */
SEC("classifier")
int mb_to_netdev(struct __sk_buff *skb)
{
	const struct mb_ipcache_value *v;
	const struct mb_node_config *cfg;
	struct mb_l3 l3 = {};

	cfg = mb_node_config_get();
	if (!cfg || cfg->overlay == MB_OVERLAY_NATIVE)
		return TC_ACT_OK;
	if (skb->protocol != bpf_htons(ETH_P_IP) && skb->protocol != bpf_htons(ETH_P_IPV6))
		return TC_ACT_OK;
	if (mb_l3_parse(skb, ETH_HLEN, skb->protocol, &l3) < 0)
		return TC_ACT_OK;
	v = mb_ipcache_lookup(l3.dst, l3.family);
	if (!v || !v->tunnel_ip4)
		return TC_ACT_OK;
	l3.dst_identity = v->identity;
	l3.src_identity = mb_ipcache_identity(l3.src, l3.family);
	if (l3.src_identity == MB_ID_HOST)
		l3.src_identity = MB_ID_REMOTE_NODE;
	/* The route's MTU (the pods') keeps the node's packets small enough;
	 * one that is not is the node's own, with no pod to tell. */
	if (mb_too_big(skb, mb_inner_mtu(cfg->underlay_mtu)))
		return mb_overlay_drop(skb, MB_RSN_TOO_BIG, MB_PROG_TO_NETDEV, &l3);
	return mb_encap_to_remote(skb, cfg, v->tunnel_ip4, &l3, MB_PROG_TO_NETDEV);
}
