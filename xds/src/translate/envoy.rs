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

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, EdsClusterConfig, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address, Address, AggregatedConfigSource,
    ApiVersion, CidrRange, ConfigSource, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint,
    LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, ApiListener, Filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action as RouteActionKind,
    route_action::ClusterSpecifier, route_match::PathSpecifier, HeaderMatcher, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;

use super::{EndpointModel, ServiceModel, TranslateError};
use crate::proto::{header_match, port_network_policy_rule, NetworkPolicy, PortNetworkPolicy};
use crate::resource::{Resource, CLUSTER, ENDPOINT, LISTENER, ROUTE};

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

/// A header matcher for an exact value.
pub fn exact_header(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cidr(addr: &str) -> Result<CidrRange, TranslateError> {
    let net: ipnet::IpNet = match addr.parse::<ipnet::IpNet>() {
        Ok(n) => n,
        Err(_) => addr
            .parse::<std::net::IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| TranslateError::Address(addr.to_string()))?,
    };
    Ok(CidrRange {
        address_prefix: net.network().to_string(),
        prefix_len: Some(UInt32Value {
            value: u32::from(net.prefix_len()),
        }),
    })
}

/// OR of principals. Envoy rejects an empty set (`ids` needs at least one
/// entry), so nobody-at-all is written as "not any".
fn or_ids(ids: Vec<Principal>) -> Principal {
    if ids.is_empty() {
        return Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(any_principal()))),
        };
    }
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn ip_principal(c: CidrRange) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::DirectRemoteIp(c)),
    }
}

/// Principals for a set of remote identities. `world` is "no known
/// identity's address" (the RBAC filter has no longest-prefix match, so the
/// complement of every other identity's addresses stands in for it).
fn principals(
    remotes: &[u32],
    hosts: &BTreeMap<u64, Vec<String>>,
) -> Result<Principal, TranslateError> {
    if remotes.is_empty() {
        return Ok(any_principal());
    }
    let mut ids = Vec::new();
    for r in remotes {
        if *r == WORLD {
            let mut known = Vec::new();
            for (id, addrs) in hosts {
                if *id != u64::from(WORLD) {
                    for a in addrs {
                        known.push(ip_principal(cidr(a)?));
                    }
                }
            }
            ids.push(Principal {
                identifier: Some(principal::Identifier::NotId(Box::new(or_ids(known)))),
            });
            continue;
        }
        for a in hosts.get(&u64::from(*r)).into_iter().flatten() {
            ids.push(ip_principal(cidr(a)?));
        }
    }
    // An identity without addresses matches nobody; an empty OR matches nothing.
    Ok(or_ids(ids))
}

// `:path` is matched as a header, query string included: the policy engine
// (and so membrane-proxy) matches the path that way, and both must agree.
fn header_permission(h: &HeaderMatcher) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(h.clone())),
    }
}

/// A permission nothing satisfies (RBAC has no literal "false").
fn never() -> Permission {
    Permission {
        rule: Some(permission::Rule::NotRule(Box::new(Permission {
            rule: Some(permission::Rule::Any(true)),
        }))),
    }
}

fn permissions(rule: &crate::proto::PortNetworkPolicyRule) -> Permission {
    let http = match &rule.l7 {
        None => {
            return Permission {
                rule: Some(permission::Rule::Any(true)),
            }
        }
        Some(port_network_policy_rule::L7::HttpRules(http)) => http,
        // Kafka or generic L7 rules (membrane-xds sends them only to fail closed): the
        // HTTP filter can check none of their messages, so the rule admits nothing.
        Some(
            port_network_policy_rule::L7::KafkaRules(_) | port_network_policy_rule::L7::L7Rules(_),
        ) => return never(),
    };
    let alternatives = http
        .http_rules
        .iter()
        .map(|r| {
            let mut all: Vec<Permission> = r.headers.iter().map(header_permission).collect();
            for m in &r.header_matches {
                // Only "fail on mismatch" header matches restrict admission;
                // the other actions rewrite headers, which RBAC cannot do.
                if m.mismatch_action != header_match::MismatchAction::FailOnMismatch as i32 {
                    continue;
                }
                if !m.value_sds_secret.is_empty() {
                    // RBAC cannot read the secret (and its inline value applies only
                    // while the secret is absent): this alternative never matches, rather
                    // than degrading to a presence check that any value passes.
                    all.push(never());
                    continue;
                }
                let matcher = if m.value.is_empty() {
                    HeaderMatcher {
                        name: m.name.clone(),
                        header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                        ..Default::default()
                    }
                } else {
                    exact_header(&m.name, &m.value)
                };
                all.push(Permission {
                    rule: Some(permission::Rule::Header(matcher)),
                });
            }
            if all.is_empty() {
                Permission {
                    rule: Some(permission::Rule::Any(true)),
                }
            } else {
                Permission {
                    rule: Some(permission::Rule::AndRules(permission::Set { rules: all })),
                }
            }
        })
        .collect();
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set {
            rules: alternatives,
        })),
    }
}

fn covers(p: &PortNetworkPolicy, port: u16) -> bool {
    let port = u32::from(port);
    p.protocol == TCP
        && (p.port == 0
            || p.port == port
            || (p.end_port != 0 && p.port <= port && port <= p.end_port))
}

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The RBAC HTTP filters (DENY first, then ALLOW) for one inbound port.
pub fn rbac_filters(
    np: &NetworkPolicy,
    port: u16,
    hosts: &BTreeMap<u64, Vec<String>>,
) -> Result<Vec<HttpFilter>, TranslateError> {
    let mut allow = BTreeMap::new();
    let mut deny = BTreeMap::new();
    for (pi, pp) in np
        .ingress_per_port_policies
        .iter()
        .enumerate()
        .filter(|(_, p)| covers(p, port))
    {
        if pp.rules.is_empty() {
            // No rules on a port: every remote, every request.
            allow.insert(
                format!("port{pi}"),
                Policy {
                    permissions: vec![Permission {
                        rule: Some(permission::Rule::Any(true)),
                    }],
                    principals: vec![any_principal()],
                    ..Default::default()
                },
            );
        }
        for (ri, rule) in pp.rules.iter().enumerate() {
            let name = if rule.name.is_empty() {
                format!("port{pi}-rule{ri}")
            } else {
                format!("port{pi}-rule{ri}-{}", rule.name)
            };
            let who = principals(&rule.remote_policies, hosts)?;
            if matches!(
                rule.verdict,
                Some(port_network_policy_rule::Verdict::Deny(true))
            ) {
                deny.insert(
                    name,
                    Policy {
                        permissions: vec![Permission {
                            rule: Some(permission::Rule::Any(true)),
                        }],
                        principals: vec![who],
                        ..Default::default()
                    },
                );
            } else {
                allow.insert(
                    name,
                    Policy {
                        permissions: vec![permissions(rule)],
                        principals: vec![who],
                        ..Default::default()
                    },
                );
            }
        }
    }
    let mut filters = Vec::new();
    if !deny.is_empty() {
        filters.push(rbac_filter(
            "envoy.filters.http.rbac.deny",
            Action::Deny,
            deny,
        ));
    }
    filters.push(rbac_filter("envoy.filters.http.rbac", Action::Allow, allow));
    Ok(filters)
}

/// Wire-identical stand-ins for the HTTP RBAC filter config and
/// `config.rbac.v3.RBAC` (same field numbers), with the policy map as a
/// `BTreeMap`: prost encodes a `HashMap` in its random iteration order, which
/// would make identical policies hash differently and wake every proxy on
/// every rebuild. Only the fields we set are declared.
#[derive(Clone, PartialEq, prost::Message)]
struct CanonicalRbacFilter {
    #[prost(message, optional, tag = "1")]
    rules: Option<CanonicalRbac>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CanonicalRbac {
    #[prost(int32, tag = "1")]
    action: i32,
    #[prost(btree_map = "string, message", tag = "2")]
    policies: BTreeMap<String, Policy>,
}

fn rbac_filter(name: &str, action: Action, policies: BTreeMap<String, Policy>) -> HttpFilter {
    let rbac = CanonicalRbacFilter {
        rules: Some(CanonicalRbac {
            action: action as i32,
            policies,
        }),
    };
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(RBAC_TYPE, &rbac))),
        ..Default::default()
    }
}

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

/// Inbound pieces already built in this translation, shared by every
/// sidecar that needs them. Valid for one set of identity addresses only.
#[derive(Debug, Default)]
pub struct InboundCache {
    /// A listener's encoded `filter_chains` (the connection manager with its
    /// RBAC filters, router and RDS name), by (ingress policy hash, port):
    /// endpoints under the same policy (replicas, a fleet-wide rule) differ
    /// only in the listener's name and address.
    chains: std::collections::HashMap<(u64, u16), Arc<[u8]>>,
    /// The route and cluster of a port, the same for every sidecar.
    port: std::collections::HashMap<u16, [Resource; 2]>,
}

impl InboundCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Inbound listener, route and cluster per port of a sidecar's endpoint.
///
/// Istio's explicit sidecar-ingress shape: the listener binds the pod IP on
/// the service port; the application listens on 127.0.0.1 on the same port.
pub fn sidecar_inbound(
    ep: &EndpointModel,
    np: &NetworkPolicy,
    hosts: &BTreeMap<u64, Vec<String>>,
    cache: &mut InboundCache,
) -> Result<Vec<Resource>, TranslateError> {
    let Some(ip) = ep.ips.first() else {
        return Ok(Vec::new());
    };
    // Endpoints under the same policy (replicas, a fleet-wide rule) share
    // their RBAC filters and connection manager: build them once per translation.
    let mut ingress = Vec::new();
    for p in &np.ingress_per_port_policies {
        ingress.extend(p.encode_to_vec());
    }
    let policy_hash = crate::resource::content_hash(&ingress);
    let mut out = Vec::new();
    for port in inbound_ports(ep, np) {
        let name = format!("inbound|{port}");
        let cluster = format!("inbound|{port}||");
        let chains = match cache.chains.get(&(policy_hash, port)) {
            Some(c) => c.clone(),
            None => {
                let mut http_filters = rbac_filters(np, port, hosts)?;
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
                let c: Arc<[u8]> = chains.encode_to_vec().into();
                cache.chains.insert((policy_hash, port), c.clone());
                c
            }
        };
        // The shared filter chains hold every allowed peer's address (20 KB
        // for a fleet-wide rule over 1,000 pods); re-encoding them for each
        // sidecar was most of a fleet-wide change's translation. Protobuf
        // fields may be written in any order and prost writes them in field
        // number order, so `name` (1) and `address` (2) followed by the
        // encoded `filter_chains` (3) are byte for byte what prost would
        // write for the whole listener (a test checks this).
        let head = Listener {
            name: name.clone(),
            address: Some(socket(ip, u32::from(port))),
            ..Default::default()
        };
        let mut value = Vec::with_capacity(head.encoded_len() + chains.len());
        head.encode(&mut value)
            .expect("a Vec grows to fit the encoding");
        value.extend_from_slice(&chains);
        out.push(
            Resource {
                name: name.clone(),
                hash: crate::resource::content_hash(&value),
                body: Arc::new(Any {
                    type_url: LISTENER.to_string(),
                    value,
                }),
                refs: None,
            }
            .with_refs(vec![(ROUTE, name.clone())]),
        );
        if let Some(shared) = cache.port.get(&port) {
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
        cache.port.insert(port, pair);
    }
    Ok(out)
}

fn locality(zone: Option<&str>, backends: Vec<(String, u16)>) -> LocalityLbEndpoints {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_listeners_encode_as_prost_would_and_share_chains_by_policy() {
        let state = crate::source::dir::parse("sw.yaml", super::super::tests::STARWARS)
            .unwrap()
            .state;
        let out = super::super::Translator::new().translate(&state);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let snap = &out.snapshots["sidecar/default/deathstar-1"];
        let r = &snap.resources(LISTENER).unwrap().items["inbound|80"];
        let l: Listener = r.decode().unwrap();
        assert_eq!(l.name, "inbound|80");
        assert_eq!(l.filter_chains.len(), 1);
        assert!(l.address.is_some());
        assert_eq!(
            l.encode_to_vec(),
            r.body.value,
            "the spliced encoding is prost's own"
        );
        assert_eq!(r.hash, crate::resource::content_hash(&r.body.value));

        // Two endpoints under one policy: the chains are built once, the
        // listeners differ only in their address.
        let np = NetworkPolicy::default();
        let ep = |ip: &str| EndpointModel {
            id: format!("default/{ip}"),
            pod: ip.into(),
            namespace: "default".into(),
            endpoint_id: 1,
            ips: vec![ip.into()],
            tcp_ports: vec![80],
            named_ports: Default::default(),
            labels: Default::default(),
            zone: None,
        };
        let mut cache = InboundCache::new();
        let a = sidecar_inbound(&ep("10.0.0.1"), &np, &BTreeMap::new(), &mut cache).unwrap();
        let b = sidecar_inbound(&ep("10.0.0.2"), &np, &BTreeMap::new(), &mut cache).unwrap();
        assert_eq!(cache.chains.len(), 1);
        let (la, lb): (Listener, Listener) = (a[0].decode().unwrap(), b[0].decode().unwrap());
        assert_eq!(la.filter_chains, lb.filter_chains);
        assert_ne!(la.address, lb.address);
        assert_eq!(lb.encode_to_vec(), b[0].body.value);
    }

    #[test]
    fn a_header_match_against_a_secret_never_matches_in_rbac() {
        use crate::proto::{
            HeaderMatch, HttpNetworkPolicyRule, HttpNetworkPolicyRules, PortNetworkPolicyRule,
        };
        let rule = |value_sds_secret: &str| PortNetworkPolicyRule {
            l7: Some(port_network_policy_rule::L7::HttpRules(
                HttpNetworkPolicyRules {
                    http_rules: vec![HttpNetworkPolicyRule {
                        headers: vec![],
                        header_matches: vec![HeaderMatch {
                            name: "x-token".into(),
                            value_sds_secret: value_sds_secret.into(),
                            ..Default::default()
                        }],
                    }],
                },
            )),
            ..Default::default()
        };
        let never = Permission {
            rule: Some(permission::Rule::NotRule(Box::new(Permission {
                rule: Some(permission::Rule::Any(true)),
            }))),
        };
        let only = |p: Permission| match p.rule {
            Some(permission::Rule::OrRules(or)) => match &or.rules[..] {
                [Permission {
                    rule: Some(permission::Rule::AndRules(and)),
                }] => and.rules.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        assert_eq!(only(permissions(&rule("default/tok"))), vec![never]);
        // Without a secret an empty value is a presence check.
        let present = only(permissions(&rule("")));
        assert!(
            matches!(&present[..], [Permission { rule: Some(permission::Rule::Header(h)) }]
                if h.header_match_specifier == Some(HeaderMatchSpecifier::PresentMatch(true))),
            "{present:?}"
        );
    }

    #[test]
    fn principals_for_identities_without_addresses_match_nobody_and_stay_valid() {
        let none = BTreeMap::new();
        let nobody = Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(any_principal()))),
        };
        // Identity 1 (host) with no known address: nobody, not an empty OR.
        assert_eq!(principals(&[1], &none).unwrap(), nobody);
        // world with no other identity known: everyone ("not nobody").
        let world = principals(&[WORLD], &none).unwrap();
        assert_eq!(
            world,
            Principal {
                identifier: Some(principal::Identifier::OrIds(principal::Set {
                    ids: vec![Principal {
                        identifier: Some(principal::Identifier::NotId(Box::new(nobody.clone()))),
                    }],
                })),
            }
        );
        // An empty remote list means any remote.
        assert_eq!(principals(&[], &none).unwrap(), any_principal());
        let hosts = BTreeMap::from([(
            256u64,
            vec!["10.0.0.6".to_string(), "10.1.0.0/16".to_string()],
        )]);
        let p = format!("{:?}", principals(&[256], &hosts).unwrap());
        assert!(
            p.contains("10.0.0.6") && p.contains("value: 32") && p.contains("value: 16"),
            "{p}"
        );
        assert!(matches!(cidr("not-an-ip"), Err(TranslateError::Address(_))));
    }
}
