//! Mirrors of the XDP prefilter's ABI (`bpf/include/membrane_prefilter.h`): its
//! observation point, its drop reasons and the rows of `mb_prefilter_stats`. The LPM keys
//! (`struct mb_pf_key4` / `mb_pf_key6`: prefix length, then the address in network order)
//! are aya's `lpm_trie::Key<u32>` and `Key<[u8; 16]>`, the same layout.

/// `MB_PROG_XDP`: the underlay device's XDP hook (`bpf_xdp.c`), as `mb_event.prog`.
pub const PROG_XDP: u8 = 14;
/// `MB_RSN_PREFILTER_DENIED`: the packet's source is in a denied prefix.
pub const RSN_PREFILTER_DENIED: u8 = 80;
/// `MB_RSN_PREFILTER_MALFORMED`: IPv4/IPv6 by its EtherType, but the header is truncated.
pub const RSN_PREFILTER_MALFORMED: u8 = 81;
/// `MB_PF_STAT_PASS`: packets passed to the stack.
pub const PF_STAT_PASS: u32 = 0;
/// `MB_PF_STAT_DENIED4`: IPv4 packets dropped, source denied.
pub const PF_STAT_DENIED4: u32 = 1;
/// `MB_PF_STAT_DENIED6`: IPv6 packets dropped, source denied.
pub const PF_STAT_DENIED6: u32 = 2;
/// `MB_PF_STAT_MALFORMED`: packets dropped, IPv4/IPv6 header truncated.
pub const PF_STAT_MALFORMED: u32 = 3;
/// `MB_PF_STAT_MAX`: rows of `mb_prefilter_stats`.
pub const PF_STAT_MAX: u32 = 4;
/// `max_entries` of `mb_prefilter4` and `mb_prefilter6` each.
pub const PF_MAP_MAX: usize = 65536;
