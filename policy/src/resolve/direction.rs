//! Resolving one direction: the rules that select an endpoint turned into per-port entries
//! with the exact remote identities each rule covers.

use super::*;

pub(super) fn resolve_direction(
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
            // An allow that requires mutual authentication denies what it covers: Cilium
            // drops that traffic until the peers are authenticated, which membrane never
            // does, and the requirement sticks to the (peer, port) whatever other rules
            // allow (as Cilium's policy map entry keeps its auth type). A deny needs no L7
            // or TLS, so it covers every request and server name.
            let unauthenticated = d.auth.is_some() && !d.deny;
            let mk = |l7: &L7, notes: &[String], tls: &Option<Arc<PortTls>>| PeerEntry {
                deny: d.deny || unauthenticated,
                remotes: remotes.clone(),
                l7: if unauthenticated {
                    L7::None
                } else {
                    l7.clone()
                },
                origin: origin.clone(),
                auth: d.auth.clone(),
                unresolved: unresolved.clone(),
                notes: notes.to_vec(),
                tls: if unauthenticated { None } else { tls.clone() },
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
