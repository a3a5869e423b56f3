/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Includes and small helpers every program uses. Owns no maps. */
#ifndef MB_COMMON_H
#define MB_COMMON_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "../include/membrane_abi.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* True when the IPv6 words hold a v4-mapped address (::ffff:a.b.c.d). */
static __always_inline int mb_is_v4_mapped(const __u32 ip6[4])
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
}

/*
 * Fill an address in the ABI form: IPv4 (or v4-mapped IPv6) in ip[0] with
 * family MB_AF_INET, native IPv6 in ip[0..3] with MB_AF_INET6.
 * Returns the family written.
 */
static __always_inline __u8 mb_addr_set(__u32 dst[4], __u32 family, __u32 ip4,
					const __u32 ip6[4])
{
	if (family == AF_INET || (family == AF_INET6 && mb_is_v4_mapped(ip6))) {
		dst[0] = family == AF_INET ? ip4 : ip6[3];
		dst[1] = 0;
		dst[2] = 0;
		dst[3] = 0;
		return MB_AF_INET;
	}
	dst[0] = ip6[0];
	dst[1] = ip6[1];
	dst[2] = ip6[2];
	dst[3] = ip6[3];
	return MB_AF_INET6;
}

/* Loopback: 127.0.0.0/8 or ::1. */
static __always_inline int mb_addr_is_loopback(const __u32 ip[4], __u8 family)
{
	if (family == MB_AF_INET)
		return (bpf_ntohl(ip[0]) >> 24) == 127;
	return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline int mb_addr_eq(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void mb_ip_copy(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

char _license[] SEC("license") = "Dual BSD/GPL";

#endif /* MB_COMMON_H */
