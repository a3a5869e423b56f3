/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* The socket splice: which sockets are in the sockhash and how peers are found. */
#ifndef MB_SOCKMAP_H
#define MB_SOCKMAP_H

#include "common.h"

#define MB_SOCK_HASH_MAX 65536

/*
 * mb_sock_hash: sockhash of established node-local TCP sockets.
 *   key:    struct mb_sock_key, the socket's own view (local = its address,
 *           remote = its peer's), v4-mapped normalised to IPv4, ports in host
 *           order. The peer of key K is found under K with local and remote
 *           swapped.
 *   value:  the socket (__u32 in the map definition: the fd user space would
 *           pass to insert one; user space here only reads keys).
 *   writer: bpf_sockops.c on active/passive establishment; the kernel
 *           removes a socket when it closes. The agent only reads (to list
 *           spliced pairs). sk_msg (bpf_sk_msg.c) is attached to this map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MB_SOCK_HASH_MAX);
	__type(key, struct mb_sock_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_sock_hash SEC(".maps");

/* Build the socket's own key from sock_ops context. */
static __always_inline void mb_key_from_sockops(const struct bpf_sock_ops *skops,
						struct mb_sock_key *key)
{
	__u32 l6[4] = { skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
			skops->local_ip6[3] };
	__u32 r6[4] = { skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
			skops->remote_ip6[3] };
	__u32 family = skops->family;

	key->family = mb_addr_set(key->local_ip, family, skops->local_ip4, l6);
	mb_addr_set(key->remote_ip, family, skops->remote_ip4, r6);
	key->local_port = (__u16)skops->local_port;
	/* remote_port holds the network-order port in its upper half. */
	key->remote_port = (__u16)bpf_ntohl(skops->remote_port);
}

/* Build the *peer's* key from a message's socket: local and remote swapped. */
static __always_inline void mb_peer_key_from_msg(const struct sk_msg_md *msg,
						 struct mb_sock_key *key)
{
	__u32 l6[4] = { msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2],
			msg->local_ip6[3] };
	__u32 r6[4] = { msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2],
			msg->remote_ip6[3] };
	__u32 family = msg->family;

	key->family = mb_addr_set(key->local_ip, family, msg->remote_ip4, r6);
	mb_addr_set(key->remote_ip, family, msg->local_ip4, l6);
	key->local_port = (__u16)bpf_ntohl(msg->remote_port);
	key->remote_port = (__u16)msg->local_port;
}

/* The key of the other side of the same connection. */
static __always_inline void mb_key_swap(const struct mb_sock_key *in, struct mb_sock_key *out)
{
	out->local_ip[0] = in->remote_ip[0];
	out->local_ip[1] = in->remote_ip[1];
	out->local_ip[2] = in->remote_ip[2];
	out->local_ip[3] = in->remote_ip[3];
	out->remote_ip[0] = in->local_ip[0];
	out->remote_ip[1] = in->local_ip[1];
	out->remote_ip[2] = in->local_ip[2];
	out->remote_ip[3] = in->local_ip[3];
	out->local_port = in->remote_port;
	out->remote_port = in->local_port;
	out->family = in->family;
}

/*
 * Both ends on this node: loopback, or a connection to one's own address
 * (a pod talking to its own pod IP). Other same-node pairs are a later map.
 */
static __always_inline int mb_pair_is_local(const struct mb_sock_key *key)
{
	return mb_addr_is_loopback(key->remote_ip, key->family) ||
	       mb_addr_eq(key->local_ip, key->remote_ip);
}

#endif /* MB_SOCKMAP_H */
