/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Socket-level service load balancing: a connect to a service's address
 * and port is rewritten, before the socket sends anything, to one of its
 * backends, chosen at random per connection. Nothing is translated per
 * packet, and the L3/L4 decision and the capture that follow see the
 * backend (its identity is the one policy is about); getpeername() still
 * names the service.
 */
#ifndef MB_SERVICE_H
#define MB_SERVICE_H

#include "common.h"

/*
 * mb_service: service frontends.
 *   key:    struct mb_addr_port, the service address (IPv4 in ip[0], network
 *           order) and port (host order), family MB_AF_INET / MB_AF_INET6
 *   value:  struct mb_svc_value
 *   writer: the agent (Datapath::set_service); read by connect4/connect6.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct mb_addr_port);
	__type(value, struct mb_svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_service SEC(".maps");

/*
 * mb_backend: the backends of each set.
 *   key:    struct mb_backend_key (set, slot)
 *   value:  struct mb_addr_port, the backend's address and port
 *   writer: the agent writes a new set in full before it points the
 *           service at it, then deletes the old set, so a connect sees one
 *           set or the other, never a mix.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_backend_key);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_backend SEC(".maps");

/*
 * mb_lb_revnat: the service a translated socket connected to, by socket
 * cookie, so getpeername() answers with the address the app asked for.
 *   key:    __u64 socket cookie
 *   value:  struct mb_addr_port, the service frontend
 *   writer: connect4/connect6 when they translate; read by getpeername4/6.
 *           LRU: entries of closed sockets age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_lb_revnat SEC(".maps");

#define MB_SVC_NONE 0      /* not a service: connect as asked */
#define MB_SVC_BACKEND 1   /* *dst is now the chosen backend */
#define MB_SVC_NO_BACKEND 2 /* a service without a usable backend: refuse */

/*
 * The service `dst` addresses, if any, resolved to one of its backends:
 * MB_SVC_BACKEND with *dst overwritten. `v6_ok`: the socket can reach an
 * IPv6 backend (an IPv4 socket cannot).
 */
static __always_inline int mb_service_resolve(struct bpf_sock_addr *ctx, struct mb_addr_port *dst,
					      int v6_ok)
{
	struct mb_backend_key bk = {};
	struct mb_addr_port *be;
	struct mb_svc_value *svc;
	__u64 cookie;

	svc = bpf_map_lookup_elem(&mb_service, dst);
	if (!svc)
		return MB_SVC_NONE;
	if (svc->count == 0)
		return MB_SVC_NO_BACKEND;
	bk.backend_set = svc->backend_set;
	bk.slot = bpf_get_prandom_u32() % svc->count;
	be = bpf_map_lookup_elem(&mb_backend, &bk);
	if (!be || (be->family != MB_AF_INET && !v6_ok))
		return MB_SVC_NO_BACKEND;
	cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&mb_lb_revnat, &cookie, dst, BPF_ANY);
	*dst = *be;
	return MB_SVC_BACKEND;
}

/* Set an IPv6 sock_addr context to `to` (an IPv4 address as v4-mapped). */
static __always_inline void mb_sock_addr_set6(struct bpf_sock_addr *ctx,
					      const struct mb_addr_port *to)
{
	if (to->family == MB_AF_INET) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = to->ip[0];
	} else {
		ctx->user_ip6[0] = to->ip[0];
		ctx->user_ip6[1] = to->ip[1];
		ctx->user_ip6[2] = to->ip[2];
		ctx->user_ip6[3] = to->ip[3];
	}
	ctx->user_port = bpf_htons(to->port);
}

/*
 * getpeername4/6: a socket whose connect was translated names the service
 * it connected to as its peer, not the backend. 1: the call goes on.
 */
static __always_inline int mb_service_peer(struct bpf_sock_addr *ctx, int v6)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct mb_addr_port *front = bpf_map_lookup_elem(&mb_lb_revnat, &cookie);

	if (!front)
		return 1;
	if (!v6) {
		if (front->family == MB_AF_INET) {
			ctx->user_ip4 = front->ip[0];
			ctx->user_port = bpf_htons(front->port);
		}
		return 1;
	}
	mb_sock_addr_set6(ctx, front);
	return 1;
}

#endif /* MB_SERVICE_H */
