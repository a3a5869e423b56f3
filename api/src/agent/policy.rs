//! A resolved policy (from `membrane-policy`) → the node agent's per-endpoint policy map
//! entries ([`proto::PolicyEntry`]).
//!
//! The engine stays the one source of truth: nothing here interprets a rule. Each
//! (direction, protocol) port space is cut at every boundary of the direction's port
//! entries, so that within one interval every port is covered by the same entries and the
//! engine's verdict is the same for all of them; the engine is then asked
//! ([`DirectionPolicy::connection`]) about one port per interval, for "any identity" (one
//! that no rule names, so only rules whose remotes are all identities apply) and for each
//! class of identities that the rules name alike. "Any identity" entries are written for the
//! intervals it may pass; an identity gets its own entries only where it is decided
//! otherwise (DENY included then). Evaluated with the lookup rule documented in
//! `agent.proto` (the identity's entry, else the any-identity entry, else DENY), the entries
//! decide exactly as the engine does: `api/tests/agent_entries.rs` checks that on generated
//! and corpus policies.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use membrane_policy::resolve::{DirectionPolicy, NamedPorts, PortEntry, Remotes, ResolvedPolicy};
use membrane_policy::rule::PortMatch;
use membrane_policy::{Identity, PolicyKey, Proto};

use super::proto::{Direction, EndpointPolicy, PolicyEntry, Verdict};

/// The protocols the policy map holds, with their IANA numbers. ICMP and ICMPv6 are
/// decided by the packet path only (the socket hooks see no ICMP), with the message type
/// in the port's place, as Cilium's `icmps` rules: an L3-only rule (`Proto::All`) covers
/// them, a `toPorts` rule does not.
pub const PROTOCOLS: [(Proto, u32); 5] = [
    (Proto::Tcp, 6),
    (Proto::Udp, 17),
    (Proto::Sctp, 132),
    (Proto::Icmp, 1),
    (Proto::Icmpv6, 58),
];

/// The lowest port a connection uses; port 0 is never looked up.
const FIRST_PORT: u32 = 1;
/// The highest port.
const LAST_PORT: u32 = 65535;

/// The map verdict of a connection from/to `remote` on (`proto`, `port`), as the engine
/// decides it: DENY when dropped at L3/L4; REDIRECT when allowed but the sidecar must look
/// further (HTTP rules apply to this peer, or an allow rule for this peer on the port
/// carries serverNames or a TLS context, so only the TLS ClientHello decides or the
/// sidecar terminates TLS); ALLOW otherwise.
pub fn verdict(d: &DirectionPolicy, remote: Identity, proto: Proto, port: u16) -> Verdict {
    let c = d.connection(remote, proto, port);
    match c.l4_verdict() {
        membrane_policy::Verdict::Denied => Verdict::Deny,
        membrane_policy::Verdict::Allowed
            if c.needs_http() || tls_applies(d, remote, proto, port) =>
        {
            Verdict::Redirect
        }
        membrane_policy::Verdict::Allowed => Verdict::Allow,
    }
}

/// Whether an allow rule covering `remote` on (`proto`, `port`) carries TLS settings
/// (serverNames, a TLS context): the sidecar then reads the ClientHello before deciding.
/// [`DirectionPolicy::inspects_tls`] asks the same for any peer; a rule that covers this
/// peer is what can change this peer's verdict.
pub fn tls_applies(d: &DirectionPolicy, remote: Identity, proto: Proto, port: u16) -> bool {
    d.enforced
        && d.entries
            .iter()
            .filter(|e| e.covers(proto, port))
            .flat_map(|e| e.rules.iter())
            .any(|r| !r.deny && r.tls.is_some() && r.remotes.contains(remote))
}

/// `d` with every named port that `named` resolves replaced by its numbers (one entry per
/// port, as the engine resolves an endpoint's own named ports), so that both the entries
/// here and NPDS ([`crate::npds::encode::direction`]) see the same ports. A name nobody
/// resolves covers nothing, in both.
pub fn resolve_named<'a>(d: &'a DirectionPolicy, named: &NamedPorts) -> Cow<'a, DirectionPolicy> {
    let resolvable =
        |e: &PortEntry| matches!(&e.ports, PortMatch::Named(n) if named.contains_key(n));
    if !d.entries.iter().any(resolvable) {
        return Cow::Borrowed(d);
    }
    let mut out = d.clone();
    out.entries = Vec::with_capacity(d.entries.len());
    for e in &d.entries {
        match &e.ports {
            PortMatch::Named(n) if named.contains_key(n) => {
                for p in named.get(n).into_iter().flatten() {
                    out.entries.push(PortEntry {
                        proto: e.proto,
                        ports: PortMatch::Range(*p, *p),
                        rules: e.rules.clone(),
                    });
                }
            }
            _ => out.entries.push(e.clone()),
        }
    }
    Cow::Owned(out)
}

/// The port intervals of `proto` within which the set of covering entries is constant:
/// sorted, disjoint, together 1..=65535.
fn intervals(d: &DirectionPolicy, proto: Proto) -> Vec<(u32, u32)> {
    let mut cuts: BTreeSet<u32> = BTreeSet::from([FIRST_PORT]);
    for e in d.entries.iter().filter(|e| e.proto.covers(proto)) {
        if let PortMatch::Range(lo, hi) = e.ports {
            cuts.insert(u32::from(lo).max(FIRST_PORT));
            cuts.insert(u32::from(hi) + 1);
        }
    }
    let cuts: Vec<u32> = cuts.into_iter().filter(|c| *c <= LAST_PORT).collect();
    cuts.iter()
        .enumerate()
        .map(|(i, lo)| (*lo, cuts.get(i + 1).map_or(LAST_PORT, |next| next - 1)))
        .collect()
}

/// Identities the engine decides alike, grouped by which rules name them: the rules' remote
/// sets are all the engine reads of an identity, so one member speaks for the class. Under
/// allow-localhost the host is read apart (`reserved:host` itself), so it is a class alone.
fn identity_classes(d: &DirectionPolicy) -> Vec<Vec<Identity>> {
    let sets: Vec<&[Identity]> = d
        .entries
        .iter()
        .flat_map(|e| e.rules.iter())
        .filter_map(|r| match &r.remotes {
            Remotes::Set(ids) => Some(&ids[..]),
            Remotes::All => None,
        })
        .collect();
    let mut member_of: BTreeMap<Identity, Vec<usize>> = BTreeMap::new();
    for (i, ids) in sets.iter().enumerate() {
        for id in ids.iter() {
            let v = member_of.entry(*id).or_default();
            if v.last() != Some(&i) {
                v.push(i);
            }
        }
    }
    let mut classes: BTreeMap<Vec<usize>, Vec<Identity>> = BTreeMap::new();
    for (id, signature) in member_of {
        if d.allow_localhost && id == Identity::HOST {
            continue; // in a class of its own, below
        }
        classes.entry(signature).or_default().push(id);
    }
    let mut out: Vec<Vec<Identity>> = classes.into_values().collect();
    if d.allow_localhost {
        // allow-localhost decides the host apart from any identity the rules name alike.
        out.push(vec![Identity::HOST]);
    }
    out
}

/// An identity no rule names (the lowest such number): the engine decides it as it would
/// any identity the rules do not know, present or future.
fn unnamed_identity(classes: &[Vec<Identity>]) -> Identity {
    let named: BTreeSet<u32> = classes.iter().flatten().map(|i| i.0).collect();
    let free = (0..=u32::MAX).find(|n| !named.contains(n));
    Identity(free.unwrap_or(0))
}

/// Appends the entries for `remote` (0: any) where `verdicts` (one per interval) is `Some`,
/// merging neighbouring intervals with the same verdict.
fn push_runs(
    out: &mut Vec<PolicyEntry>,
    direction: Direction,
    remote: u32,
    protocol: u32,
    spans: &[(u32, u32)],
    verdicts: impl Iterator<Item = Option<Verdict>>,
) {
    let mut run: Option<(u32, u32, Verdict)> = None;
    let flush = |out: &mut Vec<PolicyEntry>, run: Option<(u32, u32, Verdict)>| {
        if let Some((port, end_port, v)) = run {
            out.push(PolicyEntry {
                direction: direction as i32,
                remote_identity: remote,
                protocol,
                port,
                end_port,
                verdict: v as i32,
            });
        }
    };
    for (&(lo, hi), v) in spans.iter().zip(verdicts) {
        run = match (run, v) {
            (Some((start, end, rv)), Some(v)) if rv == v && end + 1 == lo => Some((start, hi, v)),
            (prev, v) => {
                flush(out, prev);
                v.map(|v| (lo, hi, v))
            }
        };
    }
    flush(out, run);
}

/// The map entries of one direction (named ports resolved against `named`).
pub fn direction_entries(
    d: &DirectionPolicy,
    direction: Direction,
    named: &NamedPorts,
) -> Vec<PolicyEntry> {
    let mut out = Vec::new();
    if !d.enforced {
        for (_, protocol) in PROTOCOLS {
            let all = [(FIRST_PORT, LAST_PORT)];
            push_runs(
                &mut out,
                direction,
                0,
                protocol,
                &all,
                [Some(Verdict::Allow)].into_iter(),
            );
        }
        return out;
    }
    let d = resolve_named(d, named);
    let classes = identity_classes(&d);
    let any = unnamed_identity(&classes);
    for (proto, protocol) in PROTOCOLS {
        let spans = intervals(&d, proto);
        // Representative port of each interval: its first (all ports of it decide alike).
        let ask = |id: Identity| -> Vec<Verdict> {
            spans
                .iter()
                .map(|(lo, _)| verdict(&d, id, proto, u16::try_from(*lo).unwrap_or(u16::MAX)))
                .collect()
        };
        let for_any = ask(any);
        let any_entries = for_any.iter().map(|v| (*v != Verdict::Deny).then_some(*v));
        push_runs(&mut out, direction, 0, protocol, &spans, any_entries);
        for class in &classes {
            let mine = ask(class[0]);
            if mine == for_any {
                continue;
            }
            for id in class {
                let differing = mine
                    .iter()
                    .zip(&for_any)
                    .map(|(m, a)| (m != a).then_some(*m));
                push_runs(&mut out, direction, id.0, protocol, &spans, differing);
            }
        }
    }
    out
}

/// `KIND/NAMESPACE/NAME` (`KIND/NAME` for cluster-wide policies).
fn policy_name(k: &PolicyKey) -> String {
    format!("{}/{k}", k.kind.as_str())
}

/// Both directions' map entries, ingress first; within a direction by protocol, then
/// remote identity (any first), then port. Named ports resolve against `ingress_named` (the
/// endpoint's own container ports) and `egress_named` (the peers', cluster-wide), as in NPDS.
pub fn policy_entries(
    resolved: &ResolvedPolicy,
    ingress_named: &NamedPorts,
    egress_named: &NamedPorts,
) -> Vec<PolicyEntry> {
    let mut out = direction_entries(&resolved.ingress, Direction::Ingress, ingress_named);
    out.extend(direction_entries(
        &resolved.egress,
        Direction::Egress,
        egress_named,
    ));
    out.sort_by_key(|e| (e.direction, e.protocol, e.remote_identity, e.port));
    out
}

/// The endpoint's whole [`EndpointPolicy`]: the entries, the revision they were resolved at,
/// and what selects the endpoint in each direction.
pub fn endpoint_policy(
    resolved: &ResolvedPolicy,
    ingress_named: &NamedPorts,
    egress_named: &NamedPorts,
) -> EndpointPolicy {
    EndpointPolicy {
        revision: resolved.revision,
        entries: policy_entries(resolved, ingress_named, egress_named),
        ingress_selected_by: resolved
            .ingress
            .selected_by
            .iter()
            .map(policy_name)
            .collect(),
        egress_selected_by: resolved
            .egress
            .selected_by
            .iter()
            .map(policy_name)
            .collect(),
        ingress_enforced: resolved.ingress.enforced,
        egress_enforced: resolved.egress.enforced,
    }
}

#[cfg(test)]
mod tests;
