//! The order a map change is applied in, so that no lookup sees a verdict (or an
//! identity) that is neither the old state's nor the new one's; the reasoning is in the
//! [parent module](super)'s docs.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{Direction, MapKey, MapVerdict, SyncReport};

/// One write to a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOp<K, V> {
    /// Insert the key or replace its value.
    Upsert(K, V),
    /// Remove the key.
    Delete(K),
}

/// The port block lengths a policy's keys use, per (direction, identity class): the
/// kernel's `mb_policy_lens` row, which tells the lookup which lengths to probe. Index
/// [`abi::policy_lens_idx`](crate::abi::policy_lens_idx); bit n = a key has n port bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortLens(pub [u32; 4]);

impl PortLens {
    /// The lengths `entries` use.
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a MapKey>) -> PortLens {
        let mut l = PortLens::default();
        for k in entries {
            l.0[lens_idx(k.direction, k.identity == 0)] |= 1 << k.ports.bits;
        }
        l
    }

    /// The lengths either uses.
    pub fn union(self, other: PortLens) -> PortLens {
        PortLens(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }

    /// Whether a lookup for `direction` and the identity class `any` probes `bits`.
    pub fn has(self, direction: Direction, any: bool, bits: u8) -> bool {
        self.0[lens_idx(direction, any)] & (1 << bits) != 0
    }
}

fn lens_idx(direction: Direction, any: bool) -> usize {
    let d = match direction {
        Direction::Ingress => crate::abi::DIR_INGRESS,
        Direction::Egress => crate::abi::DIR_EGRESS,
    };
    crate::abi::policy_lens_idx(d, any)
}

/// A policy-map change: the lengths row widened (then every running BPF program waited
/// for), the four phases applied in order, with every running BPF program waited for
/// between phases 1 and 2 and between 3 and 4, and the lengths row narrowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Written first when the row lacks a length the old or the new keys use: the row
    /// as it was, plus every length of both policies, so no key is ever hidden.
    pub widen: Option<PortLens>,
    /// Identity-specific upserts, any-identity upserts, any-identity deletes,
    /// identity-specific deletes.
    pub phases: [Vec<MapOp<MapKey, MapVerdict>>; 4],
    /// Written last when the row lists lengths the new keys do not use (probes saved).
    pub narrow: Option<PortLens>,
    /// What the plan changes, in entries.
    pub report: SyncReport,
}

/// The ordered difference from `current` to `desired` (both as the map holds them), the
/// lengths row holding `row`.
pub fn plan(
    current: &BTreeMap<MapKey, MapVerdict>,
    desired: &BTreeMap<MapKey, MapVerdict>,
    row: PortLens,
) -> PolicyPlan {
    let mut p = PolicyPlan::default();
    let wide = row
        .union(PortLens::of(current.keys()))
        .union(PortLens::of(desired.keys()));
    if wide != row {
        p.widen = Some(wide);
    }
    let want = PortLens::of(desired.keys());
    if want != wide {
        p.narrow = Some(want);
    }
    for (k, v) in desired {
        let phase = if k.identity != 0 { 0 } else { 1 };
        match current.get(k) {
            Some(old) if old == v => continue,
            Some(_) => p.report.changed += 1,
            None => p.report.added += 1,
        }
        p.phases[phase].push(MapOp::Upsert(*k, *v));
    }
    for k in current.keys() {
        if desired.contains_key(k) {
            continue;
        }
        let phase = if k.identity == 0 { 2 } else { 3 };
        p.report.removed += 1;
        p.phases[phase].push(MapOp::Delete(*k));
    }
    p
}

/// An ipcache change: upserts longest prefix first, then deletes shortest prefix first.
/// Generic over the value: the endpoint's `mb_identity` maps a prefix to an identity, the
/// node's `mb_ipcache` to an identity and a tunnel endpoint.
pub fn plan_ipcache<V: Copy + PartialEq>(
    current: &BTreeMap<IpNet, V>,
    desired: &BTreeMap<IpNet, V>,
) -> (Vec<MapOp<IpNet, V>>, SyncReport) {
    let mut report = SyncReport::default();
    let mut upserts = Vec::new();
    for (net, id) in desired {
        match current.get(net) {
            Some(old) if old == id => continue,
            Some(_) => report.changed += 1,
            None => report.added += 1,
        }
        upserts.push((*net, *id));
    }
    upserts.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
    let mut deletes: Vec<IpNet> = current
        .keys()
        .filter(|n| !desired.contains_key(n))
        .copied()
        .collect();
    report.removed = deletes.len();
    deletes.sort_by_key(|n| n.prefix_len());
    let ops = upserts
        .into_iter()
        .map(|(n, id)| MapOp::Upsert(n, id))
        .chain(deletes.into_iter().map(MapOp::Delete))
        .collect();
    (ops, report)
}

#[cfg(test)]
mod tests {
    use super::super::{entries, Direction, PolicyRule};
    use super::*;

    /// The kernel's lookup (`mb_policy_lookup` + `mb_verdict_allows`) over a model map
    /// and lengths row: the lengths the row lists for (R), longest first, probed as exact
    /// keys; else those for (0); else denied.
    fn allows(map: &BTreeMap<MapKey, MapVerdict>, row: PortLens, remote: u32, port: u16) -> bool {
        let probe = |id: u32| {
            (0..=16u8).rev().find_map(|bits| {
                if !row.has(Direction::Egress, id == 0, bits) {
                    return None;
                }
                let mask = if bits == 0 {
                    0
                } else {
                    u16::MAX << (16 - bits)
                };
                let key = MapKey {
                    direction: Direction::Egress,
                    proto: 6,
                    identity: id,
                    ports: super::super::ports::PortPrefix {
                        port: port & mask,
                        bits,
                    },
                };
                map.get(&key).copied()
            })
        };
        let v = (remote != 0)
            .then(|| probe(remote))
            .flatten()
            .or_else(|| probe(0));
        matches!(v, Some(MapVerdict::Allow | MapVerdict::Redirect))
    }

    /// The kernel's longest-prefix answer (the LPM trie this map replaced): the longest
    /// block for (R, P), else for (0, P), else denied. The hash lookup must agree.
    fn allows_lpm(map: &BTreeMap<MapKey, MapVerdict>, remote: u32, port: u16) -> bool {
        let lookup = |id: u32| {
            map.iter()
                .filter(|(k, _)| {
                    let (lo, hi) = k.ports.range();
                    k.identity == id
                        && k.direction == Direction::Egress
                        && k.proto == 6
                        && (lo..=hi).contains(&port)
                })
                .max_by_key(|(k, _)| k.ports.bits)
                .map(|(_, v)| *v)
        };
        let v = lookup(remote).or_else(|| if remote != 0 { lookup(0) } else { None });
        matches!(v, Some(MapVerdict::Allow | MapVerdict::Redirect))
    }

    fn rule(id: u32, lo: u16, hi: u16, verdict: MapVerdict) -> PolicyRule {
        PolicyRule {
            direction: Direction::Egress,
            remote_identity: id,
            proto: 6,
            ports: (lo, hi),
            verdict,
        }
    }

    /// How the lengths row changes around the phases.
    #[derive(Clone, Copy)]
    enum Lens {
        /// As the plan says: widened first, narrowed last.
        Planned,
        /// The new policy's row written first (no widening).
        NewFirst,
        /// The old row kept until the end.
        OldUntilEnd,
    }

    /// Applies the plan from `old` to `new` one write at a time, its phases in `order`,
    /// the lengths row as `lens` says, and checks every flow after each write: its verdict
    /// must be the old policy's or the new one's. Returns the first flow that saw
    /// anything else.
    fn first_wrong_verdict(
        old: &[PolicyRule],
        new: &[PolicyRule],
        order: [usize; 4],
        lens: Lens,
    ) -> Option<String> {
        let (cur, want) = (entries(old), entries(new));
        let flows: Vec<(u32, u16)> = [7, 8, 9]
            .into_iter()
            .flat_map(|id| (75..=100).map(move |p| (id, p)))
            .collect();
        let old_row = PortLens::of(cur.keys());
        let verdicts = |m: &BTreeMap<_, _>, row| {
            flows
                .iter()
                .map(|&(r, p)| allows(m, row, r, p))
                .collect::<Vec<_>>()
        };
        let (before, after) = (
            verdicts(&cur, old_row),
            verdicts(&want, PortLens::of(want.keys())),
        );
        // The hash lookup gives the LPM's answer for every flow of both policies.
        for (m, v) in [(&cur, &before), (&want, &after)] {
            for (i, &(r, p)) in flows.iter().enumerate() {
                assert_eq!(v[i], allows_lpm(m, r, p), "identity {r} port {p}");
            }
        }
        let plan = plan(&cur, &want, old_row);
        let mut map = cur.clone();
        let mut row = match lens {
            Lens::Planned => plan.widen.unwrap_or(old_row),
            Lens::NewFirst => PortLens::of(want.keys()),
            Lens::OldUntilEnd => old_row,
        };
        let wrong = |map: &BTreeMap<_, _>, row, after_what: &dyn std::fmt::Debug| {
            flows.iter().enumerate().find_map(|(i, &(r, p))| {
                let now = allows(map, row, r, p);
                (now != before[i] && now != after[i]).then(|| {
                    format!(
                        "flow identity {r} port {p}: {now} after {after_what:?}, policies say {} then {}",
                        before[i], after[i]
                    )
                })
            })
        };
        if let Some(w) = wrong(&map, row, &row) {
            return Some(w);
        }
        for op in order.iter().flat_map(|&i| &plan.phases[i]) {
            match *op {
                MapOp::Upsert(k, v) => map.insert(k, v),
                MapOp::Delete(k) => map.remove(&k),
            };
            if let Some(w) = wrong(&map, row, op) {
                return Some(w);
            }
        }
        assert_eq!(map, want, "the plan does not end at the new policy");
        if let Some(narrow) = plan.narrow {
            row = narrow;
            if let Some(w) = wrong(&map, row, &row) {
                return Some(w);
            }
        }
        if !matches!(lens, Lens::OldUntilEnd) {
            assert_eq!(
                row,
                PortLens::of(want.keys()),
                "the row ends at the new lengths"
            );
        }
        None
    }

    fn check_every_state(old: &[PolicyRule], new: &[PolicyRule]) {
        if let Some(wrong) = first_wrong_verdict(old, new, [0, 1, 2, 3], Lens::Planned) {
            panic!("{wrong}");
        }
    }

    #[test]
    fn another_order_shows_a_wrong_verdict() {
        use MapVerdict::*;
        // Both deny identity 7 on port 80; the old by an identity-specific DENY over an
        // any-identity ALLOW.
        let old = [rule(0, 80, 80, Allow), rule(7, 80, 80, Deny)];
        let new = [rule(0, 80, 80, Deny)];
        let planned = |a, b, order| first_wrong_verdict(a, b, order, Lens::Planned);
        assert!(planned(&old, &new, [3, 2, 1, 0]).is_some());
        assert!(planned(&new, &old, [1, 0, 2, 3]).is_some());
        assert!(planned(&old, &new, [0, 1, 2, 3]).is_none());
        assert!(planned(&new, &old, [0, 1, 2, 3]).is_none());
    }

    #[test]
    fn the_lengths_row_widens_first_and_narrows_last() {
        use MapVerdict::*;
        // Both deny identity 7 port 80: the old policy by a one-port block (16 bits), the
        // new one by the block 64-127 (10 bits), over an any-identity ALLOW.
        let old = [rule(7, 80, 80, Deny), rule(0, 1, 65535, Allow)];
        let new = [rule(7, 64, 127, Deny), rule(0, 1, 65535, Allow)];
        // Writing the new row first hides the old blocks while they decide.
        assert!(first_wrong_verdict(&old, &new, [0, 1, 2, 3], Lens::NewFirst).is_some());
        // Keeping the old row hides the new blocks once the old ones are gone.
        assert!(first_wrong_verdict(&old, &new, [0, 1, 2, 3], Lens::OldUntilEnd).is_some());
        assert!(first_wrong_verdict(&old, &new, [0, 1, 2, 3], Lens::Planned).is_none());
        assert!(first_wrong_verdict(&new, &old, [0, 1, 2, 3], Lens::Planned).is_none());
        let (o, n) = (entries(&old), entries(&new));
        let p = plan(&o, &n, PortLens::of(o.keys()));
        let wide = PortLens::of(o.keys()).union(PortLens::of(n.keys()));
        assert_eq!(p.widen, Some(wide));
        assert_eq!(p.narrow, Some(PortLens::of(n.keys())));
        // A row that already lists more (an interrupted sync) is widened only if it
        // lacks something, and narrowed to what the keys use.
        let p = plan(&n, &n, wide);
        assert_eq!((p.widen, p.narrow), (None, Some(PortLens::of(n.keys()))));
        // A row that lacks the lengths of keys already there (never written) is fixed
        // before anything else.
        let p = plan(&n, &n, PortLens::default());
        assert_eq!((p.widen, p.narrow), (Some(PortLens::of(n.keys())), None));
        // Only the lengths of one class: exact ports and every port.
        let l = PortLens::of(entries(&[rule(7, 80, 80, Allow), rule(0, 1, 65535, Deny)]).keys());
        assert!(l.has(Direction::Egress, false, 16) && !l.has(Direction::Egress, false, 0));
        // 1-65535 is blocks of 16 down to 1 bits; only 0-65535 would be one of 0 bits.
        assert!(l.has(Direction::Egress, true, 16) && l.has(Direction::Egress, true, 1));
        assert!(!l.has(Direction::Egress, true, 0));
        assert!(!l.has(Direction::Ingress, true, 16));
    }

    #[test]
    fn every_intermediate_state_is_old_or_new() {
        use MapVerdict::*;
        let a = vec![
            rule(0, 80, 90, Allow),
            rule(7, 80, 83, Deny),
            rule(8, 95, 100, Allow),
        ];
        let b = vec![
            rule(0, 80, 85, Deny),
            rule(0, 86, 99, Redirect),
            rule(7, 80, 81, Allow),
            rule(7, 82, 84, Deny),
            rule(9, 75, 79, Allow),
        ];
        let c = vec![rule(0, 1, 65535, Allow)];
        let d: Vec<PolicyRule> = vec![];
        let e = vec![rule(7, 1, 65535, Deny), rule(0, 80, 80, Allow)];
        for (old, new) in [
            (&a, &b),
            (&b, &a),
            (&a, &c),
            (&c, &e),
            (&e, &c),
            (&e, &d),
            (&d, &a),
            (&b, &e),
        ] {
            check_every_state(old, new);
        }
    }

    #[test]
    fn plan_orders_phases_and_counts() {
        use MapVerdict::*;
        let old = entries(&[
            rule(0, 80, 80, Allow),
            rule(7, 81, 81, Deny),
            rule(8, 82, 82, Allow),
        ]);
        let new = entries(&[
            rule(0, 80, 80, Deny),
            rule(7, 81, 81, Allow),
            rule(9, 83, 83, Allow),
        ]);
        let p = plan(&old, &new, PortLens::of(old.keys()));
        assert_eq!(
            p.report,
            SyncReport {
                added: 1,
                changed: 2,
                removed: 1
            }
        );
        let ids = |ph: &Vec<MapOp<MapKey, MapVerdict>>| {
            ph.iter()
                .map(|op| match op {
                    MapOp::Upsert(k, _) | MapOp::Delete(k) => k.identity,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&p.phases[0]), vec![7, 9]);
        assert_eq!(ids(&p.phases[1]), vec![0]);
        assert!(p.phases[2].is_empty());
        assert_eq!(ids(&p.phases[3]), vec![8]);
        assert_eq!(
            plan(&new, &new, PortLens::of(new.keys())),
            PolicyPlan::default()
        );
    }

    /// Longest-prefix identity of an address over a model ipcache (world = 2 on a miss).
    fn identity(map: &BTreeMap<IpNet, u32>, ip: std::net::IpAddr) -> u32 {
        map.iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map_or(2, |(_, id)| *id)
    }

    #[test]
    fn ipcache_changes_show_old_or_new_identity() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let old: BTreeMap<IpNet, u32> = [
            (net("10.0.0.0/8"), 100),
            (net("10.1.2.3/32"), 300),
            (net("10.1.0.0/16"), 200),
        ]
        .into();
        let new: BTreeMap<IpNet, u32> = [
            (net("10.0.0.0/8"), 101),
            (net("10.1.0.0/16"), 201),
            (net("10.1.2.0/24"), 250),
            (net("10.1.2.4/32"), 400),
        ]
        .into();
        let addrs: Vec<std::net::IpAddr> =
            ["10.1.2.3", "10.1.2.4", "10.1.3.1", "10.2.0.1", "11.0.0.1"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        for (from, to) in [(&old, &new), (&new, &old)] {
            let (ops, _) = plan_ipcache(from, to);
            let mut map = from.clone();
            for op in &ops {
                match *op {
                    MapOp::Upsert(n, id) => map.insert(n, id),
                    MapOp::Delete(n) => map.remove(&n),
                };
                for a in &addrs {
                    let now = identity(&map, *a);
                    assert!(
                        now == identity(from, *a) || now == identity(to, *a),
                        "{a}: identity {now} after {op:?}"
                    );
                }
            }
            assert_eq!(&map, to);
        }
        let (_, report) = plan_ipcache(&old, &new);
        assert_eq!(
            report,
            SyncReport {
                added: 2,
                changed: 2,
                removed: 1
            }
        );
    }
}
