/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* iptables-free inbound capture: the proxy's inbound listener, for sk_lookup. */
#ifndef MB_INBOUND_H
#define MB_INBOUND_H

#include "common.h"
#include "config.h"

#define MB_INBOUND_V4 0 /* an AF_INET listener on the inbound port */
#define MB_INBOUND_V6 1 /* an AF_INET6 listener (dual-stack unless v6only) */

/*
 * mb_inbound_listener: the proxy's listening socket(s) on the inbound port.
 *   key:    __u32 MB_INBOUND_V4 or MB_INBOUND_V6 (the listener's family)
 *   value:  the listening socket
 *   writer: bpf_sockops.c on BPF_SOCK_OPS_TCP_LISTEN_CB, for a socket in the
 *           pod's cgroup that starts listening on mb_config.inbound_port
 *           while inbound capture is on (a newer listener replaces an older
 *           one; a closed one leaves the map by itself). Read by
 *           bpf_sk_lookup.c, which hands inbound connections to it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_inbound_listener SEC(".maps");

/* sockops, BPF_SOCK_OPS_TCP_LISTEN_CB: remember the proxy's inbound listener. */
static __always_inline void mb_inbound_listen(struct bpf_sock_ops *skops)
{
	const struct mb_config *cfg = mb_config_get();
	__u32 key;

	if (!cfg || !(cfg->flags & MB_CFG_CAPTURE_INBOUND) || cfg->inbound_port == 0 ||
	    skops->local_port != cfg->inbound_port)
		return;
	key = skops->family == AF_INET6 ? MB_INBOUND_V6 : MB_INBOUND_V4;
	bpf_sock_map_update(skops, &mb_inbound_listener, &key, BPF_ANY);
}

#endif /* MB_INBOUND_H */
