/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The VXLAN device's tc ingress (vxlan mode): packets another node sent to
 * one of this node's pods, already decapsulated by the kernel's collect_md
 * VXLAN device (mb_vxlan, dstport 4789). The tunnel key's id is the VNI:
 * the source pod's security identity, vouched for by the sending node.
 *
 * Each packet goes to the local pod that has its inner destination
 * (mb_endpoints): redirected to the pod's host veth with the identity in
 * skb->mark, where the pod's to-container decides its ingress policy by
 * that identity (lib/encap.h). Dropped, counted and reported: no tunnel
 * metadata, an outer source that is no other node's address (any host on
 * the underlay can send to 4789: the VNI is believed only from a node), an
 * inner source that node cannot speak for, an inner frame that is not IP,
 * a destination no local pod has.
 */
#include "lib/common.h"
#include "lib/encap.h"

SEC("classifier")
int mb_from_overlay(struct __sk_buff *skb)
{
	const struct mb_endpoint_value *ep;
	const struct mb_node_config *cfg;
	struct bpf_tunnel_key key = {};
	struct mb_l3 l3 = {};
	__u32 outer_src;
	int ret;

	cfg = mb_node_config_get();
	if (!cfg)
		return TC_ACT_OK;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return mb_overlay_drop(skb, MB_RSN_NO_TUNNEL_KEY, MB_PROG_FROM_OVERLAY, &l3);
	l3.src_identity = key.tunnel_id & MB_IDENTITY_VNI_MASK;
	outer_src = bpf_htonl(key.remote_ipv4);
	ret = mb_overlay_known_node(outer_src);
	if (ret) {
		/* Reported with the outer addresses and the identity it claimed. */
		l3.family = MB_AF_INET;
		l3.proto = IPPROTO_UDP;
		l3.dport = 4789;
		l3.src[0] = outer_src;
		l3.dst[0] = bpf_htonl(key.local_ipv4);
		return mb_overlay_drop(skb, ret, MB_PROG_FROM_OVERLAY, &l3);
	}
	if (mb_l3_parse(skb, ETH_HLEN, skb->protocol, &l3) < 0)
		return mb_overlay_drop(skb, MB_RSN_INNER_MALFORMED, MB_PROG_FROM_OVERLAY, &l3);
	ret = mb_overlay_inner_trusted(outer_src, &l3);
	if (ret)
		return mb_overlay_drop(skb, ret, MB_PROG_FROM_OVERLAY, &l3);
	ep = mb_local_endpoint(&l3);
	if (!ep)
		return mb_overlay_drop(skb, MB_RSN_NO_LOCAL_ENDPOINT, MB_PROG_FROM_OVERLAY, &l3);
	l3.dst_identity = ep->identity;
	if (cfg->flags & MB_NODE_F_TRACE)
		mb_overlay_trace(MB_PROG_FROM_OVERLAY, &l3);
	ret = mb_deliver_local(skb, ep, skb->protocol, l3.src_identity);
	if (ret < 0)
		return mb_overlay_drop(skb, MB_RSN_DECAP_FAILED, MB_PROG_FROM_OVERLAY, &l3);
	return ret;
}
