//! `membrane-api`: the wire formats membrane's binaries speak to each other, in one crate
//! that producers and consumers both depend on (as `linkerd2-proxy-api` sits between
//! linkerd's proxy and its controller).
//!
//! It owns Cilium's NPDS/NPHDS protos and their generated types and services
//! ([`proto`]), their type URLs ([`type_url`]), both directions of the conversion between
//! the policy engine's resolved policy and NPDS ([`npds::encode`], [`npds::decode`]), the
//! node agent's resources and the policy map entries they carry, from the same resolution
//! ([`agent`], [`agent::policy`]), the sidecar's effective PeerAuthentication mode
//! ([`mesh`]), the one SPIFFE id parser both ends check certificates with ([`spiffe`]), the monitor
//! event every producer writes and every consumer reads ([`monitor`]) and its network form with the stream's filters ([`observer`]), and the constants the control plane's sidecar injection and the sidecar must agree on
//! ([`sidecar`]), and Istio's certificate service, which the control plane serves and the
//! sidecar calls ([`istioca`]).
//!
//! It depends on `membrane-policy` (whose values it converts), prost, tonic and serde (and
//! `envoy-types`, whose messages Cilium's embed), and never on a binary's crate: the
//! control plane (`membrane-xds`) and the sidecar (`membrane-proxy`) depend on it, never on
//! each other. No I/O here.

pub mod agent;
pub mod mesh;
pub mod monitor;
pub mod npds;
pub mod observer;
pub mod sidecar;
pub mod spiffe;
pub mod type_url;

/// Generated Cilium NPDS/NPHDS types and services (package `cilium`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("cilium");
}

/// Istio's certificate service (`istio.v1.auth.IstioCertificateService`): what a sidecar
/// calls to get its workload certificate (istiod's CA, or membrane-xds's on 15012).
#[allow(missing_docs, clippy::all)]
pub mod istioca {
    tonic::include_proto!("istio.v1.auth");
}

/// Protobuf file descriptor sets of the wire formats, for rendering them as proto3 JSON
/// (membrane-xds's `/debug/config_dump`). A binary that does not refer to them does not
/// link them.
pub mod descriptors {
    /// Envoy's API, as `envoy-types` ships it.
    pub static ENVOY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));
    /// The Cilium protos of [`crate::proto`].
    pub static CILIUM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cilium_descriptors.bin"));
}
