use std::net::IpAddr;

use super::decode::{self, DecodeError};
use crate::proto::{NetworkPolicy, NetworkPolicyHosts, PortNetworkPolicy};
use membrane_policy::{Direction, Identity, Proto, Verdict};

fn np(ip: &str, ingress: Vec<PortNetworkPolicy>) -> NetworkPolicy {
    NetworkPolicy {
        endpoint_ips: vec![ip.into()],
        endpoint_id: 1,
        ingress_per_port_policies: ingress,
        egress_per_port_policies: vec![],
    }
}

#[test]
fn an_endpoint_no_policy_names_is_denied_everything() {
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    let d = decode::endpoint(ip, &[np("10.0.0.1", vec![])], &[]).unwrap();
    assert!(!d.found);
    for dir in [Direction::Ingress, Direction::Egress] {
        let conn = d
            .policy
            .direction(dir)
            .connection(Identity::WORLD, Proto::Tcp, 80);
        assert_eq!(conn.l4_verdict(), Verdict::Denied);
    }
}

#[test]
fn two_policies_for_one_endpoint_are_refused() {
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let both = [np("10.0.0.1", vec![]), np("10.0.0.1", vec![])];
    assert_eq!(
        decode::endpoint(ip, &both, &[]).unwrap_err(),
        DecodeError::Ambiguous { ip, count: 2 }
    );
}

#[test]
fn a_bad_resource_for_another_endpoint_is_refused_too() {
    let bad = PortNetworkPolicy {
        port: 70_000,
        ..Default::default()
    };
    let policies = [np("10.0.0.1", vec![]), np("10.0.0.2", vec![bad])];
    let e = decode::endpoint("10.0.0.1".parse().unwrap(), &policies, &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "NetworkPolicy 10.0.0.2: ingress_per_port_policies[0].port: 70000 is not a port number (0-65535)"
    );
}

#[test]
fn hosts_become_the_ipcache() {
    let hosts = [
        NetworkPolicyHosts {
            policy: 256,
            host_addresses: vec!["10.0.0.3".into(), "10.2.0.0/16".into()],
        },
        NetworkPolicyHosts {
            policy: 1 << 33,
            host_addresses: vec![],
        },
    ];
    assert_eq!(
        decode::ipcache(&hosts).unwrap_err().to_string(),
        "NetworkPolicyHosts policy=8589934592: identity does not fit in 32 bits"
    );
    let c = decode::ipcache(&hosts[..1]).unwrap();
    assert_eq!(c.lookup("10.0.0.3".parse().unwrap()), Identity(256));
    assert_eq!(c.lookup("10.2.9.9".parse().unwrap()), Identity(256));
    assert_eq!(c.lookup("10.3.0.1".parse().unwrap()), Identity::WORLD);
}

/// What membrane-xds sends for a direction no rule selects the endpoint for (every port,
/// no rule) allows everything; a port with an empty rule list allows everyone on it.
#[test]
fn empty_rule_lists_allow() {
    let all = PortNetworkPolicy::default();
    let d = decode::network_policy(&np("10.0.0.1", vec![all])).unwrap();
    let conn = d.ingress.connection(Identity::WORLD, Proto::Tcp, 1234);
    assert_eq!(conn.l4_verdict(), Verdict::Allowed);
    // Egress carried nothing: denied.
    let conn = d.egress.connection(Identity::WORLD, Proto::Tcp, 1234);
    assert_eq!(conn.l4_verdict(), Verdict::Denied);
    let one = PortNetworkPolicy {
        port: 80,
        ..Default::default()
    };
    let d = decode::network_policy(&np("10.0.0.1", vec![one])).unwrap();
    let verdict = |port| {
        d.ingress
            .connection(Identity(4242), Proto::Tcp, port)
            .l4_verdict()
    };
    assert_eq!(verdict(80), Verdict::Allowed);
    assert_eq!(verdict(81), Verdict::Denied);
}

/// allow-localhost in NPDS: an L4 allow for identity 1 on the port ranges no rule naming
/// the host covers, per protocol; nothing when the setting is `policy`.
#[test]
fn allow_localhost_is_sent_as_host_rules_around_the_ports_rules_name_the_host_on() {
    use super::encode;
    use crate::proto::PortNetworkPolicyRule;
    use membrane_policy::resolve::{Endpoint, NamedPorts};
    use membrane_policy::{AllowLocalhost, Engine, LabelSet};
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [host]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET}]}\n";
    let named = NamedPorts::new();
    let encoded = |setting| {
        let mut engine = Engine::default();
        engine.set_allow_localhost(setting);
        for o in membrane_policy::parse_file("p.yaml", text).unwrap() {
            engine.apply_policy(o.result.unwrap());
        }
        let labels = membrane_policy::trace::pod_labels(LabelSet::parse("k8s:app=x").unwrap());
        let ep = Endpoint {
            labels,
            named_ports: named.clone(),
        };
        engine.upsert_endpoint("default/x", ep).unwrap();
        let p = engine.resolved("default/x").unwrap();
        encode::direction(&p.ingress, &named)
    };
    let host_rule = PortNetworkPolicyRule {
        name: encode::ALLOW_LOCALHOST_RULE.into(),
        remote_policies: vec![1],
        ..Default::default()
    };
    let hosts = |ports: &[PortNetworkPolicy]| -> Vec<(u32, u32, i32)> {
        ports
            .iter()
            .filter(|p| p.rules == [host_rule.clone()])
            .map(|p| (p.port, p.end_port, p.protocol))
            .collect()
    };
    let on = encoded(AllowLocalhost::Auto);
    assert_eq!(on.len(), 4, "the HTTP rule's port and three host ranges");
    assert_eq!(
        hosts(&on),
        [
            (1, 79, super::TCP),
            (81, 65535, super::TCP),
            (0, 0, super::UDP)
        ]
    );
    let off = encoded(AllowLocalhost::Policy);
    assert!(hosts(&off).is_empty());
    assert_eq!(off.len(), 1);
    // The sidecar decides as the engine: the host's GETs on 80 go through the HTTP rule,
    // any other port is open to it.
    let d = decode::network_policy(&np("10.0.0.1", on)).unwrap();
    let conn = d.ingress.connection(Identity::HOST, Proto::Tcp, 80);
    assert!(conn.needs_http());
    let conn = d.ingress.connection(Identity::HOST, Proto::Tcp, 8080);
    assert_eq!(conn.l4_verdict(), Verdict::Allowed);
    let conn = d
        .ingress
        .connection(Identity::REMOTE_NODE, Proto::Tcp, 8080);
    assert_eq!(conn.l4_verdict(), Verdict::Denied);
}
