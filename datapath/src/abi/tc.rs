//! Mirrors of the packet path's policy and conntrack ABI (the "policy and
//! conntrack on the pod's host veth" section of `membrane_abi.h`): reasons
//! 20-39 (and the overlay's trust reasons 74-75), conntrack states, `mb_tc_stats` rows, the endpoint's `mb_lxc` row
//! and the `mb_ct` key and value. A room of [`abi`](super), whose `unsafe`
//! allowance (the `Pod` impls) it shares.

/// `MB_RSN_SPOOFED`: the pod sent from an address that is not its own.
pub const RSN_SPOOFED: u8 = 20;
/// `MB_RSN_TC_POLICY_DENY`: a new flow hit a DENY entry.
pub const RSN_TC_POLICY_DENY: u8 = 21;
/// `MB_RSN_TC_NO_POLICY`: no entry covers a new flow.
pub const RSN_TC_NO_POLICY: u8 = 22;
/// `MB_RSN_MALFORMED`: headers truncated or inconsistent.
pub const RSN_MALFORMED: u8 = 23;
/// `MB_RSN_UNSUPPORTED_L3`: not IPv4, IPv6 or ARP (dropped while enforcing).
pub const RSN_UNSUPPORTED_L3: u8 = 24;
/// `MB_RSN_UNSUPPORTED_L4`: an L4 protocol policy cannot decide (dropped while enforcing).
pub const RSN_UNSUPPORTED_L4: u8 = 25;
/// `MB_RSN_IPV6_EXTHDR`: an IPv6 extension header chain too long to walk.
pub const RSN_IPV6_EXTHDR: u8 = 26;
/// `MB_RSN_FRAGMENT`: a non-first fragment (dropped while enforcing).
pub const RSN_FRAGMENT: u8 = 27;
/// `MB_RSN_CT_NO_FLOW`: a reply-only packet of no known flow (dropped while enforcing).
pub const RSN_CT_NO_FLOW: u8 = 28;
/// `MB_RSN_CT_CREATE`: the conntrack entry of an allowed flow could not be written.
pub const RSN_CT_CREATE: u8 = 29;
/// `MB_RSN_OVERLAY_UNKNOWN_NODE`: a tunnel packet whose outer source is no other node's
/// address (the node ipcache does not say remote-node), whatever identity it carried.
pub const RSN_OVERLAY_UNKNOWN_NODE: u8 = 74;
/// `MB_RSN_OVERLAY_SPOOFED_INNER`: a tunnel packet from a node, but its inner source is
/// this node's (a local pod or the host) or a third node's pod, or its VNI claims host.
pub const RSN_OVERLAY_SPOOFED_INNER: u8 = 75;
/// `MB_RSN_TC_MAX`: rows of `mb_tc_stats`.
pub const RSN_TC_MAX: u32 = 256;

/// `MB_CT_NEW`: TCP SYN seen and no reply yet; other protocols: no reply yet.
pub const CT_NEW: u8 = 0;
/// `MB_CT_ESTABLISHED`.
pub const CT_ESTABLISHED: u8 = 1;
/// `MB_CT_CLOSING`: TCP FIN both ways, or RST.
pub const CT_CLOSING: u8 = 2;
/// `MB_CT_F_SEEN_REPLY`.
pub const CT_F_SEEN_REPLY: u8 = 1;
/// `MB_CT_F_FIN_FWD`.
pub const CT_F_FIN_FWD: u8 = 2;
/// `MB_CT_F_FIN_REV`.
pub const CT_F_FIN_REV: u8 = 4;
/// `MB_CT_F_RST`.
pub const CT_F_RST: u8 = 8;

/// `struct mb_tc_stat`: one row of `mb_tc_stats` on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbTcStat {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}
const _: () = assert!(size_of::<MbTcStat>() == 16);

/// `struct mb_lxc_config`: the endpoint's row for its tc programs (`mb_lxc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbLxcConfig {
    /// The host-side veth.
    pub ifindex: u32,
    /// The pod's security identity.
    pub identity: u32,
    /// The endpoint's number (as in `mb_endpoints`).
    pub endpoint_id: u16,
    /// Explicit padding, zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<MbLxcConfig>() == 12);

/// `struct mb_ct_key`: a flow as its first packet went, scoped to an endpoint and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbCtKey {
    /// Initiator address.
    pub src_ip: [u32; 4],
    /// Responder address.
    pub dst_ip: [u32; 4],
    /// Initiator port (ICMP echo: identifier), host order.
    pub src_port: u16,
    /// Responder port (ICMP echo: 0), host order.
    pub dst_port: u16,
    /// The endpoint whose policy allowed it.
    pub endpoint_id: u16,
    /// IP protocol.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `DIR_EGRESS` (the pod opened it) or `DIR_INGRESS`.
    pub dir: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<MbCtKey>() == 44);

/// `struct mb_ct_value`: a tracked flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbCtValue {
    /// `CLOCK_MONOTONIC` ns after which the entry counts as gone.
    pub expires_ns: u64,
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// The remote's identity when the flow was decided.
    pub identity: u32,
    /// `CT_*`.
    pub state: u8,
    /// `CT_F_*`.
    pub flags: u8,
    /// The verdict that allowed it; 0 = policy not enforced then.
    pub verdict: u8,
    /// Explicit padding, zero.
    pub pad: u8,
}
const _: () = assert!(size_of::<MbCtValue>() == 32);

// SAFETY: each type is #[repr(C)], made only of integers and integer arrays,
// with every padding byte an explicit field (sizes asserted above), so any
// bit pattern is valid and no uninitialised byte is ever read or written.
unsafe impl aya::Pod for MbTcStat {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLxcConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for MbCtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbCtValue {}
