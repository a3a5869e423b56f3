//! One endpoint's NPDS resource, from the part every endpoint of one resolution shares.
//!
//! The engine hands the replicas of a workload one resolution (`Arc<ResolvedPolicy>`), and
//! their NPDS `NetworkPolicy` differs only in the endpoint's own fields (`endpoint_ips` = 1,
//! `endpoint_id` = 2). The rest (the per-port policies, fields 3 and 4) is converted and
//! encoded once per resolution ([`NpdsBody`]); each endpoint's resource is its own two
//! fields followed by those shared bytes. prost writes fields in field-number order, so the
//! result is byte for byte prost's encoding of the whole message (a test checks it), and
//! its content hash is the one a whole encoding would have.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use membrane_policy::resolve::{NamedPorts, ResolvedPolicy};
use prost::Message;

use crate::proto::NetworkPolicy;
use crate::resource::{content_hash, Resource, NETWORK_POLICY};

/// What every endpoint of one resolution (with one set of named ports) shares in NPDS.
#[derive(Debug)]
pub(super) struct NpdsBody {
    /// The resolution it was built from. Held, so that the pointer is not reused while the
    /// body lives: pointer equality means "the same resolution".
    pub resolved: Arc<ResolvedPolicy>,
    /// The endpoint's named ports its ingress names resolved against.
    pub named: NamedPorts,
    /// The policy without the endpoint's own fields (no addresses, id 0).
    pub np: NetworkPolicy,
    /// Per ingress entry, the content hash of its encoding (what an inbound listener's
    /// filter chains are keyed by, see `envoy::InboundCache`).
    pub ingress_hashes: Vec<u64>,
    /// The encoding of `np`: fields 3 and 4 only (empty and zero fields are not written).
    tail: Vec<u8>,
}

impl NpdsBody {
    /// Converts and encodes `resolved` once (ingress named ports against `named`, egress
    /// against the cluster's `egress_named`).
    pub fn new(
        resolved: Arc<ResolvedPolicy>,
        named: &NamedPorts,
        egress_named: &NamedPorts,
    ) -> Self {
        let np = membrane_api::npds::encode::network_policy(
            Vec::new(),
            0,
            &resolved,
            named,
            egress_named,
        );
        let tail = np.encode_to_vec();
        let ingress_hashes = np
            .ingress_per_port_policies
            .iter()
            .map(|p| content_hash(&p.encode_to_vec()))
            .collect();
        NpdsBody {
            resolved,
            named: named.clone(),
            np,
            ingress_hashes,
            tail,
        }
    }

    /// Whether this body is what `resolved` with the endpoint's `named` ports gives.
    pub fn is_for(&self, resolved: &Arc<ResolvedPolicy>, named: &NamedPorts) -> bool {
        Arc::ptr_eq(&self.resolved, resolved) && self.named == *named
    }

    /// The NPDS resource of the endpoint with addresses `ips` (primary first: the
    /// resource's name) and id `endpoint_id`.
    pub fn resource(&self, ips: &[String], endpoint_id: u64) -> Resource {
        let head = NetworkPolicy {
            endpoint_ips: ips.to_vec(),
            endpoint_id,
            ..Default::default()
        };
        let mut value = Vec::with_capacity(head.encoded_len() + self.tail.len());
        head.encode(&mut value)
            .expect("a Vec grows to fit the encoding");
        value.extend_from_slice(&self.tail);
        Resource {
            name: ips.first().cloned().unwrap_or_default(),
            hash: content_hash(&value),
            body: Arc::new(Any {
                type_url: NETWORK_POLICY.to_string(),
                value,
            }),
            refs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_spliced_resource_is_prosts_encoding_of_the_whole_policy() {
        let state = crate::source::dir::parse("sw.yaml", super::super::tests::STARWARS)
            .unwrap()
            .state;
        let mut t = super::super::Translator::new();
        assert!(t.translate(&state).errors.is_empty());
        let resolved = t.engine.resolved("default/deathstar-1").unwrap();
        let named: NamedPorts = [("http".to_string(), [80u16].into())].into();
        let egress = t.engine.cluster_named_ports().clone();
        let body = NpdsBody::new(resolved.clone(), &named, &egress);
        assert!(!body.np.ingress_per_port_policies.is_empty());
        assert_eq!(
            body.ingress_hashes.len(),
            body.np.ingress_per_port_policies.len()
        );
        let ips = vec!["10.0.0.5".to_string(), "fd00::5".to_string()];
        for id in [0, 7, 65535] {
            let r = body.resource(&ips, id);
            let whole = membrane_api::npds::encode::network_policy(
                ips.clone(),
                id,
                &resolved,
                &named,
                &egress,
            )
            .encode_to_vec();
            assert_eq!(r.body.value, whole, "endpoint id {id}");
            assert_eq!(r.hash, content_hash(&whole));
            assert_eq!(r.name, "10.0.0.5");
            assert_eq!(r.body.type_url, NETWORK_POLICY);
        }
        assert!(body.is_for(&resolved, &named));
        assert!(!body.is_for(&resolved, &NamedPorts::new()));
        assert!(!body.is_for(&Arc::new(ResolvedPolicy::default()), &named));
    }
}
