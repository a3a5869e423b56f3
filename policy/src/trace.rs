//! `policy trace`: the verdict for one flow, and the rule that decided it, computed with the
//! same resolution and checks the proxy enforces.

use crate::engine::Engine;
use crate::http::{HeaderSource, HttpRequest, NoSecrets};
use crate::identity::{Identity, IdentityError};
use crate::ipcache::IpCache;
use crate::labels::{self, Label, LabelSet, SOURCE_K8S};
use crate::resolve::{
    AllowLocalhost, ConnPolicy, Direction, Endpoint, NamedPorts, PeerEntry, UnenforcedL7Mode,
    Verdict,
};
use crate::rule::{CompiledPolicy, Proto, DEFAULT_CLUSTER, L7};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// One flow to trace.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// Source labels.
    pub src: LabelSet,
    /// Destination labels.
    pub dst: LabelSet,
    /// Source address (gives world peers their CIDR identity).
    pub src_ip: Option<IpAddr>,
    /// Destination address.
    pub dst_ip: Option<IpAddr>,
    /// Destination port (ICMP type for ICMP).
    pub dport: u16,
    /// Protocol.
    pub proto: Proto,
    /// Destination's named ports.
    pub named_ports: NamedPorts,
    /// HTTP request, if the flow is HTTP.
    pub http: Option<TraceHttp>,
    /// The server name the flow's TLS ClientHello indicates (`None`: not TLS, or no SNI);
    /// rules with serverNames apply only when it is one of theirs, as in the proxy.
    pub sni: Option<String>,
    /// What rules of L7 protocols membrane does not enforce do (as the proxy and the
    /// control plane are configured).
    pub unenforced_l7: UnenforcedL7Mode,
    /// Whether the host reaches endpoints without a rule naming it (as the control plane
    /// and the proxy are configured).
    pub allow_localhost: AllowLocalhost,
}

/// The HTTP part of a traced flow.
#[derive(Debug, Clone, Default)]
pub struct TraceHttp {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Host.
    pub host: Option<String>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

/// The rule that decided, as printed by `trace -o json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DecidedBy {
    /// `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`.
    pub kind: String,
    /// `namespace/name` (or `name` for cluster-wide policies).
    pub policy: String,
    /// Path of the rule element, e.g. `spec.ingress[0]`.
    pub rule: String,
    /// Index of the rule element within its list.
    pub rule_index: usize,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index of the matching HTTP rule, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_rule: Option<usize>,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct TraceResult {
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// The deciding rule; `null` for default deny, when no policy applies, or when a
    /// setting decided.
    pub decided_by: Option<DecidedBy>,
    /// The setting that decided instead of a rule: `allow-localhost` (the host let in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by_setting: Option<&'static str>,
    /// Human-readable account of the decision, one step per line.
    pub explanation: String,
    /// Parts of the verdict that depend on what the engine does not evaluate.
    pub caveats: Vec<String>,
}

/// Errors from tracing.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Identity allocation failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Adds the labels Cilium gives every pod, when `labels` describe a pod: a namespace
/// (`default` if none is given) and the cluster name. Reserved identities are left alone.
pub fn pod_labels(mut labels: LabelSet) -> LabelSet {
    if labels.has_reserved() || labels.iter().any(|l| l.source == labels::SOURCE_CIDR) {
        return labels;
    }
    if !labels.has_key(SOURCE_K8S, labels::POD_NAMESPACE) {
        // A namespace given without a source is still the pod's namespace.
        let ns = labels
            .values("any", labels::POD_NAMESPACE)
            .next()
            .unwrap_or("default")
            .to_owned();
        labels.insert(Label::new(SOURCE_K8S, labels::POD_NAMESPACE, &ns));
    }
    if !labels.has_key(SOURCE_K8S, labels::POLICY_CLUSTER) {
        labels.insert(Label::new(
            SOURCE_K8S,
            labels::POLICY_CLUSTER,
            DEFAULT_CLUSTER,
        ));
    }
    labels
}

fn is_endpoint(labels: &LabelSet) -> bool {
    // Pods, and the host (host policies select it by node labels).
    let cidr = labels.iter().any(|l| l.source == labels::SOURCE_CIDR);
    (!labels.has_reserved() && !cidr) || labels.has_key(labels::SOURCE_RESERVED, "host")
}

fn origin_json(e: &PeerEntry, dir: Direction, http_rule: Option<usize>) -> DecidedBy {
    let rule_index = e
        .origin
        .rule
        .rsplit_once('[')
        .and_then(|(_, r)| r.trim_end_matches(']').parse().ok())
        .unwrap_or(0);
    DecidedBy {
        kind: e.origin.policy.kind.as_str().to_owned(),
        policy: e.origin.policy.to_string(),
        rule: e.origin.rule.clone(),
        rule_index,
        direction: match dir {
            Direction::Ingress => "ingress".into(),
            Direction::Egress => "egress".into(),
        },
        http_rule,
    }
}

struct Side {
    verdict: Verdict,
    decided_by: Option<DecidedBy>,
    setting: Option<&'static str>,
    lines: Vec<String>,
}

/// Traces one flow through `policies`.
pub fn trace(
    policies: &[Arc<CompiledPolicy>],
    req: &TraceRequest,
) -> Result<TraceResult, TraceError> {
    let mut engine = Engine::default();
    engine.set_unenforced_l7(req.unenforced_l7);
    engine.set_allow_localhost(req.allow_localhost);
    for p in policies {
        engine.apply_policy(p.clone());
    }
    let src_labels = pod_labels(req.src.clone());
    let dst_labels = pod_labels(req.dst.clone());
    let mut lines = Vec::new();
    let mut caveats = Vec::new();

    // Register both ends so each sees the other's identity.
    let src_ep = is_endpoint(&src_labels);
    let dst_ep = is_endpoint(&dst_labels);
    if src_ep {
        engine.upsert_endpoint(
            "source",
            Endpoint {
                labels: src_labels.clone(),
                named_ports: NamedPorts::new(),
            },
        )?;
    }
    if dst_ep {
        engine.upsert_endpoint(
            "destination",
            Endpoint {
                labels: dst_labels.clone(),
                named_ports: req.named_ports.clone(),
            },
        )?;
    }
    let mut ipcache = IpCache::new();
    for (p, id) in engine.cidr_identities() {
        ipcache.insert(*p, *id);
    }
    let peer_identity = |engine: &mut Engine,
                         labels: &LabelSet,
                         ip: Option<IpAddr>,
                         name: &str|
     -> Result<Identity, TraceError> {
        if let Some(id) = engine.identity_of(name) {
            return Ok(id);
        }
        // A world peer with an address (`--src-ip`, or a `cidr:` label) takes the identity
        // of the longest policy prefix that contains it, as the ipcache would give it.
        let cidr_label = labels
            .iter()
            .find(|l| l.source == labels::SOURCE_CIDR)
            .and_then(|l| {
                l.key
                    .parse::<ipnet::IpNet>()
                    .ok()
                    .map(|n| n.network())
                    .or_else(|| l.key.parse().ok())
            });
        if labels.has_key(labels::SOURCE_RESERVED, "world") || cidr_label.is_some() {
            if let Some(ip) = ip.or(cidr_label) {
                if let Some((_, id)) = ipcache.lookup_prefix(ip) {
                    return Ok(id);
                }
                return Ok(Identity::WORLD);
            }
        }
        Ok(engine.ensure_identity(labels)?.0)
    };
    let src_id = peer_identity(&mut engine, &src_labels, req.src_ip, "source")?;
    let dst_id = peer_identity(&mut engine, &dst_labels, req.dst_ip, "destination")?;
    lines.push(format!("source {src_labels} (identity {src_id})"));
    lines.push(format!(
        "destination {dst_labels} (identity {dst_id}), {}/{}",
        req.dport,
        req.proto.as_str()
    ));

    let mut sides: Vec<(Direction, Side)> = Vec::new();
    if src_ep {
        if let Some(res) = engine.resolved("source") {
            let conn = res
                .egress
                .connection_sni(dst_id, req.proto, req.dport, req.sni.as_deref());
            note_tls(&res.egress, "egress", dst_id, req, &mut lines);
            sides.push((
                Direction::Egress,
                side(Direction::Egress, &conn, req, &mut caveats),
            ));
            note_unresolved(&res.egress, req, &mut caveats);
        }
    } else {
        lines.push("egress: the source is not an endpoint under policy here".into());
    }
    if dst_ep {
        if let Some(res) = engine.resolved("destination") {
            let conn = res
                .ingress
                .connection_sni(src_id, req.proto, req.dport, req.sni.as_deref());
            note_tls(&res.ingress, "ingress", src_id, req, &mut lines);
            sides.push((
                Direction::Ingress,
                side(Direction::Ingress, &conn, req, &mut caveats),
            ));
            note_unresolved(&res.ingress, req, &mut caveats);
        }
    } else {
        lines.push("ingress: the destination is not an endpoint under policy here".into());
    }
    for (_, s) in &sides {
        lines.extend(s.lines.iter().cloned());
    }
    let denied = sides.iter().find(|(_, s)| s.verdict == Verdict::Denied);
    let (verdict, decided_by, setting) = match denied {
        Some((_, s)) => (Verdict::Denied, s.decided_by.clone(), None),
        None => {
            // The destination's ingress decision is the more specific one when both allow.
            let by = sides.iter().rev().find_map(|(_, s)| s.decided_by.clone());
            let setting = sides.iter().rev().find_map(|(_, s)| s.setting);
            (Verdict::Allowed, by, setting)
        }
    };
    caveats.sort();
    caveats.dedup();
    for c in &caveats {
        lines.push(format!("caveat: {c}"));
    }
    lines.push(format!("verdict: {}", verdict.as_str()));
    Ok(TraceResult {
        verdict: verdict.as_str(),
        decided_by,
        decided_by_setting: setting,
        explanation: lines.join("\n"),
        caveats,
    })
}

fn side(
    dir: Direction,
    conn: &ConnPolicy<'_>,
    req: &TraceRequest,
    caveats: &mut Vec<String>,
) -> Side {
    let d = match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    let mut lines = Vec::new();
    let mk = |verdict, by: Option<&PeerEntry>, http: Option<usize>, lines: Vec<String>| Side {
        verdict,
        decided_by: by.map(|e| origin_json(e, dir, http)),
        setting: None,
        lines,
    };
    match conn {
        ConnPolicy::NotEnforced => {
            lines.push(format!(
                "{d}: no policy selects this endpoint for {d}: allowed"
            ));
            mk(Verdict::Allowed, None, None, lines)
        }
        ConnPolicy::Denied(Some(e)) => {
            lines.push(match conn.note() {
                Some(note) => format!("{d}: denied by {}: {note}", e.origin),
                None => format!(
                    "{d}: denied by {} (deny rules win over allow rules)",
                    e.origin
                ),
            });
            mk(Verdict::Denied, Some(e), None, lines)
        }
        ConnPolicy::Denied(None) => {
            lines.push(format!(
                "{d}: no rule allows this peer and port: denied (default deny)"
            ));
            mk(Verdict::Denied, None, None, lines)
        }
        ConnPolicy::Allowed(Some(e)) => {
            lines.push(format!(
                "{d}: allowed by {} (L3/L4, no L7 restriction)",
                e.origin
            ));
            mk(Verdict::Allowed, Some(e), None, lines)
        }
        ConnPolicy::Allowed(None) => {
            lines.push(format!(
                "{d}: no rule matched and default deny is disabled: allowed"
            ));
            mk(Verdict::Allowed, None, None, lines)
        }
        ConnPolicy::AllowedLocalhost => {
            lines.push(format!(
                "{d}: allowed by allow-localhost (setting {}): no rule naming the host covers this port, and {}",
                req.allow_localhost,
                AllowLocalhost::explain()
            ));
            Side {
                setting: Some("allow-localhost"),
                ..mk(Verdict::Allowed, None, None, lines)
            }
        }
        ConnPolicy::UnenforcedL7Denied(e) => {
            let note = conn.note().unwrap_or_default();
            lines.push(format!(
                "{d}: denied: {} allows this peer and port only through its L7 rules; {note}",
                e.origin
            ));
            unenforced_caveat(e, UnenforcedL7Mode::FailClosed, caveats);
            mk(Verdict::Denied, Some(e), None, lines)
        }
        ConnPolicy::UnenforcedL7AllowedL4(e) => {
            let note = conn.note().unwrap_or_default();
            lines.push(format!("{d}: allowed at L4 by {}; {note}", e.origin));
            unenforced_caveat(e, UnenforcedL7Mode::L4Only, caveats);
            mk(Verdict::Allowed, Some(e), None, lines)
        }
        ConnPolicy::Http(entries) => {
            for e in entries {
                if let L7::Http(rules) = &e.l7 {
                    for r in rules.iter() {
                        for s in r.secrets() {
                            caveats.push(format!(
                                "{} matches a header against secret {s}, which trace cannot read (its inline value, if any, is used instead)",
                                e.origin
                            ));
                        }
                    }
                }
            }
            let Some(h) = &req.http else {
                lines.push(format!(
                    "{d}: allowed at L4; HTTP rules of {} apply to each request (give --http-method/--http-path to evaluate them)",
                    entries.iter().map(|e| e.origin.to_string()).collect::<Vec<_>>().join(", ")
                ));
                return mk(Verdict::Allowed, entries.first().copied(), None, lines);
            };
            let headers: &Vec<(String, String)> = &h.headers;
            let hreq = HttpRequest {
                method: &h.method,
                path: &h.path,
                host: h.host.as_deref(),
                headers: headers as &dyn HeaderSource,
                secrets: &NoSecrets,
            };
            let dec = conn.check_http(&hreq);
            match (dec.verdict, dec.decided_by) {
                (Verdict::Allowed, Some(e)) => {
                    let idx = dec.http_rule.unwrap_or(0);
                    let rule = match &e.l7 {
                        L7::Http(r) => r.get(idx).map(|r| r.to_string()).unwrap_or_default(),
                        _ => String::new(),
                    };
                    lines.push(format!(
                        "{d}: {} {} allowed by {} http[{idx}] ({rule})",
                        h.method, h.path, e.origin
                    ));
                    for a in &dec.header_actions {
                        lines.push(format!("{d}: header action on mismatch: {a:?}"));
                    }
                    mk(Verdict::Allowed, Some(e), Some(idx), lines)
                }
                _ => {
                    lines.push(format!(
                        "{d}: {} {} matches no HTTP rule of {}: denied (403)",
                        h.method,
                        h.path,
                        entries
                            .iter()
                            .map(|e| e.origin.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    mk(Verdict::Denied, entries.first().copied(), None, lines)
                }
            }
        }
    }
}

/// On a port whose rules carry serverNames or TLS contexts, says which SNI the flow was
/// traced with and what the proxy does with its TLS.
fn note_tls(
    dp: &crate::resolve::DirectionPolicy,
    d: &str,
    remote: Identity,
    req: &TraceRequest,
    lines: &mut Vec<String>,
) {
    if !dp.inspects_tls(req.proto, req.dport) {
        return;
    }
    let sni = req.sni.as_deref();
    lines.push(match sni {
        Some(s) => format!("{d}: TLS rules on this port; SNI {s:?}"),
        None => format!(
            "{d}: TLS rules on this port; traced without TLS SNI (rules with serverNames do not apply)"
        ),
    });
    if let Some(t) = dp.tls_for(remote, req.proto, req.dport, sni) {
        if let Some(src) = &t.terminating {
            lines.push(format!("{d}: the proxy terminates TLS with {src}"));
        }
        if let Some(src) = &t.originating {
            lines.push(format!(
                "{d}: the proxy originates TLS, verifying the destination with {src}"
            ));
        }
    }
}

fn unenforced_caveat(e: &PeerEntry, mode: UnenforcedL7Mode, caveats: &mut Vec<String>) {
    if let L7::Unenforced(kind) = &e.l7 {
        let outcome = match mode {
            UnenforcedL7Mode::FailClosed => "denies what only they would allow",
            UnenforcedL7Mode::L4Only => "allows their peers and ports at L4 without them",
        };
        caveats.push(format!(
            "{kind} rules of {} are not enforced by membrane; the setting {mode} {outcome}",
            e.origin
        ));
    }
}

fn note_unresolved(
    dp: &crate::resolve::DirectionPolicy,
    req: &TraceRequest,
    caveats: &mut Vec<String>,
) {
    for e in &dp.entries {
        if let crate::rule::PortMatch::Named(n) = &e.ports {
            caveats.push(format!(
                "named port {n:?} is not resolved (give --named-port {n}=PORT)"
            ));
        }
        if !e.covers(req.proto, req.dport) {
            continue;
        }
        for r in &e.rules {
            for u in &r.unresolved {
                caveats.push(format!("{} selects peers by {u}, which is not resolved to identities here; the verdict may differ for such peers", r.origin));
            }
        }
    }
}
