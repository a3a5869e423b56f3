//! Resolution: from the rules that select an endpoint to its explicit per-direction policy.
//!
//! A [`ResolvedPolicy`] lists, per direction, each (protocol, ports) entry and under it every
//! contributing rule with the exact remote identities it covers, whether it allows or
//! denies, its L7 rules and the policy rule it came from. It is ordered and comparable, so
//! consumers (xDS translation, BPF map programming) can diff two resolutions cheaply. The
//! verdict functions here are the one implementation of Cilium's semantics that the proxy,
//! the control plane and `membrane policy trace` all use:
//! - a direction is under policy once any selecting rule has rules for it, and in default
//!   deny unless every such rule set `enableDefaultDeny` off for it;
//! - deny beats allow;
//! - an L4 allow without L7 rules for a peer and port allows all of that port's HTTP for
//!   that peer, even if another rule attaches HTTP rules to the same port;
//! - otherwise, if HTTP rules apply, the request must match one of them.

use crate::http::{HeaderAction, HttpRequest};
use crate::identity::{Identity, IdentityInfo};
use crate::labels::{LabelSet, SOURCE_RESERVED};
use crate::rule::{
    CompiledPolicy, CompiledRule, DirRule, Peer, PolicyKey, PortMatch, PortTls, Proto, Subject, L7,
};
use crate::selector::Selector;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

/// Named container ports: name → port numbers.
pub type NamedPorts = BTreeMap<String, BTreeSet<u16>>;

/// An endpoint to resolve policy for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Its labels (pods carry `k8s:io.kubernetes.pod.namespace` and the cluster label).
    pub labels: LabelSet,
    /// Its own named ports (for ingress rules that name ports).
    pub named_ports: NamedPorts,
}

/// Traffic direction, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

/// The policy rule an entry came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleOrigin {
    /// The policy object.
    pub policy: PolicyKey,
    /// Path of the rule element, e.g. `spec.ingress[0]`.
    pub rule: String,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.policy.kind.as_str(),
            self.policy,
            self.rule
        )
    }
}

/// The remote identities a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remotes {
    /// Every identity, present and future.
    All,
    /// Exactly these, sorted.
    Set(Arc<[Identity]>),
}

impl Remotes {
    /// Membership test.
    pub fn contains(&self, id: Identity) -> bool {
        match self {
            Remotes::All => true,
            Remotes::Set(s) => s.binary_search(&id).is_ok(),
        }
    }
}

/// One contributing rule under a port entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// A deny rule.
    pub deny: bool,
    /// Who it covers.
    pub remotes: Remotes,
    /// Its L7 rules.
    pub l7: L7,
    /// Where it came from.
    pub origin: RuleOrigin,
    /// `authentication.mode` it requires, if any.
    pub auth: Option<String>,
    /// Peers of the rule the engine could not resolve (toFQDNs, toServices, ...).
    pub unresolved: Vec<String>,
    /// TLS/listener settings the rule carries.
    pub notes: Vec<String>,
    /// serverNames and TLS contexts of the rule's `toPorts` entry.
    pub tls: Option<Arc<PortTls>>,
}

impl PeerEntry {
    /// Whether the rule applies to a connection that indicated `sni` (`None`: no TLS or no
    /// SNI). Only allow rules carry serverNames.
    pub fn admits_sni(&self, sni: Option<&str>) -> bool {
        self.tls.as_ref().is_none_or(|t| t.admits(sni))
    }
}

/// All rules for one (protocol, ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// Protocol.
    pub proto: Proto,
    /// Ports.
    pub ports: PortMatch,
    /// Contributing rules, deny rules first.
    pub rules: Vec<PeerEntry>,
}

impl PortEntry {
    /// True if this entry applies to a flow of `proto` to `port` (the ICMP type for ICMP).
    /// A named port nobody resolved covers nothing.
    pub fn covers(&self, proto: Proto, port: u16) -> bool {
        if !self.proto.covers(proto) {
            return false;
        }
        match &self.ports {
            PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortMatch::IcmpType(t) => u16::from(*t) == port,
            PortMatch::Named(_) => false,
        }
    }
}

/// What rules of an L7 protocol membrane does not enforce (Kafka, DNS, a generic
/// `l7proto`) do for the peers and ports they cover. Cilium would send such traffic to a
/// proxy that checks each message; membrane has none, so by default it refuses the
/// traffic rather than let the rule become an L4 allow of everything on the port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UnenforcedL7Mode {
    /// Denied (the default): the rule allows nothing, as if no message matched it.
    #[default]
    FailClosed,
    /// Allowed at L4, without the L7 rules (an explicit setting, `l4-only`).
    L4Only,
}

impl UnenforcedL7Mode {
    /// The setting's name: `fail-closed` or `l4-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnenforcedL7Mode::FailClosed => "fail-closed",
            UnenforcedL7Mode::L4Only => "l4-only",
        }
    }

    /// What a rule with `kind` rules (`kafka`, `dns`, `l7proto NAME`) does under this
    /// setting, as decisions and traces report it.
    pub fn explain(self, kind: &str) -> String {
        match self {
            UnenforcedL7Mode::FailClosed => format!(
                "{kind} rules are not enforced by membrane: denied (fail closed; the setting --unenforced-l7 l4-only allows such traffic at L4 without them)"
            ),
            UnenforcedL7Mode::L4Only => format!(
                "{kind} rules are not enforced by membrane: allowed at L4 without them (--unenforced-l7 l4-only)"
            ),
        }
    }
}

impl fmt::Display for UnenforcedL7Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UnenforcedL7Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail-closed" => Ok(UnenforcedL7Mode::FailClosed),
            "l4-only" => Ok(UnenforcedL7Mode::L4Only),
            other => Err(format!(
                "{other:?} is not an unenforced-L7 setting (expected fail-closed or l4-only)"
            )),
        }
    }
}

/// The resolved policy of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    /// Some rule puts this direction under policy.
    pub enforced: bool,
    /// Traffic no rule allows is dropped (false only when every selecting rule turned
    /// default deny off).
    pub default_deny: bool,
    /// Port entries, ordered by (protocol, ports).
    pub entries: Vec<PortEntry>,
    /// Policies that select the endpoint in this direction.
    pub selected_by: Vec<PolicyKey>,
    /// What rules of L7 protocols membrane does not enforce do here.
    pub unenforced_l7: UnenforcedL7Mode,
}

/// An endpoint's resolved policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedPolicy {
    /// Into the endpoint.
    pub ingress: DirectionPolicy,
    /// Out of the endpoint.
    pub egress: DirectionPolicy,
    /// Repository revision it was computed from.
    pub revision: u64,
}

impl ResolvedPolicy {
    /// The policy of one direction.
    pub fn direction(&self, d: Direction) -> &DirectionPolicy {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Traffic passes.
    Allowed,
    /// Traffic is dropped (L3/L4) or answered 403 (L7).
    Denied,
}

impl Verdict {
    /// `allowed` / `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
        }
    }
}

/// What a connection (remote identity, protocol, port) is subject to. Computed once per
/// connection by the proxy; each request is then checked with [`ConnPolicy::check_http`].
#[derive(Debug, Clone)]
pub enum ConnPolicy<'a> {
    /// No rule puts this direction under policy.
    NotEnforced,
    /// Dropped at L3/L4; `None` is default deny.
    Denied(Option<&'a PeerEntry>),
    /// Allowed with no L7 restriction, by this rule (`None`: default allow).
    Allowed(Option<&'a PeerEntry>),
    /// Allowed at L4; each request must match one of these rules' HTTP rules.
    Http(Vec<&'a PeerEntry>),
    /// Denied: this allow rule's L7 rules are of a protocol membrane does not enforce, and
    /// the setting is [`UnenforcedL7Mode::FailClosed`] (see [`ConnPolicy::note`]).
    UnenforcedL7Denied(&'a PeerEntry),
    /// Allowed at L4 without this rule's L7 rules, of a protocol membrane does not
    /// enforce: the setting is [`UnenforcedL7Mode::L4Only`].
    UnenforcedL7AllowedL4(&'a PeerEntry),
}

/// The decision on one request.
#[derive(Debug, Clone)]
pub struct HttpDecision<'a> {
    /// The verdict.
    pub verdict: Verdict,
    /// The rule that decided, if one did.
    pub decided_by: Option<&'a PeerEntry>,
    /// Index of the matching HTTP rule within it.
    pub http_rule: Option<usize>,
    /// Header changes the matching rule asks for.
    pub header_actions: Vec<HeaderAction>,
}

impl<'a> ConnPolicy<'a> {
    /// The L3/L4 verdict.
    pub fn l4_verdict(&self) -> Verdict {
        match self {
            ConnPolicy::Denied(_) | ConnPolicy::UnenforcedL7Denied(_) => Verdict::Denied,
            ConnPolicy::NotEnforced
            | ConnPolicy::Allowed(_)
            | ConnPolicy::Http(_)
            | ConnPolicy::UnenforcedL7AllowedL4(_) => Verdict::Allowed,
        }
    }

    /// Why the verdict is what it is, beyond the rule that decided, when that matters to
    /// whoever reads a denial or an allow: today, the handling of L7 rules membrane does
    /// not enforce.
    pub fn note(&self) -> Option<String> {
        let (e, mode) = match self {
            ConnPolicy::UnenforcedL7Denied(e) => (e, UnenforcedL7Mode::FailClosed),
            ConnPolicy::UnenforcedL7AllowedL4(e) => (e, UnenforcedL7Mode::L4Only),
            _ => return None,
        };
        match &e.l7 {
            L7::Unenforced(kind) => Some(mode.explain(kind)),
            _ => None,
        }
    }

    /// True when requests on this connection need L7 inspection.
    pub fn needs_http(&self) -> bool {
        matches!(self, ConnPolicy::Http(_))
    }

    /// Decides one request.
    pub fn check_http(&self, req: &HttpRequest<'_>) -> HttpDecision<'a> {
        let simple = |verdict, by| HttpDecision {
            verdict,
            decided_by: by,
            http_rule: None,
            header_actions: vec![],
        };
        match self {
            ConnPolicy::NotEnforced => simple(Verdict::Allowed, None),
            ConnPolicy::Denied(by) => simple(Verdict::Denied, *by),
            ConnPolicy::Allowed(by) => simple(Verdict::Allowed, *by),
            ConnPolicy::UnenforcedL7Denied(by) => simple(Verdict::Denied, Some(*by)),
            ConnPolicy::UnenforcedL7AllowedL4(by) => simple(Verdict::Allowed, Some(*by)),
            ConnPolicy::Http(entries) => {
                for e in entries {
                    if let L7::Http(rules) = &e.l7 {
                        for (i, r) in rules.iter().enumerate() {
                            if let Some(actions) = r.check(req) {
                                return HttpDecision {
                                    verdict: Verdict::Allowed,
                                    decided_by: Some(e),
                                    http_rule: Some(i),
                                    header_actions: actions,
                                };
                            }
                        }
                    }
                }
                // No HTTP rule matched: the rule whose HTTP rules refused it decided.
                simple(Verdict::Denied, entries.first().copied())
            }
        }
    }
}

impl DirectionPolicy {
    /// What a connection from/to `remote` on (`proto`, `port`) is subject to, for a layer
    /// that cannot see TLS (rules with serverNames count as matching; the proxy narrows
    /// them with [`DirectionPolicy::connection_sni`]). For ICMP, `port` is the ICMP type.
    pub fn connection(&self, remote: Identity, proto: Proto, port: u16) -> ConnPolicy<'_> {
        self.connection_filtered(remote, proto, port, |_| true)
    }

    /// [`DirectionPolicy::connection`] for a connection whose TLS ClientHello indicated
    /// `sni` (`None`: not TLS, or no SNI): allow rules with serverNames apply only when one
    /// of their names was indicated (Cilium: with serverNames, TLS must be present).
    pub fn connection_sni(
        &self,
        remote: Identity,
        proto: Proto,
        port: u16,
        sni: Option<&str>,
    ) -> ConnPolicy<'_> {
        self.connection_filtered(remote, proto, port, |r| r.admits_sni(sni))
    }

    /// The TLS settings the proxy applies to a connection from/to `remote` on (`proto`,
    /// `port`) that indicated `sni`: those of the first allow rule (in entry order) that
    /// applies to it and carries a TLS context. `None`: no TLS context applies.
    pub fn tls_for(
        &self,
        remote: Identity,
        proto: Proto,
        port: u16,
        sni: Option<&str>,
    ) -> Option<&Arc<PortTls>> {
        self.entries
            .iter()
            .filter(|e| e.covers(proto, port))
            .flat_map(|e| e.rules.iter())
            .filter(|r| !r.deny && r.remotes.contains(remote) && r.admits_sni(sni))
            .filter_map(|r| r.tls.as_ref())
            .find(|t| t.terminating.is_some() || t.originating.is_some())
    }

    /// Whether any rule on (`proto`, `port`) carries serverNames or a TLS context, so the
    /// proxy must read the TLS ClientHello before deciding.
    pub fn inspects_tls(&self, proto: Proto, port: u16) -> bool {
        self.enforced
            && self
                .entries
                .iter()
                .filter(|e| e.covers(proto, port))
                .flat_map(|e| e.rules.iter())
                .any(|r| r.tls.is_some())
    }

    fn connection_filtered(
        &self,
        remote: Identity,
        proto: Proto,
        port: u16,
        admit: impl Fn(&PeerEntry) -> bool,
    ) -> ConnPolicy<'_> {
        if !self.enforced {
            return ConnPolicy::NotEnforced;
        }
        let matching = || {
            self.entries
                .iter()
                .filter(move |e| e.covers(proto, port))
                .flat_map(|e| e.rules.iter())
                .filter(|r| r.remotes.contains(remote) && admit(r))
        };
        if let Some(d) = matching().find(|r| r.deny) {
            return ConnPolicy::Denied(Some(d));
        }
        if let Some(a) = matching().find(|r| !r.deny && r.l7 == L7::None) {
            return ConnPolicy::Allowed(Some(a));
        }
        let http: Vec<&PeerEntry> = matching()
            .filter(|r| !r.deny && matches!(r.l7, L7::Http(_)))
            .collect();
        if !http.is_empty() {
            return ConnPolicy::Http(http);
        }
        // Checked after L4-only and HTTP allows: those would admit the peer in Cilium too
        // (an L4 allow opens all of a port's L7), so only what this rule alone would admit
        // is refused.
        if let Some(u) = matching().find(|r| !r.deny && matches!(r.l7, L7::Unenforced(_))) {
            return match self.unenforced_l7 {
                UnenforcedL7Mode::FailClosed => ConnPolicy::UnenforcedL7Denied(u),
                UnenforcedL7Mode::L4Only => ConnPolicy::UnenforcedL7AllowedL4(u),
            };
        }
        if self.default_deny {
            ConnPolicy::Denied(None)
        } else {
            ConnPolicy::Allowed(None)
        }
    }

    /// HTTP rules that could apply on (`proto`, `port`) to anyone; used to tell whether a
    /// port needs the L7 proxy at all.
    pub fn has_http_on(&self, proto: Proto, port: u16) -> bool {
        self.entries
            .iter()
            .filter(|e| e.covers(proto, port))
            .flat_map(|e| e.rules.iter())
            .any(|r| matches!(r.l7, L7::Http(_)))
    }
}

/// The identities known to the engine and, for each peer selector in use, the identities
/// it selects. Sharing one set between all rules that use the same selector is what keeps
/// resolution cheap.
#[derive(Debug, Default)]
pub struct SelectorCache {
    identities: BTreeMap<Identity, IdentityInfo>,
    cache: HashMap<Peer, Arc<[Identity]>>,
}

impl SelectorCache {
    /// An empty universe with Cilium's reserved identities.
    pub fn new() -> Self {
        let mut c = SelectorCache::default();
        for (n, name) in crate::identity::RESERVED {
            c.identities
                .insert(Identity(*n), IdentityInfo::reserved(name));
        }
        c
    }

    /// Adds or replaces an identity; returns the cached peers whose selection changed.
    pub fn upsert_identity(&mut self, id: Identity, info: IdentityInfo) -> Vec<Peer> {
        let old = self.identities.insert(id, info.clone());
        let mut changed = Vec::new();
        for (peer, set) in self.cache.iter_mut() {
            let was = old.as_ref().is_some_and(|o| peer_matches(peer, o));
            let is = peer_matches(peer, &info);
            if was != is {
                let mut v: Vec<Identity> = set.iter().copied().filter(|x| *x != id).collect();
                if is {
                    let pos = v.binary_search(&id).unwrap_or_else(|p| p);
                    v.insert(pos, id);
                }
                *set = v.into();
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// Removes an identity; returns the cached peers whose selection changed.
    pub fn remove_identity(&mut self, id: Identity) -> Vec<Peer> {
        if self.identities.remove(&id).is_none() {
            return vec![];
        }
        let mut changed = Vec::new();
        for (peer, set) in self.cache.iter_mut() {
            if set.binary_search(&id).is_ok() {
                *set = set
                    .iter()
                    .copied()
                    .filter(|x| *x != id)
                    .collect::<Vec<_>>()
                    .into();
                changed.push(peer.clone());
            }
        }
        changed
    }

    /// What an identity stands for.
    pub fn info(&self, id: Identity) -> Option<&IdentityInfo> {
        self.identities.get(&id)
    }

    /// Every known identity.
    pub fn identities(&self) -> impl Iterator<Item = (Identity, &IdentityInfo)> {
        self.identities.iter().map(|(i, n)| (*i, n))
    }

    /// The identities `peer` selects, sorted.
    pub fn select(&mut self, peer: &Peer) -> Arc<[Identity]> {
        if let Some(s) = self.cache.get(peer) {
            return s.clone();
        }
        let set: Arc<[Identity]> = self
            .identities
            .iter()
            .filter(|(_, info)| peer_matches(peer, info))
            .map(|(id, _)| *id)
            .collect();
        self.cache.insert(peer.clone(), set.clone());
        set
    }

    /// Drops cached selections no rule uses any more.
    pub fn retain(&mut self, keep: impl Fn(&Peer) -> bool) {
        self.cache.retain(|p, _| keep(p));
    }
}

/// Whether `peer` selects an identity.
pub fn peer_matches(peer: &Peer, info: &IdentityInfo) -> bool {
    match peer {
        Peer::Labels(sel) => sel.matches(&info.labels),
        Peer::Cidr(net) => match info.cidr {
            Some(c) => net.contains(&c),
            // The all-addresses prefix also selects the plain world identities, as Cilium
            // treats 0.0.0.0/0 and ::/0 as the world entity.
            None => net.prefix_len() == 0 && is_world(&info.labels, net),
        },
        Peer::Nodes(sel) => {
            (info.labels.has_key(SOURCE_RESERVED, "remote-node")
                || info.labels.has_key(SOURCE_RESERVED, "host"))
                && sel.matches(&info.labels)
        }
        Peer::Unresolved(_) => false,
    }
}

fn is_world(labels: &LabelSet, net: &IpNet) -> bool {
    let fam = match net {
        IpNet::V4(_) => "world-ipv4",
        IpNet::V6(_) => "world-ipv6",
    };
    labels.has_key(SOURCE_RESERVED, "world") || labels.has_key(SOURCE_RESERVED, fam)
}

/// The set of policies in force. Policies are replaced whole, by key.
///
/// Rules are indexed by one exact label their subject requires (the most specific one:
/// not the namespace when another is available), so finding the rules that select an
/// endpoint looks only at rules sharing one of its labels, plus the few with no exact
/// requirement; resolution cost then grows with the rules that matter, not all of them.
#[derive(Debug, Clone, Default)]
pub struct Repository {
    policies: BTreeMap<PolicyKey, Arc<CompiledPolicy>>,
    revision: u64,
    /// (label key, value) → rules whose subject requires exactly that label.
    by_label: HashMap<(String, String), Vec<(PolicyKey, usize)>>,
    /// Rules whose subject requires no single exact label.
    unindexed: BTreeSet<(PolicyKey, usize)>,
    /// How many rules name each CIDR prefix.
    cidr_refs: BTreeMap<IpNet, usize>,
    /// Peer selector → rules naming it, to find who a changed selection affects.
    by_peer: HashMap<Peer, Vec<(PolicyKey, usize)>>,
    /// Rules with fromRequires/toRequires (they narrow other rules' peers).
    with_requires: BTreeSet<(PolicyKey, usize)>,
    /// What rules of L7 protocols membrane does not enforce do.
    unenforced_l7: UnenforcedL7Mode,
}

/// The exact label a subject is indexed by, if any.
pub(crate) fn index_label(subject: &Subject) -> Option<(String, String)> {
    let Subject::Endpoints(sel) = subject else {
        return None;
    };
    let exact = |r: &&crate::selector::Requirement| match &r.op {
        crate::selector::Operator::In(v) if v.len() == 1 => Some((r.key.clone(), v[0].clone())),
        _ => None,
    };
    let reqs = sel.requirements();
    reqs.iter()
        .filter(|r| r.key != crate::labels::POD_NAMESPACE)
        .find_map(|r| exact(&r))
        .or_else(|| reqs.iter().find_map(|r| exact(&r)))
}

fn rule_peers(r: &CompiledRule) -> impl Iterator<Item = &Peer> {
    let mut seen: Vec<&Peer> = r
        .ingress
        .iter()
        .chain(r.egress.iter())
        .flat_map(|d| d.peers.iter())
        .collect();
    seen.sort();
    seen.dedup();
    seen.into_iter()
}

fn cidrs_of(p: &CompiledPolicy) -> impl Iterator<Item = IpNet> + '_ {
    p.rules
        .iter()
        .flat_map(|r| r.ingress.iter().chain(r.egress.iter()))
        .flat_map(|d| d.peers.iter())
        .filter_map(|peer| {
            if let Peer::Cidr(c) = peer {
                Some(*c)
            } else {
                None
            }
        })
}

impl Repository {
    /// An empty repository.
    pub fn new() -> Self {
        Repository {
            revision: 1,
            ..Default::default()
        }
    }

    /// Adds or replaces a policy; returns the one it replaced.
    pub fn upsert(&mut self, p: Arc<CompiledPolicy>) -> Option<Arc<CompiledPolicy>> {
        self.revision += 1;
        let old = self.policies.insert(p.key.clone(), p.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.index(&p);
        old
    }

    /// Removes a policy.
    pub fn remove(&mut self, key: &PolicyKey) -> Option<Arc<CompiledPolicy>> {
        let old = self.policies.remove(key);
        if let Some(old) = &old {
            self.revision += 1;
            self.unindex(old);
        }
        old
    }

    fn index(&mut self, p: &CompiledPolicy) {
        for (i, r) in p.rules.iter().enumerate() {
            match index_label(&r.subject) {
                Some(l) => self.by_label.entry(l).or_default().push((p.key.clone(), i)),
                None => {
                    self.unindexed.insert((p.key.clone(), i));
                }
            }
        }
        for c in cidrs_of(p) {
            *self.cidr_refs.entry(c).or_default() += 1;
        }
        for (i, r) in p.rules.iter().enumerate() {
            for peer in rule_peers(r) {
                self.by_peer
                    .entry(peer.clone())
                    .or_default()
                    .push((p.key.clone(), i));
            }
            if !r.requires_ingress.is_empty() || !r.requires_egress.is_empty() {
                self.with_requires.insert((p.key.clone(), i));
            }
        }
    }

    fn unindex(&mut self, p: &CompiledPolicy) {
        for (i, r) in p.rules.iter().enumerate() {
            match index_label(&r.subject) {
                Some(l) => {
                    if let Some(v) = self.by_label.get_mut(&l) {
                        v.retain(|(k, j)| !(k == &p.key && *j == i));
                        if v.is_empty() {
                            self.by_label.remove(&l);
                        }
                    }
                }
                None => {
                    self.unindexed.remove(&(p.key.clone(), i));
                }
            }
        }
        for c in cidrs_of(p) {
            if let Some(n) = self.cidr_refs.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    self.cidr_refs.remove(&c);
                }
            }
        }
        for (i, r) in p.rules.iter().enumerate() {
            for peer in rule_peers(r) {
                if let Some(v) = self.by_peer.get_mut(peer) {
                    v.retain(|(k, j)| !(k == &p.key && *j == i));
                    if v.is_empty() {
                        self.by_peer.remove(peer);
                    }
                }
            }
            self.with_requires.remove(&(p.key.clone(), i));
        }
    }

    fn rule(&self, key: &PolicyKey, i: usize) -> Option<&CompiledRule> {
        self.policies.get(key).and_then(|p| p.rules.get(i))
    }

    /// Subjects of the rules that name `peer`.
    pub fn subjects_using_peer(&self, peer: &Peer) -> Vec<Subject> {
        self.by_peer
            .get(peer)
            .into_iter()
            .flatten()
            .filter_map(|(k, i)| self.rule(k, *i).map(|r| r.subject.clone()))
            .collect()
    }

    /// True if some rule names `peer` literally.
    pub fn peer_in_use(&self, peer: &Peer) -> bool {
        self.by_peer.contains_key(peer)
    }

    /// Subjects of the rules that carry fromRequires/toRequires.
    pub fn subjects_with_requires(&self) -> Vec<Subject> {
        self.with_requires
            .iter()
            .filter_map(|(k, i)| self.rule(k, *i).map(|r| r.subject.clone()))
            .collect()
    }

    /// Increases with every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The policies, ordered by key.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<CompiledPolicy>> {
        self.policies.values()
    }

    /// A policy by key.
    pub fn get(&self, key: &PolicyKey) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(key)
    }

    /// Every CIDR prefix the policies name; each needs a CIDR identity in the ipcache.
    pub fn cidr_prefixes(&self) -> BTreeSet<IpNet> {
        self.cidr_refs.keys().copied().collect()
    }

    /// The rules that select an endpoint with `labels`, in (policy, rule) order.
    pub fn selecting_rules(&self, labels: &LabelSet) -> Vec<(&PolicyKey, &CompiledRule)> {
        let mut candidates: Vec<&(PolicyKey, usize)> = self.unindexed.iter().collect();
        for l in labels.iter() {
            if let Some(v) = self.by_label.get(&(l.key.clone(), l.value.clone())) {
                candidates.extend(v.iter());
            }
        }
        candidates.sort();
        candidates.dedup();
        candidates
            .into_iter()
            .filter_map(|(k, i)| {
                let p = self.policies.get(k)?;
                Some((&p.key, p.rules.get(*i)?))
            })
            .filter(|(_, r)| subject_selects(&r.subject, labels))
            .collect()
    }

    /// Resolves the policy of `ep`. `cluster_named_ports` resolves named ports in egress
    /// rules (a destination's port names, cluster-wide, as Cilium does).
    pub fn resolve(
        &self,
        ep: &Endpoint,
        cache: &mut SelectorCache,
        cluster_named_ports: &NamedPorts,
    ) -> ResolvedPolicy {
        let selecting = self.selecting_rules(&ep.labels);
        let mut ingress = resolve_direction(&selecting, Direction::Ingress, cache, &ep.named_ports);
        let mut egress =
            resolve_direction(&selecting, Direction::Egress, cache, cluster_named_ports);
        ingress.unenforced_l7 = self.unenforced_l7;
        egress.unenforced_l7 = self.unenforced_l7;
        ResolvedPolicy {
            ingress,
            egress,
            revision: self.revision,
        }
    }

    /// What rules of L7 protocols membrane does not enforce do in resolutions from now on
    /// (default: [`UnenforcedL7Mode::FailClosed`]).
    pub fn set_unenforced_l7(&mut self, mode: UnenforcedL7Mode) {
        self.unenforced_l7 = mode;
    }

    /// The current unenforced-L7 setting.
    pub fn unenforced_l7(&self) -> UnenforcedL7Mode {
        self.unenforced_l7
    }
}

/// Whether a rule's subject selects an endpoint with these labels.
pub fn subject_selects(subject: &Subject, labels: &LabelSet) -> bool {
    // The host endpoint is policed only by host policies (nodeSelector); an endpointSelector,
    // even `{}` in a cluster-wide policy, selects pods.
    let host = labels.has_key(SOURCE_RESERVED, "host");
    match subject {
        Subject::Endpoints(s) => !host && s.matches(labels),
        Subject::Nodes(s) => host && s.matches(labels),
    }
}

fn resolve_direction(
    selecting: &[(&PolicyKey, &CompiledRule)],
    dir: Direction,
    cache: &mut SelectorCache,
    named_ports: &NamedPorts,
) -> DirectionPolicy {
    let mut out = DirectionPolicy::default();
    let mut requires: Vec<&Selector> = Vec::new();
    for (key, r) in selecting {
        let (has, dd, req) = match dir {
            Direction::Ingress => (r.has_ingress, r.default_deny_ingress, &r.requires_ingress),
            Direction::Egress => (r.has_egress, r.default_deny_egress, &r.requires_egress),
        };
        if has {
            out.enforced = true;
            out.default_deny |= dd;
            if out.selected_by.last() != Some(*key) {
                out.selected_by.push((*key).clone());
            }
        }
        requires.extend(req.iter());
    }
    out.selected_by.sort();
    out.selected_by.dedup();
    if !out.enforced {
        return out;
    }
    let mut entries: BTreeMap<(Proto, PortMatch), Vec<PeerEntry>> = BTreeMap::new();
    for (key, r) in selecting {
        let rules = match dir {
            Direction::Ingress => &r.ingress,
            Direction::Egress => &r.egress,
        };
        for d in rules {
            let (remotes, unresolved) = remotes_of(d, &requires, cache);
            let origin = RuleOrigin {
                policy: (*key).clone(),
                rule: d.path.clone(),
            };
            let mk = |l7: &L7, notes: &[String], tls: &Option<Arc<PortTls>>| PeerEntry {
                deny: d.deny,
                remotes: remotes.clone(),
                l7: l7.clone(),
                origin: origin.clone(),
                auth: d.auth.clone(),
                unresolved: unresolved.clone(),
                notes: notes.to_vec(),
                tls: tls.clone(),
            };
            if d.l4.is_empty() {
                entries
                    .entry((Proto::All, PortMatch::ALL))
                    .or_default()
                    .push(mk(&L7::None, &[], &None));
                continue;
            }
            for l4 in &d.l4 {
                let keys: Vec<PortMatch> = match &l4.ports {
                    PortMatch::Named(n) => match named_ports.get(n) {
                        Some(ports) if !ports.is_empty() => {
                            ports.iter().map(|p| PortMatch::Range(*p, *p)).collect()
                        }
                        _ => vec![l4.ports.clone()],
                    },
                    other => vec![other.clone()],
                };
                for k in keys {
                    entries
                        .entry((l4.proto, k))
                        .or_default()
                        .push(mk(&l4.l7, &l4.notes, &l4.tls));
                }
            }
        }
    }
    out.entries = entries
        .into_iter()
        .map(|((proto, ports), mut rules)| {
            rules.sort_by(|a, b| b.deny.cmp(&a.deny).then_with(|| a.origin.cmp(&b.origin)));
            PortEntry {
                proto,
                ports,
                rules,
            }
        })
        .collect();
    out
}

fn remotes_of(
    d: &DirRule,
    requires: &[&Selector],
    cache: &mut SelectorCache,
) -> (Remotes, Vec<String>) {
    let unresolved: Vec<String> = d
        .peers
        .iter()
        .filter_map(|p| {
            if let Peer::Unresolved(s) = p {
                Some(s.clone())
            } else {
                None
            }
        })
        .collect();
    // Requirements (fromRequires/toRequires) constrain label-selected peers of allow rules.
    let constrain = |p: &Peer| -> Peer {
        match p {
            Peer::Labels(s) if !d.deny && !requires.is_empty() => {
                let mut s = s.clone();
                for r in requires {
                    s = s.and(r);
                }
                Peer::Labels(s)
            }
            other => other.clone(),
        }
    };
    if d.wildcard_peers {
        if requires.is_empty() || d.deny {
            return (Remotes::All, unresolved);
        }
        let p = constrain(&Peer::Labels(Selector::wildcard()));
        return (Remotes::Set(cache.select(&p)), unresolved);
    }
    let mut sets: Vec<Arc<[Identity]>> = d
        .peers
        .iter()
        .map(|p| cache.select(&constrain(p)))
        .collect();
    let remotes = match sets.len() {
        0 => Remotes::Set(Arc::from(Vec::new())),
        1 => Remotes::Set(sets.pop().unwrap_or_else(|| Arc::from(Vec::new()))),
        _ => {
            let mut all: Vec<Identity> = sets.iter().flat_map(|s| s.iter().copied()).collect();
            all.sort();
            all.dedup();
            Remotes::Set(all.into())
        }
    };
    (remotes, unresolved)
}

#[cfg(test)]
mod tests;
