/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Which spliced socket is inside a sendmsg that may redirect.
 *
 * The kernel queues a redirect on the peer synchronously, inside the
 * sender's sendmsg (tcp_bpf_sendmsg -> tcp_bpf_sendmsg_redir), but after
 * the sk_msg program has returned and with the sender's socket lock
 * released, so no BPF program sees the moment it is queued. What can be
 * seen is the sendmsg returning (tracepoint sock:sock_send_length,
 * bpf_send_done.c): by then every redirect it made is queued. So the
 * sender's sk_msg marks its row with its thread before it decides to
 * redirect, and the end of that thread's sendmsg clears it. A switched
 * socket whose peer's row is clear has nothing of the peer's on its way
 * (lib/unsplice.h). Two threads inside sendmsg on one socket at once,
 * or a switch to TCP while another thread's redirect is in flight, make the
 * row `shared` for good, and its peer then stays in the sockhash, which is
 * always safe.
 */
#ifndef MB_SENDING_H
#define MB_SENDING_H

#include "common.h"

struct mb_send_row {
	__u64 sender; /* pid_tgid of the thread inside a sendmsg on this socket; 0: none */
	__u64 shared; /* 1: two threads sent at once; never cleared */
};

/*
 * mb_sending: one row per spliced socket.
 *   key:    __u64 socket cookie
 *   value:  struct mb_send_row
 *   writer: bpf_sockops.c creates the row when the socket is spliced and
 *           clears `sender` when it leaves the sockhash after its switch
 *           (unless `shared`); bpf_sk_msg.c sets `sender` (and `shared`);
 *           bpf_send_done.c clears `sender`. LRU: rows of closed sockets
 *           age out. Without the tracepoint program (kernel without BTF
 *           tracepoints) only the leaving clears it: a switched socket
 *           that was ever redirected into, and the reader of a peer that
 *           could not leave, stay in the sockhash.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct mb_send_row);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_sending SEC(".maps");

#endif /* MB_SENDING_H */
