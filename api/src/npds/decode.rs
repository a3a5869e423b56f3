//! Cilium's NPDS/NPHDS (as served by `membrane-xds`) → the policy engine's values: an
//! endpoint's [`ResolvedPolicy`] and the [`IpCache`]. HTTP rules are rebuilt as
//! `membrane-policy` rules and compiled by the engine, so matching semantics are the
//! engine's; what this module adds is NPDS's per-port rule selection. The inverse of
//! [`super::encode`], and tested against it.

use std::net::IpAddr;

use crate::proto::{
    header_match::{MatchAction, MismatchAction},
    port_network_policy_rule::{Verdict, L7},
    HeaderMatch, HttpNetworkPolicyRule, NetworkPolicy, NetworkPolicyHosts, PortNetworkPolicy,
    PortNetworkPolicyRule, TlsContext,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use membrane_policy::http::CompiledHttpRule;
use membrane_policy::identity::Identity;
use membrane_policy::ipcache::IpCache;
use membrane_policy::model::{
    HeaderMatch as ModelHeaderMatch, HttpRule, SecretRef as ModelSecretRef,
};
use membrane_policy::resolve::{
    DirectionPolicy, PeerEntry, PortEntry, Remotes, ResolvedPolicy, RuleOrigin,
};
use membrane_policy::rule::{
    PolicyKey, PolicyKind, PortMatch, PortTls, Proto, TlsSource, L7 as PolicyL7,
};

use super::TCP;

/// Why an NPDS/NPHDS update could not be put in force; the message is the NACK's
/// `error_detail`, naming the resource and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field of a `NetworkPolicy` cannot be enforced.
    #[error("NetworkPolicy {endpoint}: {field}: {message}")]
    Policy {
        /// The policy's endpoint IPs.
        endpoint: String,
        /// Path of the field inside the message.
        field: String,
        /// What was found and what was expected.
        message: String,
    },
    /// Two resources claim this endpoint.
    #[error("{count} NetworkPolicy resources name endpoint {ip}; expected at most one")]
    Ambiguous {
        /// This proxy's address.
        ip: IpAddr,
        /// How many.
        count: usize,
    },
    /// A `NetworkPolicyHosts` entry is malformed.
    #[error("NetworkPolicyHosts policy={policy}: {message}")]
    Hosts {
        /// The identity of the entry.
        policy: u64,
        /// What is wrong.
        message: String,
    },
}

fn deny_all_direction() -> DirectionPolicy {
    DirectionPolicy {
        enforced: true,
        default_deny: true,
        ..Default::default()
    }
}

/// The policy of an endpoint no `NetworkPolicy` names: everything denied, both ways.
pub fn deny_all() -> ResolvedPolicy {
    ResolvedPolicy {
        ingress: deny_all_direction(),
        egress: deny_all_direction(),
        revision: 0,
    }
}

/// Parses a host address: a CIDR prefix or a bare address (a host route).
fn parse_prefix(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// NPHDS resources → the ipcache (identity per prefix); a bare address is a host route.
pub fn ipcache(hosts: &[NetworkPolicyHosts]) -> Result<IpCache, DecodeError> {
    let mut c = IpCache::new();
    for h in hosts {
        let NetworkPolicyHosts {
            policy,
            host_addresses,
        } = h;
        let id = u32::try_from(*policy).map_err(|_| DecodeError::Hosts {
            policy: *policy,
            message: "identity does not fit in 32 bits".into(),
        })?;
        for (i, a) in host_addresses.iter().enumerate() {
            let net = parse_prefix(a.trim()).ok_or_else(|| DecodeError::Hosts {
                policy: *policy,
                message: format!("host_addresses[{i}]: {a:?} is not an IP address or CIDR prefix"),
            })?;
            c.insert(net, Identity(id));
        }
    }
    Ok(c)
}

fn header_rule(
    r: &HttpNetworkPolicyRule,
    err: &dyn Fn(String, String) -> DecodeError,
    at: &str,
) -> Result<CompiledHttpRule, DecodeError> {
    let HttpNetworkPolicyRule {
        headers,
        header_matches,
    } = r;
    let mut rule = HttpRule {
        method: None,
        path: None,
        host: None,
        headers: None,
        header_matches: None,
    };
    for (i, h) in headers.iter().enumerate() {
        let field = format!("{at}.headers[{i}]");
        if h.invert_match || h.treat_missing_header_as_empty {
            return Err(err(
                field,
                "invert_match / treat_missing_header_as_empty are not supported".into(),
            ));
        }
        let name = h.name.to_ascii_lowercase();
        let pseudo = match name.as_str() {
            ":method" => Some(&mut rule.method),
            ":path" => Some(&mut rule.path),
            ":authority" | "host" => Some(&mut rule.host),
            _ => None,
        };
        let spec = &h.header_match_specifier;
        let pattern = match spec {
            Some(HeaderMatchSpecifier::StringMatch(m)) => m.match_pattern.as_ref(),
            _ => None,
        };
        match (pseudo, pattern, spec) {
            (Some(slot), Some(MatchPattern::SafeRegex(re)), _) => {
                if slot.is_some() {
                    return Err(err(field, format!("{name} is matched twice")));
                }
                *slot = Some(re.regex.clone());
            }
            (None, Some(MatchPattern::Exact(v)), _) => rule
                .headers
                .get_or_insert_with(Vec::new)
                .push(format!("{}: {v}", h.name)),
            (None, None, Some(HeaderMatchSpecifier::PresentMatch(true))) => rule
                .headers
                .get_or_insert_with(Vec::new)
                .push(h.name.clone()),
            _ => {
                return Err(err(
                    field,
                    format!(
                        "unsupported matcher for {:?} (expected a safe_regex on :method, \
                             :path or :authority, or exact/present on other headers)",
                        h.name
                    ),
                ))
            }
        }
    }
    for (i, m) in header_matches.iter().enumerate() {
        let field = format!("{at}.header_matches[{i}]");
        let HeaderMatch {
            name,
            value,
            match_action,
            mismatch_action,
            value_sds_secret,
        } = m;
        // `NAMESPACE/NAME` (a bare name means `default`), resolved per request from
        // `--secrets-dir` by the same rules as in standalone mode.
        let secret = if value_sds_secret.is_empty() {
            None
        } else {
            let (namespace, secret_name) = secret_name(value_sds_secret).ok_or_else(|| {
                err(
                    format!("{field}.value_sds_secret"),
                    format!("{value_sds_secret:?} is not a secret name (expected NAMESPACE/NAME)"),
                )
            })?;
            Some(ModelSecretRef {
                name: secret_name.to_owned(),
                namespace: Some(namespace.to_owned()),
            })
        };
        if *match_action != MatchAction::ContinueOnMatch as i32 {
            return Err(err(
                field,
                format!(
                    "match_action {match_action} is not supported (expected CONTINUE_ON_MATCH)"
                ),
            ));
        }
        let mismatch = match MismatchAction::try_from(*mismatch_action) {
            Ok(MismatchAction::FailOnMismatch) => None,
            Ok(MismatchAction::ContinueOnMismatch) => Some("LOG"),
            Ok(MismatchAction::AddOnMismatch) => Some("ADD"),
            Ok(MismatchAction::DeleteOnMismatch) => Some("DELETE"),
            Ok(MismatchAction::ReplaceOnMismatch) => Some("REPLACE"),
            Err(_) => {
                return Err(err(
                    field,
                    format!("unknown mismatch_action {mismatch_action}"),
                ))
            }
        };
        rule.header_matches
            .get_or_insert_with(Vec::new)
            .push(ModelHeaderMatch {
                name: name.clone(),
                value: (!value.is_empty()).then(|| value.clone()),
                secret,
                mismatch: mismatch.map(str::to_owned),
            });
    }
    // Every secret reference carries its namespace, so the policy namespace is moot.
    CompiledHttpRule::compile(&rule, None).map_err(|e| err(format!("{at}.{}", e.field), e.message))
}

/// `NAMESPACE/NAME`, or a bare `NAME` in `default`, as membrane-xds names secrets.
fn secret_name(text: &str) -> Option<(&str, &str)> {
    match text.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Some((ns, n)),
        None if !text.is_empty() => Some(("default", text)),
        _ => None,
    }
}

fn rule(
    r: &PortNetworkPolicyRule,
    err: &dyn Fn(String, String) -> DecodeError,
    at: &str,
) -> Result<PeerEntry, DecodeError> {
    let deny = match &r.verdict {
        None => false,
        Some(Verdict::Deny(d)) => *d,
        Some(Verdict::PassPrecedence(_)) => {
            return Err(err(
                format!("{at}.pass_precedence"),
                "pass verdicts are not supported".into(),
            ))
        }
    };
    let tls = port_tls(r, err, at)?;
    let http = match &r.l7 {
        None => None,
        Some(L7::HttpRules(h)) => Some(
            h.http_rules
                .iter()
                .enumerate()
                .map(|(k, hr)| header_rule(hr, err, &format!("{at}.http_rules[{k}]")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        // Kafka and generic L7 rules are not enforced here: they become the engine's
        // unenforced L7 rules, which fail closed (the rule allows nothing). membrane-xds
        // sends them only when its setting is fail-closed; with `l4-only` it sends the
        // rule without L7, an L4 allow.
        Some(L7::KafkaRules(_)) => None,
        Some(L7::L7Rules(_)) => None,
    };
    let unenforced = match &r.l7 {
        Some(L7::KafkaRules(_)) => Some("kafka".to_owned()),
        Some(L7::L7Rules(_)) => Some(match r.l7_proto.as_str() {
            "" => "generic L7".to_owned(),
            "dns" | "kafka" => r.l7_proto.clone(),
            p => format!("l7proto {p}"),
        }),
        _ => None,
    };
    let remotes = if r.remote_policies.is_empty() {
        Remotes::All
    } else {
        let mut ids: Vec<Identity> = r.remote_policies.iter().map(|i| Identity(*i)).collect();
        ids.sort();
        ids.dedup();
        Remotes::Set(ids.into())
    };
    Ok(PeerEntry {
        deny,
        remotes,
        l7: match (http, unenforced) {
            (Some(rules), _) => PolicyL7::Http(rules.into()),
            (None, Some(kind)) => PolicyL7::Unenforced(kind),
            (None, None) => PolicyL7::None,
        },
        // NPDS carries only a rule name (membrane-xds writes the CNP origin there), not
        // the policy key: the name goes in `rule`, which is what decisions report.
        origin: RuleOrigin {
            policy: PolicyKey {
                kind: PolicyKind::Namespaced,
                namespace: None,
                name: String::new(),
            },
            rule: if r.name.is_empty() {
                at.to_owned()
            } else {
                r.name.clone()
            },
        },
        auth: None,
        unresolved: vec![],
        notes: vec![],
        tls,
    })
}

/// An NPDS `TLSContext` → where its material comes from: the PEM it carries, or else
/// the SDS secret it names (`namespace/name`, resolved in `--secrets-dir`).
fn tls_source(
    ctx: &TlsContext,
    downstream: bool,
    err: &dyn Fn(String, String) -> DecodeError,
    at: &str,
) -> Result<TlsSource, DecodeError> {
    let TlsContext {
        trusted_ca,
        certificate_chain,
        private_key,
        // The rule's own server_names decide which connections it applies to.
        server_names: _,
        validation_context_sds_secret,
        tls_sds_secret,
        // The proxy offers h2 and http/1.1 downstream and picks upstream by protocol.
        alpn_protocols: _,
    } = ctx;
    if !trusted_ca.is_empty() || !certificate_chain.is_empty() || !private_key.is_empty() {
        if downstream && (certificate_chain.is_empty() || private_key.is_empty()) {
            return Err(err(
                at.to_owned(),
                "a downstream TLS context needs both certificate_chain and private_key".into(),
            ));
        }
        if !downstream && trusted_ca.is_empty() {
            return Err(err(
                format!("{at}.trusted_ca"),
                "an upstream TLS context needs trust anchors (TLS is never originated unverified)"
                    .into(),
            ));
        }
        return Ok(TlsSource::Inline {
            trusted_ca: trusted_ca.clone(),
            certificate_chain: certificate_chain.clone(),
            private_key: private_key.clone(),
        });
    }
    let (field, name) = match (downstream, tls_sds_secret, validation_context_sds_secret) {
        (true, n, _) if !n.is_empty() => ("tls_sds_secret", n),
        (false, _, n) if !n.is_empty() => ("validation_context_sds_secret", n),
        (_, a, _) if !a.is_empty() => ("tls_sds_secret", a),
        (_, _, b) if !b.is_empty() => ("validation_context_sds_secret", b),
        _ => {
            return Err(err(
                at.to_owned(),
                "TLS context carries neither PEM material nor a secret name".into(),
            ))
        }
    };
    let (namespace, name) = secret_name(name).ok_or_else(|| {
        err(
            format!("{at}.{field}"),
            format!("{name:?} is not a secret name (expected NAMESPACE/NAME)"),
        )
    })?;
    Ok(TlsSource::Secret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        certificate: None,
        private_key: None,
        trusted_ca: None,
    })
}

fn port_tls(
    r: &PortNetworkPolicyRule,
    err: &dyn Fn(String, String) -> DecodeError,
    at: &str,
) -> Result<Option<std::sync::Arc<PortTls>>, DecodeError> {
    let terminating = r
        .downstream_tls_context
        .as_ref()
        .map(|c| tls_source(c, true, err, &format!("{at}.downstream_tls_context")))
        .transpose()?;
    let originating = r
        .upstream_tls_context
        .as_ref()
        .map(|c| tls_source(c, false, err, &format!("{at}.upstream_tls_context")))
        .transpose()?;
    for (i, n) in r.server_names.iter().enumerate() {
        if n.is_empty() {
            return Err(err(
                format!("{at}.server_names[{i}]"),
                "empty server name".into(),
            ));
        }
    }
    if r.server_names.is_empty() && terminating.is_none() && originating.is_none() {
        return Ok(None);
    }
    Ok(Some(std::sync::Arc::new(PortTls {
        server_names: r
            .server_names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        terminating,
        originating,
    })))
}

fn ports(
    list: &[PortNetworkPolicy],
    err: &dyn Fn(String, String) -> DecodeError,
    what: &str,
) -> Result<DirectionPolicy, DecodeError> {
    let mut out = Vec::new();
    let mut default_deny = true;
    for (i, p) in list.iter().enumerate() {
        let at = format!("{what}[{i}]");
        if p.protocol != TCP {
            continue; // UDP (and anything else) never reaches an HTTP proxy
        }
        let port = |v: u32, f: &str| {
            u16::try_from(v).map_err(|_| {
                err(
                    format!("{at}.{f}"),
                    format!("{v} is not a port number (0-65535)"),
                )
            })
        };
        let lo = port(p.port, "port")?;
        let (lo, hi) = match (lo, port(p.end_port, "end_port")?) {
            (0, _) => (0, u16::MAX),
            (lo, 0) => (lo, lo),
            (lo, hi) if hi >= lo => (lo, hi),
            (lo, hi) => {
                return Err(err(
                    format!("{at}.end_port"),
                    format!("{hi} is below port {lo}"),
                ))
            }
        };
        let mut rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(j, r)| rule(r, err, &format!("{at}.rules[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() && (lo, hi) == (0, u16::MAX) {
            // Every port, every remote, every request: what membrane-xds sends for a
            // direction no rule selects the endpoint for, and for the remainder of a
            // direction whose default deny is off. That is the engine's default deny off:
            // what no rule denies passes, and the other entries' HTTP rules still apply.
            default_deny = false;
            continue;
        }
        if rules.is_empty() {
            // An empty list matches every remote and request (NPDS's semantics): as a
            // rule, one with no remotes, verdict or L7 named, an L4 allow of everyone.
            rules.push(rule(
                &PortNetworkPolicyRule::default(),
                err,
                &format!("{at}.rules"),
            )?);
        }
        // Deny rules first, as the engine orders them.
        rules.sort_by_key(|r| !r.deny);
        out.push(PortEntry {
            proto: Proto::Tcp,
            ports: PortMatch::Range(lo, hi),
            rules,
        });
    }
    // An NPDS resource for this endpoint is the whole policy of the direction: what it
    // does not allow is denied, unless it allows everything on every port.
    Ok(DirectionPolicy {
        enforced: true,
        default_deny,
        entries: out,
        selected_by: vec![],
        // Fail closed whatever this proxy's --unenforced-l7: the control plane decides,
        // and sends L7 rules it does not want enforced as L4 allows.
        unenforced_l7: membrane_policy::UnenforcedL7Mode::FailClosed,
        // Likewise: membrane-xds sends the host's allowance (allow-localhost) as rules
        // for identity 1 on the ports no other rule names the host on.
        allow_localhost: false,
    })
}

/// One `NetworkPolicy` → the endpoint's policy, both directions, in the engine's own form
/// so that verdicts come from its one implementation (`DirectionPolicy::connection`).
/// What it does not allow is denied; a field that cannot be enforced exactly is an error
/// naming it.
pub fn network_policy(np: &NetworkPolicy) -> Result<ResolvedPolicy, DecodeError> {
    let NetworkPolicy {
        endpoint_ips,
        endpoint_id: _,
        ingress_per_port_policies,
        egress_per_port_policies,
    } = np;
    let endpoint = endpoint_ips.join(",");
    let err = |field: String, message: String| DecodeError::Policy {
        endpoint: endpoint.clone(),
        field,
        message,
    };
    Ok(ResolvedPolicy {
        ingress: ports(ingress_per_port_policies, &err, "ingress_per_port_policies")?,
        egress: ports(egress_per_port_policies, &err, "egress_per_port_policies")?,
        // NPDS carries no revision; the xDS version is the update's.
        revision: 0,
    })
}

/// What the endpoint at one address enforces, decoded from a whole NPDS + NPHDS state.
#[derive(Debug)]
pub struct Decoded {
    /// Its policy; [`deny_all`] when no resource names the endpoint.
    pub policy: ResolvedPolicy,
    /// Address → identity, from NPHDS.
    pub ipcache: IpCache,
    /// Whether a `NetworkPolicy` named the endpoint.
    pub found: bool,
}

/// Decodes the policy of the endpoint at `ip` (the `NetworkPolicy` whose `endpoint_ips`
/// names it) and the ipcache. With no policy for this endpoint everything is denied. Any
/// field that cannot be enforced exactly, in any resource, rejects the whole update.
pub fn endpoint(
    ip: IpAddr,
    policies: &[NetworkPolicy],
    hosts: &[NetworkPolicyHosts],
) -> Result<Decoded, DecodeError> {
    let ipcache = ipcache(hosts)?;
    let mine: Vec<&NetworkPolicy> = policies
        .iter()
        .filter(|p| {
            p.endpoint_ips
                .iter()
                .any(|a| a.parse::<IpAddr>().ok() == Some(ip))
        })
        .collect();
    if mine.len() > 1 {
        return Err(DecodeError::Ambiguous {
            ip,
            count: mine.len(),
        });
    }
    // Validate every resource, not only ours: a NACK should not depend on which
    // endpoint happened to read it.
    for p in policies {
        network_policy(p)?;
    }
    let policy = match mine.first() {
        Some(p) => network_policy(p)?,
        None => deny_all(),
    };
    Ok(Decoded {
        policy,
        ipcache,
        found: !mine.is_empty(),
    })
}
