//! Compiling a policy object into rules the engine evaluates, validating as Cilium does.
//!
//! Compilation and validation are one walk: every check names the field path it rejects
//! (`spec.ingress[0].toPorts[0].ports[0].port`) and every accepted field becomes part of
//! a [`CompiledRule`]. Namespace scoping happens here, once, exactly as Cilium's
//! Kubernetes translation does it: a namespaced policy's endpointSelector is pinned to its
//! namespace, and peer selectors that name no namespace are limited to it.

use crate::http::CompiledHttpRule;
use crate::labels::{self, SOURCE_ANY, SOURCE_K8S, SOURCE_RESERVED};
use crate::model::{self, LabelSelector, PolicyDocument};
use crate::selector::Selector;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

mod types;
mod values;

pub use types::*;
use values::*;
pub use values::{entity_selectors, is_iana_service_name, parse_cidr, subtract};

/// Cilium's limit on ports in one `toPorts` entry.
pub const MAX_PORTS: usize = 40;
/// Cilium's limit on ICMP fields in one `icmps` entry.
pub const MAX_ICMP_FIELDS: usize = 40;
/// The cluster name pods are labelled with when none is configured.
pub const DEFAULT_CLUSTER: &str = "default";

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

struct Cx {
    errors: Vec<FieldError>,
    warnings: Vec<FieldError>,
    namespace: Option<String>,
    kind: PolicyKind,
}

/// The L3 peer fields of one ingress/egress element, gathered so allow and deny rules of
/// both directions share one validation and compilation path.
#[derive(Default)]
struct PeerFields<'a> {
    endpoints: Option<&'a Vec<LabelSelector>>,
    requires: Option<&'a Vec<LabelSelector>>,
    cidr: Option<&'a Vec<String>>,
    cidr_set: Option<&'a Vec<model::CidrRule>>,
    entities: Option<&'a Vec<String>>,
    nodes: Option<&'a Vec<LabelSelector>>,
    groups: Option<&'a Vec<model::Groups>>,
    services: Option<&'a Vec<model::Service>>,
    fqdns: Option<&'a Vec<model::FqdnSelector>>,
}

/// Port rules of either kind, borrowed.
enum Ports<'a> {
    Allow(&'a [model::PortRule]),
    Deny(&'a [model::PortDenyRule]),
}

/// What compilation needs from each of the four kinds of rule element (`ingress`,
/// `ingressDeny`, `egress`, `egressDeny`), so one walk serves them all.
trait Element {
    /// The list's field name.
    const LIST: &'static str;
    /// An ingress list.
    const INGRESS: bool;
    /// A deny list.
    const DENY: bool;
    fn peers(&self) -> PeerFields<'_>;
    fn ports(&self) -> Ports<'_>;
    fn icmps(&self) -> Option<&[model::IcmpRule]>;
    fn authentication(&self) -> Option<&model::Authentication> {
        None
    }
}

impl Element for model::IngressRule {
    const LIST: &'static str = "ingress";
    const INGRESS: bool = true;
    const DENY: bool = false;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.from_endpoints.as_ref(),
            requires: self.from_requires.as_ref(),
            cidr: self.from_cidr.as_ref(),
            cidr_set: self.from_cidr_set.as_ref(),
            entities: self.from_entities.as_ref(),
            nodes: self.from_nodes.as_ref(),
            groups: self.from_groups.as_ref(),
            ..Default::default()
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Allow(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
    fn authentication(&self) -> Option<&model::Authentication> {
        self.authentication.as_ref()
    }
}

impl Element for model::IngressDenyRule {
    const LIST: &'static str = "ingressDeny";
    const INGRESS: bool = true;
    const DENY: bool = true;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.from_endpoints.as_ref(),
            requires: self.from_requires.as_ref(),
            cidr: self.from_cidr.as_ref(),
            cidr_set: self.from_cidr_set.as_ref(),
            entities: self.from_entities.as_ref(),
            nodes: self.from_nodes.as_ref(),
            groups: self.from_groups.as_ref(),
            ..Default::default()
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Deny(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
}

impl Element for model::EgressRule {
    const LIST: &'static str = "egress";
    const INGRESS: bool = false;
    const DENY: bool = false;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.to_endpoints.as_ref(),
            requires: self.to_requires.as_ref(),
            cidr: self.to_cidr.as_ref(),
            cidr_set: self.to_cidr_set.as_ref(),
            entities: self.to_entities.as_ref(),
            nodes: self.to_nodes.as_ref(),
            groups: self.to_groups.as_ref(),
            services: self.to_services.as_ref(),
            fqdns: self.to_fqdns.as_ref(),
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Allow(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
    fn authentication(&self) -> Option<&model::Authentication> {
        self.authentication.as_ref()
    }
}

impl Element for model::EgressDenyRule {
    const LIST: &'static str = "egressDeny";
    const INGRESS: bool = false;
    const DENY: bool = true;
    fn peers(&self) -> PeerFields<'_> {
        PeerFields {
            endpoints: self.to_endpoints.as_ref(),
            requires: self.to_requires.as_ref(),
            cidr: self.to_cidr.as_ref(),
            cidr_set: self.to_cidr_set.as_ref(),
            entities: self.to_entities.as_ref(),
            nodes: self.to_nodes.as_ref(),
            groups: self.to_groups.as_ref(),
            services: self.to_services.as_ref(),
            ..Default::default()
        }
    }
    fn ports(&self) -> Ports<'_> {
        Ports::Deny(self.to_ports.as_deref().unwrap_or(&[]))
    }
    fn icmps(&self) -> Option<&[model::IcmpRule]> {
        self.icmps.as_deref()
    }
}

/// The compiled elements of one rule, and what their compilation shares.
#[derive(Default)]
struct ElementLists {
    host_policy: bool,
    matches_init: bool,
    ingress: Vec<DirRule>,
    egress: Vec<DirRule>,
    requires_ingress: Vec<Selector>,
    requires_egress: Vec<Selector>,
}

impl Cx {
    fn err(&mut self, path: &str, message: String) {
        self.errors.push(FieldError {
            path: path.to_owned(),
            message,
        });
    }

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
        let host_policy = matches!(subject, Some(Subject::Nodes(_)));
        let matches_init = match &r.endpoint_selector {
            Some(es) => self
                .selector("", es)
                .is_some_and(|s| s.has_key(SOURCE_RESERVED, "init")),
            None => false,
        };

        let mut lists = ElementLists {
            host_policy,
            matches_init,
            ..Default::default()
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
            let requires = if E::INGRESS {
                &mut out.requires_ingress
            } else {
                &mut out.requires_egress
            };
            let compiled = self.dir_rule(
                &p,
                E::INGRESS,
                E::DENY,
                &e.peers(),
                e.ports(),
                e.icmps(),
                auth,
                out.host_policy,
                out.matches_init,
                requires,
            );
            if E::INGRESS {
                out.ingress.extend(compiled);
            } else {
                out.egress.extend(compiled);
            }
        }
    }

    fn auth(&mut self, path: &str, a: Option<&model::Authentication>) -> Option<String> {
        let a = a?;
        match a.mode.as_str() {
            "disabled" => None,
            "required" | "test-always-fail" => Some(a.mode.clone()),
            other => {
                self.err(
                    &format!("{path}.authentication.mode"),
                    format!("{other:?} is not one of disabled, required, test-always-fail"),
                );
                None
            }
        }
    }

    fn selector(&mut self, path: &str, s: &LabelSelector) -> Option<Selector> {
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

    /// Cilium's scoping of peer selectors: a namespaced policy limits peers that name no
    /// namespace to its own; a cluster-wide one limits them to pods (any namespace).
    /// Reserved-label selectors are left alone for endpoint peers.
    fn scope_peer(&self, mut s: Selector, is_requires: bool, matches_init: bool) -> Selector {
        if !is_requires && s.has_source(SOURCE_RESERVED) {
            return s;
        }
        if s.has_key(SOURCE_K8S, labels::POD_NAMESPACE)
            || s.has_key(SOURCE_ANY, labels::POD_NAMESPACE)
        {
            return s;
        }
        match &self.namespace {
            None => {
                if !matches_init {
                    s.add_exists(SOURCE_K8S, labels::POD_NAMESPACE);
                }
            }
            Some(ns) => {
                let names_ns_labels = s.has_key_prefix(SOURCE_K8S, labels::NAMESPACE_LABELS_PREFIX)
                    || s.has_key_prefix(SOURCE_ANY, labels::NAMESPACE_LABELS_PREFIX);
                if !names_ns_labels && !matches_init {
                    s.add_match(SOURCE_K8S, labels::POD_NAMESPACE, ns);
                }
            }
        }
        s
    }

    #[allow(clippy::too_many_arguments)]
    fn dir_rule(
        &mut self,
        path: &str,
        ingress: bool,
        deny: bool,
        f: &PeerFields<'_>,
        ports: Ports<'_>,
        icmps: Option<&[model::IcmpRule]>,
        auth: Option<String>,
        host_policy: bool,
        matches_init: bool,
        requires_out: &mut Vec<Selector>,
    ) -> Option<DirRule> {
        let before = self.errors.len();
        let (pre, dir_word) = if ingress {
            ("from", "ingress")
        } else {
            ("to", "egress")
        };
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
        let port_count = match &ports {
            Ports::Allow(p) => p.len(),
            Ports::Deny(p) => p.len(),
        };
        if !ingress && f.services.is_some_and(|s| !s.is_empty()) && port_count > 0 {
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

        let mut peers = Vec::new();
        for (i, s) in f.endpoints.into_iter().flatten().enumerate() {
            if let Some(sel) = self.selector(&format!("{path}.{pre}Endpoints[{i}]"), s) {
                peers.push(Peer::Labels(self.scope_peer(sel, false, matches_init)));
            }
        }
        for (i, s) in f.requires.into_iter().flatten().enumerate() {
            if let Some(sel) = self.selector(&format!("{path}.{pre}Requires[{i}]"), s) {
                requires_out.push(self.scope_peer(sel, true, matches_init));
            }
        }
        for (i, c) in f.cidr.into_iter().flatten().enumerate() {
            match parse_cidr(c, true) {
                Ok(net) => peers.push(Peer::Cidr(net)),
                Err(_) if is_template_placeholder(c) => {
                    self.warnings.push(FieldError {
                        path: format!("{path}.{pre}CIDR[{i}]"),
                        message: format!("{c:?} is an unrendered template placeholder, not an address: it selects nothing until rendered"),
                    });
                    peers.push(Peer::Unresolved(format!("placeholder {c}")));
                }
                Err(m) => self.err(&format!("{path}.{pre}CIDR[{i}]"), m),
            }
        }
        for (i, c) in f.cidr_set.into_iter().flatten().enumerate() {
            let p = format!("{path}.{pre}CIDRSet[{i}]");
            match (&c.cidr, &c.cidr_group_ref) {
                (Some(_), Some(_)) => {
                    self.err(&p, "cidr and cidrGroupRef are mutually exclusive".into())
                }
                (None, None) => self.err(&p, "one of cidr or cidrGroupRef is required".into()),
                (None, Some(g)) => {
                    if !is_dns_label_path(g) {
                        self.err(
                            &format!("{p}.cidrGroupRef"),
                            format!("{g:?} is not a valid CiliumCIDRGroup name"),
                        );
                    }
                    peers.push(Peer::Unresolved(format!("cidrGroupRef {g}")));
                }
                (Some(cidr), None) => match parse_cidr(cidr, false) {
                    Err(m) => self.err(&format!("{p}.cidr"), m),
                    Ok(net) => {
                        let mut excepts = Vec::new();
                        for (j, e) in c.except.iter().flatten().enumerate() {
                            match parse_cidr(e, false) {
                                Err(m) => self.err(&format!("{p}.except[{j}]"), m),
                                Ok(ex)
                                    if !net.contains(&ex.network())
                                        || ex.prefix_len() < net.prefix_len() =>
                                {
                                    self.err(
                                        &format!("{p}.except[{j}]"),
                                        format!("{e:?} is not inside the rule's cidr {cidr:?}"),
                                    )
                                }
                                Ok(ex) => excepts.push(ex),
                            }
                        }
                        for part in subtract(net, &excepts) {
                            peers.push(Peer::Cidr(part));
                        }
                    }
                },
            }
        }
        for (i, e) in f.entities.into_iter().flatten().enumerate() {
            match entity_selectors(e) {
                Some(sels) => peers.extend(sels.into_iter().map(Peer::Labels)),
                None => self.err(
                    &format!("{path}.{pre}Entities[{i}]"),
                    format!("{e:?} is not an entity (expected one of all, world, cluster, host, init, ingress, unmanaged, remote-node, health, none, kube-apiserver)"),
                ),
            }
        }
        for (i, s) in f.nodes.into_iter().flatten().enumerate() {
            if let Some(sel) = self.selector(&format!("{path}.{pre}Nodes[{i}]"), s) {
                peers.push(Peer::Nodes(sel));
            }
        }
        for (i, g) in f.groups.into_iter().flatten().enumerate() {
            if g.aws.is_none() {
                self.err(
                    &format!("{path}.{pre}Groups[{i}]"),
                    "a group needs a provider (aws)".into(),
                );
            }
            peers.push(Peer::Unresolved(format!(
                "{pre}Groups[{i}] (cloud security groups)"
            )));
        }
        for (i, s) in f.services.into_iter().flatten().enumerate() {
            let p = format!("{path}.toServices[{i}]");
            match (&s.k8s_service, &s.k8s_service_selector) {
                (Some(_), Some(_)) => self.err(
                    &p,
                    "k8sService and k8sServiceSelector are mutually exclusive".into(),
                ),
                (None, None) => self.err(
                    &p,
                    "one of k8sService or k8sServiceSelector is required".into(),
                ),
                (Some(r), None) => {
                    let ns = r
                        .namespace
                        .clone()
                        .or_else(|| self.namespace.clone())
                        .unwrap_or_default();
                    peers.push(Peer::Unresolved(format!(
                        "toServices {ns}/{}",
                        r.service_name.as_deref().unwrap_or("")
                    )));
                }
                (None, Some(sel)) => {
                    self.selector(&format!("{p}.k8sServiceSelector.selector"), &sel.selector);
                    peers.push(Peer::Unresolved(format!(
                        "toServices selector {:?}",
                        sel.selector.match_labels
                    )));
                }
            }
        }
        for (i, q) in f.fqdns.into_iter().flatten().enumerate() {
            let p = format!("{path}.toFQDNs[{i}]");
            if let Some(name) = self.fqdn(&p, q) {
                peers.push(Peer::Unresolved(format!("toFQDNs {name}")));
            }
        }
        // An element that names no L3 peer but does name ports (or ICMP types) applies to
        // every peer; one that names neither, like `ingress: [{}]`, selects nobody.
        let wildcard_peers = present.is_empty() && (port_count > 0 || icmp_count > 0);

        let mut l4 = Vec::new();
        match ports {
            Ports::Allow(list) => {
                for (i, pr) in list.iter().enumerate() {
                    let p = format!("{path}.toPorts[{i}]");
                    self.port_rule(
                        &p,
                        ingress,
                        host_policy,
                        pr.ports.as_deref(),
                        Some(pr),
                        &mut l4,
                    );
                }
            }
            Ports::Deny(list) => {
                for (i, pr) in list.iter().enumerate() {
                    let p = format!("{path}.toPorts[{i}]");
                    self.port_rule(&p, ingress, host_policy, pr.ports.as_deref(), None, &mut l4);
                }
            }
        }
        for (i, ic) in icmps.into_iter().flatten().enumerate() {
            let p = format!("{path}.icmps[{i}]");
            let fields = ic.fields.as_deref().unwrap_or(&[]);
            if fields.len() > MAX_ICMP_FIELDS {
                self.err(
                    &format!("{p}.fields"),
                    format!(
                        "{} ICMP fields: at most {MAX_ICMP_FIELDS} are allowed",
                        fields.len()
                    ),
                );
            }
            for (j, fl) in fields.iter().enumerate() {
                let fp = format!("{p}.fields[{j}]");
                let v6 = match fl.family.as_deref() {
                    None | Some("") | Some("IPv4") => false,
                    Some("IPv6") => true,
                    Some(other) => {
                        self.err(
                            &format!("{fp}.family"),
                            format!("{other:?} is not IPv4 or IPv6"),
                        );
                        continue;
                    }
                };
                match icmp_type(&fl.icmp_type, v6) {
                    Ok(t) => l4.push(L4Rule {
                        proto: if v6 { Proto::Icmpv6 } else { Proto::Icmp },
                        ports: PortMatch::IcmpType(t),
                        l7: L7::None,
                        notes: vec![],
                        tls: None,
                    }),
                    Err(m) => self.err(&format!("{fp}.type"), m),
                }
            }
        }
        let _ = dir_word;
        if self.errors.len() > before {
            return None;
        }
        Some(DirRule {
            path: path.to_owned(),
            deny,
            peers,
            wildcard_peers,
            l4,
            auth,
        })
    }

    fn fqdn(&mut self, path: &str, q: &model::FqdnSelector) -> Option<String> {
        match (&q.match_name, &q.match_pattern) {
            (Some(_), Some(_)) => {
                self.err(
                    path,
                    "matchName and matchPattern are mutually exclusive".into(),
                );
                None
            }
            (None, None) => {
                self.err(path, "one of matchName or matchPattern is required".into());
                None
            }
            (Some(n), None) => {
                if !valid_dns(n, false) {
                    self.err(
                        &format!("{path}.matchName"),
                        format!("{n:?} is not a valid DNS name"),
                    );
                    return None;
                }
                Some(n.clone())
            }
            (None, Some(p)) => {
                if !valid_dns(p, true) {
                    self.err(
                        &format!("{path}.matchPattern"),
                        format!("{p:?} is not a valid DNS name pattern"),
                    );
                    return None;
                }
                Some(p.clone())
            }
        }
    }

    fn port_rule(
        &mut self,
        path: &str,
        ingress: bool,
        host_policy: bool,
        ports: Option<&[model::PortProtocol]>,
        allow: Option<&model::PortRule>,
        out: &mut Vec<L4Rule>,
    ) {
        let ports = ports.unwrap_or(&[]);
        if ports.len() > MAX_PORTS {
            self.err(
                &format!("{path}.ports"),
                format!(
                    "{} ports: at most {MAX_PORTS} are allowed in one rule",
                    ports.len()
                ),
            );
            return;
        }
        let rules = allow.and_then(|a| a.rules.as_ref());
        let has_rules = rules.is_some_and(|r| !l7_is_empty(r));
        let has_dns = rules.is_some_and(|r| r.dns.as_ref().is_some_and(|d| !d.is_empty()));
        let mut notes = Vec::new();
        let mut tls = None;
        if let Some(a) = allow {
            if ingress && has_dns {
                self.err(
                    &format!("{path}.rules.dns"),
                    "DNS rules are not allowed on ingress".into(),
                );
            }
            if host_policy && has_rules {
                self.err(
                    &format!("{path}.rules"),
                    "host policies (nodeSelector) do not support L7 rules".into(),
                );
            }
            let sni = a.server_names.as_deref().unwrap_or(&[]);
            if !sni.is_empty() && has_rules && a.terminating_tls.is_none() {
                self.err(
                    &format!("{path}.serverNames"),
                    "serverNames with L7 rules need terminatingTLS (the proxy cannot see inside TLS otherwise)".into(),
                );
            }
            for (i, s) in sni.iter().enumerate() {
                if s.is_empty() {
                    self.err(
                        &format!("{path}.serverNames[{i}]"),
                        "empty server name is not allowed".into(),
                    );
                }
            }
            if !sni.is_empty() {
                notes.push(format!("serverNames {}", sni.join(",")));
            }
            let mut sources = [None, None];
            for (slot, (name, ctx)) in sources.iter_mut().zip([
                ("terminatingTLS", &a.terminating_tls),
                ("originatingTLS", &a.originating_tls),
            ]) {
                if let Some(t) = ctx {
                    if t.secret.name.is_empty() {
                        self.err(
                            &format!("{path}.{name}.secret.name"),
                            "must not be empty".into(),
                        );
                    }
                    for (key, v) in [
                        ("certificate", &t.certificate),
                        ("privateKey", &t.private_key),
                        ("trustedCA", &t.trusted_ca),
                    ] {
                        if v.as_deref() == Some("") {
                            self.err(
                                &format!("{path}.{name}.{key}"),
                                "must not be empty when given (omit it for the default item)"
                                    .into(),
                            );
                        }
                    }
                    // A reference that names no namespace means the policy's own
                    // (`default` for cluster-wide policies).
                    let namespace = t
                        .secret
                        .namespace
                        .clone()
                        .filter(|n| !n.is_empty())
                        .or_else(|| self.namespace.clone())
                        .unwrap_or_else(|| "default".to_owned());
                    notes.push(format!("{name} secret {namespace}/{}", t.secret.name));
                    *slot = Some(TlsSource::Secret {
                        namespace,
                        name: t.secret.name.clone(),
                        certificate: t.certificate.clone(),
                        private_key: t.private_key.clone(),
                        trusted_ca: t.trusted_ca.clone(),
                    });
                }
            }
            let [terminating, originating] = sources;
            if !sni.is_empty() || terminating.is_some() || originating.is_some() {
                tls = Some(Arc::new(PortTls {
                    server_names: sni
                        .iter()
                        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                        .collect(),
                    terminating,
                    originating,
                }));
            }
            if let Some(l) = &a.listener {
                if ingress {
                    self.err(
                        &format!("{path}.listener"),
                        format!("listener {:?} is not allowed on ingress", l.name),
                    );
                }
                if has_rules {
                    self.err(
                        &format!("{path}.listener"),
                        format!("listener {:?} is not allowed with L7 rules", l.name),
                    );
                }
                if let Some(k) = &l.envoy_config.kind {
                    if k != "CiliumEnvoyConfig" && k != "CiliumClusterwideEnvoyConfig" {
                        self.err(
                            &format!("{path}.listener.envoyConfig.kind"),
                            format!(
                                "{k:?} is not CiliumEnvoyConfig or CiliumClusterwideEnvoyConfig"
                            ),
                        );
                    }
                }
                notes.push(format!("listener {}/{}", l.envoy_config.name, l.name));
            }
        }

        let mut parsed = Vec::new();
        let mut zero_port = false;
        for (i, pp) in ports.iter().enumerate() {
            let p = format!("{path}.ports[{i}]");
            let proto = match pp.protocol.as_deref() {
                None | Some("") | Some("ANY") => Proto::Any,
                Some("TCP") => Proto::Tcp,
                Some("UDP") => Proto::Udp,
                Some("SCTP") => Proto::Sctp,
                Some(other) => {
                    self.err(
                        &format!("{p}.protocol"),
                        format!("{other:?} is not one of TCP, UDP, SCTP, ANY"),
                    );
                    continue;
                }
            };
            let Some(pm) = self.port(&p, pp, has_dns) else {
                continue;
            };
            if pm == PortMatch::ALL {
                zero_port = true;
            }
            if has_rules && !has_dns && proto != Proto::Tcp {
                self.err(
                    &format!("{p}.protocol"),
                    format!(
                        "L7 rules apply only to TCP (found {}); only DNS rules may use UDP or ANY",
                        proto.as_str()
                    ),
                );
            }
            parsed.push((proto, pm));
        }
        if ports.is_empty() {
            parsed.push((Proto::Any, PortMatch::ALL));
            if has_dns {
                self.err(
                    &format!("{path}.ports"),
                    "DNS rules need port 53 to be listed".into(),
                );
            }
        }
        let l7 = match rules {
            Some(r) if has_rules || r.l7.is_some() => {
                if zero_port && has_rules {
                    self.err(
                        &format!("{path}.rules"),
                        "L7 rules cannot be used when a port is 0 (every port)".into(),
                    );
                }
                self.l7(&format!("{path}.rules"), r)
            }
            _ => L7::None,
        };
        for (proto, ports) in parsed {
            out.push(L4Rule {
                proto,
                ports,
                l7: l7.clone(),
                notes: notes.clone(),
                tls: tls.clone(),
            });
        }
    }

    fn port(&mut self, path: &str, pp: &model::PortProtocol, has_dns: bool) -> Option<PortMatch> {
        let s = pp.port.trim();
        if s.is_empty() {
            self.err(
                &format!("{path}.port"),
                "must be set (a port number, 0 for every port, or a port name)".into(),
            );
            return None;
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let Ok(n) = s.parse::<u32>() else {
                self.err(
                    &format!("{path}.port"),
                    format!("{s:?} is not a port number (0-65535)"),
                );
                return None;
            };
            if n > 65535 {
                self.err(
                    &format!("{path}.port"),
                    format!("{n} is not a port number (0-65535)"),
                );
                return None;
            }
            let start = n as u16;
            match pp.end_port {
                None | Some(0) => Some(if start == 0 {
                    PortMatch::ALL
                } else {
                    PortMatch::Range(start, start)
                }),
                Some(end) => {
                    if has_dns && end > i64::from(start) {
                        self.err(
                            &format!("{path}.endPort"),
                            "DNS rules do not support port ranges".into(),
                        );
                        return None;
                    }
                    if start == 0 {
                        self.err(
                            &format!("{path}.endPort"),
                            "a range cannot start at port 0".into(),
                        );
                        return None;
                    }
                    if !(i64::from(start)..=65535).contains(&end) {
                        self.err(
                            &format!("{path}.endPort"),
                            format!("{end} is not a valid end of a range starting at {start} (expected {start}-65535)"),
                        );
                        return None;
                    }
                    Some(PortMatch::Range(start, end as u16))
                }
            }
        } else if is_iana_service_name(s) {
            if pp.end_port.is_some_and(|e| e != 0) {
                self.err(
                    &format!("{path}.endPort"),
                    format!("a range cannot start at the named port {s:?}"),
                );
                return None;
            }
            Some(PortMatch::Named(s.to_ascii_lowercase()))
        } else {
            self.err(
                &format!("{path}.port"),
                format!("{s:?} is not a port number or a port name"),
            );
            None
        }
    }

    fn l7(&mut self, path: &str, r: &model::L7Rules) -> L7 {
        let mut kinds = Vec::new();
        let mut result = L7::None;
        if let Some(http) = &r.http {
            kinds.push("http");
            let mut compiled = Vec::new();
            for (i, h) in http.iter().enumerate() {
                match CompiledHttpRule::compile(h, self.namespace.as_deref()) {
                    Ok(c) => compiled.push(c),
                    Err(e) => self.err(&format!("{path}.http[{i}].{}", e.field), e.message),
                }
            }
            result = L7::Http(compiled.into());
        }
        if let Some(k) = &r.kafka {
            kinds.push("kafka");
            for (i, kr) in k.iter().enumerate() {
                self.kafka(&format!("{path}.kafka[{i}]"), kr);
            }
            result = L7::Unenforced("kafka".into());
        }
        if let Some(d) = &r.dns {
            kinds.push("dns");
            for (i, q) in d.iter().enumerate() {
                self.fqdn(&format!("{path}.dns[{i}]"), q);
            }
            result = L7::Unenforced("dns".into());
        }
        if r.l7.is_some() && r.l7proto.as_deref().is_none_or(str::is_empty) {
            self.err(
                &format!("{path}.l7"),
                "l7 rules need l7proto to name their parser".into(),
            );
        }
        if let Some(p) = r.l7proto.as_deref().filter(|p| !p.is_empty()) {
            kinds.push("l7proto");
            result = L7::Unenforced(format!("l7proto {p}"));
        }
        if kinds.len() > 1 {
            self.err(
                path,
                format!(
                    "one L7 protocol per port rule: found {}",
                    kinds.join(" and ")
                ),
            );
        } else if let L7::Unenforced(_) = &result {
            // Cilium accepts these, and so does membrane; but nothing here checks their
            // messages, so the user must learn what happens instead.
            let (field, what) = match kinds[0] {
                "kafka" => ("kafka", "Kafka rules".to_owned()),
                "dns" => ("dns", "DNS rules".to_owned()),
                _ => (
                    "l7proto",
                    format!("l7proto {:?} rules", r.l7proto.as_deref().unwrap_or("")),
                ),
            };
            self.warnings.push(FieldError {
                path: format!("{path}.{field}"),
                message: format!(
                    "{what} are not enforced by membrane: the peers and ports this rule covers are denied (fail closed) unless membrane runs with --unenforced-l7 l4-only, which allows them at L4 without the rules"
                ),
            });
        }
        result
    }

    fn kafka(&mut self, path: &str, k: &model::KafkaRule) {
        const API_KEYS: &[&str] = &[
            "produce",
            "fetch",
            "offsets",
            "metadata",
            "leaderandisr",
            "stopreplica",
            "updatemetadata",
            "controlledshutdown",
            "offsetcommit",
            "offsetfetch",
            "findcoordinator",
            "joingroup",
            "heartbeat",
            "leavegroup",
            "syncgroup",
            "describegroups",
            "listgroups",
            "saslhandshake",
            "apiversions",
            "createtopics",
            "deletetopics",
        ];
        if let Some(role) = k.role.as_deref().filter(|r| !r.is_empty()) {
            if role != "produce" && role != "consume" {
                self.err(
                    &format!("{path}.role"),
                    format!("{role:?} is not produce or consume"),
                );
            }
            if k.api_key.as_deref().is_some_and(|a| !a.is_empty()) {
                self.err(path, "role and apiKey are mutually exclusive".into());
            }
        }
        if let Some(a) = k.api_key.as_deref().filter(|a| !a.is_empty()) {
            if !API_KEYS.contains(&a.to_ascii_lowercase().as_str()) && a.parse::<i16>().is_err() {
                self.err(
                    &format!("{path}.apiKey"),
                    format!("{a:?} is not a Kafka API key"),
                );
            }
        }
        if let Some(v) = k.api_version.as_deref().filter(|v| !v.is_empty()) {
            if v.parse::<i16>().is_err() {
                self.err(
                    &format!("{path}.apiVersion"),
                    format!("{v:?} is not a number"),
                );
            }
        }
        if let Some(t) = k.topic.as_deref().filter(|t| !t.is_empty()) {
            let ok = t.len() <= 255
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                self.err(
                    &format!("{path}.topic"),
                    format!("{t:?} is not a valid Kafka topic name"),
                );
            }
        }
    }
}

fn l7_is_empty(r: &model::L7Rules) -> bool {
    r.http.as_ref().is_none_or(Vec::is_empty)
        && r.kafka.as_ref().is_none_or(Vec::is_empty)
        && r.dns.as_ref().is_none_or(Vec::is_empty)
        && r.l7proto.as_deref().is_none_or(str::is_empty)
}

#[cfg(test)]
mod tests;
