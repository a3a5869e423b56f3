//! NPDS policy + identity addresses + services → Envoy resources, so that a
//! stock Envoy (or Istio sidecar) enforces the verdicts `membrane-proxy`
//! enforces.
//!
//! The RBAC HTTP filter is derived from the endpoint's NPDS `NetworkPolicy`,
//! never from the CNP objects directly: one resolved policy, two encodings.
//! Per inbound port:
//! - deny rules become a `DENY` RBAC filter (principals only: Cilium denies
//!   are L3/L4);
//! - allow rules become the `ALLOW` RBAC filter, one policy per rule:
//!   principals = the source addresses of the rule's remote identities
//!   (`direct_remote_ip`), permissions = OR over its HTTP rules of
//!   (method regex AND path regex AND host regex AND headers);
//! - a port no rule covers gets an `ALLOW` filter without policies: deny all.
//!
//! Rooms: `rbac` (a port's RBAC filters from its NPDS policy), `services`
//! (clusters, load assignments and proxyless gRPC listeners); this module
//! builds the sidecar's inbound listeners, routes and clusters from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address, Address, AggregatedConfigSource,
    ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route::Action as RouteActionKind, route_action::ClusterSpecifier, route_match::PathSpecifier,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::Message;

use super::{EndpointModel, TranslateError};
use crate::proto::NetworkPolicy;
use crate::resource::{Resource, CLUSTER, LISTENER, ROUTE};

mod rbac;
mod services;

pub use rbac::{exact_header, rbac_filters};
use services::locality;
pub use services::{grpc_listeners, outbound_cluster, service_clusters};

/// Reserved identity `world` (every address not otherwise known).
const WORLD: u32 = 2;
/// Protocol enum value for TCP in `SocketAddress.Protocol`.
const TCP: i32 = 0;

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(
            ROUTER_TYPE,
            &Router::default(),
        ))),
        ..Default::default()
    }
}

fn route_to(name: &str, domains: Vec<String>, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains,
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..Default::default()
                }),
                action: Some(RouteActionKind::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The inbound ports of an endpoint: its declared TCP container ports and
/// every specific TCP port its ingress policy names.
pub fn inbound_ports(ep: &EndpointModel, np: &NetworkPolicy) -> Vec<u16> {
    let mut ports: Vec<u16> = ep.tcp_ports.clone();
    for p in &np.ingress_per_port_policies {
        if p.protocol == TCP && p.port != 0 && p.end_port == 0 {
            if let Ok(port) = u16::try_from(p.port) {
                ports.push(port);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Inbound pieces kept from one translation to the next and shared by every sidecar that
/// needs them.
///
/// A listener's filter chains (the connection manager with its RBAC filters, router and
/// RDS name) depend only on the port, the ingress entries covering it and the addresses of
/// the identities their rules name: they are keyed by a hash of exactly that
/// ([`chain_key`]), so endpoints under the same policy (replicas, a fleet-wide rule) share
/// them, and a change elsewhere (another port's rule, another identity's addresses) keeps
/// them, and with them every listener built on them ([`BuiltListener`]).
#[derive(Debug, Default)]
pub struct InboundCache {
    /// Encoded `filter_chains` by chain key.
    chains: std::collections::HashMap<u64, Chain>,
    /// The route and cluster of a port, the same for every sidecar, and the last pass
    /// that used them.
    port: std::collections::HashMap<u16, ([Resource; 2], u64)>,
    /// The current translation pass (see [`InboundCache::begin`]).
    pass: u64,
}

#[derive(Debug)]
struct Chain {
    bytes: Arc<[u8]>,
    /// The last pass that used it.
    used: u64,
}

impl InboundCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a translation pass.
    pub fn begin(&mut self) {
        self.pass += 1;
    }

    /// Ends a pass: drops the chains it did not use and no kept listener holds.
    pub fn end(&mut self) {
        let pass = self.pass;
        self.chains
            .retain(|_, c| c.used == pass || Arc::strong_count(&c.bytes) > 1);
        self.port.retain(|_, (_, used)| *used == pass);
    }
}

/// The identity addresses an inbound listener's RBAC principals come from (one NPHDS view).
#[derive(Debug, Clone, Copy)]
pub struct Peers<'a> {
    /// Identity → its addresses.
    pub map: &'a BTreeMap<u64, Vec<String>>,
    /// Identity → a content hash of its addresses.
    pub hashes: &'a std::collections::HashMap<u64, u64>,
    /// A content hash of the whole map.
    pub version: &'a str,
}

/// A sidecar's inbound listener as built, with what it was built from: while its port's
/// chains and its address stay the same, the next translation reuses it as it is.
#[derive(Debug, Clone)]
pub struct BuiltListener {
    port: u16,
    chains: Arc<[u8]>,
    ip: String,
    resource: Resource,
}

/// Everything the filter chains of `port` are built from, as one content hash: the port,
/// each ingress entry covering it (its index, which names its RBAC policies, and
/// `entry_hashes`, the hash of its encoding), and the addresses of every identity its rules
/// name; a rule naming `world` (every address no other identity has) depends on the whole
/// view.
pub fn chain_key(np: &NetworkPolicy, entry_hashes: &[u64], port: u16, peers: &Peers<'_>) -> u64 {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&port.to_le_bytes());
    let mut world = false;
    for (pi, pp) in np
        .ingress_per_port_policies
        .iter()
        .enumerate()
        .filter(|(_, p)| rbac::covers(p, port))
    {
        buf.extend_from_slice(&(pi as u64).to_le_bytes());
        let h = match entry_hashes.get(pi) {
            Some(h) => *h,
            None => crate::resource::content_hash(&pp.encode_to_vec()),
        };
        buf.extend_from_slice(&h.to_le_bytes());
        for rule in &pp.rules {
            for r in &rule.remote_policies {
                if *r == WORLD {
                    world = true;
                    continue;
                }
                let id = u64::from(*r);
                buf.extend_from_slice(&id.to_le_bytes());
                let addrs = peers.hashes.get(&id).copied().unwrap_or(0);
                buf.extend_from_slice(&addrs.to_le_bytes());
            }
        }
    }
    if world {
        buf.push(0xff);
        buf.extend_from_slice(peers.version.as_bytes());
    }
    crate::resource::content_hash(&buf)
}

/// Inbound listener, route and cluster per port of a sidecar's endpoint.
///
/// Istio's explicit sidecar-ingress shape: the listener binds the pod IP on
/// the service port; the application listens on 127.0.0.1 on the same port.
/// `entry_hashes` are the content hashes of `np`'s ingress entries (computed here when
/// missing); `built` holds the sidecar's listeners as last built, and what this call
/// builds once it succeeds.
pub fn sidecar_inbound(
    ep: &EndpointModel,
    np: &NetworkPolicy,
    entry_hashes: &[u64],
    peers: &Peers<'_>,
    cache: &mut InboundCache,
    built: &mut Vec<BuiltListener>,
) -> Result<Vec<Resource>, TranslateError> {
    let Some(ip) = ep.ips.first() else {
        built.clear();
        return Ok(Vec::new());
    };
    let pass = cache.pass;
    let mut out = Vec::new();
    let mut next = Vec::new();
    for port in inbound_ports(ep, np) {
        let name = format!("inbound|{port}");
        let cluster = format!("inbound|{port}||");
        let key = chain_key(np, entry_hashes, port, peers);
        let chains = match cache.chains.get_mut(&key) {
            Some(c) => {
                c.used = pass;
                c.bytes.clone()
            }
            None => {
                let mut http_filters = rbac_filters(np, port, peers.map)?;
                http_filters.push(router_filter());
                let hcm = HttpConnectionManager {
                    stat_prefix: format!("inbound_{port}"),
                    route_specifier: Some(RouteSpecifier::Rds(Rds {
                        config_source: Some(ads()),
                        route_config_name: name.clone(),
                    })),
                    http_filters,
                    ..Default::default()
                };
                let chains = Listener {
                    filter_chains: vec![FilterChain {
                        filters: vec![Filter {
                            name: "envoy.filters.network.http_connection_manager".into(),
                            config_type: Some(filter::ConfigType::TypedConfig(any(HCM_TYPE, &hcm))),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let bytes: Arc<[u8]> = chains.encode_to_vec().into();
                cache.chains.insert(
                    key,
                    Chain {
                        bytes: bytes.clone(),
                        used: pass,
                    },
                );
                bytes
            }
        };
        let kept = built
            .iter()
            .find(|b| b.port == port && Arc::ptr_eq(&b.chains, &chains) && b.ip == *ip);
        let listener = match kept {
            Some(b) => b.resource.clone(),
            None => inbound_listener(&name, ip, port, &chains),
        };
        next.push(BuiltListener {
            port,
            chains,
            ip: ip.clone(),
            resource: listener.clone(),
        });
        out.push(listener);
        if let Some((shared, used)) = cache.port.get_mut(&port) {
            *used = pass;
            out.extend(shared.iter().cloned());
            continue;
        }
        let route = Resource::new(ROUTE, &name, &route_to(&name, vec!["*".into()], &cluster))
            .with_refs(vec![(CLUSTER, cluster.clone())]);
        let c = Cluster {
            name: cluster.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(0)), // STATIC
            connect_timeout: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: cluster.clone(),
                endpoints: vec![locality(None, vec![("127.0.0.1".to_string(), port)])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let pair = [
            route,
            Resource::new(CLUSTER, &cluster, &c).with_refs(Vec::new()),
        ];
        out.extend(pair.iter().cloned());
        cache.port.insert(port, (pair, pass));
    }
    *built = next;
    Ok(out)
}

/// The listener `name` on `ip`:`port` with the encoded `chains`.
///
/// The shared filter chains hold every allowed peer's address (20 KB for a fleet-wide
/// rule over 1,000 pods); re-encoding them for each sidecar was most of a fleet-wide
/// change's translation. Protobuf fields may be written in any order and prost writes them
/// in field number order, so `name` (1) and `address` (2) followed by the encoded
/// `filter_chains` (3) are byte for byte what prost would write for the whole listener (a
/// test checks this).
fn inbound_listener(name: &str, ip: &str, port: u16, chains: &[u8]) -> Resource {
    let head = Listener {
        name: name.to_string(),
        address: Some(socket(ip, u32::from(port))),
        ..Default::default()
    };
    let mut value = Vec::with_capacity(head.encoded_len() + chains.len());
    head.encode(&mut value)
        .expect("a Vec grows to fit the encoding");
    value.extend_from_slice(chains);
    Resource {
        name: name.to_string(),
        hash: crate::resource::content_hash(&value),
        body: Arc::new(Any {
            type_url: LISTENER.to_string(),
            value,
        }),
        refs: None,
    }
    .with_refs(vec![(ROUTE, name.to_string())])
}

#[cfg(test)]
mod tests;
