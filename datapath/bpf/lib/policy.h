/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * L3/L4 policy of the endpoint this pin directory serves: the ipcache and
 * the endpoint's policy map, consulted at connect (egress), at sk_lookup
 * (ingress) and before a pair is spliced (sockops).
 */
#ifndef MB_POLICY_H
#define MB_POLICY_H

#include "common.h"
#include "config.h"

/*
 * mb_identity: the ipcache, address prefix -> security identity.
 *   key:    struct mb_cidr_key (longest-prefix match; v4-mapped as IPv4);
 *           pod addresses are /32 and /128 entries, CIDR identities
 *           (toCIDR/fromCIDR, world ranges) shorter prefixes
 *   value:  __u32 identity
 *   writer: the agent, from the control plane's ipcache (upserts longest
 *           prefix first, then deletes shortest prefix first: a lookup
 *           sees the old or the new identity of an address, never a third).
 *   reader: connect4/6, sk_lookup, sockops (the remote's identity). The
 *           packet path reads the node's ipcache instead (mb_ipcache,
 *           lib/node.h), which the agent fills with the same identities.
 * An address no prefix covers is MB_ID_WORLD (reserved:world), as in Cilium.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_cidr_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_identity SEC(".maps");

/*
 * mb_policy: the endpoint's L3/L4 policy, both directions (Cilium's
 * cilium_policy_<EP>).
 *   key:    struct mb_policy_key: (identity, direction, protocol) exact, the
 *           port as an aligned block (its first n bits, n = 0..16 in
 *           prefixlen); identity 0 is "any identity"
 *   value:  struct mb_policy_value: ALLOW, DENY or REDIRECT (allowed here;
 *           the sidecar decides the L7 part, and capture settings alone
 *           decide whether the connection goes to it)
 *   writer: the agent, from the control plane's EndpointPolicy, as diffs
 *           (datapath/src/policy_map.rs orders them so that no lookup ever
 *           sees a verdict that is neither the old policy's nor the new),
 *           verdict changes in place (BPF_F_LOCK).
 *   reader: connect4/6 (egress), sk_lookup (ingress), sockops (splice), and
 *           the endpoint's tc programs (bpf_lxc.c: a flow's first packet,
 *           egress at from-container, ingress at to-container; ICMP and
 *           ICMPv6 keys there carry the message type as the port).
 * Lookup for remote identity R and port P: the longest block for (R, P);
 * if none, the longest for (0, P); if none, DENY. A hash, not an LPM trie:
 * "longest" is found by probing the block lengths mb_policy_lens lists,
 * longest first, so a lookup costs at most as many hash probes as the
 * policy uses lengths (usually two: one port, every port), whatever the
 * number of rules; an LPM trie's walk lengthens as it fills. Only
 * consulted when MB_CFG_POLICY_ENFORCE is set (the tc programs also need
 * the node's MB_NODE_F_POLICY).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mb_policy_key);
	__type(value, struct mb_policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_policy SEC(".maps");

/*
 * mb_policy_lens: array with one row, the port block lengths mb_policy's
 * keys use, per direction and identity class (specific or any).
 *   key:    __u32 0
 *   value:  struct mb_policy_lens
 *   writer: the agent (sync_policy): before writing keys of a new length
 *           it adds the length and waits for running programs; lengths no
 *           key uses any more are removed after the deletes. A row that
 *           lists more lengths than the keys use costs probes, never a
 *           verdict; one that lists fewer would hide keys, which the order
 *           never allows.
 *   reader: mb_policy_lookup. All zero (never written): no key is probed,
 *           every lookup denies, as an empty policy does.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_policy_lens);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_policy_lens SEC(".maps");

/* The identity of an address: the ipcache's longest prefix, else world. */
static __always_inline __u32 mb_identity_of(const __u32 ip[4], __u8 family)
{
	struct mb_cidr_key k = {};
	__u32 *id;

	k.prefixlen = 32 + (family == MB_AF_INET ? 32 : 128);
	k.family = family;
	k.ip[0] = ip[0];
	k.ip[1] = ip[1];
	k.ip[2] = ip[2];
	k.ip[3] = ip[3];
	id = bpf_map_lookup_elem(&mb_identity, &k);
	return id ? *id : MB_ID_WORLD;
}

/* The longest block for (k's identity, direction, protocol) that covers
 * `port`, probing only the lengths in `lens`; NULL when none does. */
static __always_inline struct mb_policy_value *mb_policy_probe(struct mb_policy_key *k, __u32 lens,
							       __u16 port)
{
	struct mb_policy_value *v;
	int bits;

#pragma unroll
	for (bits = 16; bits >= 0; bits--) {
		if (!(lens & (1U << bits)))
			continue;
		k->prefixlen = MB_POLICY_PREFIX_STATIC + bits;
		k->dport = bpf_htons(bits ? port & (__u16)(0xffffU << (16 - bits)) : 0);
		v = bpf_map_lookup_elem(&mb_policy, k);
		if (v)
			return v;
	}
	return 0;
}

/* The verdict (MB_VERDICT_*, or 0 when no entry covers the flow): the one
 * lookup both the socket hooks and the packet path decide with. */
static __always_inline __u8 mb_policy_lookup(__u8 direction, __u8 proto, __u32 remote_id,
					     __u16 port)
{
	const struct mb_policy_lens *lens;
	struct mb_policy_key k = {};
	struct mb_policy_value *v = 0;
	__u32 zero = 0;

	lens = bpf_map_lookup_elem(&mb_policy_lens, &zero);
	if (!lens)
		return 0;
	k.direction = direction;
	k.proto = proto;
	if (remote_id != 0) {
		k.identity = remote_id;
		v = mb_policy_probe(&k, lens->bits[MB_POLICY_LENS_IDX(direction, 0)], port);
	}
	if (!v) {
		k.identity = 0;
		v = mb_policy_probe(&k, lens->bits[MB_POLICY_LENS_IDX(direction, 1)], port);
	}
	return v ? v->verdict : 0;
}

/* ALLOW and REDIRECT let the connection through; DENY and nothing do not. */
static __always_inline int mb_verdict_allows(__u8 verdict)
{
	return verdict == MB_VERDICT_ALLOW || verdict == MB_VERDICT_REDIRECT;
}

/*
 * May this established socket be spliced? The active (connecting) side asks
 * its endpoint's egress policy, the passive side its ingress policy; each
 * side decides with its own pin directory's maps.
 */
static __always_inline int mb_policy_allows_splice(const struct mb_sock_key *key, int active)
{
	const struct mb_config *cfg = mb_config_get();
	__u32 remote_id;

	if (!cfg || !(cfg->flags & MB_CFG_POLICY_ENFORCE))
		return 1;
	remote_id = mb_identity_of(key->remote_ip, key->family);
	if (active)
		return mb_verdict_allows(
			mb_policy_lookup(MB_DIR_EGRESS, IPPROTO_TCP, remote_id, key->remote_port));
	return mb_verdict_allows(
		mb_policy_lookup(MB_DIR_INGRESS, IPPROTO_TCP, remote_id, key->local_port));
}

#endif /* MB_POLICY_H */
