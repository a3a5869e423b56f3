//! Cilium's NPDS (`NetworkPolicy`) and NPHDS (`NetworkPolicyHosts`) ↔ the policy engine's
//! values, both directions side by side: [`encode`] (the control plane: resolved policy →
//! `NetworkPolicy`) and [`decode`] (the sidecar: `NetworkPolicy` + `NetworkPolicyHosts` →
//! resolved policy + ipcache). `decode(encode(p))` decides as `p` does (tested).

pub mod decode;
pub mod encode;

/// `SocketAddress.Protocol::TCP`.
const TCP: i32 = 0;
/// `SocketAddress.Protocol::UDP`.
const UDP: i32 = 1;

#[cfg(test)]
mod tests;
