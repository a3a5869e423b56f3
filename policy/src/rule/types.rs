//! What compiling a policy produces: the compiled rules, their peers, ports, L7 and TLS
//! settings, and the field errors compilation reports.

use super::*;

/// The two policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `CiliumNetworkPolicy` (namespaced).
    Namespaced,
    /// `CiliumClusterwideNetworkPolicy`.
    Clusterwide,
}

impl PolicyKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Namespaced => "CiliumNetworkPolicy",
            PolicyKind::Clusterwide => "CiliumClusterwideNetworkPolicy",
        }
    }

    /// Parses a Kubernetes kind name.
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "CiliumNetworkPolicy" => Some(PolicyKind::Namespaced),
            "CiliumClusterwideNetworkPolicy" => Some(PolicyKind::Clusterwide),
            _ => None,
        }
    }
}

/// Identifies a policy object: kind, namespace (none for cluster-wide) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Kind.
    pub kind: PolicyKind,
    /// Namespace, for namespaced policies.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A rejected field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Path from the object root, e.g. `spec.ingress[0].fromCIDRSet[0].except[1]`.
    pub path: String,
    /// What was found and what was expected.
    pub message: String,
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Endpoints (pods) whose labels match.
    Endpoints(Selector),
    /// Nodes whose labels match (host policy).
    Nodes(Selector),
}

/// A peer of a rule: who may (or may not) talk to the selected endpoints.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Identities whose labels match (endpoints, entities).
    Labels(Selector),
    /// Addresses outside the cluster in this prefix.
    Cidr(IpNet),
    /// Nodes whose labels match.
    Nodes(Selector),
    /// A peer the engine cannot resolve to identities yet (toFQDNs, toServices, toGroups,
    /// cidrGroupRef): it selects nothing, and traces say so.
    Unresolved(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Labels(s) => write!(f, "labels {s}"),
            Peer::Cidr(c) => write!(f, "cidr {c}"),
            Peer::Nodes(s) => write!(f, "nodes {s}"),
            Peer::Unresolved(what) => f.write_str(what),
        }
    }
}

/// Transport protocol a port rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// Every protocol, ICMP included (a rule without toPorts).
    All,
    /// TCP, UDP and SCTP (`ANY` or no protocol).
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP (IPv4).
    Icmp,
    /// ICMPv6.
    Icmpv6,
}

impl Proto {
    /// True if a rule for `self` covers a flow of protocol `flow`.
    pub fn covers(self, flow: Proto) -> bool {
        match self {
            Proto::All => true,
            Proto::Any => matches!(flow, Proto::Tcp | Proto::Udp | Proto::Sctp),
            p => p == flow,
        }
    }

    /// Name as Cilium prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::All => "ALL",
            Proto::Any => "ANY",
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
            Proto::Icmp => "ICMP",
            Proto::Icmpv6 => "ICMPv6",
        }
    }

    /// Parses a flow protocol name (case-insensitive).
    pub fn parse_flow(s: &str) -> Option<Proto> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            "ICMP" => Some(Proto::Icmp),
            "ICMPV6" => Some(Proto::Icmpv6),
            _ => None,
        }
    }
}

/// Which ports a port rule covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// An inclusive range; `0..=65535` is every port.
    Range(u16, u16),
    /// A named container port, resolved against the destination's named ports.
    Named(String),
    /// An ICMP type.
    IcmpType(u8),
}

impl PortMatch {
    /// Every port.
    pub const ALL: PortMatch = PortMatch::Range(0, 65535);
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::Range(0, 65535) => f.write_str("*"),
            PortMatch::Range(a, b) if a == b => write!(f, "{a}"),
            PortMatch::Range(a, b) => write!(f, "{a}-{b}"),
            PortMatch::Named(n) => f.write_str(n),
            PortMatch::IcmpType(t) => write!(f, "type {t}"),
        }
    }
}

/// L7 rules attached to a port rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7 {
    /// None: L4 only.
    None,
    /// HTTP rules, enforced by the proxy.
    Http(Arc<[CompiledHttpRule]>),
    /// Rules of a protocol membrane does not enforce (`kafka`, `dns`, `l7proto NAME`):
    /// parsed, validated and warned about; what they allow depends on the
    /// [`crate::resolve::UnenforcedL7Mode`] (by default: nothing).
    Unenforced(String),
}

/// One (protocol, ports, L7) element of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4Rule {
    /// Protocol.
    pub proto: Proto,
    /// Ports.
    pub ports: PortMatch,
    /// L7 rules on these ports.
    pub l7: L7,
    /// TLS or listener settings the proxy would need (terminatingTLS, serverNames, ...).
    pub notes: Vec<String>,
    /// serverNames and TLS contexts of the `toPorts` entry, for the proxy.
    pub tls: Option<Arc<PortTls>>,
}

/// Where a TLS context's certificate material comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsSource {
    /// Items of a Kubernetes Secret (`terminatingTLS`/`originatingTLS` in a policy, or a
    /// secret name carried over NPDS). A key named explicitly must exist in the secret;
    /// an omitted one uses Cilium's default name (`tls.crt`, `tls.key`, `ca.crt`), and the
    /// default `ca.crt` is used only if the secret has it.
    Secret {
        /// Namespace (the policy's own when the reference names none).
        namespace: String,
        /// Secret name.
        name: String,
        /// Item holding the PEM certificate chain, when named.
        certificate: Option<String>,
        /// Item holding the PEM private key, when named.
        private_key: Option<String>,
        /// Item holding the PEM trust anchors, when named.
        trusted_ca: Option<String>,
    },
    /// PEM material carried inline (NPDS `TLSContext`); empty strings are absent.
    Inline {
        /// Trust anchors.
        trusted_ca: String,
        /// Certificate chain.
        certificate_chain: String,
        /// Private key.
        private_key: String,
    },
}

impl fmt::Display for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSource::Secret {
                namespace, name, ..
            } => write!(f, "secret {namespace}/{name}"),
            TlsSource::Inline { .. } => f.write_str("inline TLS context"),
        }
    }
}

/// The TLS settings of one `toPorts` entry, as the proxy applies them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortTls {
    /// Allowed SNI values (lowercase); empty admits any connection. A name may start with
    /// `*.` to match exactly one more label.
    pub server_names: Vec<String>,
    /// The proxy terminates TLS with this certificate and key.
    pub terminating: Option<TlsSource>,
    /// The proxy originates TLS to the destination, verifying it against this CA.
    pub originating: Option<TlsSource>,
}

impl PortTls {
    /// Whether a connection presenting `sni` (`None`: no TLS or no SNI) is admitted: with
    /// serverNames, TLS must be present and one of them must have been indicated.
    pub fn admits(&self, sni: Option<&str>) -> bool {
        if self.server_names.is_empty() {
            return true;
        }
        let Some(sni) = sni else {
            return false;
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        self.server_names
            .iter()
            .any(|n| match n.strip_prefix("*.") {
                Some(suffix) => sni
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                None => *n == sni,
            })
    }
}

/// One element of `ingress`, `ingressDeny`, `egress` or `egressDeny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRule {
    /// Path of the element, e.g. `spec.ingress[0]`.
    pub path: String,
    /// A deny rule.
    pub deny: bool,
    /// Peers; empty with `wildcard_peers` false selects nobody.
    pub peers: Vec<Peer>,
    /// True when the rule names no L3 peer at all: it applies to every peer.
    pub wildcard_peers: bool,
    /// Port rules; empty means every port of every protocol.
    pub l4: Vec<L4Rule>,
    /// `authentication.mode`, when not `disabled`.
    pub auth: Option<String>,
}

/// One compiled rule (`spec` or `specs[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// `spec` or `specs[i]`.
    pub path: String,
    /// What the rule applies to.
    pub subject: Subject,
    /// Ingress allow and deny rules.
    pub ingress: Vec<DirRule>,
    /// Egress allow and deny rules.
    pub egress: Vec<DirRule>,
    /// The rule has ingress or ingressDeny elements (it puts ingress under policy).
    pub has_ingress: bool,
    /// The rule has egress or egressDeny elements.
    pub has_egress: bool,
    /// Selecting an endpoint puts its ingress into default deny.
    pub default_deny_ingress: bool,
    /// Selecting an endpoint puts its egress into default deny.
    pub default_deny_egress: bool,
    /// fromRequires: constraints every ingress peer of a selected endpoint must meet.
    pub requires_ingress: Vec<Selector>,
    /// toRequires: constraints every egress peer of a selected endpoint must meet.
    pub requires_egress: Vec<Selector>,
}

/// A validated, compiled policy object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Which object.
    pub key: PolicyKey,
    /// Its rules.
    pub rules: Vec<CompiledRule>,
    /// Accepted oddities worth telling the user about (legacy fields, template placeholders).
    pub warnings: Vec<FieldError>,
}
