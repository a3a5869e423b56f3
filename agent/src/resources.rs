//! The control plane's resources as the agent uses them: each `membrane.agent.v1` /
//! `cilium.NetworkPolicyHosts` resource decoded and checked into what the maps take, with
//! an error naming the resource and the field when it cannot be (the whole response is
//! then NACKed and nothing of it is applied).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use membrane_api::agent::proto;
use membrane_api::proto::NetworkPolicyHosts;
use membrane_api::type_url;
use membrane_datapath::policy_map::PolicyRule;
use prost::Message;
use serde::Serialize;

/// A resource that does not convert.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{type_name} {name:?}: {what}")]
pub struct ResourceError {
    /// The resource type's short name (`Endpoint`, `NetworkPolicyHosts`, ...).
    pub type_name: &'static str,
    /// The resource's name.
    pub name: String,
    /// What is wrong, naming the field.
    pub what: String,
}

/// The five resource types the agent subscribes to, in the order it subscribes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `membrane.agent.v1.Endpoint`: the node's pods with their policy.
    Endpoint,
    /// `cilium.NetworkPolicyHosts`: the ipcache.
    Hosts,
    /// `membrane.agent.v1.Service`.
    Service,
    /// `membrane.agent.v1.Node`.
    Node,
    /// `membrane.agent.v1.PrefilterDenyList`: the cluster-wide prefilter deny lists.
    Prefilter,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Endpoint,
        Kind::Hosts,
        Kind::Service,
        Kind::Node,
        Kind::Prefilter,
    ];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Endpoint => type_url::AGENT_ENDPOINT,
            Kind::Hosts => type_url::NETWORK_POLICY_HOSTS,
            Kind::Service => type_url::AGENT_SERVICE,
            Kind::Node => type_url::AGENT_NODE,
            Kind::Prefilter => type_url::AGENT_PREFILTER,
        }
    }

    /// The kind of a type URL.
    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The short name used in errors, status and the state directory.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Endpoint => "Endpoint",
            Kind::Hosts => "NetworkPolicyHosts",
            Kind::Service => "Service",
            Kind::Node => "Node",
            Kind::Prefilter => "PrefilterDenyList",
        }
    }
}

/// One endpoint as the control plane describes it, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSpec {
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// Its security identity.
    pub identity: u32,
    /// Its labels (for `membrane endpoint get`).
    pub labels: Vec<String>,
    /// It has a sidecar: inbound and outbound capture are on.
    pub sidecar: bool,
    /// The policy engine's revision the rules were resolved at.
    pub revision: u64,
    /// The L3/L4 policy map entries.
    pub rules: Vec<PolicyRule>,
    /// Whether a policy selects the endpoint, per direction (ingress, egress).
    pub enforced: (bool, bool),
    /// The policies selecting it (ingress, then egress).
    pub selected_by: (Vec<String>, Vec<String>),
}

/// One service frontend, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    /// The frontend address and port.
    pub frontend: SocketAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// The ready backends.
    pub backends: Vec<SocketAddr>,
    /// The node port every node answers on (0 = none).
    pub node_port: u16,
    /// NodePort traffic only to this node's backends (`externalTrafficPolicy: Local`).
    pub external_local: bool,
}

/// One node of the cluster, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    /// InternalIP addresses, in the order the node lists them (the first IPv4 one is its
    /// tunnel endpoint).
    pub addresses: Vec<IpAddr>,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
}

/// A decoded, checked resource of any kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    /// An endpoint.
    Endpoint(Box<EndpointSpec>),
    /// An identity's addresses and prefixes.
    Hosts(Vec<(IpNet, u32)>),
    /// A service frontend.
    Service(ServiceSpec),
    /// A node.
    Node(NodeSpec),
    /// A cluster-wide prefilter deny list's prefixes.
    Prefilter(Vec<IpNet>),
}

/// Decodes and checks one resource of `kind` named `name`.
pub fn decode(kind: Kind, name: &str, body: &[u8]) -> Result<Spec, ResourceError> {
    let fail = |what: String| ResourceError {
        type_name: kind.name(),
        name: name.to_owned(),
        what,
    };
    match kind {
        Kind::Endpoint => {
            let ep =
                proto::Endpoint::decode(body).map_err(|e| fail(format!("not decodable: {e}")))?;
            endpoint(name, &ep)
                .map(|s| Spec::Endpoint(Box::new(s)))
                .map_err(fail)
        }
        Kind::Hosts => {
            let h = NetworkPolicyHosts::decode(body)
                .map_err(|e| fail(format!("not decodable: {e}")))?;
            hosts(&h).map(Spec::Hosts).map_err(fail)
        }
        Kind::Service => {
            let s =
                proto::Service::decode(body).map_err(|e| fail(format!("not decodable: {e}")))?;
            service(&s).map(Spec::Service).map_err(fail)
        }
        Kind::Node => {
            let n = proto::Node::decode(body).map_err(|e| fail(format!("not decodable: {e}")))?;
            if n.name != name {
                return Err(fail(format!(
                    "name: {:?} is not the resource's name",
                    n.name
                )));
            }
            node(&n).map(Spec::Node).map_err(fail)
        }
        Kind::Prefilter => {
            let d = proto::PrefilterDenyList::decode(body)
                .map_err(|e| fail(format!("not decodable: {e}")))?;
            if d.name != name {
                return Err(fail(format!(
                    "name: {:?} is not the resource's name",
                    d.name
                )));
            }
            d.cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    membrane_api::agent::prefilter::parse_entry(c)
                        .map_err(|why| fail(format!("cidrs[{i}]: {c:?}: {why}")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Spec::Prefilter)
        }
    }
}

fn ip(field: &str, s: &str) -> Result<IpAddr, String> {
    s.parse()
        .map_err(|_| format!("{field}: {s:?} is not an IP address"))
}

fn endpoint(name: &str, ep: &proto::Endpoint) -> Result<EndpointSpec, String> {
    let expected = format!("{}/{}", ep.namespace, ep.pod);
    if expected != name {
        return Err(format!(
            "namespace/pod: {expected:?} is not the resource's name"
        ));
    }
    let ips = ep
        .ips
        .iter()
        .enumerate()
        .map(|(i, s)| ip(&format!("ips[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = ep.policy.clone().unwrap_or_default();
    let rules = policy
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| PolicyRule::try_from(e).map_err(|err| format!("policy.entries[{i}]: {err}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EndpointSpec {
        ips,
        identity: ep.identity,
        labels: ep.labels.clone(),
        sidecar: ep.sidecar,
        revision: policy.revision,
        rules,
        enforced: (policy.ingress_enforced, policy.egress_enforced),
        selected_by: (policy.ingress_selected_by, policy.egress_selected_by),
    })
}

fn hosts(h: &NetworkPolicyHosts) -> Result<Vec<(IpNet, u32)>, String> {
    let id = u32::try_from(h.policy)
        .map_err(|_| format!("policy: identity {} does not fit 32 bits", h.policy))?;
    h.host_addresses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let net = match s.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => IpNet::from(ip(&format!("host_addresses[{i}]"), s).map_err(|_| {
                    format!("host_addresses[{i}]: {s:?} is neither an address nor a prefix")
                })?),
            };
            Ok((net.trunc(), id))
        })
        .collect()
}

fn node(n: &proto::Node) -> Result<NodeSpec, String> {
    let addresses = n
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(&format!("addresses[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let pod_cidrs = n
        .pod_cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<IpNet>()
                .map(|net| net.trunc())
                .map_err(|_| format!("pod_cidrs[{i}]: {c:?} is not a prefix (ADDRESS/LENGTH)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NodeSpec {
        addresses,
        pod_cidrs,
    })
}

fn service(s: &proto::Service) -> Result<ServiceSpec, String> {
    let port = |field: &str, p: u32| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{field}: {p} is not a port (1-65535)"))
    };
    let protocol = u8::try_from(s.protocol)
        .ok()
        .filter(|p| matches!(p, 6 | 17 | 132))
        .ok_or_else(|| {
            format!(
                "protocol: {} is not TCP (6), UDP (17) or SCTP (132)",
                s.protocol
            )
        })?;
    let frontend = SocketAddr::new(ip("address", &s.address)?, port("port", s.port)?);
    let backends = s
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Ok(SocketAddr::new(
                ip(&format!("backends[{i}].address"), &b.address)?,
                port(&format!("backends[{i}].port"), b.port)?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let node_port = match s.node_port {
        0 => 0,
        p => port("node_port", p)?,
    };
    Ok(ServiceSpec {
        frontend,
        protocol,
        backends,
        node_port,
        external_local: s.external_traffic_local,
    })
}

/// The resources of one kind the agent holds: name -> (version, body, checked spec).
pub type Held = BTreeMap<String, (String, Vec<u8>, Spec)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(entries: Vec<proto::PolicyEntry>) -> proto::Endpoint {
        proto::Endpoint {
            namespace: "default".into(),
            pod: "web".into(),
            ips: vec!["10.0.0.5".into()],
            identity: 300,
            policy: Some(proto::EndpointPolicy {
                revision: 7,
                entries,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn entry(port: u32, end_port: u32, protocol: u32) -> proto::PolicyEntry {
        proto::PolicyEntry {
            direction: proto::Direction::Egress as i32,
            remote_identity: 400,
            protocol,
            port,
            end_port,
            verdict: proto::Verdict::Allow as i32,
        }
    }

    #[test]
    fn an_endpoint_converts_to_map_rules() {
        let body = ep(vec![entry(80, 80, 6)]).encode_to_vec();
        let Spec::Endpoint(s) = decode(Kind::Endpoint, "default/web", &body).unwrap() else {
            panic!("not an endpoint")
        };
        assert_eq!(s.identity, 300);
        assert_eq!(s.revision, 7);
        assert_eq!(s.rules.len(), 1);
        assert_eq!(s.rules[0].ports, (80, 80));
        assert_eq!(s.rules[0].remote_identity, 400);
    }

    #[test]
    fn bad_resources_name_the_resource_and_the_field() {
        let body = ep(vec![entry(80, 80, 6), entry(90, 80, 6)]).encode_to_vec();
        let e = decode(Kind::Endpoint, "default/web", &body).unwrap_err();
        assert_eq!(e.name, "default/web");
        assert!(e.to_string().contains("policy.entries[1]"), "{e}");

        let body = ep(vec![]).encode_to_vec();
        let e = decode(Kind::Endpoint, "default/other", &body).unwrap_err();
        assert!(e.to_string().contains("resource's name"), "{e}");

        let mut bad_ip = ep(vec![]);
        bad_ip.ips = vec!["10.0.0.300".into()];
        let e = decode(Kind::Endpoint, "default/web", &bad_ip.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("ips[0]: \"10.0.0.300\""), "{e}");

        let h = NetworkPolicyHosts {
            policy: 1 << 40,
            host_addresses: vec![],
        };
        let e = decode(Kind::Hosts, "x", &h.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("does not fit 32 bits"), "{e}");

        let s = proto::Service {
            address: "10.96.0.1".into(),
            port: 80,
            protocol: 6,
            backends: vec![proto::Backend {
                address: "10.0.0.1".into(),
                port: 70000,
            }],
            ..Default::default()
        };
        let e = decode(Kind::Service, "default/s:80/TCP", &s.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("backends[0].port: 70000"), "{e}");
        let s = proto::Service {
            backends: vec![],
            node_port: 65536,
            ..s
        };
        let e = decode(Kind::Service, "default/s:80/TCP", &s.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("node_port: 65536"), "{e}");

        let n = proto::Node {
            name: "n1".into(),
            addresses: vec!["10.10.0.1".into()],
            pod_cidrs: vec!["10.0.1.0/24".into(), "10.0.2.0".into()],
        };
        let e = decode(Kind::Node, "n1", &n.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("pod_cidrs[1]: \"10.0.2.0\""), "{e}");
        let n = proto::Node {
            addresses: vec!["node-1".into()],
            pod_cidrs: vec![],
            ..n
        };
        let e = decode(Kind::Node, "n1", &n.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("addresses[0]"), "{e}");

        let d = proto::PrefilterDenyList {
            name: "bad-actors".into(),
            cidrs: vec!["10.0.0.0/8".into(), "10.1.2.3/8".into()],
        };
        let e = decode(Kind::Prefilter, "bad-actors", &d.encode_to_vec()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PrefilterDenyList \"bad-actors\": cidrs[1]: \"10.1.2.3/8\": host bits set (the \
             prefix is 10.0.0.0/8)"
        );
        let e = decode(Kind::Prefilter, "other", &d.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("resource's name"), "{e}");
    }

    #[test]
    fn hosts_take_addresses_and_prefixes() {
        let h = NetworkPolicyHosts {
            policy: 500,
            host_addresses: vec!["10.0.0.7".into(), "192.168.0.0/16".into(), "fd00::1".into()],
        };
        let Spec::Hosts(v) = decode(Kind::Hosts, "500", &h.encode_to_vec()).unwrap() else {
            panic!()
        };
        let nets: Vec<String> = v.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.7/32", "192.168.0.0/16", "fd00::1/128"]);
        assert!(v.iter().all(|(_, id)| *id == 500));
        let bad = NetworkPolicyHosts {
            policy: 500,
            host_addresses: vec!["nope".into()],
        };
        let e = decode(Kind::Hosts, "500", &bad.encode_to_vec()).unwrap_err();
        assert!(e.to_string().contains("host_addresses[0]"), "{e}");
    }
}
