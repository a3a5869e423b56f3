/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The node's underlay device at XDP: mb_xdp_prefilter drops IPv4 and IPv6
 * packets whose source is in a denied prefix (lib/prefilter.h) before the
 * stack allocates anything for them, counts every packet in
 * mb_prefilter_stats and reports drops to the node's ring buffer as `drop`
 * records from observation point `xdp`, at most one per CPU per 10 ms with
 * the drops in between folded into its count. Everything else passes
 * (XDP_PASS) to tc and the stack.
 *
 * mb_prefilter_tc is the same decision at tc ingress (SCHED_CLS, after the
 * stack built an skb): the benchmark's reference for what XDP saves
 * (bench/prefilter.sh). The agent attaches only the XDP program.
 */
#include <linux/pkt_cls.h>

#include "lib/common.h"
#include "lib/events.h"
#include "lib/prefilter.h"

/* A drop record for *p, unless this CPU sent one less than
 * MB_PF_EVENT_NS ago (then the drop is folded into the next one). */
static __always_inline void mb_pf_event(const struct mb_pf_pkt *p, __u8 reason, __u8 prog)
{
	struct mb_event e = {};
	struct mb_pf_rl *rl;
	__u32 zero = 0;
	__u64 now;

	rl = bpf_map_lookup_elem(&mb_prefilter_rl, &zero);
	if (!rl)
		return;
	now = bpf_ktime_get_ns();
	rl->pending++;
	if (rl->last_ns && now - rl->last_ns < MB_PF_EVENT_NS)
		return;
	e.type = MB_EVT_DROP;
	e.reason = reason;
	e.prog = prog;
	e.family = p->family;
	e.proto = p->proto;
	e.count = rl->pending;
	mb_ip_copy(e.src_ip, p->src);
	mb_ip_copy(e.dst_ip, p->dst);
	rl->pending = 0;
	rl->last_ns = now;
	mb_event_emit(&e);
}

/* Decide, count and report one frame; true = drop it. */
static __always_inline int mb_prefilter(void *data, void *end, __u8 prog)
{
	struct mb_pf_pkt p = {};
	__u64 bytes = end - data;
	__u8 reason;

	reason = mb_pf_decide(data, end, &p);
	if (!reason) {
		mb_pf_count(MB_PF_STAT_PASS, bytes);
		return 0;
	}
	if (reason == MB_RSN_PREFILTER_MALFORMED)
		mb_pf_count(MB_PF_STAT_MALFORMED, bytes);
	else
		mb_pf_count(p.family == MB_AF_INET ? MB_PF_STAT_DENIED4 : MB_PF_STAT_DENIED6,
			    bytes);
	mb_pf_event(&p, reason, prog);
	return 1;
}

SEC("xdp")
int mb_xdp_prefilter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	return mb_prefilter(data, end, MB_PROG_XDP) ? XDP_DROP : XDP_PASS;
}

SEC("classifier")
int mb_prefilter_tc(struct __sk_buff *skb)
{
	void *data, *end;

	/* The headers the decision reads into the linear part (a short
	 * frame keeps what it has: the decision sees it truncated). */
	bpf_skb_pull_data(skb, sizeof(struct ethhdr) + 4 + sizeof(struct ipv6hdr));
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	return mb_prefilter(data, end, MB_PROG_FROM_NETDEV) ? TC_ACT_SHOT : TC_ACT_OK;
}
