//! Compiling a policy object into rules the engine evaluates, validating as Cilium does.
//!
//! Compilation and validation are one walk: every check names the field path it rejects
//! (`spec.ingress[0].toPorts[0].ports[0].port`) and every accepted field becomes part of
//! a [`CompiledRule`]. Namespace scoping happens here, once, exactly as Cilium's
//! Kubernetes translation does it: a namespaced policy's endpointSelector is pinned to its
//! namespace, and peer selectors that name no namespace are limited to it.
//!
//! Rooms: [`compile()`] walks a document's rules and their elements
//! (`compile.rs`), each element kind seen through one trait (`element.rs`); an element's
//! L3 peers (`peers.rs`, with CIDR peers in `cidr.rs`), its ports and ICMP fields
//! (`ports.rs`) and the L7 rules and TLS settings of its port rules (`l7.rs`); DNS and
//! service names (`names.rs`), entities and ICMP types (`values.rs`); and what compiling
//! produces (`types.rs`).

use crate::http::CompiledHttpRule;
use crate::labels::{self, SOURCE_ANY, SOURCE_K8S, SOURCE_RESERVED};
use crate::model::{self, LabelSelector, PolicyDocument};
use crate::selector::Selector;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

mod cidr;
mod compile;
mod element;
mod l7;
mod names;
mod peers;
mod ports;
mod types;
mod values;

pub use cidr::{parse_cidr, subtract};
pub use compile::compile;
pub use names::is_iana_service_name;
pub use types::*;
pub use values::entity_selectors;

/// Cilium's limit on ports in one `toPorts` entry.
pub const MAX_PORTS: usize = 40;
/// Cilium's limit on ICMP fields in one `icmps` entry.
pub const MAX_ICMP_FIELDS: usize = 40;
/// The cluster name pods are labelled with when none is configured.
pub const DEFAULT_CLUSTER: &str = "default";

#[cfg(test)]
mod tests;
