//! Cilium's `allow-localhost`: whether the node's own traffic (identity `reserved:host`:
//! kubelet probes, including an Istio sidecar's rewritten probes on 15020/15021) reaches
//! the endpoints of its node without a rule naming the host.
//!
//! Cilium inserts one L3-only allow for the host into every (non-host) endpoint's ingress
//! policy map, derived from `reserved:allow-localhost-ingress`, with deny precedence, after
//! the rules' own entries. Read off the datapath's lookup, that entry decides a host
//! connection only where no rule's entry is more specific: on a port where a rule names
//! the host (directly, through an entity such as `cluster` or `all`, or through a rule with
//! no peers), the rule's port-specific entry wins, so a deny rule denies, an HTTP rule
//! sends the host through the proxy and its HTTP rules, and serverNames are checked. The
//! engine reproduces exactly that: [`super::DirectionPolicy::allow_localhost`] allows the
//! host on every (protocol, port) that no rule naming the host covers, and nowhere else.

use std::fmt;

use super::*;

/// The `allow-localhost` setting, with Cilium's values and default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AllowLocalhost {
    /// Cilium's default: `always` when running under Kubernetes, `policy` otherwise. Every
    /// membrane deployment schedules Kubernetes pods (the YAML, etcd and Kubernetes sources
    /// all describe pods a kubelet probes), so it is `always` here.
    #[default]
    Auto,
    /// The host reaches every local endpoint on every port, except where a rule naming the
    /// host decides (a deny rule denies; HTTP rules and serverNames apply).
    Always,
    /// The host is a peer like any other: only a rule (e.g. `fromEntities: [host]`) lets
    /// it in, or policy not being enforced.
    Policy,
}

impl AllowLocalhost {
    /// The setting's name: `auto`, `always` or `policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            AllowLocalhost::Auto => "auto",
            AllowLocalhost::Always => "always",
            AllowLocalhost::Policy => "policy",
        }
    }

    /// Whether the host is allowed without a rule (`auto` and `always`).
    pub fn allows_host(self) -> bool {
        !matches!(self, AllowLocalhost::Policy)
    }

    /// Why a host connection was allowed, as decisions and traces report it.
    pub fn explain() -> &'static str {
        "the node's own traffic (reserved:host) reaches its local endpoints unless a rule naming the host decides otherwise (allow-localhost; --allow-localhost policy requires a rule)"
    }
}

impl fmt::Display for AllowLocalhost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AllowLocalhost {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AllowLocalhost::Auto),
            "always" => Ok(AllowLocalhost::Always),
            "policy" => Ok(AllowLocalhost::Policy),
            other => Err(format!(
                "{other:?} is not an allow-localhost setting (expected auto, always or policy)"
            )),
        }
    }
}

impl DirectionPolicy {
    /// Whether some rule naming `remote` (an allow or a deny, whatever its serverNames)
    /// covers (`proto`, `port`): such a rule, not allow-localhost, decides the host there.
    pub fn names_remote_on(&self, remote: Identity, proto: Proto, port: u16) -> bool {
        self.entries
            .iter()
            .filter(|e| e.covers(proto, port))
            .flat_map(|e| e.rules.iter())
            .any(|r| r.remotes.contains(remote))
    }

    /// Whether allow-localhost admits `remote` on (`proto`, `port`): it is the host, the
    /// setting is on for this direction and no rule naming the host covers the port.
    pub fn localhost_allows(&self, remote: Identity, proto: Proto, port: u16) -> bool {
        self.allow_localhost
            && remote == Identity::HOST
            && !self.names_remote_on(remote, proto, port)
    }
}
