/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Adaptive splice: redirect only where it wins.
 *
 * Measured (bench/sockmap.sh): sk_msg redirection wins for request/response
 * and for writes of 16 KiB and more, and loses for streams of small writes,
 * where plain TCP coalesces many writes into one skb and one receiver
 * wake-up while sk_msg pays an sk_msg allocation, a BPF run, a peer lock
 * and a wake-up per write. A socket cannot be taken out of the sockhash
 * safely mid-stream (its unread redirected data would be purged) and merely
 * returning SK_PASS keeps the slower sk_msg send path, so the decision is
 * made per service at establish time: a spliced flow that streams small
 * writes marks its service port, and new connections to that port stay on
 * plain TCP for mb_config.hint_ttl_secs (600 s by default), after which one
 * is spliced again to re-probe. The first connection of such a service stays
 * spliced (and slower) for its life: sk_msg may not delete from a sockhash.
 */
#ifndef MB_SPLICE_HINT_H
#define MB_SPLICE_HINT_H

#include "common.h"
#include "config.h"

/* A send below this size is "small" (16 KiB writes already win). */
#define MB_SMALL_MSG 16384
/* This many consecutive small sends without receiving = a small-write stream. */
#define MB_SMALL_RUN_LIMIT 128
/* How long a learned "do not splice" hint holds unless configured. */
#define MB_HINT_TTL_DEFAULT_SECS 600

/*
 * mb_flow: send pattern of each spliced socket.
 *   key:    struct mb_sock_key, the socket's own view (as in mb_sock_hash)
 *   value:  struct mb_flow_state
 *   writer: bpf_sockops.c creates it (zeroed, with the service port) when
 *           the socket is spliced; bpf_sk_msg.c updates it on every send
 *           (own run++ or reset, and resets the peer's run: the peer just
 *           received). LRU: entries of closed sockets age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_sock_key);
	__type(value, struct mb_flow_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_flow SEC(".maps");

/*
 * mb_port_hint: services where splicing was seen to lose.
 *   key:    __u32 service (accepting side) port, host order
 *   value:  __u64 bpf_ktime_get_ns() when a small-write stream was seen
 *   writer: bpf_sk_msg.c; read by bpf_sockops.c; the agent may delete
 *           entries (to force a re-probe) and lists them.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_port_hint SEC(".maps");

/* sockops: 1 when a fresh hint says splicing this service loses. */
static __always_inline int mb_hint_says_plain(__u16 service_port)
{
	__u32 port = service_port;
	__u64 *marked = bpf_map_lookup_elem(&mb_port_hint, &port);
	const struct mb_config *cfg;
	__u64 ttl = MB_HINT_TTL_DEFAULT_SECS;

	if (!marked)
		return 0;
	cfg = mb_config_get();
	if (cfg && cfg->hint_ttl_secs)
		ttl = cfg->hint_ttl_secs;
	return bpf_ktime_get_ns() - *marked < ttl * 1000000000ULL;
}

/* sockops: start tracking a socket that was just spliced. */
static __always_inline void mb_flow_start(const struct mb_sock_key *key, __u16 service_port)
{
	struct mb_flow_state st = {};

	st.service_port = service_port;
	bpf_map_update_elem(&mb_flow, key, &st, BPF_ANY);
}

/* sk_msg: account one send of `len` bytes from `self` to `peer`. */
static __always_inline void mb_flow_note_send(const struct mb_sock_key *self,
					      const struct mb_sock_key *peer, __u64 len)
{
	struct mb_flow_state *st = bpf_map_lookup_elem(&mb_flow, self);
	struct mb_flow_state *pst = bpf_map_lookup_elem(&mb_flow, peer);

	if (pst)
		pst->small_run = 0;
	if (!st)
		return;
	if (len >= MB_SMALL_MSG) {
		st->small_run = 0;
		return;
	}
	st->small_run++;
	if (st->small_run >= MB_SMALL_RUN_LIMIT && !st->hinted) {
		__u32 port = st->service_port;
		__u64 now = bpf_ktime_get_ns();

		st->hinted = 1;
		bpf_map_update_elem(&mb_port_hint, &port, &now, BPF_ANY);
	}
}

#endif /* MB_SPLICE_HINT_H */
