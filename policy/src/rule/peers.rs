//! An element's L3 peers: the peer fields of the four element kinds, gathered, and their
//! compilation with Cilium's namespace scoping of peer selectors.

use super::compile::{Cx, SubjectKind};
use super::*;

/// The L3 peer fields of one ingress/egress element, gathered so allow and deny rules of
/// both directions share one validation and compilation path.
#[derive(Default)]
pub(super) struct PeerFields<'a> {
    pub(super) endpoints: Option<&'a Vec<LabelSelector>>,
    pub(super) requires: Option<&'a Vec<LabelSelector>>,
    pub(super) cidr: Option<&'a Vec<String>>,
    pub(super) cidr_set: Option<&'a Vec<model::CidrRule>>,
    pub(super) entities: Option<&'a Vec<String>>,
    pub(super) nodes: Option<&'a Vec<LabelSelector>>,
    pub(super) groups: Option<&'a Vec<model::Groups>>,
    pub(super) services: Option<&'a Vec<model::Service>>,
    pub(super) fqdns: Option<&'a Vec<model::FqdnSelector>>,
}

/// What a peer selector is used for, which decides how it is scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SelectorRole {
    /// A peer (`fromEndpoints`, `toEndpoints`): reserved-label selectors are left alone.
    Peer,
    /// A constraint on peers (`fromRequires`, `toRequires`): always scoped.
    Requires,
}

impl Cx {
    /// Compiles an element's L3 peers, in field order; `…Requires` selectors go to
    /// `requires_out` since they constrain the rule's other peers rather than add one.
    pub(super) fn peers(
        &mut self,
        path: &str,
        pre: &str,
        f: &PeerFields<'_>,
        subject: SubjectKind,
        requires_out: &mut Vec<Selector>,
    ) -> Vec<Peer> {
        let mut peers = Vec::new();
        for (i, s) in f.endpoints.into_iter().flatten().enumerate() {
            if let Some(sel) = self.selector(&format!("{path}.{pre}Endpoints[{i}]"), s) {
                peers.push(Peer::Labels(self.scope_peer(
                    sel,
                    SelectorRole::Peer,
                    subject,
                )));
            }
        }
        for (i, s) in f.requires.into_iter().flatten().enumerate() {
            if let Some(sel) = self.selector(&format!("{path}.{pre}Requires[{i}]"), s) {
                requires_out.push(self.scope_peer(sel, SelectorRole::Requires, subject));
            }
        }
        self.cidr_peers(path, pre, f, &mut peers);
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
        peers
    }

    /// namespace to its own; a cluster-wide one limits them to pods (any namespace).
    /// Reserved-label selectors are left alone for endpoint peers.
    fn scope_peer(&self, mut s: Selector, role: SelectorRole, subject: SubjectKind) -> Selector {
        // As Cilium does: a subject that selects `reserved:init` leaves its peers unscoped.
        let matches_init = subject == SubjectKind::InitEndpoints;
        if role == SelectorRole::Peer && s.has_source(SOURCE_RESERVED) {
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
}
