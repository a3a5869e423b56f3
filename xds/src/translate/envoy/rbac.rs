//! NPDS policy → Envoy RBAC HTTP filters for one inbound port: principals from
//! the rule's remote identities' addresses, permissions from its HTTP rules,
//! encoded canonically so identical policies hash alike.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::{any, TCP, WORLD};
use crate::proto::{header_match, port_network_policy_rule, NetworkPolicy, PortNetworkPolicy};
use crate::translate::TranslateError;

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

pub(super) fn cidr(addr: &str) -> Result<CidrRange, TranslateError> {
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

pub(super) fn any_principal() -> Principal {
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
pub(super) fn principals(
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

pub(super) fn permissions(rule: &crate::proto::PortNetworkPolicyRule) -> Permission {
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

pub(super) fn covers(p: &PortNetworkPolicy, port: u16) -> bool {
    let port = u32::from(port);
    p.protocol == TCP
        && (p.port == 0
            || p.port == port
            || (p.end_port != 0 && p.port <= port && port <= p.end_port))
}

const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

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
