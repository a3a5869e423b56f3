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

/*
 * mb_cap_in_port: inbound destination ports, read by sk_lookup. With
 * MB_CFG_INBOUND_ONLY_LISTED the listed ports are the only ones captured
 * (traffic.sidecar.istio.io/includeInboundPorts other than "*"); without
 * it they are the ones never captured (excludeInboundPorts, plus the
 * sidecar's own 15020/15021/15090 the agent always adds).
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
} mb_cap_in_port SEC(".maps");

/*
 * mb_proxy_port: the sidecar's own ports (admin 15000, capture 15001 and
 * 15006, its own listener 15007, metrics 15020, health 15021, Envoy's
 * Prometheus 15090). sk_lookup never hands a connection to one of them to
 * the proxy, whatever mb_cap_in_port says: the proxy would deliver it to
 * the pod's address on that port, where the sidecar itself listens.
 *   key:    __u32 port, host order
 *   value:  __u8 1
 *   writer: the agent, from the settings (replaced as a whole).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_proxy_port SEC(".maps");

/* 1 when inbound connections to `port` are left to the app's own listener. */
static __always_inline int mb_inbound_port_skipped(const struct mb_config *cfg, __u16 port)
{
	__u32 k = port;
	int listed = bpf_map_lookup_elem(&mb_cap_in_port, &k) != 0;

	if (bpf_map_lookup_elem(&mb_proxy_port, &k))
		return 1;

	if (cfg->flags & MB_CFG_INBOUND_ONLY_LISTED)
		return !listed;
	return listed;
}

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
