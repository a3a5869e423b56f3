/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* iptables-free capture: where an app meant to connect, for SO_ORIGINAL_DST. */
#ifndef MB_CAPTURE_H
#define MB_CAPTURE_H

#include "common.h"

/*
 * Original destinations of steered connects. Only a connect that connect4/6
 * actually steered to the proxy gets one, and it ends up attached to the
 * proxy's accepted socket (mb_orig_sk), so it is answered for that socket
 * only and dies with it. Nothing else (a peer outside the pod, a socket of
 * another connection from the same address and port) can be answered.
 *
 * mb_orig_ck: by socket cookie, while the app's connect is in flight.
 *   key:    __u64 socket cookie of the app's connecting socket
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_cgroup_connect.c (connect4/connect6) when it steers;
 *           bpf_sockops.c moves the entry to mb_orig_tuple once the socket
 *           is established (its source port is known only then) and
 *           deletes it here. LRU, so connects that never establish age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_ck SEC(".maps");

/*
 * mb_orig_tuple: by the connection's four-tuple, between the app's side
 * being established and the proxy's side being accepted.
 *   key:    struct mb_sock_key as the app's socket sees it (local = the
 *           app's address and port, remote = the proxy's listener)
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_sockops.c on active establishment (from mb_orig_ck); it
 *           moves the entry into mb_orig_sk of the proxy's socket on
 *           passive establishment and deletes it here, and the getsockopt
 *           program does the same if it is asked first. LRU: an entry of a
 *           connection the proxy never accepted ages out; only the same
 *           four-tuple, which only a new steered connect can make, finds it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_sock_key);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_tuple SEC(".maps");

/*
 * mb_orig_sk: socket-local storage of the proxy's accepted socket.
 *   value:  struct mb_addr_port, the destination the app asked for
 *   writer: bpf_sockops.c on passive establishment, or bpf_cgroup_sockopt.c
 *           on the first SO_ORIGINAL_DST (both from mb_orig_tuple); read by
 *           bpf_cgroup_sockopt.c, the only source of its answers. The kernel
 *           frees it with the socket.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mb_addr_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_orig_sk SEC(".maps");

/*
 * mb_cap_skip_port: outbound destination ports never captured (Istio's
 * traffic.sidecar.istio.io/excludeOutboundPorts).
 *   key:    __u32 destination port, host order
 *   value:  __u8 1
 *   writer: the agent, from the pod's settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_cap_skip_port SEC(".maps");

/*
 * mb_cap_skip_cidr: outbound destination prefixes never captured
 * (traffic.sidecar.istio.io/excludeOutboundIPRanges).
 *   key:    struct mb_cidr_key (longest-prefix match; v4-mapped as IPv4)
 *   value:  __u8 1
 *   writer: the agent, from the pod's settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_cap_skip_cidr SEC(".maps");

/*
 * mb_cap_incl_cidr: when mb_config has MB_CFG_OUTBOUND_ONLY_LISTED, only
 * destinations in these prefixes are captured
 * (traffic.sidecar.istio.io/includeOutboundIPRanges other than "*").
 * Exclusions above still win over an inclusion.
 *   key:    struct mb_cidr_key (longest-prefix match; v4-mapped as IPv4)
 *   value:  __u8 1
 *   writer: the agent, from the pod's settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_cap_incl_cidr SEC(".maps");

/* 1 when the destination is excluded from capture by port or prefix. */
static __always_inline int mb_capture_excluded(const struct mb_config *cfg,
					       const struct mb_addr_port *dst)
{
	__u32 port = dst->port;
	struct mb_cidr_key k = {};

	if (bpf_map_lookup_elem(&mb_cap_skip_port, &port))
		return 1;
	k.prefixlen = 32 + (dst->family == MB_AF_INET ? 32 : 128);
	k.family = dst->family;
	k.ip[0] = dst->ip[0];
	k.ip[1] = dst->ip[1];
	k.ip[2] = dst->ip[2];
	k.ip[3] = dst->ip[3];
	if (bpf_map_lookup_elem(&mb_cap_skip_cidr, &k))
		return 1;
	return (cfg->flags & MB_CFG_OUTBOUND_ONLY_LISTED) &&
	       !bpf_map_lookup_elem(&mb_cap_incl_cidr, &k);
}

/* sockops, active establishment: cookie entry -> four-tuple entry. */
static __always_inline void mb_capture_established(struct bpf_sock_ops *skops,
						   const struct mb_sock_key *key)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct mb_addr_port *orig = bpf_map_lookup_elem(&mb_orig_ck, &cookie);

	if (!orig)
		return;
	bpf_map_update_elem(&mb_orig_tuple, key, orig, BPF_ANY);
	bpf_map_delete_elem(&mb_orig_ck, &cookie);
}

/*
 * Attach the pending original destination of the connection `key` (seen
 * from the proxy's accepted socket `sk`) to that socket; 1 when there was
 * one. The four-tuple entry is consumed.
 */
static __always_inline int mb_capture_claim(struct bpf_sock *sk, const struct mb_sock_key *key)
{
	struct mb_sock_key app = {};
	struct mb_addr_port *pending;
	struct mb_addr_port orig;

	/* The app's view: its local end is our remote end. */
	app.local_ip[0] = key->remote_ip[0];
	app.local_ip[1] = key->remote_ip[1];
	app.local_ip[2] = key->remote_ip[2];
	app.local_ip[3] = key->remote_ip[3];
	app.remote_ip[0] = key->local_ip[0];
	app.remote_ip[1] = key->local_ip[1];
	app.remote_ip[2] = key->local_ip[2];
	app.remote_ip[3] = key->local_ip[3];
	app.local_port = key->remote_port;
	app.remote_port = key->local_port;
	app.family = key->family;
	pending = bpf_map_lookup_elem(&mb_orig_tuple, &app);
	if (!pending)
		return 0;
	orig = *pending;
	bpf_map_delete_elem(&mb_orig_tuple, &app);
	return bpf_sk_storage_get(&mb_orig_sk, sk, &orig, BPF_SK_STORAGE_GET_F_CREATE) != 0;
}

#endif /* MB_CAPTURE_H */
