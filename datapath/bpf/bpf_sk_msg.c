/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * sk_msg, attached to mb_sock_hash: every sendmsg on a spliced socket is
 * queued straight onto the peer socket's receive side (BPF_F_INGRESS), so
 * node-local app <-> sidecar bytes skip the TCP/IP stack and loopback;
 * except where splicing loses (streams of small writes, lib/flow_switch.h),
 * which switch to plain TCP for good.
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/sockmap.h"
#include "lib/flow_switch.h"
#include "lib/events.h"

SEC("sk_msg")
int mb_sk_msg(struct sk_msg_md *msg)
{
	struct mb_sock_key peer = {};
	struct mb_sock_key self = {};
	__u64 len = msg->size;
	int verdict, how;

	mb_peer_key_from_msg(msg, &peer);
	mb_key_swap(&peer, &self);
	how = mb_flow_note_send(&self, &peer, len);
	if (how < 0) {
		/* No spliced peer: this and every later message take TCP. */
		mb_count(MB_PROG_SK_MSG, MB_CNT_MISS, 0);
		mb_event_msg_miss(&self);
		return SK_PASS;
	}
	if (how == 0) {
		mb_count(MB_PROG_SK_MSG, MB_CNT_FALLBACK, 0);
		return SK_PASS;
	}
	verdict = bpf_msg_redirect_hash(msg, &mb_sock_hash, &peer, BPF_F_INGRESS);
	if (verdict == SK_PASS) {
		mb_count(MB_PROG_SK_MSG, MB_CNT_REDIRECTED, len);
	} else {
		/*
		 * The peer is not in the sockhash (not established yet, or gone):
		 * the helper says SK_DROP, but the message must still be sent,
		 * so it takes the plain TCP path, and so does every later one.
		 */
		mb_flow_note_miss(&self);
		mb_count(MB_PROG_SK_MSG, MB_CNT_MISS, 0);
		mb_event_msg_miss(&self);
		verdict = SK_PASS;
	}
	return verdict;
}
