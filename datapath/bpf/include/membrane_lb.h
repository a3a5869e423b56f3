/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * ABI of service load balancing in tc (lib/lb.h), shared with user space
 * (datapath/src/abi/lb.rs mirrors every struct; the BTF test checks them).
 * Kept apart from membrane_abi.h so that the packet path's owners extend
 * their own files. Same conventions: IPv4 in ip[0], network order; ports in
 * host order.
 */
#ifndef MEMBRANE_LB_H
#define MEMBRANE_LB_H

#include <linux/types.h>

/* The service device's tc egress (bpf_svc.c), as struct mb_event.prog. */
#define MB_PROG_TO_SERVICE 13

/* mb_lb_svc_key.scope */
#define MB_LB_SCOPE_CLUSTER 0  /* ClusterIP: the frontend address and port */
#define MB_LB_SCOPE_NODEPORT 1 /* NodePort: address zero = this node's node_ip4 */

/*
 * Size of a Maglev lookup table (entries, a prime). A table costs
 * MB_LB_MAGLEV_M * 4 bytes = 16 KiB per service, only on a node in Maglev
 * mode (the map does not preallocate): 10,000 services take 160 MiB (a
 * NodePort written with its service shares its table, unless it is
 * external-traffic-local: that one has a table of the local backends). 16381, Cilium's default,
 * would take 640 MiB. Maglev's disruption stays near the ideal while a
 * service has at most M / 100 (~40) backends.
 */
#define MB_LB_MAGLEV_M 4093

/* mb_lb_svc_value.flags */
#define MB_LB_F_EXT_LOCAL 1U /* NodePort: only local backends, the client's address kept */
#define MB_LB_F_MAGLEV 2U    /* select through the Maglev row of slot_set, not at random */

/* Key of mb_lb_svc: one frontend. */
struct mb_lb_svc_key {
	__u32 ip[4];  /* frontend address; zero for NodePort scope */
	__u16 port;   /* frontend port, host order */
	__u8 proto;   /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 scope;   /* MB_LB_SCOPE_* */
	__u8 family;  /* MB_AF_INET or MB_AF_INET6 (tc translates both); NodePort: MB_AF_INET */
	__u8 pad[3];
};

/* Value of mb_lb_svc. */
struct mb_lb_svc_value {
	__u32 count;      /* backend slots; 0 = no backend, packets are dropped */
	__u32 slot_set;   /* key of its slots (mb_lb_slots) and Maglev row (mb_lb_maglev) */
	__u32 rev_nat_id; /* its row in mb_lb_rnat: what replies carry as their source */
	__u16 flags;      /* MB_LB_F_* */
	__u16 node_port;  /* ClusterIP scope: the service's NodePort (0 = none), for read back */
};

/* Key of mb_lb_slots: one slot of a slot set; the value is a backend id. */
struct mb_lb_slot_key {
	__u32 slot_set;
	__u32 slot; /* 0 .. count - 1 */
};

/* Value of mb_lb_backends (key: __u32 backend id, never 0). */
struct mb_lb_backend {
	__u32 ip[4];
	__u16 port;  /* host order */
	__u8 family; /* MB_AF_INET or MB_AF_INET6 */
	__u8 pad;
};

/* Value of mb_lb_maglev (key: __u32 slot set): backend id per table entry. */
struct mb_lb_maglev_row {
	__u32 backend_id[MB_LB_MAGLEV_M];
};

/* A flow's tuple as a packet carries it (mb_lb_flows, mb_lb_rev keys). */
struct mb_lb_tuple {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/* mb_lb_flow.flags and mb_lb_rev.flags */
#define MB_LB_FLOW_SNAT 1U     /* the source was translated too (remote NodePort backend, hairpin) */
#define MB_LB_FLOW_EXTERNAL 2U /* the client is no pod of this node (underlay, host): replies leave by the FIB */

/* Value of mb_lb_flows: where a flow went, remembered for its life. */
struct mb_lb_flow {
	__u32 backend_ip[4]; /* kept here: removing the backend never moves the flow */
	__u16 backend_port;  /* host order */
	__u8 family;
	__u8 flags;          /* MB_LB_FLOW_* */
	__u32 backend_id;
	__u32 rev_nat_id;
	__u32 snat_ip[4];    /* MB_LB_FLOW_SNAT: the new source address */
	__u16 snat_port;     /* ... and port, host order */
	__u16 pad;
};

/* Value of mb_lb_rev: how a reply (keyed by its own tuple) is translated back. */
struct mb_lb_rev {
	__u32 rev_nat_id;   /* the reply's new source: the frontend in mb_lb_rnat */
	__u32 client_ip[4]; /* MB_LB_FLOW_SNAT: the reply's new destination */
	__u16 client_port;  /* ... and port, host order */
	__u8 flags;         /* MB_LB_FLOW_* */
	__u8 pad;
};

#endif /* MEMBRANE_LB_H */
