/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * ABI of the XDP prefilter (bpf_xdp.c, lib/prefilter.h), shared with user
 * space (datapath/src/node/prefilter.rs mirrors it; the BTF test checks the
 * structs). Kept apart from membrane_abi.h so that its owner extends its own
 * file. Addresses in network order, as on the wire.
 */
#ifndef MEMBRANE_PREFILTER_H
#define MEMBRANE_PREFILTER_H

#include <linux/types.h>

/* The underlay device's XDP hook (bpf_xdp.c), as struct mb_event.prog. */
#define MB_PROG_XDP 14

/*
 * Reasons 80-89: the prefilter's (drop events and the rows of
 * mb_prefilter_stats). Named in datapath/src/abi.rs REASONS.
 */
#define MB_RSN_PREFILTER_DENIED 80    /* drop: the source is in a denied prefix */
#define MB_RSN_PREFILTER_MALFORMED 81 /* drop: IPv4/IPv6 by its EtherType, header truncated */

/* Rows of mb_prefilter_stats (per CPU, struct mb_tc_stat: packets, bytes). */
#define MB_PF_STAT_PASS 0      /* passed to the stack */
#define MB_PF_STAT_DENIED4 1   /* IPv4, source denied */
#define MB_PF_STAT_DENIED6 2   /* IPv6, source denied */
#define MB_PF_STAT_MALFORMED 3 /* truncated IPv4/IPv6 header */
#define MB_PF_STAT_MAX 4

/* At most one drop record per CPU per this many ns; the ones in between
 * are folded into the next record's count. */
#define MB_PF_EVENT_NS 10000000ULL

/* Key of mb_prefilter4 (LPM trie): prefixlen 0-32, then the address. */
struct mb_pf_key4 {
	__u32 prefixlen;
	__u32 addr;
};

/* Key of mb_prefilter6 (LPM trie): prefixlen 0-128, then the address. */
struct mb_pf_key6 {
	__u32 prefixlen;
	__u32 addr[4];
};

#endif /* MEMBRANE_PREFILTER_H */
