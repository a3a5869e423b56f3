/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * A socket's psock (the kernel's sockmap state of a socket), read through
 * CO-RE: the loader relocates these fields' offsets from the running
 * kernel's BTF. Owns no maps.
 */
#ifndef MB_PSOCK_H
#define MB_PSOCK_H

#include "common.h"

struct sock___mb {
	void *sk_user_data;
} __attribute__((preserve_access_index));

struct list_head___mb {
	struct list_head___mb *next, *prev;
};

struct sk_psock___mb {
	struct list_head___mb ingress_msg;
} __attribute__((preserve_access_index));

/* sk_user_data tags a psock pointer with these bits (include/net/sock.h). */
#define MB_SK_USER_DATA_PSOCK 4UL
#define MB_SK_USER_DATA_TAGS 7UL

/*
 * The psock's address, or 0 when the socket has none. `sk` is a kernel
 * socket pointer the verifier knows (a BTF struct sock or tcp_sock).
 */
static __always_inline unsigned long mb_psock_of(const void *sk)
{
	unsigned long ud = (unsigned long)((const struct sock___mb *)sk)->sk_user_data;

	return (ud & MB_SK_USER_DATA_PSOCK) ? ud & ~MB_SK_USER_DATA_TAGS : 0;
}

/*
 * 1 when the psock's ingress_msg list is empty (the reader unlinks a
 * message only once it has copied all of it); 0 when not, or unreadable.
 */
static __always_inline int mb_psock_ingress_empty(unsigned long psock)
{
	unsigned long head = psock + __builtin_preserve_field_info(
					     ((struct sk_psock___mb *)0)->ingress_msg,
					     0 /* BPF_FIELD_BYTE_OFFSET */);
	void *next = 0;

	if (bpf_probe_read_kernel(&next, sizeof(next), (void *)head))
		return 0;
	return (unsigned long)next == head;
}

#endif /* MB_PSOCK_H */
