/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * cgroup getsockopt, attached to a pod's cgroup v2: answer the proxy's
 * getsockopt(SOL_IP / SOL_IPV6, SO_ORIGINAL_DST) on an accepted socket with
 * the destination the app connected to, as netfilter's conntrack would.
 * The answer comes only from the socket's own storage (mb_orig_sk, filled
 * for a connection connect4/6 steered, lib/capture.h): a socket that was
 * not steered there (a peer outside the pod that dialled a proxy port, an
 * inbound connection sk_lookup handed over, whose local address already is
 * the original destination) is not answered. Every other option passes
 * untouched.
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/capture.h"

#define MB_SOL_IP 0
#define MB_SOL_IPV6 41
#define MB_SO_ORIGINAL_DST 80 /* also IP6T_SO_ORIGINAL_DST */

struct mb_sockaddr_in {
	__u16 family;
	__u16 port; /* network order */
	__u32 addr; /* network order */
	__u8 zero[8];
};

struct mb_sockaddr_in6 {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

SEC("cgroup/getsockopt")
int mb_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct mb_sock_key key = {};
	struct mb_addr_port *orig;
	__u32 l6[4], r6[4];

	if (ctx->optname != MB_SO_ORIGINAL_DST ||
	    (ctx->level != MB_SOL_IP && ctx->level != MB_SOL_IPV6) || !sk)
		return 1;

	orig = bpf_sk_storage_get(&mb_orig_sk, sk, 0, 0);
	if (!orig) {
		/* Asked before sockops saw the socket established: claim it now. */
		l6[0] = sk->src_ip6[0];
		l6[1] = sk->src_ip6[1];
		l6[2] = sk->src_ip6[2];
		l6[3] = sk->src_ip6[3];
		r6[0] = sk->dst_ip6[0];
		r6[1] = sk->dst_ip6[1];
		r6[2] = sk->dst_ip6[2];
		r6[3] = sk->dst_ip6[3];
		key.family = mb_addr_set(key.local_ip, sk->family, sk->src_ip4, l6);
		mb_addr_set(key.remote_ip, sk->family, sk->dst_ip4, r6);
		key.local_port = (__u16)sk->src_port;
		key.remote_port = bpf_ntohs((__u16)sk->dst_port);
		if (mb_capture_claim(sk, &key))
			orig = bpf_sk_storage_get(&mb_orig_sk, sk, 0, 0);
	}
	if (!orig) {
		mb_count(MB_PROG_GETSOCKOPT, MB_CNT_MISS, 0);
		return 1;
	}

	if (ctx->level == MB_SOL_IP && orig->family == MB_AF_INET) {
		struct mb_sockaddr_in *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->family = AF_INET;
		sa->port = bpf_htons(orig->port);
		sa->addr = orig->ip[0];
		__builtin_memset(sa->zero, 0, sizeof(sa->zero));
		ctx->optlen = sizeof(*sa);
	} else if (ctx->level == MB_SOL_IPV6 && orig->family == MB_AF_INET6) {
		struct mb_sockaddr_in6 *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->family = AF_INET6;
		sa->port = bpf_htons(orig->port);
		sa->flowinfo = 0;
		sa->addr[0] = orig->ip[0];
		sa->addr[1] = orig->ip[1];
		sa->addr[2] = orig->ip[2];
		sa->addr[3] = orig->ip[3];
		sa->scope_id = 0;
		ctx->optlen = sizeof(*sa);
	} else {
		/* Asked in the other family than the recorded one: not ours to answer. */
		mb_count(MB_PROG_GETSOCKOPT, MB_CNT_MISS, 0);
		return 1;
	}
	ctx->retval = 0;
	mb_count(MB_PROG_GETSOCKOPT, MB_CNT_REDIRECTED, 0);
	/* 1 = return to the caller with the values set above. */
	return 1;
}
