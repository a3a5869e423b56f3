//! An endpoint's L3/L4 policy as its kernel policy map holds it, and the ipcache.
//!
//! One datapath pin directory is one endpoint. Its `mb_policy` (see `bpf/lib/policy.h`) is
//! a hash keyed by (remote identity, direction, protocol, port block) → ALLOW, DENY or
//! REDIRECT (allowed here, the sidecar decides L7). The control plane sends the policy as
//! [`PolicyRule`]s (`membrane.agent.v1.PolicyEntry`): a port range each, never two
//! overlapping ranges for one (direction, protocol, identity); a range is stored as the
//! few aligned port blocks that cover it ([`ports`]). The kernel looks a flow (remote
//! identity R, port P) up as the longest block for (R, P); if none, for (0 = any
//! identity, P); if none, the flow is denied. "Longest" is found by probing, longest
//! first, the block lengths `mb_policy_lens` lists for that direction and identity class
//! ([`diff::PortLens`]): a bounded number of exact-match probes (usually two, one port
//! and every port) whatever the number of rules, where an LPM trie's walk grows with its
//! size, and the same answer a longest-prefix match over the same keys gives.
//! `mb_identity`, the ipcache, maps address prefixes to identities (longest prefix; a
//! miss is `reserved:world`, 2).
//!
//! ## Changing a policy without a wrong verdict
//!
//! [`Datapath::sync_policy`](crate::Datapath::sync_policy) validates the whole new policy
//! (nothing is written when it is bad), reads the map, and applies only the difference,
//! in four phases ([`diff::plan`]):
//!
//! 1. upserts of identity-specific entries (new keys, and keys whose verdict changes),
//! 2. upserts of any-identity entries,
//! 3. deletes of any-identity entries the new policy lacks,
//! 4. deletes of identity-specific entries the new policy lacks.
//!
//! Why every lookup in between gives the old policy's verdict or the new one's, for every
//! flow (R, P). Within one (direction, protocol, identity) the blocks of one policy never
//! overlap, so each policy has at most one block covering P there; call them old(R) /
//! new(R) and old(0) / new(0). During the sync the map holds, per key, the old verdict,
//! the new one, or (phases 3 and 4 only) nothing, and a key present with the old verdict
//! but not in the new policy is old-only.
//! - A lookup that hits for R takes the longest present block covering P. If it is a new
//!   key already written, it is new(R), and the new policy's verdict is its value. If it
//!   holds an old value, it is old(R) (the only old block covering P): the old verdict.
//! - A lookup that misses R and hits 0: through phases 1–3 every old R key is still
//!   present, so old(R) does not exist; from phase 2 on every new R key is present, so
//!   new(R) does not exist either. In phase 1 the 0 entries are the old ones: the old
//!   verdict. In phases 2 and 3 both policies fall through to 0, and the 0 entries give
//!   old(0) or new(0) by the argument above. In phase 4 the 0 entries are exactly the
//!   new policy's, and a miss for R means new(R) does not exist: the new verdict.
//! - A lookup that misses both: some phase where neither policy covers P, or the miss
//!   falls in a state argued above: DENY, both policies' verdict.
//!
//! Any other order opens a window. Deleting an identity-specific DENY before the
//! any-identity ALLOW under it is replaced lets the flow through while both policies deny
//! it; writing an any-identity entry before the identity-specific ones of the new policy
//! shows the new wildcard to a flow the new policy decides by identity.
//!
//! The kernel's two lookups are not one atomic step: a program that misses R just before
//! phase 2 and looks 0 up just after would mix phases. So between phases 1 and 2 and
//! between 3 and 4 the agent waits for every running BPF program to finish (an RCU grace
//! period, forced by rewriting the `mb_sync_barrier` map-in-map slot, for which the kernel
//! itself waits). A lookup pair then spans at most phases 2–3, where the R entries are
//! fixed, or lies within one phase.
//!
//! The ipcache changes the same way ([`diff::plan_ipcache`]): upserts longest prefix first,
//! then deletes shortest prefix first, so an address resolves to its old identity or its
//! new one, never to a prefix in between.
//!
//! The lengths row changes around the phases: before phase 1, when either policy uses a
//! length the row lacks, it is widened to every length of both and the agent waits for
//! running programs (so none probes with the old row while keys of a new length appear);
//! after phase 4 it is narrowed to the new policy's lengths. A row that lists a length no
//! key uses costs a probe, never a verdict; so every lookup from the widening on probes
//! every length a present key has, and answers as the longest-prefix match the argument
//! above is about. The probes are not one atomic step, and need not be: a hit is on some
//! present block covering P, which is old(R) or new(R) (or old(0) / new(0)); a miss of
//! them all is a miss at each probe's moment, which the phases make mean what a miss
//! means above. A verdict that changes is written in place (`BPF_F_LOCK`; the value
//! carries a `bpf_spin_lock` only for that): a plain hash update links a new element and
//! unlinks the old one, and a lookup walking the bucket meanwhile can miss the key.
//!
//! Nothing here touches a map; `maps/policy.rs` does.

pub mod diff;
pub mod ports;

use std::collections::BTreeMap;

use membrane_api::agent::proto;
use serde::Serialize;

use ports::PortPrefix;

/// Errors of the policy-map encoding: input the map cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyMapError {
    /// A field of a control-plane entry holds a value out of its range.
    #[error("policy entry: {field}: {value} {problem}")]
    Field {
        /// The entry's field.
        field: &'static str,
        /// The value found.
        value: String,
        /// What was expected.
        problem: &'static str,
    },
    /// A rule of a policy is invalid on its own.
    #[error("policy rule {index} ({rule}): {problem}")]
    Rule {
        /// The rule's position in the input.
        index: usize,
        /// The rule, as `direction proto/ports from identity`.
        rule: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The policy needs more map entries than the map holds.
    #[error("policy of {rules} rules needs {entries} map entries (port blocks); the map holds {capacity}")]
    TooLarge {
        /// Rules given.
        rules: usize,
        /// Entries they need.
        entries: usize,
        /// The map's size.
        capacity: usize,
    },
    /// The map filled up during a sync: the old and the new policy side by side need more
    /// entries than it holds. What was written leaves every flow with its old verdict or
    /// its new one; the entries of the old policy are still there.
    #[error("policy map full ({capacity} entries) while changing from a policy of {held} entries to one of {wanted}: the sync writes the new entries before it deletes the old ones, so both must fit side by side (a larger map, or the change in smaller steps); every flow keeps its old or its new verdict")]
    Full {
        /// The map's size.
        capacity: usize,
        /// Entries of the policy the map held.
        held: usize,
        /// Entries of the policy being written.
        wanted: usize,
    },
    /// Two rules of one (direction, protocol, identity) cover the same port.
    #[error("policy rules {first} ({first_rule}) and {second} ({second_rule}) overlap: one (direction, protocol, identity) has one verdict per port")]
    Overlap {
        /// The earlier rule's position.
        first: usize,
        /// The earlier rule.
        first_rule: String,
        /// The later rule's position.
        second: usize,
        /// The later rule.
        second_rule: String,
    },
}

/// Which way a connection goes, seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Connections into the endpoint (decided in sk_lookup; sockops' passive side).
    Ingress,
    /// Connections the endpoint makes (decided at connect; sockops' active side).
    Egress,
}

/// What the map says about a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapVerdict {
    /// Allowed.
    Allow,
    /// Denied (as is a flow no entry covers).
    Deny,
    /// Allowed at L3/L4; the port has L7 rules only the sidecar can decide.
    Redirect,
}

/// One rule of an endpoint's policy: (direction, remote identity, protocol, port range) →
/// verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyRule {
    /// Which way.
    pub direction: Direction,
    /// The remote's security identity; 0 = any identity.
    pub remote_identity: u32,
    /// IANA protocol number: 6 (TCP), 17 (UDP), 132 (SCTP), or 1 (ICMP) / 58 (ICMPv6),
    /// which only the packet path decides (the socket hooks see no ICMP).
    pub proto: u8,
    /// Inclusive port range; (1, 65535) = every port. For ICMP and ICMPv6: the message
    /// types a flow may open with (echo request: 8, 128), as Cilium's ICMP rules match.
    pub ports: (u16, u16),
    /// The verdict.
    pub verdict: MapVerdict,
}

impl std::fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = match self.direction {
            Direction::Ingress => "ingress from",
            Direction::Egress => "egress to",
        };
        let who = match self.remote_identity {
            0 => "any identity".to_owned(),
            id => format!("identity {id}"),
        };
        let (lo, hi) = self.ports;
        let ports = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        write!(
            f,
            "{dir} {who} {}/{ports}: {:?}",
            proto_name(self.proto),
            self.verdict
        )
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        other => format!("protocol {other}"),
    }
}

/// The protocols the map decides: TCP, UDP, SCTP (sockets and packets), ICMP and ICMPv6
/// (packets only, the "port" being the message type).
pub const PROTOCOLS: [u8; 5] = [6, 17, 132, 1, 58];

/// What a sync changed, counted in map entries (port blocks), not rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Entries written that were not there.
    pub added: usize,
    /// Entries whose value changed.
    pub changed: usize,
    /// Entries deleted.
    pub removed: usize,
}

impl TryFrom<&proto::PolicyEntry> for PolicyRule {
    type Error = PolicyMapError;

    /// Convert a control-plane entry; `end_port` 0 means the single port `port`.
    fn try_from(e: &proto::PolicyEntry) -> Result<Self, Self::Error> {
        let proto::PolicyEntry {
            direction,
            remote_identity,
            protocol,
            port,
            end_port,
            verdict,
        } = *e;
        let field = |field, value: &dyn std::fmt::Display, problem| PolicyMapError::Field {
            field,
            value: value.to_string(),
            problem,
        };
        let direction = match proto::Direction::try_from(direction) {
            Ok(proto::Direction::Ingress) => Direction::Ingress,
            Ok(proto::Direction::Egress) => Direction::Egress,
            Err(_) => {
                return Err(field(
                    "direction",
                    &direction,
                    "is not INGRESS (0) or EGRESS (1)",
                ))
            }
        };
        let verdict = match proto::Verdict::try_from(verdict) {
            Ok(proto::Verdict::Allow) => MapVerdict::Allow,
            Ok(proto::Verdict::Deny) => MapVerdict::Deny,
            Ok(proto::Verdict::Redirect) => MapVerdict::Redirect,
            Ok(proto::Verdict::Unspecified) | Err(_) => {
                return Err(field(
                    "verdict",
                    &verdict,
                    "is not ALLOW (1), DENY (2) or REDIRECT (3)",
                ))
            }
        };
        let proto = match u8::try_from(protocol) {
            Ok(p) if PROTOCOLS.contains(&p) => p,
            _ => {
                return Err(field(
                    "protocol",
                    &protocol,
                    "is not TCP (6), UDP (17), SCTP (132), ICMP (1) or ICMPv6 (58)",
                ))
            }
        };
        let lo = match u16::try_from(port) {
            Ok(p) if p >= 1 => p,
            _ => return Err(field("port", &port, "is not a port (1..=65535)")),
        };
        let hi = match end_port {
            0 => lo,
            p => match u16::try_from(p) {
                Ok(p) if p >= lo => p,
                _ => {
                    return Err(field(
                        "end_port",
                        &end_port,
                        "is not a port from `port` to 65535",
                    ))
                }
            },
        };
        Ok(PolicyRule {
            direction,
            remote_identity,
            proto,
            ports: (lo, hi),
            verdict,
        })
    }
}

/// One key of the policy map: a port block of one (direction, protocol, identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapKey {
    /// Which way.
    pub direction: Direction,
    /// IANA protocol number.
    pub proto: u8,
    /// The remote's identity; 0 = any.
    pub identity: u32,
    /// The port block.
    pub ports: PortPrefix,
}

/// One key space of the map: (direction, protocol, remote identity).
type Space = (Direction, u8, u32);

/// Check a whole policy: every rule's protocol known and range ordered, non-empty and
/// without port 0; no two rules of one (direction, protocol, identity) overlapping.
pub fn validate(rules: &[PolicyRule]) -> Result<(), PolicyMapError> {
    let mut by_space: BTreeMap<Space, Vec<(u16, u16, usize)>> = BTreeMap::new();
    for (index, r) in rules.iter().enumerate() {
        let bad = |problem: String| PolicyMapError::Rule {
            index,
            rule: r.to_string(),
            problem,
        };
        if !PROTOCOLS.contains(&r.proto) {
            return Err(bad(format!(
                "protocol {} is not TCP (6), UDP (17), SCTP (132), ICMP (1) or ICMPv6 (58)",
                r.proto
            )));
        }
        let (lo, hi) = r.ports;
        if lo == 0 {
            return Err(bad(
                "port 0 is never a connection's port; ranges start at 1".into(),
            ));
        }
        if lo > hi {
            return Err(bad(format!(
                "port range {lo}-{hi} is empty (start after end)"
            )));
        }
        by_space
            .entry((r.direction, r.proto, r.remote_identity))
            .or_default()
            .push((lo, hi, index));
    }
    for ranges in by_space.values_mut() {
        ranges.sort();
        for w in ranges.windows(2) {
            let ((_, a_hi, a), (b_lo, _, b)) = (w[0], w[1]);
            if b_lo <= a_hi {
                let (first, second) = (a.min(b), a.max(b));
                return Err(PolicyMapError::Overlap {
                    first,
                    first_rule: rules[first].to_string(),
                    second,
                    second_rule: rules[second].to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The map entries of a validated policy.
pub fn entries(rules: &[PolicyRule]) -> BTreeMap<MapKey, MapVerdict> {
    let mut out = BTreeMap::new();
    for r in rules {
        for p in ports::range_to_prefixes(r.ports.0, r.ports.1) {
            let key = MapKey {
                direction: r.direction,
                proto: r.proto,
                identity: r.remote_identity,
                ports: p,
            };
            out.insert(key, r.verdict);
        }
    }
    out
}

/// Rules back from map entries: adjacent blocks of one (direction, protocol, identity) with
/// the same verdict merge into one range (so two adjacent rules with one verdict read back
/// as one, which decides every flow the same way). Sorted by direction, protocol, identity
/// and port.
pub fn rules_of(entries: &BTreeMap<MapKey, MapVerdict>) -> Vec<PolicyRule> {
    let mut by_space: BTreeMap<Space, Vec<(PortPrefix, MapVerdict)>> = BTreeMap::new();
    for (k, v) in entries {
        by_space
            .entry((k.direction, k.proto, k.identity))
            .or_default()
            .push((k.ports, *v));
    }
    let mut out = Vec::new();
    for ((direction, proto, remote_identity), blocks) in by_space {
        for (ports, verdict) in ports::merge_ranges(blocks) {
            out.push(PolicyRule {
                direction,
                remote_identity,
                proto,
                ports,
                verdict,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
