/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* L3/L4 policy decisions consulted before a pair is spliced. */
#ifndef MB_POLICY_H
#define MB_POLICY_H

#include "common.h"
#include "config.h"

/*
 * mb_identity: endpoint address -> security identity.
 *   key:    struct mb_ip_key (v4-mapped normalised to IPv4)
 *   value:  __u32 identity; an address not present has identity 0 (unknown)
 *   writer: the agent, from the endpoints it manages.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct mb_ip_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_identity SEC(".maps");

/*
 * mb_policy: L3/L4 verdict per (source identity, destination identity, port).
 *   key:    struct mb_policy_key; src_identity 0 is "any source" and dport 0
 *           "any port" (tried after the exact key, in that order)
 *   value:  struct mb_policy_value; a value whose revision differs from
 *           mb_config.policy_revision is stale and treated as absent
 *   writer: the agent, from the policy engine's resolved verdicts; it bumps
 *           mb_config.policy_revision after rewriting, so decisions made at
 *           an older revision are never reused.
 * Only consulted when MB_CFG_POLICY_ENFORCE is set; then a flow without a
 * current ALLOW (a DENY, a stale decision or none at all) is refused at
 * connect time by connect4/6 (the connect fails with EPERM), and a pair
 * without a current ALLOW is never spliced by sockops.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mb_policy_key);
	__type(value, struct mb_policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_policy SEC(".maps");

static __always_inline __u32 mb_identity_of(const __u32 ip[4], __u8 family)
{
	struct mb_ip_key k = {};
	__u32 *id;

	k.ip[0] = ip[0];
	k.ip[1] = ip[1];
	k.ip[2] = ip[2];
	k.ip[3] = ip[3];
	k.family = family;
	id = bpf_map_lookup_elem(&mb_identity, &k);
	return id ? *id : 0;
}

/* Current verdict for a flow, or 0 when none is known at this revision. */
static __always_inline __u8 mb_policy_verdict(__u32 src_id, __u32 dst_id, __u16 dport,
					      __u32 revision)
{
	struct mb_policy_key k = {};
	struct mb_policy_value *v;

	k.src_identity = src_id;
	k.dst_identity = dst_id;
	k.dport = dport;
	k.proto = IPPROTO_TCP;
	v = bpf_map_lookup_elem(&mb_policy, &k);
	if (!v) {
		k.src_identity = 0;
		v = bpf_map_lookup_elem(&mb_policy, &k);
	}
	if (!v) {
		k.src_identity = src_id;
		k.dport = 0;
		v = bpf_map_lookup_elem(&mb_policy, &k);
	}
	if (!v || v->revision != revision)
		return 0;
	return v->verdict;
}

/*
 * May this established socket be spliced? `active` is true on the
 * connecting side. Both sides compute the same (client, server, port) key.
 */
static __always_inline int mb_policy_allows_splice(const struct mb_sock_key *key, int active)
{
	const struct mb_config *cfg = mb_config_get();
	__u32 local_id, remote_id;

	if (!cfg || !(cfg->flags & MB_CFG_POLICY_ENFORCE))
		return 1;
	local_id = mb_identity_of(key->local_ip, key->family);
	remote_id = mb_identity_of(key->remote_ip, key->family);
	if (active)
		return mb_policy_verdict(local_id, remote_id, key->remote_port,
					 cfg->policy_revision) == MB_VERDICT_ALLOW;
	return mb_policy_verdict(remote_id, local_id, key->local_port, cfg->policy_revision) ==
	       MB_VERDICT_ALLOW;
}

/*
 * The pod's connect to this destination (the one the app asked for, before
 * capture rewrites it): the current verdict (MB_VERDICT_*, or 0 when there
 * is none at this revision), with the destination's identity in *dst_id.
 * The source is the pod itself: every socket in the pod's cgroup acts for
 * it, and an unbound socket has no source address yet.
 */
static __always_inline __u8 mb_policy_connect_verdict(const struct mb_config *cfg,
						      const struct mb_addr_port *dst,
						      __u32 *dst_id)
{
	*dst_id = mb_identity_of(dst->ip, dst->family);
	return mb_policy_verdict(cfg->pod_identity, *dst_id, dst->port, cfg->policy_revision);
}

#endif /* MB_POLICY_H */
