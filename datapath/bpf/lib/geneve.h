/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Geneve (RFC 8926) built and parsed in BPF: this kernel has no geneve
 * module, so the node encapsulates in from-container and decapsulates on
 * the underlay device's tc ingress (bpf_host.c). Owns no maps.
 *
 * On the wire: outer Ethernet | IPv4 (DF, node_ip4 -> the remote node) |
 * UDP (source port from the inner flow's hash, destination 6081, checksum
 * 0 as IPv4 allows) | Geneve (version 0, no options, protocol 0x6558
 * "Transparent Ethernet Bridging", VNI = the source pod's security
 * identity) | the pod's Ethernet frame as it left the pod. 50 bytes over
 * the inner IP packet, as VXLAN.
 */
#ifndef MB_GENEVE_H
#define MB_GENEVE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>

#include "common.h"

/* A function of the overlay with a stack frame of its own (not inlined: the
 * callers' frames and the overlay's headers would not fit 512 bytes
 * together); `unused` because a program may not need every one. */
#define MB_SUBPROG static __noinline __attribute__((unused))

/* Drop reasons of the Geneve decapsulation (the overlay's range is 60-79). */
#define MB_RSN_GENEVE_SHORT 60    /* UDP to 6081 too short for a Geneve header and a frame */
#define MB_RSN_GENEVE_VERSION 61  /* Geneve version not 0 */
#define MB_RSN_GENEVE_OPTLEN 62   /* options run past the packet */
#define MB_RSN_GENEVE_PROTO 63    /* inner protocol not Ethernet (0x6558) */
#define MB_RSN_GENEVE_CONTROL 64  /* a control (O) packet or critical options: nothing here reads them */

#define MB_GENEVE_PORT 6081
#define MB_GENEVE_PROTO_ETH 0x6558
/* Outer IPv4 + UDP + Geneve (no options) + inner Ethernet. */
#define MB_GENEVE_OVERHEAD (20 + 8 + 8 + ETH_HLEN)

/* The fixed Geneve header; options (opt_len words of 4 bytes) follow it. */
struct mb_genevehdr {
	__u8 ver_optlen; /* version (2 bits, 0) | option length in 4-byte words (6 bits) */
	__u8 flags;      /* O (control packet) 0x80, C (critical options present) 0x40 */
	__be16 proto;    /* the inner frame's EtherType: 0x6558 = Ethernet */
	__u8 vni[3];     /* the source pod's security identity */
	__u8 rsvd;
};

#define MB_GENEVE_F_OAM 0x80
#define MB_GENEVE_F_CRITICAL 0x40

/* Outer headers written in front of the pod's frame, in one store. */
struct mb_geneve_outer {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct mb_genevehdr gnv;
	struct ethhdr inner;
} __attribute__((packed));

_Static_assert(sizeof(struct mb_geneve_outer) == ETH_HLEN + MB_GENEVE_OVERHEAD,
	       "Geneve outer headers");

static __always_inline __u16 mb_csum_fold(__u64 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/*
 * The UDP source port of a flow's tunnel packets: spread over the ephemeral
 * range by the inner flow's hash (as the kernel's tunnels do), so the
 * underlay's ECMP and RSS keep a flow together and spread flows apart.
 */
static __always_inline __u16 mb_tunnel_sport(__u32 hash)
{
	return 32768 + (__u16)(((__u64)hash * (61000 - 32768)) >> 32);
}

/*
 * Encapsulate the frame in skb (from a pod: Ethernet + IPv4/IPv6) toward
 * remote_ip4 with `vni` and hand it to the underlay device of `cfg` with
 * the kernel choosing the next hop's MAC (bpf_redirect_neigh: FIB lookup on
 * the outer destination, neighbour resolution). Returns the redirect
 * verdict, or -1 when the room could not be made (the caller drops and
 * counts). Not inlined: its headers get a stack frame of their own.
 */
MB_SUBPROG long mb_geneve_encap(struct __sk_buff *skb, const struct mb_node_config *cfg,
				       __u32 remote_ip4, __u32 vni)
{
	struct mb_geneve_outer o = {};
	struct iphdr ip = {};
	__u64 flags;
	__u32 hash;
	__s64 sum;

	if (!skb || !cfg)
		return -1;
	/* Before the room is made: the hash of the inner flow. */
	hash = bpf_get_hash_recalc(skb);
	if (bpf_skb_load_bytes(skb, 0, &o.inner, ETH_HLEN) < 0)
		return -1;

	/* FIXED_GSO: a GSO packet keeps its segment size, which the caller
	 * checked leaves room for these headers (lib/mtu.h, mb_too_big);
	 * without it the kernel would cut every segment 50 bytes short. */
	flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
		BPF_F_ADJ_ROOM_ENCAP_L2_ETH | BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN) |
		BPF_F_ADJ_ROOM_FIXED_GSO;
	if (bpf_skb_adjust_room(skb, MB_GENEVE_OVERHEAD, BPF_ADJ_ROOM_MAC, flags) < 0)
		return -1;

	ip.version = 4;
	ip.ihl = 5;
	ip.tot_len = bpf_htons(skb->len - ETH_HLEN);
	/* DF: an oversized packet was refused before (lib/mtu.h), so the
	 * outer packet is never fragmented on the way. */
	ip.frag_off = bpf_htons(0x4000);
	ip.ttl = 64;
	ip.protocol = IPPROTO_UDP;
	ip.saddr = cfg->node_ip4;
	ip.daddr = remote_ip4;
	sum = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0);
	if (sum < 0)
		return -1;
	ip.check = mb_csum_fold((__u64)sum);

	__builtin_memcpy(o.eth.h_source, cfg->underlay_mac, ETH_ALEN);
	o.eth.h_proto = bpf_htons(ETH_P_IP);
	o.ip = ip;
	o.udp.source = bpf_htons(mb_tunnel_sport(hash));
	o.udp.dest = bpf_htons(MB_GENEVE_PORT);
	o.udp.len = bpf_htons(skb->len - ETH_HLEN - sizeof(struct iphdr));
	o.udp.check = 0;
	o.gnv.proto = bpf_htons(MB_GENEVE_PROTO_ETH);
	o.gnv.vni[0] = vni >> 16;
	o.gnv.vni[1] = vni >> 8;
	o.gnv.vni[2] = vni;
	if (bpf_skb_store_bytes(skb, 0, &o, sizeof(o), 0) < 0)
		return -1;
	return bpf_redirect_neigh(cfg->underlay_ifindex, 0, 0, 0);
}

/*
 * Validate the Geneve packet whose UDP header is at `l4` (the caller has
 * checked: IPv4 to this node, UDP, destination port 6081). On success
 * returns 0 with the VNI and the offset of the inner Ethernet header; else
 * the drop reason.
 */
static __always_inline int mb_geneve_parse(struct __sk_buff *skb, __u32 l4, __u32 *vni,
					   __u32 *inner)
{
	struct mb_genevehdr g;
	struct udphdr udp;
	__u32 optlen, end;

	if (bpf_skb_load_bytes(skb, l4, &udp, sizeof(udp)) < 0 ||
	    bpf_skb_load_bytes(skb, l4 + sizeof(udp), &g, sizeof(g)) < 0)
		return MB_RSN_GENEVE_SHORT;
	/* The UDP length bounds the datagram (a frame may carry padding). */
	end = l4 + bpf_ntohs(udp.len);
	if (end > skb->len || bpf_ntohs(udp.len) < sizeof(udp) + sizeof(g) + ETH_HLEN)
		return MB_RSN_GENEVE_SHORT;
	if (g.ver_optlen >> 6)
		return MB_RSN_GENEVE_VERSION;
	optlen = (g.ver_optlen & 0x3f) * 4;
	if (l4 + sizeof(udp) + sizeof(g) + optlen + ETH_HLEN > end)
		return MB_RSN_GENEVE_OPTLEN;
	if (g.proto != bpf_htons(MB_GENEVE_PROTO_ETH))
		return MB_RSN_GENEVE_PROTO;
	if (g.flags & (MB_GENEVE_F_OAM | MB_GENEVE_F_CRITICAL))
		return MB_RSN_GENEVE_CONTROL;
	*vni = ((__u32)g.vni[0] << 16) | ((__u32)g.vni[1] << 8) | g.vni[2];
	*inner = l4 + sizeof(udp) + sizeof(g) + optlen;
	return 0;
}

#endif /* MB_GENEVE_H */
