//! The type URLs of the resources membrane serves over xDS that are its own (Cilium's);
//! Envoy's are the control plane's business.

/// Cilium `NetworkPolicy` (NPDS), one per endpoint, named by endpoint IP.
pub const NETWORK_POLICY: &str = "type.googleapis.com/cilium.NetworkPolicy";
/// Cilium `NetworkPolicyHosts` (NPHDS), one per identity, named by the identity in decimal.
pub const NETWORK_POLICY_HOSTS: &str = "type.googleapis.com/cilium.NetworkPolicyHosts";
