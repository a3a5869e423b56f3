/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The overlay between nodes: encapsulation of what a pod sends to a pod on
 * another node (called by from-container after policy), and delivery of
 * what arrives decapsulated (bpf_overlay.c for VXLAN, bpf_host.c for
 * Geneve) to the local pod it is for. Owns no maps: it reads the node's
 * mb_node_config and mb_endpoints and counts in mb_tc_stats.
 *
 * The VNI carries the source pod's security identity (24 bits, as Cilium
 * does), so the receiving node decides its ingress policy by the identity
 * the sending node vouched for, without an ipcache lookup of the source.
 * The identity travels from the decapsulation to the pod's to-container in
 * skb->mark (MB_MARK_MAGIC_IDENTITY encoding, membrane_abi.h); the mark is
 * scrubbed when the packet crosses into the pod's namespace.
 *
 * Modes (mb_node_config.overlay): native returns TC_ACT_OK and the kernel
 * routes the pod's packet (the underlay knows the pod CIDRs); vxlan sets
 * the tunnel key (remote node, VNI) and redirects to the collect_md VXLAN
 * device, which encapsulates; geneve encapsulates here (lib/geneve.h) and
 * redirects to the underlay device.
 */
#ifndef MB_ENCAP_H
#define MB_ENCAP_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>

#include "common.h"
#include "events.h"
#include "node.h"
#include "geneve.h"
#include "mtu.h"

/* Drop reasons of the overlay (60-64 in lib/geneve.h, 70-71 in lib/mtu.h, 74-75, the
 * trust in a tunnel packet's sender, in membrane_abi.h). */
#define MB_RSN_NO_LOCAL_ENDPOINT 65 /* decapsulated for an address no local pod has */
#define MB_RSN_INNER_MALFORMED 66   /* the decapsulated frame is not a whole IPv4/IPv6 packet */
#define MB_RSN_DECAP_FAILED 67      /* the outer headers could not be removed */
#define MB_RSN_NO_TUNNEL_KEY 68     /* from the VXLAN device without tunnel metadata */
#define MB_RSN_ENCAP_FAILED 72      /* the tunnel headers could not be added or set */
#define MB_RSN_NO_OVERLAY_DEVICE 73 /* vxlan mode, but no VXLAN device is set up */

/* Not in older uapi headers (Linux 6.3+): set skb->protocol on decapsulation. */
#define MB_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

/* Identities fit the 24 bits of a VNI. */
#define MB_IDENTITY_VNI_MASK 0xffffffU

/* Addresses, protocol, ports and identities of an IP packet, for lookups,
 * the VNI and events. */
struct mb_l3 {
	__u32 src[4];
	__u32 dst[4];
	__u32 src_identity; /* the sending pod's (the VNI), 0 when unknown */
	__u32 dst_identity; /* the receiving pod's, 0 when unknown */
	__u16 sport; /* host order; 0 when not TCP/UDP/SCTP */
	__u16 dport;
	__u8 family; /* MB_AF_INET, MB_AF_INET6; 0 when not IP */
	__u8 proto;
	__u8 pad[2];
};

/* Parse the IP header at `l3` of EtherType `proto` (network order). 0 or -1. */
static __always_inline int mb_l3_parse(struct __sk_buff *skb, __u32 l3, __be16 proto,
				       struct mb_l3 *out)
{
	__u16 ports[2];
	__u32 l4;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0 || ip.version != 4 ||
		    ip.ihl < 5)
			return -1;
		out->family = MB_AF_INET;
		out->src[0] = ip.saddr;
		out->dst[0] = ip.daddr;
		out->proto = ip.protocol;
		l4 = l3 + ip.ihl * 4;
		if (ip.frag_off & bpf_htons(0x1fff))
			return 0;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
			return -1;
		out->family = MB_AF_INET6;
		__builtin_memcpy(out->src, &ip6.saddr, 16);
		__builtin_memcpy(out->dst, &ip6.daddr, 16);
		out->proto = ip6.nexthdr;
		l4 = l3 + sizeof(ip6);
	} else {
		return -1;
	}
	if ((out->proto == IPPROTO_TCP || out->proto == IPPROTO_UDP ||
	     out->proto == IPPROTO_SCTP) &&
	    bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) == 0) {
		out->sport = bpf_ntohs(ports[0]);
		out->dport = bpf_ntohs(ports[1]);
	}
	return 0;
}

/* skb->mark carrying `identity` to the next program on this node. */
static __always_inline __u32 mb_identity_mark(__u32 identity)
{
	return ((identity & 0xffff) << 16) | MB_MARK_MAGIC_IDENTITY | ((identity >> 16) & 0xff);
}

/* Count a drop for `reason`, report it with what `l3` knows of the packet,
 * and return the verdict that drops. Not inlined: one event on the stack. */
MB_SUBPROG int mb_overlay_drop(struct __sk_buff *skb, __u8 reason, __u8 prog,
				      const struct mb_l3 *l3)
{
	struct mb_event e = {};

	if (!skb || !l3)
		return TC_ACT_SHOT;
	mb_tc_count(reason, skb->len);
	e.type = MB_EVT_DROP;
	e.reason = reason;
	e.prog = prog;
	e.src_identity = l3->src_identity;
	e.dst_identity = l3->dst_identity;
	e.family = l3->family;
	mb_ip_copy(e.src_ip, l3->src);
	mb_ip_copy(e.dst_ip, l3->dst);
	e.src_port = l3->sport;
	e.dst_port = l3->dport;
	e.proto = l3->proto;
	mb_event_emit(&e);
	return TC_ACT_SHOT;
}

/* The trace event of a packet seen at `prog` (the caller checks MB_NODE_F_TRACE). */
MB_SUBPROG void mb_overlay_trace(__u8 prog, const struct mb_l3 *l3)
{
	struct mb_event e = {};

	if (!l3)
		return;
	e.type = MB_EVT_TRACE;
	e.prog = prog;
	e.src_identity = l3->src_identity;
	e.dst_identity = l3->dst_identity;
	e.family = l3->family;
	mb_ip_copy(e.src_ip, l3->src);
	mb_ip_copy(e.dst_ip, l3->dst);
	e.src_port = l3->sport;
	e.dst_port = l3->dport;
	e.proto = l3->proto;
	mb_event_emit(&e);
}

/*
 * Deliver the frame in skb (an Ethernet header at 0, then an IP packet of
 * EtherType `proto`) to the local pod `ep`, with the source identity in
 * skb->mark: the Ethernet header becomes the host veth's to the pod's, and
 * the frame is redirected to the host veth's egress, where the pod's
 * to-container decides it. The caller has removed any outer headers.
 * Returns the redirect verdict, or -1 when the header could not be written.
 */
static __always_inline int mb_deliver_local(struct __sk_buff *skb,
					    const struct mb_endpoint_value *ep, __be16 proto,
					    __u32 src_identity)
{
	struct ethhdr eth;

	__builtin_memcpy(eth.h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, ep->node_mac, ETH_ALEN);
	eth.h_proto = proto;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0)
		return -1;
	skb->mark = mb_identity_mark(src_identity);
	mb_tc_count(MB_RSN_NONE, skb->len);
	return bpf_redirect(ep->ifindex, 0);
}

/* The local pod that has l3->dst, or NULL. */
static __always_inline const struct mb_endpoint_value *mb_local_endpoint(const struct mb_l3 *l3)
{
	struct mb_ip_key k = {};

	mb_ip_copy(k.ip, l3->dst);
	k.family = l3->family;
	return bpf_map_lookup_elem(&mb_endpoints, &k);
}

/*
 * Whether a tunnel packet comes from another node (checked before anything
 * else believes its VNI): its outer source `outer_src` (IPv4, network
 * order) must be an address the node ipcache gives remote-node (6), i.e.
 * one of the other nodes' addresses from the node registry, as Cilium
 * trusts the VNI only from a tunnel peer. A host on the underlay that is
 * no node gets nothing delivered, whatever identity it writes. 0, or
 * MB_RSN_OVERLAY_UNKNOWN_NODE.
 */
static __always_inline int mb_overlay_known_node(__u32 outer_src)
{
	__u32 ip[4] = { outer_src, 0, 0, 0 };
	const struct mb_ipcache_value *v = mb_ipcache_lookup(ip, MB_AF_INET);

	return v && v->identity == MB_ID_REMOTE_NODE ? 0 : MB_RSN_OVERLAY_UNKNOWN_NODE;
}

/*
 * Whether the node at `outer_src` (known, mb_overlay_known_node) may speak
 * for the inner packet `l3` (its source and, in src_identity, the VNI): not
 * when the inner source is this node's own (a local pod, or an address the
 * ipcache gives host), nor a pod behind a third node (an ipcache entry
 * whose tunnel endpoint is not the sender), nor when the VNI claims host:
 * a node sends its own traffic as remote-node (mb_to_netdev), so host over
 * a tunnel is a lie (Cilium drops it too). Its own pods, its own addresses
 * and world pass. 0, or MB_RSN_OVERLAY_SPOOFED_INNER.
 */
MB_SUBPROG int mb_overlay_inner_trusted(__u32 outer_src, const struct mb_l3 *l3)
{
	const struct mb_ipcache_value *v;

	if (!l3)
		return MB_RSN_OVERLAY_SPOOFED_INNER;
	if (l3->src_identity == MB_ID_HOST || mb_endpoint_lookup(l3->src, l3->family))
		return MB_RSN_OVERLAY_SPOOFED_INNER;
	v = mb_ipcache_lookup(l3->src, l3->family);
	if (v && (v->identity == MB_ID_HOST || (v->tunnel_ip4 && v->tunnel_ip4 != outer_src)))
		return MB_RSN_OVERLAY_SPOOFED_INNER;
	return 0;
}

/*
 * A pod's packet that would not fit the underlay once encapsulated: turned
 * into the ICMP error to the pod and sent back out of the host veth it came
 * in on (to the pod, through its to-container as a related ICMP error).
 */
static __always_inline int mb_refuse_too_big(struct __sk_buff *skb,
					     const struct mb_node_config *cfg, __u32 mtu,
					     const struct mb_l3 *l3, __u8 prog)
{
	int ret = -1;

	if (l3->family == MB_AF_INET)
		ret = mb_icmp4_too_big(skb, mtu, cfg->node_ip4);
	else if (l3->family == MB_AF_INET6)
		ret = mb_icmp6_too_big(skb, mtu);
	if (ret < 0)
		return mb_overlay_drop(skb, MB_RSN_TOO_BIG, prog, l3);
	/* Counted and reported as a drop of the original packet, with its reason. */
	mb_overlay_drop(skb, MB_RSN_FRAG_NEEDED, prog, l3);
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * VXLAN: the tunnel key (remote node, VNI, TTL, DF, no UDP checksum) for the
 * collect_md device, and the redirect to it. Not inlined: the key's frame
 * is not on the stack while an ICMP error is built.
 */
MB_SUBPROG long mb_vxlan_encap(struct __sk_buff *skb, const struct mb_node_config *cfg,
			       __u32 tunnel_ip4, __u32 vni)
{
	struct bpf_tunnel_key key = {};

	if (!skb || !cfg)
		return -1;
	key.tunnel_id = vni;
	key.remote_ipv4 = bpf_ntohl(tunnel_ip4);
	key.local_ipv4 = bpf_ntohl(cfg->node_ip4);
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key),
				   BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT) < 0)
		return -1;
	return bpf_redirect(cfg->overlay_ifindex, 0);
}

/*
 * After policy allowed a packet a pod sent (the frame in skb; its
 * addresses, ports and both identities in l3): toward a remote node's pod
 * in an overlay mode (tunnel_ip4, from the destination's ipcache entry, not
 * 0), encapsulate it with the sending pod's identity in the VNI and send it.
 * Returns TC_ACT_OK when the kernel should route it (native mode, or no
 * tunnel endpoint), a redirect when it went out encapsulated or came back
 * as the ICMP error of a packet too big, TC_ACT_SHOT (counted, reported)
 * when it could not be sent. Not inlined: the caller's frame stays its own.
 */
MB_SUBPROG int mb_encap_to_remote(struct __sk_buff *skb, const struct mb_node_config *cfg,
					 __u32 tunnel_ip4, const struct mb_l3 *l3, __u8 prog)
{
	__u32 vni, mtu;
	long ret;

	if (!skb || !cfg || !l3)
		return TC_ACT_SHOT;
	if (!tunnel_ip4 || cfg->overlay == MB_OVERLAY_NATIVE)
		return TC_ACT_OK;
	vni = l3->src_identity & MB_IDENTITY_VNI_MASK;
	mtu = mb_inner_mtu(cfg->underlay_mtu);
	if (mb_too_big(skb, mtu))
		return mb_refuse_too_big(skb, cfg, mtu, l3, prog);

	if (cfg->overlay == MB_OVERLAY_VXLAN) {
		if (!cfg->overlay_ifindex)
			return mb_overlay_drop(skb, MB_RSN_NO_OVERLAY_DEVICE, prog, l3);
		ret = mb_vxlan_encap(skb, cfg, tunnel_ip4, vni);
		if (ret < 0)
			return mb_overlay_drop(skb, MB_RSN_ENCAP_FAILED, prog, l3);
		mb_tc_count(MB_RSN_NONE, skb->len);
		return ret;
	}
	if (cfg->overlay == MB_OVERLAY_GENEVE) {
		ret = mb_geneve_encap(skb, cfg, tunnel_ip4, vni);
		if (ret < 0)
			return mb_overlay_drop(skb, MB_RSN_ENCAP_FAILED, prog, l3);
		mb_tc_count(MB_RSN_NONE, skb->len);
		return ret;
	}
	return TC_ACT_OK;
}

#endif /* MB_ENCAP_H */
