/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * sk_lookup, attached to the pod's network namespace: a TCP connection from
 * outside the pod to any of the pod's addresses and ports is handed to the
 * proxy's inbound listener (15006) instead of the socket listening there.
 * The accepted socket keeps the original destination as its local address,
 * which is all the proxy needs: nothing is recorded for it (the getsockopt
 * program answers SO_ORIGINAL_DST only for connects the pod steered).
 * No netfilter.
 * Left alone: non-TCP, loopback, connections to the proxy's own ports
 * (the capture ports and mb_proxy_port), connections from the pod to itself
 * (source address = destination address, which the kernel never accepts
 * from outside; this is also how the proxy's delivery to the app on the
 * pod's address is not captured again), and everything while inbound
 * capture is off or no listener is known. Ports excluded by the pod's
 * settings (mb_cap_in_port) are left alone too. Each connection handed over
 * is reported as a capture event (lib/events.h).
 * Dropped: a connection from outside the pod to the outbound capture port,
 * which only the pod's own steered connects may reach (counted as refused
 * and reported as a verdict with reason proxy-port).
 *
 * Ingress policy, with MB_CFG_POLICY_ENFORCE: before any capture, a TCP
 * connection (or UDP datagram) from outside the pod is looked up in the
 * endpoint's policy map as (INGRESS, protocol, identity of the remote
 * address, local port); one it does not allow is dropped (SK_DROP: TCP
 * answers the SYN with a reset), counted as refused and reported. Not
 * decided: loopback, and connections from the pod's own addresses
 * (mb_pod_addr, or source = destination): the sidecar delivering to the
 * app. So the program is also attached for policy alone, without capture.
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/config.h"
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

/* 1 for a connection from outside the pod to the outbound capture port. */
static __always_inline int mb_outbound_from_outside(const struct mb_config *cfg,
						    const struct mb_addr_port *dst,
						    const struct mb_addr_port *src)
{
	return (cfg->flags & MB_CFG_CAPTURE) && cfg->outbound_port != 0 &&
	       dst->port == cfg->outbound_port && !mb_addr_is_loopback(dst->ip, dst->family) &&
	       !mb_addr_is_loopback(src->ip, src->family) && !mb_addr_eq(dst->ip, src->ip);
}

/* Refuse it: counted, reported, and the verdict for the kernel. */
static __always_inline int mb_refuse_outbound_port(const struct mb_config *cfg,
						   const struct mb_addr_port *dst,
						   const struct mb_addr_port *src)
{
	struct mb_event e = {};

	mb_count(MB_PROG_SK_LOOKUP, MB_CNT_REFUSED, 0);
	e.type = MB_EVT_POLICY_VERDICT;
	e.reason = MB_RSN_PROXY_PORT;
	e.verdict = MB_VERDICT_DENY;
	e.prog = MB_PROG_SK_LOOKUP;
	e.family = dst->family;
	e.src_identity = mb_identity_of(src->ip, src->family);
	e.dst_identity = cfg->pod_identity;
	e.revision = cfg->policy_revision;
	mb_ip_copy(e.src_ip, src->ip);
	e.src_port = src->port;
	mb_ip_copy(e.dst_ip, dst->ip);
	e.dst_port = dst->port;
	mb_event_emit(&e);
	return MB_SK_DROP;
}

/* 1 when the connection comes from the pod itself (not an ingress flow). */
static __always_inline int mb_from_inside(const struct mb_addr_port *dst,
					  const struct mb_addr_port *src)
{
	return mb_addr_is_loopback(src->ip, src->family) || mb_addr_eq(dst->ip, src->ip) ||
	       mb_is_pod_addr(src->ip, src->family);
}

/*
 * The endpoint's ingress verdict for this connection: MB_SK_PASS to go on
 * (capture decides next), MB_SK_DROP when the policy does not allow it.
 * TCP verdicts are reported once per connection; UDP ones, made per
 * datagram, only when dropped.
 */
static __always_inline int mb_ingress_verdict(const struct mb_config *cfg, __u32 proto,
					      const struct mb_addr_port *dst,
					      const struct mb_addr_port *src)
{
	struct mb_event e = {};
	__u32 src_id;
	__u8 verdict;
	int allowed;

	if (!(cfg->flags & MB_CFG_POLICY_ENFORCE) || mb_from_inside(dst, src))
		return MB_SK_PASS;
	src_id = mb_identity_of(src->ip, src->family);
	verdict = mb_policy_lookup(MB_DIR_INGRESS, (__u8)proto, src_id, dst->port);
	allowed = mb_verdict_allows(verdict);
	if (!allowed)
		mb_count(MB_PROG_SK_LOOKUP, MB_CNT_REFUSED, 0);
	if (allowed && proto != IPPROTO_TCP)
		return MB_SK_PASS;

	e.type = MB_EVT_POLICY_VERDICT;
	e.prog = MB_PROG_SK_LOOKUP;
	e.family = dst->family;
	e.src_identity = src_id;
	e.dst_identity = cfg->pod_identity;
	e.revision = cfg->policy_revision;
	mb_ip_copy(e.src_ip, src->ip);
	e.src_port = src->port;
	mb_ip_copy(e.dst_ip, dst->ip);
	e.dst_port = dst->port;
	if (allowed) {
		e.verdict = MB_VERDICT_ALLOW;
		e.reason = MB_RSN_POLICY_ALLOW;
	} else {
		e.verdict = MB_VERDICT_DENY;
		e.reason = verdict == MB_VERDICT_DENY ? MB_RSN_POLICY_DENY : MB_RSN_NO_DECISION;
	}
	mb_event_emit(&e);
	return allowed ? MB_SK_PASS : MB_SK_DROP;
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
	/* Capture only picks a socket; drops are the ingress policy's and
	 * mb_refuse_outbound_port's. */
	int verdict = MB_SK_PASS;
	long err;

	if (!cfg || (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)) {
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
	verdict = mb_ingress_verdict(cfg, ctx->protocol, &dst, &src);
	if (verdict == MB_SK_DROP || ctx->protocol != IPPROTO_TCP)
		return verdict;
	if (mb_outbound_from_outside(cfg, &dst, &src)) {
		verdict = mb_refuse_outbound_port(cfg, &dst, &src);
		return verdict;
	}
	if (!(cfg->flags & MB_CFG_CAPTURE_INBOUND) || cfg->inbound_port == 0) {
		mb_count(MB_PROG_SK_LOOKUP, MB_CNT_MISS, 0);
		return verdict;
	}
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
