//! The node agent's policy map entries against the engine and the sidecar: for a policy
//! resolved by the engine, looking a connection up in `agent::policy::policy_entries` with
//! the kernel's rule (documented in `agent.proto`: the remote identity's entry whose range
//! holds the port, else the any-identity entry, else DENY) must give the engine's verdict,
//! and for TCP the verdict of the sidecar, which decides from NPDS (`decode(encode(p))`;
//! it proxies TCP only, and its decoder drops the rest). That is the "agent and sidecar can never disagree" guarantee.
//!
//! Policies come from the seeded generator shared with the NPDS round trip (extended with
//! SCTP, named ports, every-port rules and serverNames) and from the 200 corpus policies.
//! The grid holds every port where an entry starts or ends, so a wrong entry anywhere is
//! seen; a last test mutates entries and checks that the comparison notices.

mod common;

use std::collections::BTreeSet;

use common::{localhost_setting, resolve, Gen};
use membrane_api::agent::policy::{policy_entries, resolve_named, PROTOCOLS};
use membrane_api::agent::proto::{Direction as PbDirection, PolicyEntry, Verdict};
use membrane_api::npds::{decode, encode};
use membrane_api::proto::NetworkPolicy;
use membrane_policy::resolve::{DirectionPolicy, NamedPorts, ResolvedPolicy};
use membrane_policy::{Direction, Identity, Proto, UnenforcedL7Mode};
use prost::Message;

/// The kernel's lookup, written from the proto's comment and nothing else.
fn lookup(entries: &[PolicyEntry], dir: PbDirection, remote: u32, protocol: u32, port: u32) -> i32 {
    let holding = |id: u32| {
        entries
            .iter()
            .filter(move |e| {
                e.direction == dir as i32
                    && e.remote_identity == id
                    && e.protocol == protocol
                    && (e.port..=e.end_port).contains(&port)
            })
            .min_by_key(|e| e.end_port - e.port)
    };
    holding(remote)
        .or_else(|| holding(0))
        .map_or(Verdict::Deny as i32, |e| e.verdict)
}

/// What a layer that sees `d` decides for a connection, in the map's words.
fn expected(d: &DirectionPolicy, remote: Identity, proto: Proto, port: u16) -> i32 {
    let c = d.connection(remote, proto, port);
    (match c.l4_verdict() {
        membrane_policy::Verdict::Denied => Verdict::Deny,
        // TLS settings of an allow rule for this peer: the sidecar reads the ClientHello.
        _ if c.needs_http()
            || d.entries
                .iter()
                .filter(|e| e.covers(proto, port))
                .flat_map(|e| &e.rules)
                .any(|r| !r.deny && r.tls.is_some() && r.remotes.contains(remote)) =>
        {
            Verdict::Redirect
        }
        _ => Verdict::Allow,
    }) as i32
}

/// The entries' own invariants: ranges within 1..=65535, a verdict on each, no DENY for
/// any identity (absence denies), and no two entries of one (direction, protocol, remote)
/// overlapping.
fn well_formed(entries: &[PolicyEntry], what: &str) {
    for e in entries {
        assert!(
            1 <= e.port && e.port <= e.end_port && e.end_port <= 65535,
            "{what}: bad range {e:?}"
        );
        assert_ne!(e.verdict, Verdict::Unspecified as i32, "{what}: {e:?}");
        assert!(
            !(e.remote_identity == 0 && e.verdict == Verdict::Deny as i32),
            "{what}: an any-identity DENY is never needed: {e:?}"
        );
    }
    let mut sorted: Vec<&PolicyEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.direction, e.protocol, e.remote_identity, e.port));
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        if (a.direction, a.protocol, a.remote_identity)
            == (b.direction, b.protocol, b.remote_identity)
        {
            assert!(a.end_port < b.port, "{what}: overlapping {a:?} and {b:?}");
        }
    }
}

/// Ports to ask about: fixed ones, and every start and end (and the port after it) of every
/// entry, so every interval the entries draw is visited.
fn grid_ports(entries: &[PolicyEntry]) -> BTreeSet<u32> {
    let mut ports: BTreeSet<u32> = [
        1, 79, 80, 81, 443, 444, 7999, 8000, 8079, 8080, 8081, 8090, 8091, 8999, 9000, 9005, 9010,
        9011, 65535,
    ]
    .into();
    for e in entries {
        ports.extend([e.port, e.end_port, e.end_port + 1, e.port.saturating_sub(1)]);
    }
    ports.retain(|p| (1..=65535).contains(p));
    ports
}

/// Every disagreement between the entries and the engine (and, for TCP, the sidecar's NPDS
/// view) on the grid drawn from `remotes` and the identities and ports of `probe` (the
/// entries themselves, or more).
fn disagreements(
    p: &ResolvedPolicy,
    entries: &[PolicyEntry],
    probe: &[PolicyEntry],
    remotes: &[Identity],
    ingress_named: &NamedPorts,
    egress_named: &NamedPorts,
) -> Vec<String> {
    let np = encode::network_policy(vec!["10.0.0.1".into()], 7, p, ingress_named, egress_named);
    let wire = NetworkPolicy::decode(np.encode_to_vec().as_slice()).expect("own bytes decode");
    let sidecar = decode::network_policy(&wire).expect("the decoder accepts the encoder's");
    let mut ids: BTreeSet<Identity> = remotes.iter().copied().collect();
    ids.extend(probe.iter().map(|e| Identity(e.remote_identity)));
    ids.insert(Identity(4_000_000)); // nobody's
    let ports = grid_ports(probe);
    let mut out = Vec::new();
    for (dir, pb, named) in [
        (Direction::Ingress, PbDirection::Ingress, ingress_named),
        (Direction::Egress, PbDirection::Egress, egress_named),
    ] {
        let engine = resolve_named(p.direction(dir), named);
        for (proto, number) in PROTOCOLS {
            for &port in &ports {
                let port16 = u16::try_from(port).expect("grid ports are ports");
                for &id in &ids {
                    let got = lookup(entries, pb, id.0, number, port);
                    let want = expected(&engine, id, proto, port16);
                    if got != want {
                        out.push(format!(
                            "{dir:?} {proto:?}/{port} from {}: entries say {got}, engine {want}",
                            id.0
                        ));
                    }
                    // The sidecar admits what the entries admit, and wherever it has L7
                    // work the entries send the connection to it. (Redirecting more is
                    // safe: the engine redirects a port whose HTTP rules meet an L4-only
                    // unenforced-L7 rule, which NPDS turns into a plain allow.)
                    if proto == Proto::Tcp {
                        let side = expected(sidecar.direction(dir), id, proto, port16);
                        let deny = Verdict::Deny as i32;
                        let redirect = Verdict::Redirect as i32;
                        if (got == deny) != (side == deny) || (side == redirect && got != redirect)
                        {
                            out.push(format!(
                                "{dir:?} {proto:?}/{port} from {}: entries say {got}, sidecar {side}",
                                id.0
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

fn named(pairs: &[(&str, &[u16])]) -> NamedPorts {
    pairs
        .iter()
        .map(|(n, ps)| (n.to_string(), ps.iter().copied().collect()))
        .collect()
}

#[test]
fn entries_decide_as_the_engine_and_the_sidecar_for_generated_policies() {
    // The endpoint's own `http` differs from its peers', so a name resolved on the wrong
    // side shows.
    let own = named(&[("http", &[8080, 8081])]);
    let peers = named(&[("http", &[80])]);
    let (mut seen_redirect, mut seen_specific, mut seen_sctp) = (0, 0, 0);
    for seed in 0..300u64 {
        let mut g = Gen::seeded(seed, true);
        let texts = g.policies();
        let mode = g.mode();
        let localhost = localhost_setting(seed);
        let (p, remotes) = resolve(&texts, mode, localhost, own.clone());
        let entries = policy_entries(&p, &own, &peers);
        let what = format!(
            "seed {seed} ({mode:?}, allow-localhost {localhost})\n{}",
            texts.join("---\n")
        );
        well_formed(&entries, &what);
        let wrong = disagreements(&p, &entries, &entries, &remotes, &own, &peers);
        assert!(wrong.is_empty(), "{what}\n{}", wrong.join("\n"));
        seen_redirect += usize::from(
            entries
                .iter()
                .any(|e| e.verdict == Verdict::Redirect as i32),
        );
        seen_specific += usize::from(entries.iter().any(|e| e.remote_identity != 0));
        seen_sctp += usize::from(
            entries
                .iter()
                .any(|e| e.protocol == 132 && e.end_port < 65535),
        );
    }
    // The generator must reach the interesting parts.
    assert!(
        seen_redirect > 50,
        "only {seen_redirect} policies redirected"
    );
    assert!(
        seen_specific > 100,
        "only {seen_specific} had identity entries"
    );
    assert!(seen_sctp > 20, "only {seen_sctp} had SCTP port entries");
}

#[test]
fn entries_decide_as_the_engine_and_the_sidecar_for_every_corpus_policy() {
    let own = named(&[("http", &[80, 8080])]);
    let peers = named(&[("http", &[80]), ("https", &[443]), ("dns", &[53])]);
    let mut checked = 0;
    let enforced = common::for_each_corpus_policy(|what, p, remotes| {
        let entries = policy_entries(p, &own, &peers);
        well_formed(&entries, what);
        let wrong = disagreements(p, &entries, &entries, remotes, &own, &peers);
        assert!(wrong.is_empty(), "{what}\n{}", wrong.join("\n"));
        checked += 1;
    });
    assert!(checked > 150, "only {checked} corpus policies checked");
    assert!(
        enforced > 100,
        "only {enforced} corpus policies selected their endpoint"
    );
}

#[test]
fn an_unenforced_direction_allows_every_port_of_every_protocol_to_anyone() {
    let p = ResolvedPolicy::default();
    let entries = policy_entries(&p, &NamedPorts::new(), &NamedPorts::new());
    assert_eq!(entries.len(), 2 * PROTOCOLS.len(), "{entries:?}");
    for e in &entries {
        assert_eq!(
            (e.remote_identity, e.port, e.end_port, e.verdict),
            (0, 1, 65535, Verdict::Allow as i32)
        );
    }
}

/// The comparison above is only worth something if a wrong entry fails it: change each
/// entry of some generated policies in turn (its verdict, its range, its identity, or drop
/// it) and the comparison must object every time.
#[test]
fn a_wrong_entry_is_noticed() {
    let own = named(&[("http", &[8080, 8081])]);
    let peers = named(&[("http", &[80])]);
    let mut mutated = 0;
    for seed in 0..40u64 {
        let mut g = Gen::seeded(seed, true);
        let texts = g.policies();
        let (p, remotes) = resolve(
            &texts,
            UnenforcedL7Mode::FailClosed,
            localhost_setting(seed),
            own.clone(),
        );
        let entries = policy_entries(&p, &own, &peers);
        for i in 0..entries.len() {
            let e = &entries[i];
            let other_verdict = match Verdict::try_from(e.verdict) {
                Ok(Verdict::Allow) => Verdict::Redirect,
                _ => Verdict::Allow,
            };
            let mut changes: Vec<Vec<PolicyEntry>> = Vec::new();
            let mut drop = entries.clone();
            drop.remove(i);
            changes.push(drop);
            let mut flip = entries.clone();
            flip[i].verdict = other_verdict as i32;
            changes.push(flip);
            if e.end_port < 65535 {
                let mut widen = entries.clone();
                widen[i].end_port += 1;
                // Widening over a port that falls back to the same verdict changes nothing,
                // and over a neighbour of the same key it may lose to it: only the others.
                let next = e.end_port + 1;
                let key = |x: &PolicyEntry| (x.direction, x.remote_identity, x.protocol);
                let neighbour = entries
                    .iter()
                    .any(|x| key(x) == key(e) && (x.port..=x.end_port).contains(&next));
                let dir = PbDirection::try_from(e.direction).expect("own direction");
                let after = lookup(&entries, dir, e.remote_identity, e.protocol, next);
                if !neighbour && after != e.verdict {
                    changes.push(widen);
                }
            }
            for (n, changed) in changes.into_iter().enumerate() {
                let wrong = disagreements(&p, &changed, &entries, &remotes, &own, &peers);
                assert!(
                    !wrong.is_empty(),
                    "seed {seed}: change {n} of {e:?} went unnoticed\n{entries:?}\n{}",
                    texts.join("---\n")
                );
                mutated += 1;
            }
        }
    }
    assert!(mutated > 100, "only {mutated} mutations tried");
}
