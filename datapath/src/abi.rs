//! `#[repr(C)]` mirrors of `bpf/include/membrane_abi.h`.
//!
//! Same field order as the C structs, padding spelled out, sizes asserted at
//! compile time; the `abi_matches_btf` test compares them with the BTF that
//! clang emitted into the embedded objects. This is the only module allowed
//! to use `unsafe`: aya's `Pod` marker is an unsafe trait.
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod lb;
mod prefilter;
mod tc;
pub use lb::*;
pub use prefilter::*;
pub use tc::*;

/// `MB_AF_INET`: the address is IPv4, in `ip[0]`.
pub const AF_INET: u8 = 2;
/// `MB_AF_INET6`: the address is native IPv6.
pub const AF_INET6: u8 = 10;

/// Rows of the counters array (`enum mb_prog_index`).
pub const PROG_SOCKOPS: u32 = 0;
/// sk_msg row.
pub const PROG_SK_MSG: u32 = 1;
/// cgroup connect4 row.
pub const PROG_CONNECT4: u32 = 2;
/// cgroup connect6 row.
pub const PROG_CONNECT6: u32 = 3;
/// cgroup getsockopt row.
pub const PROG_GETSOCKOPT: u32 = 4;
/// sk_lookup (inbound capture) row.
pub const PROG_SK_LOOKUP: u32 = 5;
/// Number of rows (`MB_PROG_MAX`).
pub const PROG_MAX: u32 = 8;

/// `MB_CFG_CAPTURE`: steer outbound connects to the proxy.
pub const CFG_CAPTURE: u32 = 1 << 0;
/// `MB_CFG_POLICY_ENFORCE`: refuse connects and splice no pair without a current ALLOW.
pub const CFG_POLICY_ENFORCE: u32 = 1 << 1;
/// `MB_CFG_NO_SPLICE`: splice no new connection.
pub const CFG_NO_SPLICE: u32 = 1 << 2;
/// `MB_CFG_CAPTURE_INBOUND`: hand inbound connections to the proxy's inbound port.
pub const CFG_CAPTURE_INBOUND: u32 = 1 << 3;
/// `MB_CFG_OUTBOUND_ONLY_LISTED`: capture only destinations in `mb_cap_incl_cidr`.
pub const CFG_OUTBOUND_ONLY_LISTED: u32 = 1 << 4;
/// `MB_CFG_INBOUND_ONLY_LISTED`: capture inbound only to ports in `mb_cap_in_port`.
pub const CFG_INBOUND_ONLY_LISTED: u32 = 1 << 5;
/// `MB_UID_NONE`: no proxy uid configured.
pub const UID_NONE: u32 = u32::MAX;
/// `MB_VERDICT_ALLOW`.
pub const VERDICT_ALLOW: u8 = 1;
/// `MB_VERDICT_DENY`.
pub const VERDICT_DENY: u8 = 2;
/// `MB_VERDICT_REDIRECT`: allowed at L3/L4, the sidecar decides L7.
pub const VERDICT_REDIRECT: u8 = 3;
/// `MB_DIR_INGRESS`.
pub const DIR_INGRESS: u8 = 0;
/// `MB_DIR_EGRESS`.
pub const DIR_EGRESS: u8 = 1;
/// `MB_POLICY_PREFIX_STATIC`: the `mb_policy` key bits always matched in
/// full (identity, direction, protocol); the port's prefix bits follow.
pub const POLICY_PREFIX_STATIC: u32 = 48;
/// `MB_ID_WORLD`: the identity of an address the ipcache does not know.
pub const ID_WORLD: u32 = 2;

/// `MB_EVENT_VERSION`: the record layout this build reads.
pub const EVENT_VERSION: u8 = 1;
/// `MB_EVT_POLICY_VERDICT`.
pub const EVT_POLICY_VERDICT: u8 = 1;
/// `MB_EVT_CAPTURE`.
pub const EVT_CAPTURE: u8 = 2;
/// `MB_EVT_TRACE`.
pub const EVT_TRACE: u8 = 3;

/// `MB_RSN_*`: why an event happened, by value.
pub const REASONS: [(u8, &str); 47] = [
    (0, "none"),
    (1, "policy-allowed"),
    (2, "policy-denied"),
    (3, "no-decision"),
    (4, "outbound"),
    (5, "inbound"),
    (6, "spliced"),
    (7, "not-local"),
    (8, "splice-policy-denied"),
    (9, "splice-hint-plain"),
    (10, "sockhash-update-failed"),
    (11, "no-peer"),
    (12, "splice-off"),
    (13, "no-backend"),
    (14, "proxy-port"),
    (20, "spoofed-source"),
    (21, "policy-deny-packet"),
    (22, "no-policy-packet"),
    (23, "malformed-packet"),
    (24, "unsupported-l3"),
    (25, "unsupported-l4"),
    (26, "ipv6-ext-headers"),
    (27, "fragment"),
    (28, "ct-no-flow"),
    (29, "ct-create-failed"),
    (40, "lb-no-backend"),
    (41, "lb-backend-gone"),
    (42, "lb-no-snat-port"),
    (43, "lb-no-route"),
    (44, "lb-rewrite-failed"),
    (60, "geneve-short"),
    (61, "geneve-version"),
    (62, "geneve-options-length"),
    (63, "geneve-protocol"),
    (64, "geneve-control"),
    (65, "no-local-endpoint"),
    (66, "overlay-inner-malformed"),
    (67, "decap-failed"),
    (68, "overlay-no-tunnel-key"),
    (70, "frag-needed"),
    (71, "too-big"),
    (72, "encap-failed"),
    (73, "no-overlay-device"),
    (74, "overlay-unknown-node"),
    (75, "overlay-spoofed-inner"),
    (80, "prefilter-denied"),
    (81, "prefilter-malformed"),
];

/// `struct mb_event`: one monitor record from the `mb_events` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbEvent {
    /// `EVENT_VERSION`.
    pub version: u8,
    /// `EVT_*`.
    pub r#type: u8,
    /// `MB_RSN_*` (see [`REASONS`]).
    pub reason: u8,
    /// Row index of the emitting program (`PROG_*`).
    pub prog: u8,
    /// `AF_INET` or `AF_INET6`, for every address in the record.
    pub family: u8,
    /// `VERDICT_*` for policy verdicts, else 0.
    pub verdict: u8,
    /// Capture: the proxy port the connection went to.
    pub to_port: u16,
    /// `CLOCK_MONOTONIC` ns.
    pub ts_ns: u64,
    /// Socket cookie, 0 when unknown.
    pub cookie: u64,
    /// Source identity.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// Policy revision at the decision.
    pub revision: u32,
    /// Occurrences folded into this record (rate-limited ones), >= 1.
    pub count: u32,
    /// Source address (zero when not bound yet).
    pub src_ip: [u32; 4],
    /// The destination the connection asked for.
    pub dst_ip: [u32; 4],
    /// Capture: where it went instead.
    pub to_ip: [u32; 4],
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// `IPPROTO_*` of the flow; 0 when the emitter did not know.
    pub proto: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<MbEvent>() == 96);

impl MbEvent {
    /// Decode a ring-buffer record; `None` when it is too short or of
    /// another layout version.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() || b[0] != EVENT_VERSION {
            return None;
        }
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        // In bounds: the length was checked above.
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let ip_at = |o: usize| [u32_at(o), u32_at(o + 4), u32_at(o + 8), u32_at(o + 12)];
        Some(Self {
            version: b[0],
            r#type: b[1],
            reason: b[2],
            prog: b[3],
            family: b[4],
            verdict: b[5],
            to_port: u16_at(6),
            ts_ns: u64_at(8),
            cookie: u64_at(16),
            src_identity: u32_at(24),
            dst_identity: u32_at(28),
            revision: u32_at(32),
            count: u32_at(36),
            src_ip: ip_at(40),
            dst_ip: ip_at(56),
            to_ip: ip_at(72),
            src_port: u16_at(88),
            dst_port: u16_at(90),
            proto: b[92],
            pad: [b[93], b[94], b[95]],
        })
    }
}

/// `MB_PROG_FROM_CONTAINER`: tc ingress of a pod's host veth (packets the pod sends).
pub const PROG_FROM_CONTAINER: u8 = 8;
/// `MB_PROG_TO_CONTAINER`: tc egress of a pod's host veth (packets to the pod).
pub const PROG_TO_CONTAINER: u8 = 9;
/// `MB_PROG_FROM_OVERLAY`: tc ingress of the VXLAN device.
pub const PROG_FROM_OVERLAY: u8 = 10;
/// `MB_PROG_FROM_NETDEV`: tc ingress of the underlay device.
pub const PROG_FROM_NETDEV: u8 = 11;
/// `MB_PROG_TO_NETDEV`: tc egress of the underlay device.
pub const PROG_TO_NETDEV: u8 = 12;
/// `MB_EVT_DROP`: a packet dropped by the packet path, with its reason.
pub const EVT_DROP: u8 = 4;
/// `MB_MARK_MAGIC_MASK` / `MB_MARK_MAGIC_IDENTITY`: `skb->mark` carries a source identity.
pub const MARK_MAGIC_MASK: u32 = 0x0F00;
/// See [`MARK_MAGIC_MASK`].
pub const MARK_MAGIC_IDENTITY: u32 = 0x0F00;
/// `MB_OVERLAY_NATIVE`: no encapsulation.
pub const OVERLAY_NATIVE: u8 = 0;
/// `MB_OVERLAY_VXLAN`: kernel VXLAN collect_md device, VNI = source identity.
pub const OVERLAY_VXLAN: u8 = 1;
/// `MB_OVERLAY_GENEVE`: Geneve in BPF, VNI = source identity.
pub const OVERLAY_GENEVE: u8 = 2;
/// `MB_LB_RANDOM`.
pub const LB_RANDOM: u8 = 0;
/// `MB_LB_MAGLEV`.
pub const LB_MAGLEV: u8 = 1;
/// `MB_NODE_F_POLICY`: enforce endpoints' L3/L4 policy on packets.
pub const NODE_F_POLICY: u32 = 1;
/// `MB_NODE_F_TRACE`: a trace event per packet per observation point.
pub const NODE_F_TRACE: u32 = 2;

/// `struct mb_node_config`: the single row of the node's `mb_node_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbNodeConfig {
    /// `NODE_F_*`.
    pub flags: u32,
    /// This node's underlay IPv4, network order.
    pub node_ip4: u32,
    /// The underlay device.
    pub underlay_ifindex: u32,
    /// The VXLAN collect_md device (vxlan mode), else 0.
    pub overlay_ifindex: u32,
    /// MTU of the underlay device.
    pub underlay_mtu: u16,
    /// `OVERLAY_*`.
    pub overlay: u8,
    /// `LB_*`.
    pub lb_algorithm: u8,
    /// The underlay device's MAC.
    pub underlay_mac: [u8; 6],
    /// Explicit padding, zero.
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<MbNodeConfig>() == 28);

/// `struct mb_ipcache_value`: a prefix's identity and tunnel endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbIpcacheValue {
    /// Security identity.
    pub identity: u32,
    /// Remote node's underlay IPv4, network order; 0 = route natively.
    pub tunnel_ip4: u32,
}
const _: () = assert!(size_of::<MbIpcacheValue>() == 8);

/// `struct mb_endpoint_value`: a local pod, by each of its addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbEndpointValue {
    /// Host-side veth ifindex (node namespace).
    pub ifindex: u32,
    /// The pod's security identity.
    pub identity: u32,
    /// The agent's endpoint number, unique on the node.
    pub endpoint_id: u16,
    /// The pod's interface MAC.
    pub mac: [u8; 6],
    /// The host-side veth's MAC.
    pub node_mac: [u8; 6],
    /// Explicit padding, zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<MbEndpointValue>() == 24);

/// `struct mb_sock_key`: a sockhash key, the socket's own view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MbSockKey {
    /// Local address (network order words; IPv4 in `[0]`).
    pub local_ip: [u32; 4],
    /// Remote address.
    pub remote_ip: [u32; 4],
    /// Local port, host order.
    pub local_port: u16,
    /// Remote port, host order.
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<MbSockKey>() == 40);

/// `struct mb_counters`: one program's counters (one CPU, or summed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbCounters {
    /// Messages spliced / sockets inserted / connects steered / answers given.
    pub redirected: u64,
    /// Bytes spliced (sk_msg only).
    pub redirected_bytes: u64,
    /// Left on the plain path by choice or policy.
    pub fallbacks: u64,
    /// Nothing to do: peer not found, not local, unknown socket.
    pub misses: u64,
    /// Connects refused with EPERM by the egress policy (connect4/6), connections
    /// dropped by the ingress policy or for the outbound port (sk_lookup).
    pub refused: u64,
}
const _: () = assert!(size_of::<MbCounters>() == 40);

/// `struct mb_config`: the single row of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbConfig {
    /// `CFG_*` flags.
    pub flags: u32,
    /// Revision of the policy `mb_policy` holds (reported in events, never checked).
    pub policy_revision: u32,
    /// The proxy's uid, or `UID_NONE`.
    pub proxy_uid: u32,
    /// The proxy's SO_MARK, or 0.
    pub proxy_mark: u32,
    /// Capture address for IPv4, network order as stored in memory.
    pub capture_ip4: u32,
    /// Outbound capture port, host order.
    pub outbound_port: u16,
    /// Inbound capture port, host order.
    pub inbound_port: u16,
    /// How long a learned plain-path hint holds, seconds; 0 = 600.
    pub hint_ttl_secs: u32,
    /// Identity of the pod that owns the cgroup (source of its connects); 0 = unknown.
    pub pod_identity: u32,
}
const _: () = assert!(size_of::<MbConfig>() == 32);

/// `struct mb_addr_port`: an address and a host-order port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbAddrPort {
    /// Address words (IPv4 in `[0]`).
    pub ip: [u32; 4],
    /// Port, host order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: u8,
}
const _: () = assert!(size_of::<MbAddrPort>() == 20);

/// `struct mb_svc_value`: a service frontend's backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbSvcValue {
    /// Key of its backends in `mb_backend`.
    pub backend_set: u32,
    /// Backends in the set; 0 refuses connects.
    pub count: u16,
    /// Explicit padding, zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<MbSvcValue>() == 8);

/// `struct mb_backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbBackendKey {
    /// The set.
    pub backend_set: u32,
    /// `0 .. count`.
    pub slot: u32,
}
const _: () = assert!(size_of::<MbBackendKey>() == 8);

/// `struct mb_policy_key`: a key of an endpoint's policy map (a hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbPolicyKey {
    /// `POLICY_PREFIX_STATIC` + the port block's prefix bits (0..=16).
    pub prefixlen: u32,
    /// The remote's identity; 0 = any.
    pub identity: u32,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u8,
    /// IP protocol number.
    pub proto: u8,
    /// The block's first port (bits past the prefix zero), network order.
    pub dport: u16,
}
const _: () = assert!(size_of::<MbPolicyKey>() == 12);

/// `struct mb_policy_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbPolicyValue {
    /// `struct bpf_spin_lock`: zero; the kernel owns it (it lets the agent change a
    /// verdict in place with `BPF_F_LOCK`).
    pub lock: u32,
    /// `VERDICT_ALLOW`, `VERDICT_DENY` or `VERDICT_REDIRECT`.
    pub verdict: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<MbPolicyValue>() == 8);

/// `struct mb_policy_lens`: row 0 of `mb_policy_lens`, the port block lengths the
/// policy's keys use per class ([`policy_lens_idx`]); bit n = some key has n port bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbPolicyLens {
    /// Indexed by [`policy_lens_idx`].
    pub bits: [u32; 4],
}
const _: () = assert!(size_of::<MbPolicyLens>() == 16);

/// `MB_POLICY_LENS_IDX`: the row index of (direction, any identity) in
/// [`MbPolicyLens::bits`].
pub const fn policy_lens_idx(direction: u8, any: bool) -> usize {
    (((direction & 1) as usize) << 1) | any as usize
}

/// `BPF_F_LOCK`: a map update that changes an existing element's value in place.
pub const BPF_F_LOCK: u64 = 4;

/// `struct mb_ip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbIpKey {
    /// Address words (IPv4 in `[0]`).
    pub ip: [u32; 4],
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<MbIpKey>() == 20);

/// `struct mb_flow_state`: a spliced socket's send pattern.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbFlowState {
    /// Consecutive small sends with nothing received in between.
    pub small_run: u32,
    /// The accepting side's port, host order.
    pub service_port: u16,
    /// This flow already marked its service port.
    pub hinted: u8,
    /// Switched, and had to wait in the sockhash for spliced bytes.
    pub kept: u8,
    /// 1 once this socket's sends take plain TCP (never cleared).
    pub plain: u64,
    /// Messages the peer redirected into this socket's receive queue.
    pub rx_msgs: u64,
    /// Bytes of the current run of small sends.
    pub small_bytes: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// This socket's cookie (its row in `mb_sending`).
    pub cookie: u64,
}
const _: () = assert!(size_of::<MbFlowState>() == 40);

/// `enum mb_splice_stat`, rows of `mb_splice_stats`: sockets whose sends
/// switched from the splice to plain TCP.
pub const STAT_TO_TCP: u32 = 0;
/// Sockets taken out of the sockhash after switching to plain TCP.
pub const STAT_UNSPLICED: u32 = 1;
/// Sockets that had to wait in the sockhash after switching (spliced bytes unread or on their way).
pub const STAT_KEPT: u32 = 2;

/// `struct mb_cidr_key`: an LPM-trie key for a prefix of either family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbCidrKey {
    /// 32 (the family word) + the prefix length.
    pub prefixlen: u32,
    /// `AF_INET` or `AF_INET6`, widened.
    pub family: u32,
    /// Address words (IPv4 in `[0]`).
    pub ip: [u32; 4],
}
const _: () = assert!(size_of::<MbCidrKey>() == 24);

/// The matched part of [`MbCidrKey`] (everything after `prefixlen`), as
/// aya's `lpm_trie::Key<K>` wants it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbCidrData {
    /// `AF_INET` or `AF_INET6`, widened.
    pub family: u32,
    /// Address words (IPv4 in `[0]`).
    pub ip: [u32; 4],
}
const _: () = assert!(size_of::<aya::maps::lpm_trie::Key<MbCidrData>>() == size_of::<MbCidrKey>());

// SAFETY: each type is #[repr(C)], made only of integers and integer arrays,
// with every padding byte an explicit field (sizes asserted above), so any
// bit pattern is valid and no uninitialised byte is ever read or written.
unsafe impl aya::Pod for MbSockKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for MbConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for MbAddrPort {}
// SAFETY: as above.
unsafe impl aya::Pod for MbSvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for MbBackendKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbPolicyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbPolicyValue {}
// SAFETY: as above.
unsafe impl aya::Pod for MbPolicyLens {}
// SAFETY: as above.
unsafe impl aya::Pod for MbIpKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbFlowState {}
// SAFETY: as above.
unsafe impl aya::Pod for MbCidrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbCidrData {}
// SAFETY: as above.
unsafe impl aya::Pod for MbEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for MbNodeConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for MbIpcacheValue {}
// SAFETY: as above.
unsafe impl aya::Pod for MbEndpointValue {}

/// Encode an address the way the kernel side normalises it: IPv4 and
/// v4-mapped IPv6 as IPv4 in word 0, native IPv6 in all four words. Words
/// hold the address bytes in network order, as the kernel stores them.
pub fn encode_ip(ip: IpAddr) -> ([u32; 4], u8) {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], AF_INET6)
        }
    }
}

/// Decode an address encoded by [`encode_ip`] (or by the kernel programs).
pub fn decode_ip(ip: [u32; 4], family: u8) -> IpAddr {
    if family == AF_INET {
        return IpAddr::V4(Ipv4Addr::from(ip[0].to_ne_bytes()));
    }
    let mut o = [0u8; 16];
    for (i, w) in ip.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_normalises_to_v4() {
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let plain: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(encode_ip(mapped), encode_ip(plain));
        let (w, f) = encode_ip(plain);
        assert_eq!(f, AF_INET);
        assert_eq!(decode_ip(w, f), plain);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let (w, f) = encode_ip(v6);
        assert_eq!(f, AF_INET6);
        assert_eq!(decode_ip(w, f), v6);
    }
}
