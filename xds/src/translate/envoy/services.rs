//! Services → Envoy clusters, load assignments and the proxyless gRPC
//! listeners (`ApiListener`) that route to them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, EdsClusterConfig, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use super::{ads, any, route_to, router_filter, socket, HCM_TYPE};
use crate::resource::{Resource, CLUSTER, ENDPOINT, LISTENER};
use crate::translate::ServiceModel;

pub(super) fn locality(zone: Option<&str>, backends: Vec<(String, u16)>) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(Locality {
            zone: zone.unwrap_or_default().to_string(),
            ..Default::default()
        }),
        // gRPC's xDS client ignores localities without a weight.
        load_balancing_weight: Some(UInt32Value { value: 1 }),
        lb_endpoints: backends
            .into_iter()
            .map(|(ip, port)| LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket(&ip, u32::from(port))),
                    ..Default::default()
                })),
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The Istio-style outbound cluster name of a service port.
pub fn outbound_cluster(svc: &ServiceModel, port: u16) -> String {
    format!("outbound|{port}||{}", svc.host())
}

/// EDS cluster and load assignment for every port of a service.
pub fn service_clusters(svc: &ServiceModel) -> Vec<Resource> {
    let mut out = Vec::new();
    for p in &svc.ports {
        let name = outbound_cluster(svc, p.port);
        let c = Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(3)), // EDS
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            }),
            lb_policy: LbPolicy::RoundRobin as i32,
            connect_timeout: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        out.push(Resource::new(CLUSTER, &name, &c).with_refs(vec![(ENDPOINT, name.clone())]));
        let mut by_zone: BTreeMap<Option<String>, Vec<(String, u16)>> = BTreeMap::new();
        for b in &p.backends {
            by_zone
                .entry(b.zone.clone())
                .or_default()
                .push((b.ip.clone(), b.port));
        }
        let cla = ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: by_zone
                .into_iter()
                .map(|(z, b)| locality(z.as_deref(), b))
                .collect(),
            ..Default::default()
        };
        out.push(Resource::new(ENDPOINT, &name, &cla));
    }
    out
}

/// For proxyless gRPC clients: one API listener per service port, named
/// `HOST:PORT` (what a `xds:///HOST:PORT` target asks for), with an inline
/// route to the service's EDS cluster.
pub fn grpc_listeners(svc: &ServiceModel) -> Vec<Resource> {
    let mut out = Vec::new();
    for p in &svc.ports {
        let name = format!("{}:{}", svc.host(), p.port);
        let hcm = HttpConnectionManager {
            stat_prefix: name.clone(),
            route_specifier: Some(RouteSpecifier::RouteConfig(route_to(
                &name,
                vec![name.clone(), svc.host()],
                &outbound_cluster(svc, p.port),
            ))),
            http_filters: vec![router_filter()],
            ..Default::default()
        };
        let l = Listener {
            name: name.clone(),
            api_listener: Some(ApiListener {
                api_listener: Some(any(HCM_TYPE, &hcm)),
            }),
            ..Default::default()
        };
        let to = outbound_cluster(svc, p.port);
        out.push(Resource::new(LISTENER, &name, &l).with_refs(vec![(CLUSTER, to)]));
    }
    out
}
