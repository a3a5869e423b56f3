/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* iptables-free capture: where an app meant to connect, for SO_ORIGINAL_DST. */
#ifndef MB_CAPTURE_H
#define MB_CAPTURE_H

#include "common.h"

/*
 * mb_orig_ck: original destination of a steered connect, by socket cookie.
 *   key:    __u64 socket cookie of the app's connecting socket
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_cgroup_connect.c (connect4/connect6) inserts; bpf_sockops.c
 *           moves the entry to mb_orig_tp once the socket is established
 *           (its source port is known only then) and deletes it here. LRU,
 *           so connects that never establish age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_ck SEC(".maps");

/*
 * mb_orig_tp: original destination by the app socket's source address.
 *   key:    struct mb_addr_port, the app socket's local address and port,
 *           which is the remote address of the proxy's accepted socket
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_sockops.c on active establishment; read by
 *           bpf_cgroup_sockopt.c to answer SO_ORIGINAL_DST. LRU: a closed
 *           connection's entry is overwritten when its port is reused.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_addr_port);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_tp SEC(".maps");

/* Called from sockops on active establishment: cookie entry -> tuple entry. */
static __always_inline void mb_capture_established(struct bpf_sock_ops *skops,
						   const struct mb_sock_key *key)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct mb_addr_port *orig = bpf_map_lookup_elem(&mb_orig_ck, &cookie);
	struct mb_addr_port src = {};

	if (!orig)
		return;
	src.ip[0] = key->local_ip[0];
	src.ip[1] = key->local_ip[1];
	src.ip[2] = key->local_ip[2];
	src.ip[3] = key->local_ip[3];
	src.port = key->local_port;
	src.family = key->family;
	bpf_map_update_elem(&mb_orig_tp, &src, orig, BPF_ANY);
	bpf_map_delete_elem(&mb_orig_ck, &cookie);
}

#endif /* MB_CAPTURE_H */
