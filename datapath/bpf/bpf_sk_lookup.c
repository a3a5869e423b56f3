/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * sk_lookup, attached to the pod's network namespace: a TCP connection from
 * outside the pod to any of the pod's addresses and ports is handed to the
 * proxy's inbound listener (15006) instead of the socket listening there.
 * The accepted socket keeps the original destination as its local address,
 * and the original destination is recorded by the client's address in
 * mb_orig_tp, so the cgroup getsockopt program answers SO_ORIGINAL_DST for
 * it as for outbound capture. No netfilter.
 * Left alone: non-TCP, loopback, connections to the proxy's own ports,
 * connections from the pod to itself (source address = destination
 * address; this is also how the proxy's own connect to the app is not
 * captured again), and everything while inbound capture is off or no
 * listener is known. Ports excluded by the pod's settings (mb_cap_in_port)
 * are left alone too. Each connection handed over is reported as a capture
 * event (lib/events.h).
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/config.h"
#include "lib/capture.h"
#include "lib/inbound.h"
#include "lib/policy.h"
#include "lib/events.h"

/* sk_lookup verdicts. */
#define MB_SK_DROP 0
#define MB_SK_PASS 1

static __always_inline int mb_inbound_skip(const struct mb_config *cfg,
					   const struct mb_addr_port *dst,
					   const struct mb_addr_port *src)
{
	return dst->port == cfg->inbound_port || dst->port == cfg->outbound_port ||
	       mb_inbound_port_skipped(cfg, dst->port) ||
	       mb_addr_is_loopback(dst->ip, dst->family) ||
	       mb_addr_is_loopback(src->ip, src->family) || mb_addr_eq(dst->ip, src->ip);
}

SEC("sk_lookup")
int mb_sk_lookup(struct bpf_sk_lookup *ctx)
{
	const struct mb_config *cfg = mb_config_get();
	struct mb_addr_port dst = {}, src = {};
	struct bpf_sock *sk = 0;
	struct mb_event e = {};
	__u32 l6[4], r6[4];
	__u32 key;
	/* Capture only ever picks a socket; it never drops a connection. */
	int verdict = MB_SK_PASS;
	long err;

	if (!cfg || !(cfg->flags & MB_CFG_CAPTURE_INBOUND) || ctx->protocol != IPPROTO_TCP ||
	    cfg->inbound_port == 0) {
		mb_count(MB_PROG_SK_LOOKUP, MB_CNT_MISS, 0);
		return verdict;
	}
	l6[0] = ctx->local_ip6[0];
	l6[1] = ctx->local_ip6[1];
	l6[2] = ctx->local_ip6[2];
	l6[3] = ctx->local_ip6[3];
	r6[0] = ctx->remote_ip6[0];
	r6[1] = ctx->remote_ip6[1];
	r6[2] = ctx->remote_ip6[2];
	r6[3] = ctx->remote_ip6[3];
	dst.family = mb_addr_set(dst.ip, ctx->family, ctx->local_ip4, l6);
	dst.port = (__u16)ctx->local_port;
	src.family = mb_addr_set(src.ip, ctx->family, ctx->remote_ip4, r6);
	src.port = bpf_ntohs(ctx->remote_port);
	if (mb_inbound_skip(cfg, &dst, &src)) {
		mb_count(MB_PROG_SK_LOOKUP, MB_CNT_FALLBACK, 0);
		return verdict;
	}

	if (ctx->family == AF_INET) {
		key = MB_INBOUND_V4;
		sk = bpf_map_lookup_elem(&mb_inbound_listener, &key);
	}
	if (!sk) {
		key = MB_INBOUND_V6;
		sk = bpf_map_lookup_elem(&mb_inbound_listener, &key);
	}
	if (!sk) {
		mb_count(MB_PROG_SK_LOOKUP, MB_CNT_MISS, 0);
		return verdict;
	}
	/* Fails for a v6only listener and an IPv4 connection: left alone. */
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		mb_count(MB_PROG_SK_LOOKUP, MB_CNT_MISS, 0);
		return verdict;
	}
	bpf_map_update_elem(&mb_orig_tp, &src, &dst, BPF_ANY);
	mb_count(MB_PROG_SK_LOOKUP, MB_CNT_REDIRECTED, 0);

	e.type = MB_EVT_CAPTURE;
	e.reason = MB_RSN_INBOUND;
	e.prog = MB_PROG_SK_LOOKUP;
	e.family = dst.family;
	e.src_identity = mb_identity_of(src.ip, src.family);
	e.dst_identity = cfg->pod_identity;
	e.revision = cfg->policy_revision;
	mb_ip_copy(e.src_ip, src.ip);
	e.src_port = src.port;
	mb_ip_copy(e.dst_ip, dst.ip);
	e.dst_port = dst.port;
	mb_ip_copy(e.to_ip, dst.ip);
	e.to_port = cfg->inbound_port;
	mb_event_emit(&e);
	return verdict;
}
