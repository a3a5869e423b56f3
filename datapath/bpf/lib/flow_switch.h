/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Adaptive splice: redirect only where it wins.
 *
 * Measured (bench/sockmap.sh, ARCHITECTURE.md): sk_msg redirection wins for
 * request/response and for writes of 32 KiB and more, and loses for streams
 * of smaller writes: every redirected sendmsg pays an sk_msg allocation and
 * copy, a BPF run, the peer's socket lock and a wake-up of the reader, and
 * the reader gets one small message per recvmsg, where loopback TCP merges
 * many writes into one skb and one wake-up. When sender and reader run on
 * different cores, the sender also sleeps on the reader's socket lock, which
 * the reader holds while it copies (TCP's receive path queues to the backlog
 * instead): 16 KiB-write streams lose there (0.55x unpinned).
 *
 * So a socket whose run of small messages with nothing received reaches
 * MB_SMALL_RUN_BYTES or MB_SMALL_RUN_LIMIT messages switches its sends to
 * plain TCP for the rest of its life (mb_flow_state.plain, never cleared),
 * and marks its service port so new connections to it are not spliced at
 * all for mb_config.hint_ttl_secs (lib/port_hint.h). How a switched socket
 * then leaves the sockhash without dropping spliced bytes is
 * lib/unsplice.h.
 *
 * Why the probe is measured in bytes: when sender and reader share a core,
 * the reader has not run yet when the sender switches, so every spliced
 * byte is still queued, charged to the reader's receive memory. The first
 * TCP segment then finds sk_rmem_alloc above sk_rcvbuf, and TCP prunes:
 * tcp_clamp_window sets sk_rcvbuf to what is queued and clamps rcv_ssthresh
 * to two segments. With 128 writes of 4 KiB (512 KiB queued) that left the
 * reader a window smaller than plain TCP's autotuning reaches on loopback
 * (1-3 MiB after a second), the sender was window-limited 30-60 % of the time
 * (`ss -ti` rwnd_limited) and piled its writes up unsent, and the whole
 * connection ran at 0.92-0.96x. A 2 MiB probe leaves the reader about the
 * buffer autotuning would have grown: 0.98-1.00x (bench/sockmap.sh
 * first-connection rows; ARCHITECTURE.md).
 *
 * Byte order across the switch: a redirect is queued on the peer's
 * ingress_msg list synchronously, inside the sender's sendmsg, so every
 * redirected byte is queued before the first byte sent by TCP. The reader
 * (tcp_bpf_recvmsg) drains ingress_msg before it reads its TCP receive
 * queue, and a socket never goes back from TCP to the redirect, so the peer
 * sees the bytes in the order they were written.
 */
#ifndef MB_FLOW_SWITCH_H
#define MB_FLOW_SWITCH_H

#include "common.h"
#include "config.h"
#include "port_hint.h"
#include "sending.h"

/* A send below this size is "small" (32 KiB writes win on any cores). */
#define MB_SMALL_MSG 32768
/*
 * A run of small sends without receiving is a small-write stream once it
 * carries this many bytes ...
 */
#define MB_SMALL_RUN_BYTES (2U << 20)
/* ... or has this many sends (tiny writes: 1 KiB writes reach both at once). */
#define MB_SMALL_RUN_LIMIT 2048
/*
 * mb_flow: send pattern of each spliced socket.
 *   key:    struct mb_sock_key, the socket's own view (as in mb_sock_hash)
 *   value:  struct mb_flow_state
 *   writer: bpf_sockops.c creates it (zeroed, with the service port) when
 *           the socket is spliced; bpf_sk_msg.c updates it on every send
 *           (own run++ or reset and `plain`; the peer's run reset and its
 *           rx_msgs++). LRU: entries of closed sockets age out. A spliced
 *           socket without an entry (evicted) sends by plain TCP.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_sock_key);
	__type(value, struct mb_flow_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_flow SEC(".maps");

/*
 * mb_splice_stats: per-CPU array, MB_STAT_MAX rows of __u64.
 *   key:    __u32 enum mb_splice_stat
 *   value:  sockets counted (see membrane_abi.h)
 *   writer: bpf_sk_msg.c (switches), bpf_sockops.c (removals); the agent
 *           sums over CPUs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_splice_stats SEC(".maps");

/*
 * Fully ordered atomics for the handshake with sockops (lib/unsplice.h): fetch forms (a plain
 * BPF atomic add may be JITed without ordering on some architectures).
 * The empty asm keeps the fetched value alive so clang emits BPF_FETCH.
 */
static __always_inline __u64 mb_seq_add(__u64 *p, __u64 v)
{
	__u64 old = __sync_fetch_and_add(p, v);

	asm volatile("" : : "r"(old));
	return old;
}

static __always_inline __u64 mb_seq_load(__u64 *p)
{
	return mb_seq_add(p, 0);
}

static __always_inline void mb_stat(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&mb_splice_stats, &stat);

	if (v)
		(*v)++;
}

/*
 * sockops: start tracking a socket that was just spliced, and ask for a
 * callback per received TCP segment: a spliced pair exchanges none, so they
 * start only once one end sends by TCP (mb_flow_segment).
 */
static __always_inline void mb_flow_start(struct bpf_sock_ops *skops,
					  const struct mb_sock_key *key, __u16 service_port)
{
	struct mb_flow_state st = {};
	struct mb_send_row row = {};

	st.service_port = service_port;
	st.cookie = bpf_get_socket_cookie(skops);
	bpf_map_update_elem(&mb_sending, &st.cookie, &row, BPF_ANY);
	bpf_map_update_elem(&mb_flow, key, &st, BPF_ANY);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG);
}

/*
 * sk_msg: switch this socket's sends to TCP for good; mark its service only
 * when the reason is its own small-write stream (`learned`), not a peer that
 * is closing or not in the sockhash yet.
 */
static __always_inline void mb_flow_go_plain(struct mb_flow_state *st, int learned)
{
	struct mb_send_row *row;
	__u64 was;

	if (__sync_fetch_and_or(&st->plain, 1))
		return;
	mb_stat(MB_STAT_TO_TCP);
	/*
	 * Another thread's redirect may have been decided before this switch and
	 * not be queued yet (its mark is in the row; sk_msg verdicts run under
	 * the socket lock, so it is visible here). Then the row can only be
	 * cleared by that sendmsg's end, never by this socket leaving the
	 * sockhash (mb_sending_leave): shared, for good.
	 */
	row = bpf_map_lookup_elem(&mb_sending, &st->cookie);
	if (row) {
		was = mb_seq_load(&row->sender);
		if (was != 0 && was != bpf_get_current_pid_tgid())
			row->shared = 1;
	}
	if (learned && !st->hinted) {
		st->hinted = 1;
		mb_port_hint_learn(st->service_port);
	}
}

/*
 * sk_msg: account one send of `len` bytes from `self` to `peer`.
 * Returns 1 when the message may be redirected to the peer, 0 when it must
 * take plain TCP (and every later one from this socket will too), and -1
 * for the same when the reason is that the peer is not spliced at all (a
 * miss, which the monitor reports).
 */
static __always_inline int mb_flow_note_send(const struct mb_sock_key *self,
					     const struct mb_sock_key *peer, __u64 len)
{
	struct mb_flow_state *st = bpf_map_lookup_elem(&mb_flow, self);
	struct mb_flow_state *pst;
	struct mb_send_row *row;
	__u64 tid, was;

	/* Untracked (evicted) or already switched: TCP, never back. */
	if (!st || *(volatile __u64 *)&st->plain)
		return 0;
	if (len >= MB_SMALL_MSG) {
		st->small_run = 0;
		st->small_bytes = 0;
	} else {
		st->small_bytes += len;
		if (++st->small_run >= MB_SMALL_RUN_LIMIT ||
		    st->small_bytes >= MB_SMALL_RUN_BYTES) {
			mb_flow_go_plain(st, 1);
			return 0;
		}
	}
	pst = bpf_map_lookup_elem(&mb_flow, peer);
	if (!pst) {
		mb_flow_go_plain(st, 0);
		return -1;
	}
	pst->small_run = 0;
	pst->small_bytes = 0;
	/*
	 * Mark this thread as inside a sendmsg on this socket (a fully ordered
	 * compare-and-swap), then announce the message to the peer, then look
	 * at its switch: the order that makes the peer's removal from the
	 * sockhash safe (lib/unsplice.h, and lib/sending.h).
	 */
	row = bpf_map_lookup_elem(&mb_sending, &st->cookie);
	if (row) {
		tid = bpf_get_current_pid_tgid();
		was = __sync_val_compare_and_swap(&row->sender, 0, tid);
		if (was != 0 && was != tid)
			row->shared = 1;
	}
	if (mb_seq_add(&pst->rx_msgs, 1), mb_seq_load(&pst->plain)) {
		mb_flow_go_plain(st, 0);
		return 0;
	}
	return 1;
}

/*
 * sk_msg: the peer is not in the sockhash (not yet, or no longer): this
 * message takes TCP, so every later one must too.
 */
static __always_inline void mb_flow_note_miss(const struct mb_sock_key *self)
{
	struct mb_flow_state *st = bpf_map_lookup_elem(&mb_flow, self);

	if (st)
		mb_flow_go_plain(st, 0);
}

#endif /* MB_FLOW_SWITCH_H */
