//! Mirrors of `bpf/include/membrane_lb.h`, the ABI of service load balancing
//! in tc (`lib/lb.h`, `lib/nodeport.h`): drop reasons 40-59, frontend scopes
//! and flags, the Maglev table size and the map keys and values. A room of
//! [`abi`](super), whose `unsafe` allowance (the `Pod` impls) it shares.

/// `MB_DROP_LB_NO_BACKEND`: the frontend has no backend (or no local one).
pub const RSN_LB_NO_BACKEND: u8 = 40;
/// `MB_DROP_LB_BACKEND_GONE`: a slot names a backend the map no longer has.
pub const RSN_LB_BACKEND_GONE: u8 = 41;
/// `MB_DROP_LB_NO_SNAT_PORT`: NodePort found no free source port toward the backend.
pub const RSN_LB_NO_SNAT_PORT: u8 = 42;
/// `MB_DROP_LB_NO_ROUTE`: NodePort found no route to the backend or the client.
pub const RSN_LB_NO_ROUTE: u8 = 43;
/// `MB_DROP_LB_REWRITE`: the packet could not be rewritten.
pub const RSN_LB_REWRITE: u8 = 44;

/// `MB_PROG_TO_SERVICE`: tc egress of the node's service device (`bpf_svc.c`).
pub const PROG_TO_SERVICE: u8 = 13;
/// `MB_LB_SCOPE_CLUSTER`: a ClusterIP frontend (address and port).
pub const LB_SCOPE_CLUSTER: u8 = 0;
/// `MB_LB_SCOPE_NODEPORT`: a NodePort frontend (address zero = the node's `node_ip4`).
pub const LB_SCOPE_NODEPORT: u8 = 1;
/// `MB_LB_MAGLEV_M`: entries of a Maglev lookup table (a prime).
pub const LB_MAGLEV_M: usize = 4093;
/// `MB_LB_F_EXT_LOCAL`: NodePort with only local backends, the client's address kept.
pub const LB_F_EXT_LOCAL: u16 = 1;
/// `MB_LB_F_MAGLEV`: select through the slot set's Maglev row.
pub const LB_F_MAGLEV: u16 = 2;
/// `MB_LB_FLOW_SNAT`: the flow's source was translated too.
pub const LB_FLOW_SNAT: u8 = 1;
/// `MB_LB_FLOW_EXTERNAL`: the client is no pod of this node (underlay, host).
pub const LB_FLOW_EXTERNAL: u8 = 2;

/// `struct mb_lb_svc_key`: one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MbLbSvcKey {
    /// Frontend address words (IPv4 in `[0]`); zero for NodePort scope.
    pub ip: [u32; 4],
    /// Frontend port, host order.
    pub port: u16,
    /// IP protocol number (TCP or UDP).
    pub proto: u8,
    /// `LB_SCOPE_*`.
    pub scope: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<MbLbSvcKey>() == 24);

/// `struct mb_lb_svc_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbLbSvcValue {
    /// Backend slots; 0 drops.
    pub count: u32,
    /// Key of its slots and Maglev row.
    pub slot_set: u32,
    /// Its row in `mb_lb_rnat`.
    pub rev_nat_id: u32,
    /// `LB_F_*`.
    pub flags: u16,
    /// ClusterIP scope: the service's NodePort (0 = none).
    pub node_port: u16,
}
const _: () = assert!(size_of::<MbLbSvcValue>() == 16);

/// `struct mb_lb_slot_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbLbSlotKey {
    /// The slot set.
    pub slot_set: u32,
    /// `0 .. count`.
    pub slot: u32,
}
const _: () = assert!(size_of::<MbLbSlotKey>() == 8);

/// `struct mb_lb_backend`: a backend's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbLbBackend {
    /// Address words (IPv4 in `[0]`).
    pub ip: [u32; 4],
    /// Port, host order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: u8,
}
const _: () = assert!(size_of::<MbLbBackend>() == 20);

/// `struct mb_lb_maglev_row`: a backend id per Maglev table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MbLbMaglevRow {
    /// Backend ids, `LB_MAGLEV_M` of them.
    pub backend_id: [u32; LB_MAGLEV_M],
}
const _: () = assert!(size_of::<MbLbMaglevRow>() == 4 * LB_MAGLEV_M);

/// `struct mb_lb_tuple`: a flow as a packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MbLbTuple {
    /// Source address words.
    pub saddr: [u32; 4],
    /// Destination address words.
    pub daddr: [u32; 4],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Explicit padding, zero.
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<MbLbTuple>() == 40);

/// `struct mb_lb_flow`: where a flow went.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbLbFlow {
    /// The backend's address words.
    pub backend_ip: [u32; 4],
    /// The backend's port, host order.
    pub backend_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `LB_FLOW_*`.
    pub flags: u8,
    /// The backend's id when chosen.
    pub backend_id: u32,
    /// The frontend's reverse NAT id.
    pub rev_nat_id: u32,
    /// `LB_FLOW_SNAT`: the new source address words (of `family`).
    pub snat_ip: [u32; 4],
    /// ... and port, host order.
    pub snat_port: u16,
    /// Explicit padding, zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<MbLbFlow>() == 48);

/// `struct mb_lb_rev`: how a reply is translated back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MbLbRev {
    /// The frontend (new source) in `mb_lb_rnat`.
    pub rev_nat_id: u32,
    /// `LB_FLOW_SNAT`: the new destination's address words.
    pub client_ip: [u32; 4],
    /// ... and port, host order.
    pub client_port: u16,
    /// `LB_FLOW_*`.
    pub flags: u8,
    /// Explicit padding, zero.
    pub pad: u8,
}
const _: () = assert!(size_of::<MbLbRev>() == 24);

// SAFETY: each type is #[repr(C)], made only of integers and integer arrays,
// with every padding byte an explicit field (sizes asserted above), so any
// bit pattern is valid and no uninitialised byte is ever read or written.
unsafe impl aya::Pod for MbLbSvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbSvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbSlotKey {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbBackend {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbMaglevRow {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbTuple {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbFlow {}
// SAFETY: as above.
unsafe impl aya::Pod for MbLbRev {}
