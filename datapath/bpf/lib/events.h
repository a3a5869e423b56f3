/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Monitor events: the ring buffer the agent reads, and how programs fill it. */
#ifndef MB_EVENTS_H
#define MB_EVENTS_H

#include "common.h"

/*
 * mb_events: ring buffer of struct mb_event records (membrane_abi.h).
 *   writer: connect4/6 (policy verdicts, outbound capture), sk_lookup
 *           (inbound capture), sockops (splice decisions), sk_msg (misses,
 *           rate-limited), the endpoint's tc programs (packet drops, verdicts
 *           on new flows, per-packet traces with MB_NODE_F_TRACE). One consumer: the agent's `run` loop, which
 *           fans the records out to its socket's subscribers. When the
 *           buffer is full a record is dropped, never waited for.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_events SEC(".maps");

/*
 * mb_events_lost: per-CPU array, one row: records the ring buffer had no
 * room for.
 *   key:    __u32 0
 *   value:  __u64 count
 *   writer: every program that emits; the agent reads the sum and reports
 *           increases to its subscribers as "lost" records.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_events_lost SEC(".maps");

/* Kernel-only state of the sk_msg miss rate limit (one row per CPU). */
struct mb_event_rl {
	__u64 last_ns; /* when this CPU last emitted a miss record */
	__u32 pending; /* misses since then, folded into the next record */
	__u32 pad;
};

/*
 * mb_event_rl: per-CPU array, one row.
 *   key:    __u32 0
 *   value:  struct mb_event_rl
 *   writer: sk_msg only; nobody else reads it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_event_rl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mb_event_rl SEC(".maps");

/* At most one sk_msg miss record per CPU per this many ns. */
#define MB_EVENT_RL_NS 10000000ULL

/*
 * Stamp and queue a record; a full buffer loses it (never blocks). Not
 * inlined: one copy per object, and its prototype puts struct mb_event in
 * the object's BTF, where the ABI test checks it.
 */
static __noinline void mb_event_emit(struct mb_event *e)
{
	__u32 zero = 0;
	__u64 *lost;

	e->version = MB_EVENT_VERSION;
	e->ts_ns = bpf_ktime_get_ns();
	if (!e->count)
		e->count = 1;
	if (bpf_ringbuf_output(&mb_events, e, sizeof(*e), 0) == 0)
		return;
	lost = bpf_map_lookup_elem(&mb_events_lost, &zero);
	if (lost)
		*lost += 1;
}

/* A splice decision about one socket, seen from its own side. */
static __always_inline void mb_event_splice(const struct mb_sock_key *key, __u8 reason,
					    __u64 cookie)
{
	struct mb_event e = {};

	e.type = MB_EVT_TRACE;
	e.reason = reason;
	e.prog = MB_PROG_SOCKOPS;
	e.family = key->family;
	e.cookie = cookie;
	mb_ip_copy(e.src_ip, key->local_ip);
	mb_ip_copy(e.dst_ip, key->remote_ip);
	e.src_port = key->local_port;
	e.dst_port = key->remote_port;
	mb_event_emit(&e);
}

/* sk_msg: the peer of `self` is not in the sockhash (rate-limited). */
static __always_inline void mb_event_msg_miss(const struct mb_sock_key *self)
{
	struct mb_event e = {};
	struct mb_event_rl *rl;
	__u32 zero = 0;
	__u64 now;

	rl = bpf_map_lookup_elem(&mb_event_rl, &zero);
	if (!rl)
		return;
	now = bpf_ktime_get_ns();
	rl->pending++;
	if (rl->last_ns && now - rl->last_ns < MB_EVENT_RL_NS)
		return;
	e.type = MB_EVT_TRACE;
	e.reason = MB_RSN_NO_PEER;
	e.prog = MB_PROG_SK_MSG;
	e.family = self->family;
	e.count = rl->pending;
	mb_ip_copy(e.src_ip, self->local_ip);
	mb_ip_copy(e.dst_ip, self->remote_ip);
	e.src_port = self->local_port;
	e.dst_port = self->remote_port;
	rl->pending = 0;
	rl->last_ns = now;
	mb_event_emit(&e);
}

#endif /* MB_EVENTS_H */
