//! A resolved policy (from `membrane-policy`) → Cilium NPDS `NetworkPolicy`.
//!
//! Pure encoding: every verdict rule was decided by the policy crate; this
//! only writes it in NPDS's vocabulary. [`super::decode`] reads it back, and
//! the two are tested against each other.

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use membrane_policy::resolve::{
    DirectionPolicy, NamedPorts, PeerEntry, Remotes, ResolvedPolicy, UnenforcedL7Mode,
};
use membrane_policy::rule::{PortMatch, Proto, TlsSource, L7};
use membrane_policy::Identity;

use super::{TCP, UDP};
use crate::proto::{
    header_match::MismatchAction, port_network_policy_rule, HeaderMatch, HttpNetworkPolicyRule,
    HttpNetworkPolicyRules, L7NetworkPolicyRules, NetworkPolicy, PortNetworkPolicy,
    PortNetworkPolicyRule, TlsContext,
};

/// An `exact` matcher on a header's value.
fn exact_header(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(value.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A `safe_regex` matcher for a user regex (already validated by the policy engine), in
/// the anchored form the engine matches: Envoy's RE2 matches the whole value anyway, and
/// a consumer that searches instead still decides as the engine does.
fn regex_header(name: &str, re: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                regex: membrane_policy::regexp::anchored(re),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn http_rule(compiled: &membrane_policy::http::CompiledHttpRule) -> HttpNetworkPolicyRule {
    let r = &compiled.source;
    let mut headers = Vec::new();
    if let Some(m) = &r.method {
        headers.push(regex_header(":method", m));
    }
    if let Some(p) = &r.path {
        headers.push(regex_header(":path", p));
    }
    if let Some(h) = &r.host {
        headers.push(regex_header(":authority", h));
    }
    for h in r.headers.iter().flatten() {
        headers.push(match h.split_once(':') {
            Some((name, value)) => exact_header(name.trim(), value.trim()),
            None => HeaderMatcher {
                name: h.trim().to_string(),
                header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                ..Default::default()
            },
        });
    }
    let header_matches = r
        .header_matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| HeaderMatch {
            name: m.name.clone(),
            value: m.value.clone().unwrap_or_default(),
            match_action: 0,
            mismatch_action: match m.mismatch.as_deref() {
                Some("LOG") => MismatchAction::ContinueOnMismatch,
                Some("ADD") => MismatchAction::AddOnMismatch,
                Some("DELETE") => MismatchAction::DeleteOnMismatch,
                Some("REPLACE") => MismatchAction::ReplaceOnMismatch,
                _ => MismatchAction::FailOnMismatch,
            } as i32,
            // Always `namespace/name`: a reference without a namespace means the
            // policy's, which the proxy could not know.
            value_sds_secret: compiled
                .header_match_secret(i)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        })
        .collect();
    HttpNetworkPolicyRule {
        headers,
        header_matches,
    }
}

/// A policy TLS context → NPDS: the secret by name (`namespace/name`), for the proxy to
/// resolve from its own secrets; `downstream` names the certificate (`tls_sds_secret`),
/// upstream the trust anchors (`validation_context_sds_secret`). Item-name overrides
/// (`certificate`, `privateKey`, `trustedCA`) have no NPDS field: the proxy uses Cilium's
/// default items.
fn tls_context(src: &TlsSource, downstream: bool) -> TlsContext {
    match src {
        TlsSource::Secret {
            namespace, name, ..
        } => {
            let name = format!("{namespace}/{name}");
            if downstream {
                TlsContext {
                    tls_sds_secret: name,
                    ..Default::default()
                }
            } else {
                TlsContext {
                    validation_context_sds_secret: name,
                    ..Default::default()
                }
            }
        }
        TlsSource::Inline {
            trusted_ca,
            certificate_chain,
            private_key,
        } => TlsContext {
            trusted_ca: trusted_ca.clone(),
            certificate_chain: certificate_chain.clone(),
            private_key: private_key.clone(),
            ..Default::default()
        },
    }
}

/// One rule; `None` when it covers no identity (NPDS's empty remote list
/// would mean "everyone", the opposite).
fn rule(p: &PeerEntry, unenforced: UnenforcedL7Mode) -> Option<PortNetworkPolicyRule> {
    let remote_policies = match &p.remotes {
        Remotes::All => Vec::new(),
        Remotes::Set(ids) if ids.is_empty() => return None,
        Remotes::Set(ids) => ids.iter().map(|i| i.0).collect(),
    };
    let mut l7_proto = String::new();
    let l7 = match &p.l7 {
        L7::Http(rules) => Some(port_network_policy_rule::L7::HttpRules(
            HttpNetworkPolicyRules {
                http_rules: rules.iter().map(http_rule).collect(),
            },
        )),
        // Kafka, DNS and generic L7 rules are enforced by no proxy of membrane's. Failing
        // closed, the rule is sent with its parser named and no allowed message, which
        // membrane-proxy and the RBAC translation read as "allows nothing"; without L7 it
        // would be an L4 allow of the whole port. With `l4-only` that is what is wanted.
        L7::Unenforced(kind) => match unenforced {
            UnenforcedL7Mode::FailClosed => {
                l7_proto = kind.strip_prefix("l7proto ").unwrap_or(kind).to_owned();
                Some(port_network_policy_rule::L7::L7Rules(
                    L7NetworkPolicyRules::default(),
                ))
            }
            UnenforcedL7Mode::L4Only => None,
        },
        L7::None => None,
    };
    Some(PortNetworkPolicyRule {
        verdict: p
            .deny
            .then_some(port_network_policy_rule::Verdict::Deny(true)),
        name: p.origin.to_string(),
        remote_policies,
        l7_proto,
        l7,
        server_names: p
            .tls
            .as_ref()
            .map(|t| t.server_names.clone())
            .unwrap_or_default(),
        downstream_tls_context: p
            .tls
            .as_ref()
            .and_then(|t| t.terminating.as_ref())
            .map(|s| tls_context(s, true)),
        upstream_tls_context: p
            .tls
            .as_ref()
            .and_then(|t| t.originating.as_ref())
            .map(|s| tls_context(s, false)),
        ..Default::default()
    })
}

fn protocols(p: Proto) -> &'static [i32] {
    match p {
        Proto::Tcp => &[TCP],
        Proto::Udp => &[UDP],
        Proto::All | Proto::Any => &[TCP, UDP],
        // NPDS carries TCP and UDP only; SCTP/ICMP are the datapath's.
        _ => &[],
    }
}

/// The ports of an entry as NPDS writes them: `(port, end_port)`, `(0, 0)` for every port,
/// `end_port` 0 for a single port; a named port resolves against `named` (unresolved: none).
fn npds_ranges(ports: &PortMatch, named: &NamedPorts) -> Vec<(u32, u32)> {
    match ports {
        PortMatch::Range(0, 65535) => vec![(0, 0)],
        PortMatch::Range(lo, hi) if lo == hi => vec![(u32::from(*lo), 0)],
        PortMatch::Range(lo, hi) => vec![(u32::from(*lo), u32::from(*hi))],
        PortMatch::Named(n) => named
            .get(n)
            .into_iter()
            .flatten()
            .map(|p| (u32::from(*p), 0))
            .collect(),
        PortMatch::IcmpType(_) => Vec::new(),
    }
}

/// The rule name the host's allowance carries (decisions and RBAC policies show it).
pub const ALLOW_LOCALHOST_RULE: &str = "allow-localhost";

/// The engine's allow-localhost in NPDS's vocabulary, which has no such setting: an L4
/// allow for identity 1 (`reserved:host`) on every port range, per protocol, that no rule
/// naming the host covers. On the ports a rule names the host, the rules alone decide, as
/// in the engine ([`DirectionPolicy::localhost_allows`]).
fn localhost_ports(d: &DirectionPolicy, named: &NamedPorts) -> Vec<PortNetworkPolicy> {
    let mut out = Vec::new();
    for protocol in [TCP, UDP] {
        let mut covered: Vec<(u32, u32)> = d
            .entries
            .iter()
            .filter(|e| protocols(e.proto).contains(&protocol))
            .filter(|e| e.rules.iter().any(|r| r.remotes.contains(Identity::HOST)))
            .flat_map(|e| npds_ranges(&e.ports, named))
            .map(|(lo, hi)| match (lo, hi) {
                (0, _) => (0, 65535),
                (lo, 0) => (lo, lo),
                (lo, hi) => (lo, hi),
            })
            .collect();
        covered.sort_unstable();
        // Port 0 is never connected to; the gaps are taken within 1..=65535.
        let mut next = 1u32;
        let mut gaps = Vec::new();
        for (lo, hi) in covered {
            if lo > next {
                gaps.push((next, lo - 1));
            }
            next = next.max(hi + 1);
        }
        if next <= 65535 {
            gaps.push((next, 65535));
        }
        for (lo, hi) in gaps {
            let (port, end_port) = match (lo, hi) {
                (1, 65535) => (0, 0),
                (lo, hi) if lo == hi => (lo, 0),
                (lo, hi) => (lo, hi),
            };
            out.push(PortNetworkPolicy {
                port,
                end_port,
                protocol,
                rules: vec![PortNetworkPolicyRule {
                    name: ALLOW_LOCALHOST_RULE.to_owned(),
                    remote_policies: vec![Identity::HOST.0],
                    ..Default::default()
                }],
            });
        }
    }
    out
}

/// The per-port policies of one direction.
pub fn direction(d: &DirectionPolicy, named: &NamedPorts) -> Vec<PortNetworkPolicy> {
    let allow_all = |protocol| PortNetworkPolicy {
        port: 0,
        end_port: 0,
        protocol,
        rules: Vec::new(),
    };
    if !d.enforced {
        return vec![allow_all(TCP), allow_all(UDP)];
    }
    let mut out = Vec::new();
    for e in &d.entries {
        let ranges = npds_ranges(&e.ports, named);
        let rules: Vec<PortNetworkPolicyRule> = e
            .rules
            .iter()
            .filter_map(|r| rule(r, d.unenforced_l7))
            .collect();
        if rules.is_empty() {
            continue; // every rule covered nobody: nothing is allowed here
        }
        for proto in protocols(e.proto) {
            for (port, end_port) in &ranges {
                out.push(PortNetworkPolicy {
                    port: *port,
                    end_port: *end_port,
                    protocol: *proto,
                    rules: rules.clone(),
                });
            }
        }
    }
    if !d.default_deny {
        // Every selecting rule turned default deny off: what no rule denies passes, the
        // host included.
        out.push(allow_all(TCP));
        out.push(allow_all(UDP));
    } else if d.allow_localhost {
        out.extend(localhost_ports(d, named));
    }
    out
}

/// The `NetworkPolicy` of one endpoint: its addresses and id, and both directions of its
/// resolved policy. Named ports resolve against `ingress_named` (the endpoint's own
/// container ports) and `egress_named` (the peers', cluster-wide).
pub fn network_policy(
    endpoint_ips: Vec<String>,
    endpoint_id: u64,
    policy: &ResolvedPolicy,
    ingress_named: &NamedPorts,
    egress_named: &NamedPorts,
) -> NetworkPolicy {
    NetworkPolicy {
        endpoint_ips,
        endpoint_id,
        ingress_per_port_policies: direction(&policy.ingress, ingress_named),
        egress_per_port_policies: direction(&policy.egress, egress_named),
    }
}
