//! `membrane-xds`: membrane's control plane.
//!
//! It owns the path from sources (a watched directory of Kubernetes-shaped
//! YAML, etcd) through identities (process-local, or agreed cluster-wide in
//! etcd) and resolved policy (the `membrane-policy` crate)
//! to xDS resources, and serves them: Envoy ADS (SotW and delta) and Cilium's
//! NPDS/NPHDS services over gRPC, Istio's certificate service (the workload CA),
//! plus the debug/metrics HTTP endpoint and the sidecar-injection webhook.
//!
//! It must never decide policy itself (verdict semantics belong to
//! `membrane-policy`), never push configuration outside a published,
//! consistency-checked snapshot, and never let bad input (a bad file, a NACK,
//! a misbehaving client) replace good state or take the process down.

pub mod app;
pub mod auth;
pub mod ca;
pub mod config;
pub mod configdump;
pub mod controller;
pub mod debug;
pub mod identity;
pub mod inject;
pub mod kvstore;
pub mod listener;
pub mod node;
pub mod peerauth;
pub mod prefilter;
pub mod recorder;
pub mod resource;
pub mod server;
pub mod smallmap;
pub mod snapshot;
pub mod source;
pub mod stream;
pub mod translate;
pub mod webhook;
pub mod wire;

/// Generated Cilium NPDS/NPHDS types and services (package `cilium`), from the one copy
/// in `membrane-api`.
pub use membrane_api::proto;
