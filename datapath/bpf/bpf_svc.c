/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The node's service device, tc egress: what the node's own processes send
 * to a ClusterIP. Neither socket LB (it is attached to pods' cgroups, never
 * the root one) nor the pods' tc programs see that traffic, so the agent
 * routes the service range to a device of its own (a dummy device: no ARP,
 * so the packets reach its egress) with the node's address as source, and
 * this program translates them (lib/nodeport.h, mb_lb_from_host): DNAT to
 * the flow's backend, delivered to a local backend's host veth or out by
 * the FIB. What is no service's goes on to the dummy device, which drops
 * it as it drops everything. Drops are counted in mb_tc_stats and reported
 * in the node's mb_events.
 */
#include "lib/node.h"
#include "lib/events.h"
#include "lib/nodeport.h"

static __always_inline int mb_svc_drop(struct __sk_buff *skb, int reason)
{
	struct mb_event e = {};
	struct mb_lb_pkt p = {};

	mb_tc_count(reason, skb->len);
	e.type = MB_EVT_DROP;
	e.reason = reason;
	e.prog = MB_PROG_TO_SERVICE;
	if (mb_lb_parse4(skb, &p) == 0) {
		e.family = MB_AF_INET;
		e.proto = p.t.proto;
		e.src_ip[0] = p.t.saddr[0];
		e.dst_ip[0] = p.t.daddr[0];
		e.src_port = p.t.sport;
		e.dst_port = p.t.dport;
	}
	e.src_identity = MB_ID_HOST;
	mb_event_emit(&e);
	return TC_ACT_SHOT;
}

SEC("classifier")
int mb_to_service(struct __sk_buff *skb)
{
	const struct mb_node_config *cfg = mb_node_config_get();
	int ret;

	ret = mb_lb_from_host(skb, cfg ? cfg->node_ip4 : 0);
	if (ret < 0)
		return mb_svc_drop(skb, -ret);
	if (ret == MB_LB_CONTINUE || ret == MB_LB_TRANSLATED)
		return TC_ACT_OK;
	mb_tc_count(MB_RSN_NONE, skb->len);
	return ret;
}
