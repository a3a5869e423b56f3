/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * ABI shared between the kernel programs and user space.
 *
 * Every struct here has a #[repr(C)] mirror in datapath/src/abi.rs with the
 * same field order, explicit padding and a compile-time size assertion; the
 * test `abi_matches_btf` checks the mirrors against the BTF that clang emits
 * for these structs. Change both sides together.
 *
 * Conventions: IPv4 addresses live in ip[0] (network order, ip[1..3] zero);
 * a v4-mapped IPv6 address (::ffff:a.b.c.d) is always normalised to IPv4 so
 * that an AF_INET client and a dual-stack AF_INET6 listener produce matching
 * keys. Ports are in host order.
 */
#ifndef MEMBRANE_ABI_H
#define MEMBRANE_ABI_H

#include <linux/types.h>
#include <linux/bpf.h> /* struct bpf_spin_lock */

#define MB_AF_INET 2
#define MB_AF_INET6 10

/* Key of the sockhash: one established TCP socket, seen from its own side. */
struct mb_sock_key {
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u16 local_port;
	__u16 remote_port;
	__u8 family; /* MB_AF_INET or MB_AF_INET6 after normalisation */
	__u8 pad[3];
};

/* Index of a program's row in the counters array. */
enum mb_prog_index {
	MB_PROG_SOCKOPS = 0,
	MB_PROG_SK_MSG = 1,
	MB_PROG_CONNECT4 = 2,
	MB_PROG_CONNECT6 = 3,
	MB_PROG_GETSOCKOPT = 4,
	MB_PROG_SK_LOOKUP = 5,
	MB_PROG_MAX = 8,
};

/*
 * Per-program counters (one row per program, per CPU; user space sums CPUs).
 *   sockops:    redirected = sockets inserted into the sockhash,
 *               fallbacks  = local sockets left on the plain path (policy
 *                            denied or stale, a learned "splice loses for
 *                            this service" hint, or the update failed),
 *               misses     = established sockets that are not node-local.
 *   sk_msg:     redirected/redirected_bytes = messages spliced to the peer,
 *               fallbacks  = messages passed to TCP by choice,
 *               misses     = peer socket not in the sockhash (plain path).
 *   connect4/6: redirected = connects steered to the proxy,
 *               fallbacks  = connects left alone (proxy's own, excluded),
 *               misses     = capture disabled or not TCP,
 *               refused    = connects failed with EPERM because the
 *                            endpoint's egress policy denies the flow.
 *   getsockopt: redirected = SO_ORIGINAL_DST answered,
 *               misses     = SO_ORIGINAL_DST asked for an unknown socket.
 *   sk_lookup:  redirected = inbound connections handed to the proxy's
 *                            inbound listener,
 *               fallbacks  = connections left alone (loopback, pod to
 *                            itself, the proxy's own ports),
 *               misses     = inbound capture off, not TCP, no listener,
 *               refused    = connections dropped: from outside the pod to
 *                            the outbound capture port, or denied by the
 *                            endpoint's ingress policy.
 */
struct mb_counters {
	__u64 redirected;
	__u64 redirected_bytes;
	__u64 fallbacks;
	__u64 misses;
	__u64 refused; /* connect4/6 and sk_lookup; 0 for the other programs */
};

/* mb_config.flags */
#define MB_CFG_CAPTURE (1U << 0)        /* steer outbound connects to the proxy */
#define MB_CFG_POLICY_ENFORCE (1U << 1) /* decide connects (egress, connect4/6) and incoming connections (ingress, sk_lookup) with mb_policy; splice no pair it denies */
#define MB_CFG_NO_SPLICE (1U << 2)      /* splice no new connection (established ones keep theirs) */
#define MB_CFG_CAPTURE_INBOUND (1U << 3) /* hand inbound connections to the proxy's inbound port */
#define MB_CFG_OUTBOUND_ONLY_LISTED (1U << 4) /* capture only destinations in mb_cap_incl_cidr */
#define MB_CFG_INBOUND_ONLY_LISTED (1U << 5)  /* capture inbound only to ports in mb_cap_in_port */

#define MB_UID_NONE 0xffffffffU

/* The single row of the config array; written by the agent only. */
struct mb_config {
	__u32 flags;
	__u32 policy_revision; /* revision of the policy mb_policy holds; reported in events, never checked */
	__u32 proxy_uid;       /* connects by this uid are the proxy's own; MB_UID_NONE = none */
	__u32 proxy_mark;      /* connects from sockets with this SO_MARK are the proxy's own; 0 = none */
	__u32 capture_ip4;     /* where outbound IPv4 connects go, network order (127.0.0.1) */
	__u16 outbound_port;   /* proxy outbound capture port (15001) */
	__u16 inbound_port;    /* proxy inbound capture port (15006) */
	__u32 hint_ttl_secs;   /* how long a learned plain-path hint holds; 0 = 600 */
	__u32 pod_identity;    /* identity of the pod owning the cgroup: the source of its connects; 0 = unknown */
};

/* An address and port (original destination, or a socket's source). */
struct mb_addr_port {
	__u32 ip[4];
	__u16 port;
	__u8 family;
	__u8 pad;
};

/*
 * Key of an endpoint's policy map (mb_policy, a hash): identity, direction
 * and protocol exact, the port as an aligned block of ports: its first
 * (prefixlen - MB_POLICY_PREFIX_STATIC) bits, the others zero, so a port
 * range is a handful of keys (at most 30). A lookup probes the block lengths
 * the policy uses (mb_policy_lens), longest first, which is the answer a
 * longest-prefix match over the same keys gives. dport is in network order.
 */
struct mb_policy_key {
	__u32 prefixlen; /* MB_POLICY_PREFIX_STATIC + port prefix bits (0..16) */
	__u32 identity;  /* the remote's security identity; 0 = any identity */
	__u8 direction;  /* MB_DIR_INGRESS or MB_DIR_EGRESS (of the endpoint) */
	__u8 proto;      /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u16 dport;     /* the block's first port, network order */
};

/* identity, direction and proto: the bits every key matches in full. */
#define MB_POLICY_PREFIX_STATIC 48
#define MB_POLICY_PREFIX_FULL (MB_POLICY_PREFIX_STATIC + 16)

#define MB_DIR_INGRESS 0
#define MB_DIR_EGRESS 1

#define MB_VERDICT_ALLOW 1
#define MB_VERDICT_DENY 2
#define MB_VERDICT_REDIRECT 3 /* allowed at L3/L4; the sidecar decides L7 */

struct mb_policy_value {
	/* Never taken by a program: its presence lets the agent change a
	 * verdict in place (BPF_F_LOCK), where a plain hash update relinks the
	 * entry and a concurrent lookup can miss the key altogether. */
	struct bpf_spin_lock lock;
	__u8 verdict; /* MB_VERDICT_* */
	__u8 pad[3];
};

/*
 * Row 0 of mb_policy_lens: which port block lengths the endpoint's policy
 * uses, per class of key, so a lookup probes only those. Index
 * MB_POLICY_LENS_IDX(direction, any): any = 1 for identity-0 keys. Bit n set
 * = some key of that class has n port bits (0..16).
 */
struct mb_policy_lens {
	__u32 bits[4];
};
#define MB_POLICY_LENS_IDX(direction, any) ((((direction) & 1) << 1) | ((any) ? 1 : 0))

/* Security identities with a fixed meaning (as Cilium numbers them). */
#define MB_ID_UNKNOWN 0
#define MB_ID_HOST 1
#define MB_ID_WORLD 2 /* an address the ipcache does not know */
#define MB_ID_REMOTE_NODE 6 /* another node of the cluster (its addresses in the node ipcache) */

/*
 * A service frontend (mb_service: key struct mb_addr_port, the service's
 * address and port) names the set of its backends.
 */
struct mb_svc_value {
	__u32 backend_set; /* key of its backends in mb_backend */
	__u16 count;       /* backends in the set; 0: connects are refused */
	__u16 pad;
};

/* One backend of a set (mb_backend: value struct mb_addr_port). */
struct mb_backend_key {
	__u32 backend_set;
	__u32 slot; /* 0 .. count - 1 */
};

/* An exact address (mb_pod_addr). */
struct mb_ip_key {
	__u32 ip[4];
	__u8 family;
	__u8 pad[3];
};

/*
 * Per-socket send pattern, for the adaptive splice (lib/flow_switch.h).
 * small_run counts this socket's consecutive small sends with nothing
 * received in between and small_bytes their bytes; service_port is the
 * accepting side's port. plain and rx_msgs are only changed with atomic
 * operations.
 */
struct mb_flow_state {
	__u32 small_run;
	__u16 service_port;
	__u8 hinted; /* this flow already marked its service port */
	__u8 kept;   /* switched, and had to wait in the sockhash for spliced bytes */
	__u64 plain;   /* 1: this socket's sends take plain TCP from now on; never cleared */
	__u64 rx_msgs; /* messages the peer redirected into this socket's receive queue */
	__u32 small_bytes;
	__u32 pad;
	__u64 cookie; /* this socket's cookie: its row in mb_sending */
};

/* Index into mb_splice_stats (lib/flow_switch.h). */
enum mb_splice_stat {
	MB_STAT_TO_TCP = 0,    /* sockets whose sends switched from the splice to plain TCP */
	MB_STAT_UNSPLICED = 1, /* of those, sockets taken out of the sockhash (no psock left) */
	MB_STAT_KEPT = 2,      /* of those, sockets that had to wait in it for spliced bytes */
	MB_STAT_MAX = 4,
};

/*
 * LPM-trie key for an address prefix of either family (the ipcache
 * mb_identity, the capture prefixes): the family word is
 * part of the matched data, so prefixlen = 32 + the CIDR's prefix length.
 */
struct mb_cidr_key {
	__u32 prefixlen;
	__u32 family; /* MB_AF_INET or MB_AF_INET6 */
	__u32 ip[4];
};

/*
 * Monitor events: fixed-size records in the mb_events ring buffer
 * (lib/events.h), read by the agent and fanned out to `membrane monitor`.
 * Emitted where a decision is made, once per connection, never per
 * message on the spliced path (sk_msg reports only misses, rate-limited).
 */
#define MB_EVENT_VERSION 1

/* mb_event.type */
#define MB_EVT_POLICY_VERDICT 1 /* L3/L4 decision at connect (enforcement on) */
#define MB_EVT_CAPTURE 2        /* a connection steered to the proxy (out or in) */
#define MB_EVT_TRACE 3          /* splice decision at establish, sk_msg misses */

/* mb_event.reason */
#define MB_RSN_NONE 0
#define MB_RSN_POLICY_ALLOW 1  /* verdict: an ALLOW or REDIRECT entry */
#define MB_RSN_POLICY_DENY 2   /* verdict: a DENY entry */
#define MB_RSN_NO_DECISION 3   /* verdict: no entry for the flow (denied) */
#define MB_RSN_OUTBOUND 4      /* capture: an app's connect to the outbound port */
#define MB_RSN_INBOUND 5       /* capture: a peer's connection to the inbound port */
#define MB_RSN_SPLICED 6       /* trace: socket inserted into the sockhash */
#define MB_RSN_NOT_LOCAL 7     /* trace: not spliced, the peer is not on this node */
#define MB_RSN_SPLICE_POLICY 8 /* trace: not spliced, this side's policy denies the pair */
#define MB_RSN_SPLICE_HINT 9   /* trace: not spliced, small-write hint for the service */
#define MB_RSN_SPLICE_FAIL 10  /* trace: not spliced, the sockhash update failed */
#define MB_RSN_NO_PEER 11      /* trace: sk_msg fell back, the peer is not in the sockhash */
#define MB_RSN_SPLICE_OFF 12   /* trace: not spliced, splicing is switched off */
#define MB_RSN_NO_BACKEND 13   /* verdict: a service address without a usable backend */
#define MB_RSN_PROXY_PORT 14   /* verdict: a peer outside the pod dialled the outbound capture port */

struct mb_event {
	__u8 version;  /* MB_EVENT_VERSION */
	__u8 type;     /* MB_EVT_* */
	__u8 reason;   /* MB_RSN_* */
	__u8 prog;     /* enum mb_prog_index of the emitting program */
	__u8 family;   /* MB_AF_INET or MB_AF_INET6, for every address below */
	__u8 verdict;  /* MB_VERDICT_* for policy verdicts, else 0 */
	__u16 to_port; /* capture: the proxy port the connection went to */
	__u64 ts_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cookie;  /* socket cookie, 0 when unknown */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 revision; /* mb_config.policy_revision at the decision (informational) */
	__u32 count;    /* occurrences folded into this record (rate-limited ones), >= 1 */
	__u32 src_ip[4]; /* source, zero when not bound yet (at connect) */
	__u32 dst_ip[4]; /* the destination the connection asked for */
	__u32 to_ip[4];  /* capture: where it went instead */
	__u16 src_port;
	__u16 dst_port;
	__u8 proto;  /* IPPROTO_* of the flow; 0 when the emitter did not know (version 1 records before the tc programs) */
	__u8 pad[3];
};


/*
 * ---- The packet path (tc) ----
 *
 * Node-wide maps, pinned under the node's pin directory (<root>/node/maps),
 * shared by the tc programs on every pod's host-side veth (bpf_lxc.c), on the
 * VXLAN device (bpf_overlay.c) and on the underlay device (bpf_host.c).
 * Per-endpoint state stays in the endpoint's own pin directory: a pod's tc
 * programs are loaded per endpoint and use its mb_policy, mb_config and
 * mb_events, so the socket hooks and the packet path read the same policy.
 */

/* tc programs, as struct mb_event.prog (after enum mb_prog_index; they have
 * no row in mb_counters: the packet path counts in mb_tc_stats). */
#define MB_PROG_FROM_CONTAINER 8 /* host veth, tc ingress: packets the pod sends */
#define MB_PROG_TO_CONTAINER 9   /* host veth, tc egress: packets to the pod */
#define MB_PROG_FROM_OVERLAY 10  /* VXLAN device, tc ingress: decapsulated packets */
#define MB_PROG_FROM_NETDEV 11   /* underlay device, tc ingress */
#define MB_PROG_TO_NETDEV 12     /* underlay device, tc egress */

/* mb_event.type for the packet path */
#define MB_EVT_DROP 4 /* a packet dropped, with its reason (mb_event.reason) */
/* MB_EVT_TRACE (3) is also emitted by the tc programs: a packet seen at the
 * observation point mb_event.prog (with MB_NODE_F_TRACE only). */

/*
 * Reasons of the packet path, by owner so that parallel work never collides:
 *   20-39 policy and conntrack (bpf_lxc.c, lib/conntrack.h, lib/tc_policy.h),
 *   40-59 service load balancing (lib/lb.h),
 *   60-79 overlay, routing and MTU (lib/encap.h, lib/geneve.h, bpf_overlay.c, bpf_host.c).
 * Each is defined next to the code that drops for it, and named in
 * datapath/src/abi.rs REASONS.
 */

/*
 * Reasons of the overlay's trust in a tunnel packet (lib/encap.h), before
 * the identity it carries is believed:
 */
#define MB_RSN_OVERLAY_UNKNOWN_NODE 74  /* drop: the outer source is no other node's address (node ipcache: not remote-node) */
#define MB_RSN_OVERLAY_SPOOFED_INNER 75 /* drop: from a node, but the inner source is this node's (a pod or the host) or a third node's pod, or the VNI claims host */

/* skb->mark carrying a source security identity from one program to the
 * next on this node (the overlay's decapsulation to the pod's to-container):
 * magic in bits 8-11, identity bits 0-15 in mark bits 16-31, identity bits
 * 16-23 in mark bits 0-7. */
#define MB_MARK_MAGIC_MASK 0x0F00
#define MB_MARK_MAGIC_IDENTITY 0x0F00

/* mb_node_config.overlay */
#define MB_OVERLAY_NATIVE 0 /* no encapsulation: the underlay routes pod CIDRs */
#define MB_OVERLAY_VXLAN 1  /* kernel VXLAN device in collect_md mode, VNI = source identity */
#define MB_OVERLAY_GENEVE 2 /* Geneve built and parsed in BPF, VNI = source identity */

/* mb_node_config.lb_algorithm */
#define MB_LB_RANDOM 0
#define MB_LB_MAGLEV 1

/* mb_node_config.flags */
#define MB_NODE_F_POLICY 1U  /* enforce endpoints' L3/L4 policy on packets */
#define MB_NODE_F_TRACE 2U   /* emit a trace event per packet at each observation point (debug) */

/* The single row of mb_node_config (array); written by the agent only. */
struct mb_node_config {
	__u32 flags;            /* MB_NODE_F_* */
	__u32 node_ip4;         /* this node's underlay IPv4, network order */
	__u32 underlay_ifindex; /* the underlay device (Geneve and NodePort) */
	__u32 overlay_ifindex;  /* the VXLAN collect_md device (vxlan mode), else 0 */
	__u16 underlay_mtu;     /* MTU of the underlay device */
	__u8 overlay;           /* MB_OVERLAY_* */
	__u8 lb_algorithm;      /* MB_LB_* */
	__u8 underlay_mac[6];   /* the underlay device's MAC */
	__u8 pad[2];
};

/*
 * Value of the node-wide ipcache mb_ipcache (LPM trie, key struct
 * mb_cidr_key): the identity of a prefix and, for a prefix inside a remote
 * node's pod CIDR, that node's underlay address. Written by the agent
 * (NPHDS identities joined with the Node resources' pod CIDRs); read by every
 * tc program. A miss is world (2) with no tunnel endpoint.
 */
struct mb_ipcache_value {
	__u32 identity;
	__u32 tunnel_ip4; /* remote node's underlay IPv4, network order; 0 = route natively */
};

/*
 * Value of mb_endpoints (hash, key struct mb_ip_key): a pod of this node by
 * each of its addresses. Written by the agent when it attaches an endpoint;
 * read by the tc programs to deliver to a local pod (redirect to its host
 * veth) and to know a packet's local endpoint.
 */
struct mb_endpoint_value {
	__u32 ifindex;     /* host-side veth, in the node's network namespace */
	__u32 identity;    /* the pod's security identity */
	__u16 endpoint_id; /* the agent's number for the endpoint, unique on the node */
	__u8 mac[6];       /* the pod's interface MAC */
	__u8 node_mac[6];  /* the host-side veth's MAC */
	__u16 pad;
};

/*
 * ---- Policy and conntrack on the pod's host veth (bpf_lxc.c) ----
 */

/* Reasons 20-39 (lib/tc_policy.h, lib/conntrack.h, bpf_lxc.c). Row 0 of
 * mb_tc_stats (MB_RSN_NONE) counts forwarded packets. */
#define MB_RSN_SPOOFED 20          /* drop: source address not the endpoint's own */
#define MB_RSN_TC_POLICY_DENY 21   /* drop: new flow, a DENY entry */
#define MB_RSN_TC_NO_POLICY 22     /* drop: new flow, no entry covers it */
#define MB_RSN_MALFORMED 23        /* drop: headers truncated or inconsistent */
#define MB_RSN_UNSUPPORTED_L3 24   /* drop (policy on): not IPv4, IPv6 or ARP */
#define MB_RSN_UNSUPPORTED_L4 25   /* drop (policy on): not TCP, UDP, SCTP, ICMP, ICMPv6 */
#define MB_RSN_IPV6_EXTHDR 26      /* drop: an IPv6 extension header chain too long to walk */
#define MB_RSN_FRAGMENT 27         /* drop (policy on): a non-first fragment (no ports to decide by) */
#define MB_RSN_CT_NO_FLOW 28       /* drop (policy on): a reply-only packet (echo reply, ICMP error) of no known flow */
#define MB_RSN_CT_CREATE 29        /* drop: the conntrack entry of an allowed flow could not be written */
#define MB_RSN_TC_MAX 256          /* rows of mb_tc_stats: one per reason of any owner */

/* Packets and bytes of one row of mb_tc_stats (per CPU). */
struct mb_tc_stat {
	__u64 packets;
	__u64 bytes;
};

/*
 * The endpoint's own row for its tc programs (mb_lxc, an array of one in
 * the endpoint's pin directory), written by NodeDatapath::attach_endpoint
 * before the programs are attached.
 */
struct mb_lxc_config {
	__u32 ifindex;     /* the host-side veth */
	__u32 identity;    /* the pod's security identity */
	__u16 endpoint_id; /* mb_endpoint_value.endpoint_id of the pod's addresses */
	__u16 pad;
	__u32 ip4;         /* one of its IPv4 addresses (network order), 0 = none: a
			    * packet from it needs no mb_endpoints lookup */
};

/* Conntrack key: a flow as its first packet went (initiator -> responder),
 * scoped to one endpoint and its direction, so that the two endpoints of a
 * pod-to-pod flow on one node each keep and decide their own entry. ICMP
 * echo: src_port = identifier, dst_port = 0 (a reply is the reverse). */
struct mb_ct_key {
	__u32 src_ip[4];
	__u32 dst_ip[4];
	__u16 src_port;    /* host order */
	__u16 dst_port;    /* host order */
	__u16 endpoint_id; /* the endpoint whose policy allowed the flow */
	__u8 proto;        /* IPPROTO_* */
	__u8 family;       /* MB_AF_INET or MB_AF_INET6 */
	__u8 dir;          /* MB_DIR_EGRESS: the pod opened it; MB_DIR_INGRESS: a peer did */
	__u8 pad[3];
};

/* mb_ct_value.state */
#define MB_CT_NEW 0         /* TCP: SYN seen, no reply yet; other protocols: no reply yet */
#define MB_CT_ESTABLISHED 1 /* TCP: both directions seen and an ACK without SYN; others: a reply seen */
#define MB_CT_CLOSING 2     /* TCP: FIN in both directions, or RST */

/* mb_ct_value.flags */
#define MB_CT_F_SEEN_REPLY 1U
#define MB_CT_F_FIN_FWD 2U
#define MB_CT_F_FIN_REV 4U
#define MB_CT_F_RST 8U
/* A reply through from-container asked mb_lb_rev once whether this flow's
 * replies are translated there (hairpin, NodePort to a local backend)... */
#define MB_CT_F_LB_CHECKED 16U
/* ... and they are: every reply asks it again. */
#define MB_CT_F_LB_REPLY 32U

/* Lifetimes, seconds (Cilium's defaults). */
#define MB_CT_LIFETIME_TCP_SYN 60
#define MB_CT_LIFETIME_TCP_EST 21600
#define MB_CT_LIFETIME_CLOSING 10
#define MB_CT_LIFETIME_NONTCP 60

struct mb_ct_value {
	__u64 expires_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_coarse_ns); later lookups treat the entry as gone */
	__u64 packets;    /* both directions */
	__u64 bytes;
	__u32 identity;   /* the remote's identity when the flow was decided */
	__u8 state;       /* MB_CT_* */
	__u8 flags;       /* MB_CT_F_* */
	__u8 verdict;     /* MB_VERDICT_* that allowed it; 0 = policy not enforced then */
	__u8 pad;
	/* A pod's egress entry of a flow the tc load balancer translated to a
	 * backend: the frontend's reverse NAT id (mb_lb_rnat), the source its
	 * replies get back in to-container; 0 = not translated. Set by every
	 * forward packet, so a tuple reused straight to the backend clears it. */
	__u32 rev_nat_id;
	__u32 pad2;
};

#endif /* MEMBRANE_ABI_H */
