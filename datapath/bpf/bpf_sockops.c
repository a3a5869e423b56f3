/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * sockops, attached to a pod's cgroup v2: on TCP establishment put
 * node-local sockets whose pair policy allows it into mb_sock_hash, and
 * hand a steered connect's original destination over to its source tuple;
 * on listen, remember the proxy's inbound listener (lib/inbound.h); on
 * a TCP segment reaching a spliced socket (one end switched to TCP), take
 * it out of the sockhash when that is safe (lib/unsplice.h).
 */
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/config.h"
#include "lib/sockmap.h"
#include "lib/policy.h"
#include "lib/capture.h"
#include "lib/port_hint.h"
#include "lib/flow_switch.h"
#include "lib/unsplice.h"
#include "lib/inbound.h"
#include "lib/events.h"

SEC("sockops")
int mb_sockops(struct bpf_sock_ops *skops)
{
	struct mb_sock_key key = {};
	const struct mb_config *cfg;
	__u16 service_port;
	int active;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		active = 1;
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		active = 0;
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		mb_inbound_listen(skops);
		return 1;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		/* Only spliced sockets ask for it (mb_flow_start). */
		mb_flow_segment(skops);
		return 1;
	default:
		return 1;
	}
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;

	mb_key_from_sockops(skops, &key);
	if (active)
		mb_capture_established(skops, &key);
	else if (skops->sk)
		mb_capture_claim(skops->sk, &key);

	cfg = mb_config_get();
	if (cfg && (cfg->flags & MB_CFG_NO_SPLICE)) {
		mb_event_splice(&key, MB_RSN_SPLICE_OFF, bpf_get_socket_cookie(skops));
		return 1;
	}
	if (!mb_pair_is_local(&key)) {
		mb_count(MB_PROG_SOCKOPS, MB_CNT_MISS, 0);
		mb_event_splice(&key, MB_RSN_NOT_LOCAL, bpf_get_socket_cookie(skops));
		return 1;
	}
	if (!mb_policy_allows_splice(&key, active)) {
		mb_count(MB_PROG_SOCKOPS, MB_CNT_FALLBACK, 0);
		mb_event_splice(&key, MB_RSN_SPLICE_POLICY, bpf_get_socket_cookie(skops));
		return 1;
	}
	service_port = active ? key.remote_port : key.local_port;
	if (mb_hint_says_plain(service_port)) {
		mb_count(MB_PROG_SOCKOPS, MB_CNT_FALLBACK, 0);
		mb_event_splice(&key, MB_RSN_SPLICE_HINT, bpf_get_socket_cookie(skops));
		return 1;
	}
	if (bpf_sock_hash_update(skops, &mb_sock_hash, &key, BPF_ANY) == 0) {
		mb_flow_start(skops, &key, service_port);
		mb_count(MB_PROG_SOCKOPS, MB_CNT_REDIRECTED, 0);
		mb_event_splice(&key, MB_RSN_SPLICED, bpf_get_socket_cookie(skops));
	} else {
		mb_count(MB_PROG_SOCKOPS, MB_CNT_FALLBACK, 0);
		mb_event_splice(&key, MB_RSN_SPLICE_FAIL, bpf_get_socket_cookie(skops));
	}
	/* sock_ops has no verdict here: 1 is "handled", as the ABI expects. */
	return 1;
}
