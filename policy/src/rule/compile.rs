//! The compile walk: a document's rules, each rule's subject and four element lists, and
//! per element the checks that span its peers, ports and ICMP fields.

use super::element::{peer_prefix, Element};
use super::peers::PeerFields;
use super::ports::Ports;
use super::*;
use crate::resolve::Direction;

/// Compiles a parsed document. `namespace` is the effective namespace (the object's, or
/// `default`) for namespaced policies and `None` for cluster-wide ones.
pub fn compile(doc: &PolicyDocument, key: PolicyKey) -> Result<CompiledPolicy, Vec<FieldError>> {
    let mut cx = Cx {
        errors: Vec::new(),
        warnings: Vec::new(),
        namespace: key.namespace.clone(),
        kind: key.kind,
    };
    if doc.description.is_some() {
        cx.warnings.push(FieldError {
            path: "description".into(),
            message: "not a field of the cilium.io/v2 CRD (the API server drops it); use spec.description".into(),
        });
    }
    if doc.api_version != "cilium.io/v2" {
        cx.err(
            "apiVersion",
            format!(
                "{:?} is not supported (expected \"cilium.io/v2\")",
                doc.api_version
            ),
        );
    }
    if key.name.is_empty() {
        cx.err("metadata.name", "must be set".into());
    }
    let mut specs: Vec<(String, &model::Rule)> = Vec::new();
    if let Some(s) = &doc.spec {
        specs.push(("spec".into(), s));
    }
    for (i, s) in doc.specs.iter().flatten().enumerate() {
        specs.push((format!("specs[{i}]"), s));
    }
    if specs.is_empty() {
        cx.err("spec", "the policy has no rules: set spec or specs".into());
    }
    let rules: Vec<CompiledRule> = specs.iter().filter_map(|(p, r)| cx.rule(p, r)).collect();
    if cx.errors.is_empty() {
        Ok(CompiledPolicy {
            key,
            rules,
            warnings: cx.warnings,
        })
    } else {
        Err(cx.errors)
    }
}

/// The walk's state: what it rejected, what it warns about, and the policy's scope.
pub(super) struct Cx {
    pub(super) errors: Vec<FieldError>,
    pub(super) warnings: Vec<FieldError>,
    pub(super) namespace: Option<String>,
    pub(super) kind: PolicyKind,
}

/// Whether an element allows or denies the traffic it selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// `ingress`, `egress`.
    Allow,
    /// `ingressDeny`, `egressDeny`.
    Deny,
}

/// What a rule's subject selects, as far as compiling its elements cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubjectKind {
    /// Endpoints (an `endpointSelector`).
    Endpoints,
    /// Endpoints, with an `endpointSelector` that names `reserved:init`: peer selectors are
    /// not scoped to a namespace.
    InitEndpoints,
    /// Nodes (a `nodeSelector`): a host policy, which may not have L7 rules.
    Nodes,
}

/// One element (`spec.ingress[0]`, …) as [`Cx::dir_rule`] compiles it: what the four kinds
/// share, and the context of the rule that holds it.
pub(super) struct ElementInput<'a> {
    /// The element's field path.
    pub(super) path: &'a str,
    /// The direction of its list.
    pub(super) direction: Direction,
    /// Whether its list allows or denies.
    pub(super) effect: Effect,
    /// Its L3 peer fields.
    pub(super) peers: PeerFields<'a>,
    /// Its `toPorts`.
    pub(super) ports: Ports<'a>,
    /// Its `icmps`.
    pub(super) icmps: Option<&'a [model::IcmpRule]>,
    /// Its `authentication.mode`, when not `disabled`.
    pub(super) auth: Option<String>,
    /// What the holding rule's subject selects.
    pub(super) subject: SubjectKind,
}

/// The compiled elements of one rule, and what their compilation shares.
struct ElementLists {
    subject: SubjectKind,
    ingress: Vec<DirRule>,
    egress: Vec<DirRule>,
    requires_ingress: Vec<Selector>,
    requires_egress: Vec<Selector>,
}

impl Cx {
    /// Records an error at `path`.
    pub(super) fn err(&mut self, path: &str, message: String) {
        self.errors.push(FieldError {
            path: path.to_owned(),
            message,
        });
    }

    /// Compiles one rule (`spec` or `specs[i]`).
    fn rule(&mut self, path: &str, r: &model::Rule) -> Option<CompiledRule> {
        let before = self.errors.len();
        let subject = match (&r.endpoint_selector, &r.node_selector) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "endpointSelector and nodeSelector are mutually exclusive: set exactly one"
                        .into(),
                );
                None
            }
            (None, None) => {
                self.err(
                    path,
                    "one of endpointSelector or nodeSelector is required".into(),
                );
                None
            }
            (Some(es), None) => {
                self.selector(&format!("{path}.endpointSelector"), es)
                    .map(|mut s| {
                        if let Some(ns) = &self.namespace {
                            // The policy's namespace always wins over one named in the selector.
                            s.remove_key(SOURCE_K8S, labels::POD_NAMESPACE);
                            s.add_match(SOURCE_K8S, labels::POD_NAMESPACE, ns);
                        }
                        Subject::Endpoints(s)
                    })
            }
            (None, Some(ns)) => {
                if self.kind == PolicyKind::Namespaced {
                    self.err(
                        &format!("{path}.nodeSelector"),
                        "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy".into(),
                    );
                    None
                } else {
                    self.selector(&format!("{path}.nodeSelector"), ns)
                        .map(Subject::Nodes)
                }
            }
        };
        let matches_init = match &r.endpoint_selector {
            Some(es) => self
                .selector("", es)
                .is_some_and(|s| s.has_key(SOURCE_RESERVED, "init")),
            None => false,
        };
        // A nodeSelector rule has no endpointSelector, so it never matches init as well.
        let subject_kind = match (&subject, matches_init) {
            (Some(Subject::Nodes(_)), _) => SubjectKind::Nodes,
            (_, true) => SubjectKind::InitEndpoints,
            (_, false) => SubjectKind::Endpoints,
        };

        let mut lists = ElementLists {
            subject: subject_kind,
            ingress: Vec::new(),
            egress: Vec::new(),
            requires_ingress: Vec::new(),
            requires_egress: Vec::new(),
        };
        self.elements(path, r.ingress.as_deref(), &mut lists);
        self.elements(path, r.ingress_deny.as_deref(), &mut lists);
        self.elements(path, r.egress.as_deref(), &mut lists);
        self.elements(path, r.egress_deny.as_deref(), &mut lists);
        let ElementLists {
            ingress,
            egress,
            requires_ingress,
            requires_egress,
            ..
        } = lists;
        for (i, l) in r.labels.iter().flatten().enumerate() {
            if l.key.is_empty() {
                self.err(
                    &format!("{path}.labels[{i}].key"),
                    "must not be empty".into(),
                );
            }
        }
        let has_ingress = r.ingress.as_ref().is_some_and(|v| !v.is_empty())
            || r.ingress_deny.as_ref().is_some_and(|v| !v.is_empty());
        let has_egress = r.egress.as_ref().is_some_and(|v| !v.is_empty())
            || r.egress_deny.as_ref().is_some_and(|v| !v.is_empty());
        let dd = r.enable_default_deny.as_ref();
        let default_deny_ingress = dd.and_then(|d| d.ingress).unwrap_or(has_ingress);
        let default_deny_egress = dd.and_then(|d| d.egress).unwrap_or(has_egress);
        if self.errors.len() > before {
            return None;
        }
        Some(CompiledRule {
            path: path.to_owned(),
            subject: subject?,
            ingress,
            egress,
            has_ingress,
            has_egress,
            default_deny_ingress,
            default_deny_egress,
            requires_ingress,
            requires_egress,
        })
    }

    /// Compiles every element of one of the four rule lists into `out`.
    fn elements<E: Element>(&mut self, path: &str, list: Option<&[E]>, out: &mut ElementLists) {
        for (i, e) in list.unwrap_or(&[]).iter().enumerate() {
            let p = format!("{path}.{}[{i}]", E::LIST);
            let auth = self.auth(&p, e.authentication());
            let (rules, requires) = match E::DIRECTION {
                Direction::Ingress => (&mut out.ingress, &mut out.requires_ingress),
                Direction::Egress => (&mut out.egress, &mut out.requires_egress),
            };
            let compiled = self.dir_rule(
                ElementInput {
                    path: &p,
                    direction: E::DIRECTION,
                    effect: E::EFFECT,
                    peers: e.peers(),
                    ports: e.ports(),
                    icmps: e.icmps(),
                    auth,
                    subject: out.subject,
                },
                requires,
            );
            rules.extend(compiled);
        }
    }

    /// Checks an element's `authentication.mode`.
    fn auth(&mut self, path: &str, a: Option<&model::Authentication>) -> Option<String> {
        let a = a?;
        match a.mode.as_str() {
            "disabled" => None,
            "required" | "test-always-fail" => {
                // Cilium drops such traffic until the two identities' agents have
                // authenticated each other (SPIRE); membrane has no such handshake, so the
                // rule would otherwise silently become a plain allow.
                self.warnings.push(FieldError {
                    path: format!("{path}.authentication.mode"),
                    message: format!(
                        "mutual authentication ({:?}) is not performed by membrane: the peers and ports this rule allows are denied (fail closed), as Cilium drops them while they are not authenticated",
                        a.mode
                    ),
                });
                Some(a.mode.clone())
            }
            other => {
                self.err(
                    &format!("{path}.authentication.mode"),
                    format!("{other:?} is not one of disabled, required, test-always-fail"),
                );
                None
            }
        }
    }

    /// Compiles a label selector; errors are recorded at `path` unless it is empty.
    pub(super) fn selector(&mut self, path: &str, s: &LabelSelector) -> Option<Selector> {
        match Selector::compile(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                if !path.is_empty() {
                    self.err(path, e.to_string());
                }
                None
            }
        }
    }

    /// Compiles one element: checks the combinations Cilium refuses, then its peers, ports
    /// and ICMP fields, in that order. `…Requires` selectors go to `requires_out`.
    pub(super) fn dir_rule(
        &mut self,
        e: ElementInput<'_>,
        requires_out: &mut Vec<Selector>,
    ) -> Option<DirRule> {
        let ElementInput {
            path,
            direction,
            effect,
            peers: f,
            ports,
            icmps,
            auth,
            subject,
        } = e;
        let before = self.errors.len();
        let pre = peer_prefix(direction);
        let n = |v: Option<usize>| v.unwrap_or(0);
        // Cilium refuses to combine L3 peer kinds in one element; fromRequires is a
        // constraint, not a peer, so it combines with anything.
        let members: [(&str, usize); 9] = [
            ("Endpoints", n(f.endpoints.map(Vec::len))),
            ("CIDR", n(f.cidr.map(Vec::len))),
            ("CIDRSet", n(f.cidr_set.map(Vec::len))),
            ("Entities", n(f.entities.map(Vec::len))),
            ("Nodes", n(f.nodes.map(Vec::len))),
            ("Groups", n(f.groups.map(Vec::len))),
            ("Services", n(f.services.map(Vec::len))),
            ("FQDNs", n(f.fqdns.map(Vec::len))),
            ("", 0),
        ];
        let present: Vec<&str> = members
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|(m, _)| *m)
            .collect();
        if present.len() > 1 {
            self.err(
                path,
                format!(
                    "combining {pre}{} and {pre}{} in one rule is not supported (Cilium refuses it): split them into separate rules",
                    present[0], present[1]
                ),
            );
        }
        let port_count = ports.len();
        if direction == Direction::Egress
            && f.services.is_some_and(|s| !s.is_empty())
            && port_count > 0
        {
            self.err(
                path,
                "combining toServices and toPorts is not supported (Cilium refuses it)".into(),
            );
        }
        let icmp_count = icmps.map_or(0, <[_]>::len);
        if icmp_count > 0 && port_count > 0 {
            self.err(
                path,
                "icmps may only be present without toPorts: define a separate rule for toPorts"
                    .into(),
            );
        }

        let peers = self.peers(path, pre, &f, subject, requires_out);
        // An element that names no L3 peer but does name ports (or ICMP types) applies to
        // every peer; one that names neither, like `ingress: [{}]`, selects nobody.
        let wildcard_peers = present.is_empty() && (port_count > 0 || icmp_count > 0);

        let mut l4 = self.port_rules(path, direction, subject, ports);
        self.icmps(path, icmps, &mut l4);
        if self.errors.len() > before {
            return None;
        }
        Some(DirRule {
            path: path.to_owned(),
            deny: effect == Effect::Deny,
            peers,
            wildcard_peers,
            l4,
            auth,
        })
    }
}
