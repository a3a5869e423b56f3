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
//! - otherwise, if HTTP rules apply, the request must match one of them;
//! - on ingress, the node's own traffic (`reserved:host`) is allowed where no rule naming
//!   the host covers the port, unless the `allow-localhost` setting is `policy`.
//!
//! Rooms: the resolved policy's types (here), the verdicts read off it (`verdict.rs`), the
//! identities each peer selector selects (`selector_cache.rs`), the policies in force and
//! which rules select an endpoint (`repository.rs`), turning those rules into one
//! direction's entries (`direction.rs`), and the `allow-localhost` setting (`localhost.rs`).

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

mod direction;
mod localhost;
mod repository;
mod selector_cache;
mod verdict;

pub use localhost::AllowLocalhost;
pub(crate) use repository::index_label;
pub use repository::{subject_selects, Repository};
pub use selector_cache::{peer_matches, SelectorCache};
pub use verdict::{ConnPolicy, HttpDecision, Verdict};

/// Named container ports: name → port numbers.
pub type NamedPorts = BTreeMap<String, BTreeSet<u16>>;

/// An endpoint to resolve policy for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
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
    /// `authentication.mode` the rule requires, if any. Such an allow rule is resolved as
    /// a deny (`deny` is set): membrane performs no mutual authentication.
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
    /// The host (`reserved:host`) is allowed on every (protocol, port) no rule naming it
    /// covers: set on ingress when the `allow-localhost` setting is `auto` or `always`
    /// (see [`AllowLocalhost`]).
    pub allow_localhost: bool,
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

#[cfg(test)]
mod tests;
