//! What the control plane's sidecar injection and the sidecar itself must agree on.

/// The sidecar's outbound capture listeners: loopback only, where the eBPF
/// datapath steers the pod's IPv4 and IPv6 connects, so no peer on the pod
/// network can dial them.
pub const CAPTURE_OUTBOUND: &str = "127.0.0.1:15001,[::1]:15001";
/// The sidecar's inbound capture listener: on every address, as sk_lookup
/// hands it connections to any of the pod's addresses.
pub const CAPTURE_INBOUND: &str = "0.0.0.0:15006";
