/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The cgroup sock_addr programs, attached to a pod's cgroup v2:
 *   mb_connect4, mb_connect6          (cgroup/connect4, cgroup/connect6)
 *   mb_getpeername4, mb_getpeername6  (cgroup/getpeername4, cgroup/getpeername6)
 *
 * connect4/connect6 steer the app's outbound TCP connects to the sidecar's
 * outbound port (15001) on loopback and remember where they were going, by
 * socket cookie. No netfilter.
 * Left alone: loopback destinations, excluded ports and prefixes, the
 * proxy's own connects (by uid or by SO_MARK), non-TCP sockets, and
 * everything while capture is off.
 *
 * First, a connect to a service's address is rewritten to one of its
 * backends (lib/service.h); a service without a backend is refused.
 *
 * Then, with policy enforcement on, the endpoint's egress policy decides
 * (protocol, destination identity, destination port) on the destination the
 * connect goes to (the chosen backend for a service): a TCP, UDP or SCTP
 * connect its verdict does not allow (DENY, or no entry)
 * is refused (connect() fails with EPERM) and counted as refused. This
 * holds for the proxy's own connects too, with one exception: the proxy's
 * connect to one of the pod's own addresses (mb_pod_addr) delivers an
 * inbound connection, already decided by the proxy under the pod's ingress
 * policy, to the app inside the pod; it proceeds undecided and uncaptured
 * (counted as a fallback).
 *
 * getpeername4/getpeername6: a socket whose connect went to a service's
 * backend names the service address as its peer, not the backend, so the
 * app sees the address it connected to (lib/service.h, mb_service_peer).
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/config.h"
#include "lib/capture.h"
#include "lib/policy.h"
#include "lib/service.h"
#include "lib/events.h"

/* Verdicts of a cgroup sock_addr program. */
#define MB_CONNECT_REFUSE 0  /* the kernel fails connect() with EPERM */
#define MB_CONNECT_PROCEED 1 /* the (possibly rewritten) connect goes on */

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

/* 1 when this connect is the proxy's own and must not be steered. */
static __always_inline int mb_is_proxy(struct bpf_sock_addr *ctx, const struct mb_config *cfg)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	if (cfg->proxy_uid != MB_UID_NONE && uid == cfg->proxy_uid)
		return 1;
	if (sk && cfg->proxy_mark != 0 && sk->mark == cfg->proxy_mark)
		return 1;
	return 0;
}

/* Common part: 1 to steer, 0 to leave the connect alone (counted). */
static __always_inline int mb_should_steer(struct bpf_sock_addr *ctx, __u32 prog,
					   const struct mb_config *cfg)
{
	if (!cfg || !(cfg->flags & MB_CFG_CAPTURE) || ctx->type != SOCK_STREAM ||
	    cfg->outbound_port == 0) {
		mb_count(prog, MB_CNT_MISS, 0);
		return 0;
	}
	if (mb_is_proxy(ctx, cfg)) {
		mb_count(prog, MB_CNT_FALLBACK, 0);
		return 0;
	}
	return 1;
}

static __always_inline void mb_remember(struct bpf_sock_addr *ctx, struct mb_addr_port *orig,
					__u32 prog, const struct mb_config *cfg)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct mb_event e = {};

	bpf_map_update_elem(&mb_orig_ck, &cookie, orig, BPF_ANY);
	mb_count(prog, MB_CNT_REDIRECTED, 0);

	e.type = MB_EVT_CAPTURE;
	e.reason = MB_RSN_OUTBOUND;
	e.prog = prog;
	e.family = orig->family;
	e.cookie = cookie;
	e.src_identity = cfg->pod_identity;
	e.dst_identity = mb_identity_of(orig->ip, orig->family);
	e.revision = cfg->policy_revision;
	mb_ip_copy(e.dst_ip, orig->ip);
	e.dst_port = orig->port;
	if (orig->family == MB_AF_INET)
		e.to_ip[0] = cfg->capture_ip4;
	else
		e.to_ip[3] = bpf_htonl(1);
	e.to_port = cfg->outbound_port;
	mb_event_emit(&e);
}

/* 1 for the protocols the policy map decides (TCP, UDP, SCTP). */
static __always_inline int mb_policy_proto(__u32 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* The endpoint's egress verdict for a connect to `dst` (counted when refused, reported). */
static __always_inline int mb_connect_verdict(struct bpf_sock_addr *ctx, __u32 prog,
					      const struct mb_config *cfg,
					      const struct mb_addr_port *dst)
{
	struct mb_event e = {};
	__u32 proto = ctx->protocol;
	__u32 dst_id;
	__u8 verdict;

	if (!cfg || !(cfg->flags & MB_CFG_POLICY_ENFORCE) || !mb_policy_proto(proto))
		return MB_CONNECT_PROCEED;
	dst_id = mb_identity_of(dst->ip, dst->family);
	verdict = mb_policy_lookup(MB_DIR_EGRESS, (__u8)proto, dst_id, dst->port);

	e.type = MB_EVT_POLICY_VERDICT;
	e.prog = prog;
	e.family = dst->family;
	e.cookie = bpf_get_socket_cookie(ctx);
	e.src_identity = cfg->pod_identity;
	e.dst_identity = dst_id;
	e.revision = cfg->policy_revision;
	mb_ip_copy(e.dst_ip, dst->ip);
	e.dst_port = dst->port;
	if (mb_verdict_allows(verdict)) {
		e.verdict = MB_VERDICT_ALLOW;
		e.reason = MB_RSN_POLICY_ALLOW;
		mb_event_emit(&e);
		return MB_CONNECT_PROCEED;
	}
	e.verdict = MB_VERDICT_DENY;
	e.reason = verdict == MB_VERDICT_DENY ? MB_RSN_POLICY_DENY : MB_RSN_NO_DECISION;
	mb_event_emit(&e);
	mb_count(prog, MB_CNT_REFUSED, 0);
	return MB_CONNECT_REFUSE;
}

/* 1 when this is the proxy delivering to the pod itself (counted). */
static __always_inline int mb_proxy_delivers(struct bpf_sock_addr *ctx, __u32 prog,
					     const struct mb_config *cfg,
					     const struct mb_addr_port *dst)
{
	if (!cfg || ctx->type != SOCK_STREAM || !mb_is_proxy(ctx, cfg) ||
	    !mb_is_pod_addr(dst->ip, dst->family))
		return 0;
	mb_count(prog, MB_CNT_FALLBACK, 0);
	return 1;
}

/* A connect to a service with no usable backend: refused, counted, reported. */
static __always_inline int mb_refuse_no_backend(struct bpf_sock_addr *ctx, __u32 prog,
						const struct mb_config *cfg,
						const struct mb_addr_port *svc)
{
	struct mb_event e = {};

	e.type = MB_EVT_POLICY_VERDICT;
	e.reason = MB_RSN_NO_BACKEND;
	e.verdict = MB_VERDICT_DENY;
	e.prog = prog;
	e.family = svc->family;
	e.cookie = bpf_get_socket_cookie(ctx);
	if (cfg) {
		e.src_identity = cfg->pod_identity;
		e.revision = cfg->policy_revision;
	}
	mb_ip_copy(e.dst_ip, svc->ip);
	e.dst_port = svc->port;
	mb_event_emit(&e);
	mb_count(prog, MB_CNT_REFUSED, 0);
	return MB_CONNECT_REFUSE;
}

/* 1 when an allowed connect to `dst` is steered to the proxy (recorded). */
static __always_inline int mb_steer(struct bpf_sock_addr *ctx, __u32 prog,
				    const struct mb_config *cfg, struct mb_addr_port *dst)
{
	if (!mb_should_steer(ctx, prog, cfg))
		return 0;
	if (mb_addr_is_loopback(dst->ip, dst->family) || mb_capture_excluded(cfg, dst)) {
		mb_count(prog, MB_CNT_FALLBACK, 0);
		return 0;
	}
	mb_remember(ctx, dst, prog, cfg);
	return 1;
}

SEC("cgroup/connect4")
int mb_connect4(struct bpf_sock_addr *ctx)
{
	const struct mb_config *cfg = mb_config_get();
	struct mb_addr_port orig = {};
	int verdict;

	orig.ip[0] = ctx->user_ip4;
	orig.port = bpf_ntohs((__u16)ctx->user_port);
	orig.family = MB_AF_INET;
	switch (mb_service_resolve(ctx, &orig, 0)) {
	case MB_SVC_NO_BACKEND:
		return mb_refuse_no_backend(ctx, MB_PROG_CONNECT4, cfg, &orig);
	case MB_SVC_BACKEND:
		ctx->user_ip4 = orig.ip[0];
		ctx->user_port = bpf_htons(orig.port);
		break;
	}
	if (mb_proxy_delivers(ctx, MB_PROG_CONNECT4, cfg, &orig))
		return MB_CONNECT_PROCEED;
	verdict = mb_connect_verdict(ctx, MB_PROG_CONNECT4, cfg, &orig);
	if (verdict == MB_CONNECT_PROCEED && cfg && mb_steer(ctx, MB_PROG_CONNECT4, cfg, &orig)) {
		ctx->user_ip4 = cfg->capture_ip4;
		ctx->user_port = bpf_htons(cfg->outbound_port);
	}
	return verdict;
}

SEC("cgroup/connect6")
int mb_connect6(struct bpf_sock_addr *ctx)
{
	const struct mb_config *cfg = mb_config_get();
	struct mb_addr_port orig = {};
	struct mb_addr_port proxy = {};
	__u32 ip6[4];
	int verdict;

	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	orig.family = mb_addr_set(orig.ip, AF_INET6, 0, ip6);
	orig.port = bpf_ntohs((__u16)ctx->user_port);
	switch (mb_service_resolve(ctx, &orig, 1)) {
	case MB_SVC_NO_BACKEND:
		return mb_refuse_no_backend(ctx, MB_PROG_CONNECT6, cfg, &orig);
	case MB_SVC_BACKEND:
		mb_sock_addr_set6(ctx, &orig);
		break;
	}
	if (mb_proxy_delivers(ctx, MB_PROG_CONNECT6, cfg, &orig))
		return MB_CONNECT_PROCEED;
	verdict = mb_connect_verdict(ctx, MB_PROG_CONNECT6, cfg, &orig);
	if (verdict != MB_CONNECT_PROCEED || !cfg || !mb_steer(ctx, MB_PROG_CONNECT6, cfg, &orig))
		return verdict;
	/* The proxy: at ::ffff:capture_ip4 for a dual-stack socket going to IPv4, else ::1. */
	proxy.port = cfg->outbound_port;
	if (orig.family == MB_AF_INET) {
		proxy.family = MB_AF_INET;
		proxy.ip[0] = cfg->capture_ip4;
	} else {
		proxy.family = MB_AF_INET6;
		proxy.ip[3] = bpf_htonl(1);
	}
	mb_sock_addr_set6(ctx, &proxy);
	return verdict;
}

SEC("cgroup/getpeername4")
int mb_getpeername4(struct bpf_sock_addr *ctx)
{
	return mb_service_peer(ctx, 0);
}

SEC("cgroup/getpeername6")
int mb_getpeername6(struct bpf_sock_addr *ctx)
{
	return mb_service_peer(ctx, 1);
}
