/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * MTU of the overlay: a pod's packet that would not fit the underlay once
 * encapsulated is refused with an ICMP error built here and sent back to
 * the pod, never dropped in silence. Owns no maps.
 *
 * The agent gives pods an MTU of the underlay's minus the encapsulation's
 * 50 bytes (VXLAN and Geneve alike, IPv4 outer), so this only fires for a
 * misconfigured pod or a sender that ignores its MTU. What is refused:
 *   - IPv4 with DF: ICMP "fragmentation needed" (type 3 code 4) with the
 *     next-hop MTU = underlay MTU - 50, as a router on the path would;
 *   - IPv4 without DF: the same error, so the packet is refused rather
 *     than fragmented here (the node cannot fragment in BPF, and outer
 *     fragments of Geneve would bypass bpf_redirect_neigh's path). Linux
 *     senders learn the path MTU from it even without DF and fragment
 *     themselves from the next packet on;
 *   - IPv6: ICMPv6 "packet too big" (type 2) with the same MTU.
 * Not answered (RFC 1122 / 4443): ICMP errors themselves and non-first
 * fragments; those are dropped with their own reason and event.
 * GSO packets (TCP or UDP from the pod's stack, many segments in one) are
 * checked by the size of their segments, and refused the same way: the
 * error is built in place (bpf_skb_change_tail makes the packet a plain
 * one, no longer GSO).
 */
#ifndef MB_MTU_H
#define MB_MTU_H

#include <stddef.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>

#include "common.h"
#include "geneve.h"

#define MB_RSN_FRAG_NEEDED 70 /* too big for the underlay once encapsulated: ICMP sent back */
#define MB_RSN_TOO_BIG 71     /* too big, and no ICMP may answer it (an error, a fragment) */

/* Encapsulation overhead for an IPv4 underlay, VXLAN and Geneve alike. */
#define MB_ENCAP_OVERHEAD 50
#define MB_DEFAULT_MTU 1500

/* The MTU a pod's IP packet must fit to cross the underlay encapsulated. */
static __always_inline __u32 mb_inner_mtu(__u16 underlay_mtu)
{
	return (underlay_mtu ? underlay_mtu : MB_DEFAULT_MTU) - MB_ENCAP_OVERHEAD;
}

/*
 * A GSO packet's segment: gso_size bytes of payload behind its IP and TCP
 * (or UDP) headers, the IP packet each segment becomes on the wire. GSO of
 * another protocol counts its IP header only (no pod stack makes one).
 * Not inlined: only GSO packets pay for the header reads.
 */
MB_SUBPROG __u32 mb_gso_segment_len(struct __sk_buff *skb)
{
	__u32 l3 = sizeof(struct ipv6hdr), l4 = 0;
	__u8 proto = 0, doff = 0;

	if (!skb)
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return 0;
		l3 = ip.ihl * 4;
		proto = ip.protocol;
	} else if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, nexthdr), &proto,
				      1) < 0) {
		return 0;
	}
	if (proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, ETH_HLEN + l3 + 12, &doff, 1) == 0)
		l4 = (doff >> 4) * 4;
	else if (proto == IPPROTO_UDP)
		l4 = 8;
	return l3 + l4 + skb->gso_size;
}

/*
 * 1 when the frame's IP packet exceeds `inner_mtu`; for a GSO packet, when
 * its segments would (the stack cut them for the pod's MTU, which may not
 * leave room for the tunnel: a pod that keeps the underlay's MTU). Such a
 * packet is refused like a single one (the ICMP quotes its first bytes, the
 * sender's TCP lowers its MSS and sends again): before, VXLAN took it as it
 * was and the underlay's IP output dropped the oversized segments, telling
 * no pod, and Geneve's adjust_room cut smaller segments than the sender
 * knew of.
 */
static __always_inline int mb_too_big(struct __sk_buff *skb, __u32 inner_mtu)
{
	if (skb->gso_size)
		return mb_gso_segment_len(skb) > inner_mtu;
	return skb->len - ETH_HLEN > inner_mtu;
}

/* ICMPv4 (linux/icmp.h would pull in libc headers). */
#define MB_ICMP_DEST_UNREACH 3
#define MB_ICMP_FRAG_NEEDED 4
#define MB_ICMP_SOURCE_QUENCH 4
#define MB_ICMP_REDIRECT 5
#define MB_ICMP_TIME_EXCEEDED 11
#define MB_ICMP_PARAMETERPROB 12

/* An ICMPv4 "destination unreachable" header with the next-hop MTU. */
struct mb_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 unused;
	__be16 mtu;
};

struct mb_icmp4_frame {
	struct ethhdr eth;
	struct iphdr ip;
	struct mb_icmphdr icmp;
} __attribute__((packed));

struct mb_icmp6_frame {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	struct icmp6hdr icmp6;
} __attribute__((packed));

/* The quoted part of the refused packet: its IPv4 header (20-60) and 8 bytes. */
#define MB_ICMP4_QUOTE_MAX 68
/* IPv6: the fixed header and 8 bytes (enough for the sender's socket lookup). */
#define MB_ICMP6_QUOTE 48

/* Swap an Ethernet header's addresses: the answer goes back where the
 * refused frame came from. */
static __always_inline void mb_eth_swap(struct ethhdr *eth)
{
	__u8 mac[ETH_ALEN];

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
}

/* 1 for an ICMP type that reports an error (no error answers an error). */
static __always_inline int mb_icmp4_is_error(__u8 type)
{
	return type == MB_ICMP_DEST_UNREACH || type == MB_ICMP_SOURCE_QUENCH ||
	       type == MB_ICMP_REDIRECT || type == MB_ICMP_TIME_EXCEEDED ||
	       type == MB_ICMP_PARAMETERPROB;
}

/* A checksum over `len` bytes of stack at `p` (4-byte multiple), from `seed`. */
static __always_inline __s64 mb_csum_add(void *p, __u32 len, __s64 seed)
{
	return bpf_csum_diff(0, 0, (__be32 *)p, len, (__wsum)seed);
}

/*
 * Turn the IPv4 frame in skb into the ICMP "fragmentation needed" answer to
 * its sender, in place: Ethernet addresses swapped, from `from_ip4` (0: the
 * refused packet's destination), quoting the refused packet's header and 8
 * bytes. Returns 0 when the frame is ready to go back out of the device it
 * came in on, -1 when no answer may or can be made. Not inlined (nor its
 * IPv6 twin): the quote and headers get a stack frame of their own, kept
 * small (the refused header is read from the quote, checksums are summed in
 * place) because it stacks on the caller's.
 */
MB_SUBPROG int mb_icmp4_too_big(struct __sk_buff *skb, __u32 mtu, __u32 from_ip4)
{
	__u8 quote[MB_ICMP4_QUOTE_MAX];
	struct mb_icmp4_frame f = {};
	struct iphdr *orig = (struct iphdr *)quote;
	__u8 *ip = (__u8 *)&f + ETH_HLEN;
	__u8 *icmp = ip + sizeof(struct iphdr);
	__u32 ihl, qlen;
	__s64 sum;
	__u8 type;

	if (!skb)
		return -1;
	if (bpf_skb_load_bytes(skb, 0, &f.eth, ETH_HLEN) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, quote, MB_ICMP4_QUOTE_MAX) < 0)
		return -1;
	ihl = orig->ihl * 4;
	if (ihl < sizeof(struct iphdr) || orig->version != 4)
		return -1;
	if (orig->frag_off & bpf_htons(0x1fff))
		return -1;
	if (orig->protocol == IPPROTO_ICMP) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, &type, 1) < 0 ||
		    mb_icmp4_is_error(type))
			return -1;
	}
	qlen = (ihl + 8) & 0x7f;
	if (qlen > MB_ICMP4_QUOTE_MAX)
		return -1;

	f.ip.version = 4;
	f.ip.ihl = 5;
	f.ip.tos = 0xc0; /* internetwork control, as the kernel's own ICMP */
	f.ip.tot_len = bpf_htons(sizeof(f.ip) + sizeof(f.icmp) + qlen);
	f.ip.ttl = 64;
	f.ip.protocol = IPPROTO_ICMP;
	f.ip.saddr = from_ip4 ? from_ip4 : orig->daddr;
	f.ip.daddr = orig->saddr;
	sum = mb_csum_add(ip, sizeof(struct iphdr), 0);
	if (sum < 0)
		return -1;
	f.ip.check = mb_csum_fold((__u64)sum);
	f.icmp.type = MB_ICMP_DEST_UNREACH;
	f.icmp.code = MB_ICMP_FRAG_NEEDED;
	f.icmp.mtu = bpf_htons(mtu);
	sum = mb_csum_add(icmp, sizeof(struct mb_icmphdr), 0);
	if (sum < 0)
		return -1;
	sum = mb_csum_add(quote, qlen, sum);
	if (sum < 0)
		return -1;
	f.icmp.checksum = mb_csum_fold((__u64)sum);
	mb_eth_swap(&f.eth);
	f.eth.h_proto = bpf_htons(ETH_P_IP);

	if (bpf_skb_change_tail(skb, sizeof(f) + qlen, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, &f, sizeof(f), 0) < 0 ||
	    bpf_skb_store_bytes(skb, sizeof(f), quote, qlen, 0) < 0)
		return -1;
	return 0;
}

/*
 * The IPv6 twin: ICMPv6 "packet too big" from the refused packet's
 * destination, quoting its fixed header and 8 bytes. The new header's
 * addresses are stored straight from the quote (swapped), and so are the
 * pseudo-header's (the same two addresses: the same sum).
 */
MB_SUBPROG int mb_icmp6_too_big(struct __sk_buff *skb, __u32 mtu)
{
	__u8 quote[MB_ICMP6_QUOTE];
	struct ipv6hdr *orig = (struct ipv6hdr *)quote;
	struct icmp6hdr icmp6 = {};
	struct ethhdr eth;
	__be32 word[2];
	__s64 sum;
	__u8 type;

	if (!skb)
		return -1;
	if (bpf_skb_load_bytes(skb, 0, &eth, ETH_HLEN) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, quote, sizeof(quote)) < 0)
		return -1;
	if (orig->version != 6 || orig->nexthdr == IPPROTO_FRAGMENT)
		return -1;
	if (orig->nexthdr == IPPROTO_ICMPV6) {
		/* Informational messages are 128 and up; errors are answered by nobody. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), &type, 1) < 0 ||
		    type < 128)
			return -1;
	}

	icmp6.icmp6_type = ICMPV6_PKT_TOOBIG;
	icmp6.icmp6_mtu = bpf_htonl(mtu);
	/* Pseudo-header: both addresses, the upper-layer length, next header. */
	word[0] = bpf_htonl(sizeof(icmp6) + sizeof(quote));
	word[1] = bpf_htonl(IPPROTO_ICMPV6);
	sum = mb_csum_add(quote + 8, 32, 0);
	if (sum >= 0)
		sum = mb_csum_add(word, sizeof(word), sum);
	if (sum >= 0)
		sum = mb_csum_add(&icmp6, sizeof(icmp6), sum);
	if (sum >= 0)
		sum = mb_csum_add(quote, sizeof(quote), sum);
	if (sum < 0)
		return -1;
	icmp6.icmp6_cksum = mb_csum_fold((__u64)sum);
	mb_eth_swap(&eth);

	if (bpf_skb_change_tail(skb, sizeof(struct mb_icmp6_frame) + sizeof(quote), 0) < 0)
		return -1;
	/* Version 6, no traffic class or label; payload length; ICMPv6; hop limit 64. */
	word[0] = bpf_htonl(6U << 28);
	word[1] = bpf_htonl(((sizeof(icmp6) + sizeof(quote)) << 16) | (IPPROTO_ICMPV6 << 8) | 64);
	if (bpf_skb_store_bytes(skb, 0, &eth, ETH_HLEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, word, sizeof(word), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 8, quote + 24, 16, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 24, quote + 8, 16, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 40, &icmp6, sizeof(icmp6), 0) < 0 ||
	    bpf_skb_store_bytes(skb, sizeof(struct mb_icmp6_frame), quote, sizeof(quote), 0) < 0)
		return -1;
	return 0;
}

#endif /* MB_MTU_H */
