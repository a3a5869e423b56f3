/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * BTF tracepoint sock:sock_send_length, at the end of every sendmsg: the
 * calling thread is no longer inside a sendmsg on this socket, and every
 * redirect it made there is queued on the peer (lib/sending.h).
 */
#include "lib/common.h"
#include "lib/psock.h"
#include "lib/sending.h"

#include <bpf/bpf_tracing.h>

struct sock;

SEC("tp_btf/sock_send_length")
int BPF_PROG(mb_send_done, struct sock *sk, int ret, int flags)
{
	struct mb_send_row *row;
	__u64 cookie;

	/* Every sendmsg on the node comes here: leave sockets without a psock at once. */
	if (!mb_psock_of(sk))
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	row = bpf_map_lookup_elem(&mb_sending, &cookie);
	if (row)
		__sync_val_compare_and_swap(&row->sender, bpf_get_current_pid_tgid(), 0);
	return 0;
}
