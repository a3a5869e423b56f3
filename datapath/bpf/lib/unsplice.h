/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Unsplicing: a spliced socket that switched to TCP (lib/flow_switch.h)
 * leaves the sockhash, and its peer too, once that drops nothing.
 *
 * A switched socket still runs tcp_bpf_sendmsg (copy into an sk_msg, BPF
 * run, then handing the pages to TCP: 0.6-0.75x plain TCP for small writes)
 * as long as it has a psock. Removing it from the sockhash frees the psock and with it every message still queued on its
 * own ingress_msg, or still on its way there, so sockops removes it (on a
 * TCP segment it receives, the ACKs of its TCP bytes) only when nothing
 * spliced is or will be there:
 *   - its peer never redirected a message into it (rx_msgs == 0). The peer
 *     bumps rx_msgs atomically *before* it reads `plain` and redirects, and
 *     the switching socket sets `plain` atomically before sockops reads
 *     rx_msgs, so either the peer sees `plain` (and sends by TCP too) or
 *     sockops sees rx_msgs > 0; or
 *   - no redirect of the peer is on its way (the peer's mb_sending row is
 *     clear, lib/sending.h: it is marked before the peer reads `plain`, by
 *     the same argument) and its ingress_msg list is empty (read through
 *     CO-RE). Until then it is "kept" and asks again on every segment.
 * Nothing redirected can be dropped by the removal.
 */
#ifndef MB_UNSPLICE_H
#define MB_UNSPLICE_H

#include "common.h"
#include "flow_switch.h"
#include "psock.h"
#include "sending.h"
#include "sockmap.h"

/* Only handed on to lib/psock.h, which reads it as a struct sock. */
struct tcp_sock;

/*
 * sockops, for a socket that switched: 1 when nothing spliced is queued for
 * it or on its way to it, for good. Its peer redirects nothing new once it
 * sees the switch (see top); a redirect the peer decided before that was
 * made inside a sendmsg that marked the peer's mb_sending row first, so a
 * clear row means it has been queued (lib/sending.h); and the psock's
 * ingress_msg list is empty (the reader unlinks a message only once it has
 * copied all of it). 0 when unsure.
 */
static __always_inline int mb_spliced_bytes_settled(struct mb_flow_state *pst,
						     struct tcp_sock *tp)
{
	struct mb_send_row *row;
	unsigned long psock;

	if (!pst)
		return 0;
	row = bpf_map_lookup_elem(&mb_sending, &pst->cookie);
	if (!row || mb_seq_load(&row->sender) != 0 || *(volatile __u64 *)&row->shared)
		return 0;
	psock = mb_psock_of(tp);
	return psock && mb_psock_ingress_empty(psock);
}

/*
 * sockops, when a switched socket has left the sockhash: no sendmsg of it
 * redirects any more, and the end of one that is still running (the one
 * that switched, if it switched half-way through a long write) no longer
 * clears its row (bpf_send_done.c skips sockets without a psock). Every
 * redirect it made is queued already, unless another thread's was in
 * flight when it switched (the row is shared then, mb_flow_go_plain): so
 * clear the row, or its peer would wait for it for good.
 */
static __always_inline void mb_sending_leave(const struct mb_flow_state *st)
{
	struct mb_send_row *row = bpf_map_lookup_elem(&mb_sending, &st->cookie);

	if (row && !*(volatile __u64 *)&row->shared)
		__sync_lock_test_and_set(&row->sender, 0);
}

/*
 * sockops, on every TCP segment a spliced socket receives (there are none
 * while both ends splice). Either end of a pair that moved to TCP leaves
 * the sockhash once that is safe, and the callbacks stop:
 *
 * - The end that switched (its sends take TCP, so it receives ACKs) leaves
 *   if nothing was ever redirected into it (see top): removing it would
 *   drop its unread spliced messages. Otherwise it stays ("kept").
 *
 * - The reading end leaves once its ingress_msg queue is empty for good:
 *   its peer has switched (it redirects nothing new), the peer's redirects
 *   decided before the switch are all queued (its mb_sending row is clear),
 *   and the reader has read them all (mb_spliced_bytes_settled). Until
 *   then its reads take tcp_bpf_recvmsg's detour. (That the reader has read
 *   a byte that came by TCP, after its peer switched, says as much only
 *   when the peer has one writing thread.)
 */
static __always_inline void mb_flow_segment(struct bpf_sock_ops *skops)
{
	__u32 flags = skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG;
	struct mb_sock_key key = {};
	struct mb_sock_key peer = {};
	struct mb_flow_state *st, *pst;
	struct bpf_sock *sk = skops->sk;
	struct tcp_sock *tp;

	mb_key_from_sockops(skops, &key);
	st = bpf_map_lookup_elem(&mb_flow, &key);
	if (!st || !sk) {
		bpf_sock_ops_cb_flags_set(skops, flags);
		return;
	}
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	mb_key_swap(&key, &peer);
	pst = bpf_map_lookup_elem(&mb_flow, &peer);
	if (*(volatile __u64 *)&st->plain) {
		if (mb_seq_load(&st->rx_msgs) == 0 || mb_spliced_bytes_settled(pst, tp)) {
			if (bpf_map_delete_elem(&mb_sock_hash, &key) == 0) {
				mb_stat(MB_STAT_UNSPLICED);
				mb_sending_leave(st);
			}
			bpf_sock_ops_cb_flags_set(skops, flags);
		} else if (!st->kept) {
			/* Spliced bytes unread or on their way: ask again on the next segment. */
			st->kept = 1;
			mb_stat(MB_STAT_KEPT);
		}
		return;
	}
	if (!pst || !mb_seq_load(&pst->plain) || !mb_spliced_bytes_settled(pst, tp))
		return;
	if (bpf_map_delete_elem(&mb_sock_hash, &key) == 0)
		mb_stat(MB_STAT_UNSPLICED);
	bpf_sock_ops_cb_flags_set(skops, flags);
}

#endif /* MB_UNSPLICE_H */
