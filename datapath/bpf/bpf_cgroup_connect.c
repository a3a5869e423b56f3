/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * cgroup connect4/connect6, attached to a pod's cgroup v2: steer the app's
 * outbound TCP connects to the sidecar's outbound port (15001) on loopback
 * and remember where they were going, by socket cookie. No netfilter.
 * Left alone: loopback destinations, excluded ports and prefixes, the
 * proxy's own connects (by uid or by SO_MARK), non-TCP sockets, and
 * everything while capture is off.
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/config.h"
#include "lib/capture.h"

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
					__u32 prog)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);

	bpf_map_update_elem(&mb_orig_ck, &cookie, orig, BPF_ANY);
	mb_count(prog, MB_CNT_REDIRECTED, 0);
}

SEC("cgroup/connect4")
int mb_connect4(struct bpf_sock_addr *ctx)
{
	const struct mb_config *cfg = mb_config_get();
	struct mb_addr_port orig = {};

	if (!mb_should_steer(ctx, MB_PROG_CONNECT4, cfg) || !cfg)
		return 1;
	orig.ip[0] = ctx->user_ip4;
	orig.port = bpf_ntohs((__u16)ctx->user_port);
	orig.family = MB_AF_INET;
	if (mb_addr_is_loopback(orig.ip, orig.family) || mb_capture_excluded(&orig)) {
		mb_count(MB_PROG_CONNECT4, MB_CNT_FALLBACK, 0);
		return 1;
	}
	mb_remember(ctx, &orig, MB_PROG_CONNECT4);
	ctx->user_ip4 = cfg->capture_ip4;
	ctx->user_port = bpf_htons(cfg->outbound_port);
	/* 1 = let the (rewritten) connect proceed. */
	return 1;
}

SEC("cgroup/connect6")
int mb_connect6(struct bpf_sock_addr *ctx)
{
	const struct mb_config *cfg = mb_config_get();
	struct mb_addr_port orig = {};
	__u32 ip6[4];

	if (!mb_should_steer(ctx, MB_PROG_CONNECT6, cfg) || !cfg)
		return 1;
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];
	orig.family = mb_addr_set(orig.ip, AF_INET6, 0, ip6);
	orig.port = bpf_ntohs((__u16)ctx->user_port);
	if (mb_addr_is_loopback(orig.ip, orig.family) || mb_capture_excluded(&orig)) {
		mb_count(MB_PROG_CONNECT6, MB_CNT_FALLBACK, 0);
		return 1;
	}
	mb_remember(ctx, &orig, MB_PROG_CONNECT6);
	if (orig.family == MB_AF_INET) {
		/* A dual-stack socket going to IPv4: the proxy at ::ffff:capture_ip4. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = cfg->capture_ip4;
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(cfg->outbound_port);
	return 1;
}
