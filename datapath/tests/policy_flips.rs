//! Privileged: the endpoint's egress policy as connect4 enforces it from the LPM maps, and
//! a policy change never showing a flow a verdict that is neither the old policy's nor
//! the new one's.
//!
//! The pod has five remote addresses on its interface: three with pod identities, one in
//! a CIDR identity's prefix (the LPM ipcache), one the ipcache does not know (world). No
//! one listens, so an allowed TCP connect is refused by the peer (`R`) and a denied one
//! fails with EPERM at connect (`D`); a UDP connect succeeds (`A`) or fails with EPERM.
//! What each flow should see is computed here from the rules by the lookup the agent
//! resource documents (the remote's identity's rule for the port, else the any-identity
//! rule, else deny), independently of the map encoding.

mod common;

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;

use common::{tcp, Env};
use membrane_datapath::policy_map::{Direction::*, MapVerdict, MapVerdict::*, PolicyRule};
use membrane_datapath::{DatapathSettings, IpNet};

const POD: u32 = 4242;
const WORLD: u32 = 2;

/// (address, its identity as the ipcache below resolves it).
const REMOTES: [(&str, u32); 5] = [
    ("10.77.0.1", 301),
    ("10.77.0.2", 302),
    ("10.77.0.3", 303),
    ("10.77.0.70", 500),
    ("10.77.0.200", WORLD),
];
const TCP_PORTS: [u16; 16] = [
    1000, 1250, 1499, 1500, 1502, 1504, 1507, 1550, 1999, 2000, 2005, 2500, 3000, 3600, 4000, 5000,
];
const UDP_PORTS: [u16; 2] = [53, 5353];

fn ipcache() -> Vec<(IpNet, u32)> {
    let mut v: Vec<(IpNet, u32)> = REMOTES[..3]
        .iter()
        .map(|(a, id)| (format!("{a}/32").parse().unwrap(), *id))
        .collect();
    v.push(("10.77.0.64/26".parse().unwrap(), 500));
    v
}

fn udp(id: u32, lo: u16, hi: u16, v: MapVerdict) -> PolicyRule {
    PolicyRule {
        proto: 17,
        ..tcp(Egress, id, lo, hi, v)
    }
}

/// Policy A.
fn policy_a() -> Vec<PolicyRule> {
    vec![
        tcp(Egress, 0, 1000, 1999, Allow),
        tcp(Egress, 301, 1500, 1509, Deny),
        tcp(Egress, 301, 2000, 2010, Allow),
        tcp(Egress, 302, 1000, 1099, Allow),
        tcp(Egress, 500, 3000, 3999, Allow),
        tcp(Egress, WORLD, 4000, 4000, Allow),
        udp(0, 53, 53, Allow),
        udp(0, 5353, 5353, Allow),
    ]
}

/// Policy B: verdicts change, ranges are reshaped, identity-specific entries come and go.
fn policy_b() -> Vec<PolicyRule> {
    vec![
        tcp(Egress, 0, 1000, 1499, Allow),
        tcp(Egress, 0, 1600, 2999, Redirect),
        tcp(Egress, 301, 1500, 1504, Deny),
        tcp(Egress, 301, 1505, 1509, Allow),
        tcp(Egress, 301, 2000, 2010, Allow),
        tcp(Egress, 303, 1000, 1999, Deny),
        tcp(Egress, 500, 3000, 3499, Allow),
        tcp(Egress, WORLD, 4000, 4000, Allow),
        udp(0, 53, 53, Allow),
    ]
}

/// The documented lookup: the remote's identity's rule, else any identity's, else deny.
fn allows(rules: &[PolicyRule], proto: u8, id: u32, port: u16) -> bool {
    let find = |want: u32| {
        rules.iter().find(|r| {
            r.proto == proto && r.remote_identity == want && (r.ports.0..=r.ports.1).contains(&port)
        })
    };
    let rule = find(id).or_else(|| find(0));
    matches!(rule.map(|r| r.verdict), Some(Allow | Redirect))
}

/// One flow: its probe target and the letter each verdict gives.
struct Flow {
    target: String,
    proto: u8,
    id: u32,
    port: u16,
}

impl Flow {
    fn letter(&self, rules: &[PolicyRule]) -> char {
        match (allows(rules, self.proto, self.id, self.port), self.proto) {
            (false, _) => 'D',
            (true, 6) => 'R',
            (true, _) => 'A',
        }
    }
}

fn flows() -> Vec<Flow> {
    let mut v = Vec::new();
    for (addr, id) in REMOTES {
        for port in TCP_PORTS {
            v.push(Flow {
                target: format!("tcp:{addr}:{port}"),
                proto: 6,
                id,
                port,
            });
        }
        for port in UDP_PORTS {
            v.push(Flow {
                target: format!("udp:{addr}:{port}"),
                proto: 17,
                id,
                port,
            });
        }
    }
    v
}

fn setup(env: &mut Env) -> membrane_datapath::Datapath {
    let addrs: Vec<String> = REMOTES.iter().map(|(a, _)| format!("{a}/24")).collect();
    env.add_pod_iface(&addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let dp = env.attach(&DatapathSettings {
        policy_enforce: true,
        pod_identity: POD,
        ..DatapathSettings::default()
    });
    dp.sync_ipcache(&ipcache()).unwrap();
    dp
}

fn probe_args(flows: &[Flow], extra: &[&str]) -> Vec<String> {
    let mut args = vec!["probes".to_owned()];
    for f in flows {
        args.extend(["--target".to_owned(), f.target.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A round's line: (start ns, end ns, letters).
fn parse(line: &str) -> (u64, u64, Vec<char>) {
    let mut it = line.split_whitespace();
    let start = it.next().unwrap().parse().unwrap();
    let end = it.next().unwrap().parse().unwrap();
    (start, end, it.next().unwrap_or("").chars().collect())
}

#[test]
fn egress_rules_decide_connects_by_identity_cidr_world_and_port_range() {
    let mut env = Env::new();
    let dp = setup(&mut env);
    let flows = flows();
    let args = probe_args(&flows, &["--rounds", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for policy in [policy_a(), policy_b()] {
        dp.sync_policy(&policy).unwrap();
        let (_, _, got) = parse(env.client(&args).trim());
        let want: Vec<char> = flows.iter().map(|f| f.letter(&policy)).collect();
        for (i, f) in flows.iter().enumerate() {
            assert_eq!(
                got[i], want[i],
                "{} (identity {}): {policy:?}",
                f.target, f.id
            );
        }
    }
    // The cases by name, under policy B.
    let b = policy_b();
    let letter = |addr: &str, port: u16| {
        flows
            .iter()
            .find(|f| f.target == format!("tcp:{addr}:{port}"))
            .unwrap()
            .letter(&b)
    };
    // Port ranges: 1000-1499 allowed for any identity, 1500-1599 no rule.
    assert_eq!(
        (letter("10.77.0.2", 1499), letter("10.77.0.2", 1550)),
        ('R', 'D')
    );
    // Identity-specific DENY over an any-identity ALLOW.
    assert_eq!(letter("10.77.0.3", 1250), 'D');
    // The CIDR identity through the LPM ipcache; world on an ipcache miss.
    assert_eq!(
        (letter("10.77.0.70", 3000), letter("10.77.0.70", 3600)),
        ('R', 'D')
    );
    assert_eq!(
        (letter("10.77.0.200", 4000), letter("10.77.0.200", 3000)),
        ('R', 'D')
    );
    assert!(dp.counters_of("mb_connect4").unwrap().refused > 0);
}

/// Read rounds until one that started after `after_ns`; check each against the two
/// policies. Returns the rounds read and how many overlapped the change.
fn rounds_until(
    out: &mut BufReader<ChildStdout>,
    flows: &[Flow],
    (old, new): (&[char], &[char]),
    (sync_start, sync_end): (u64, u64),
) -> (usize, usize) {
    let (mut n, mut straddling) = (0, 0);
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the prober stopped");
        let (start, end, got) = parse(line.trim());
        assert_eq!(got.len(), flows.len(), "{line}");
        n += 1;
        let exact = if end < sync_start {
            Some(old)
        } else if start > sync_end {
            Some(new)
        } else {
            straddling += 1;
            None
        };
        for (i, f) in flows.iter().enumerate() {
            let ok = match exact {
                Some(want) => got[i] == want[i],
                None => got[i] == old[i] || got[i] == new[i],
            };
            assert!(
                ok,
                "{} (identity {}) saw {} while the policies say {} then {} (round {start}..{end}, sync {sync_start}..{sync_end})",
                f.target, f.id, got[i], old[i], new[i]
            );
        }
        if start > sync_end {
            return (n, straddling);
        }
    }
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Which of policies A and B may have decided a round that ran from `s` to `e`, given the
/// changes (A → B, B → A, ...) made in the windows `syncs`: every policy in force at some
/// moment of the round, both during a change.
fn in_force(syncs: &[(u64, u64)], s: u64, e: u64) -> (bool, bool) {
    let (mut a, mut b) = (false, false);
    let mut from = 0;
    for (k, &(start, end)) in syncs.iter().enumerate() {
        // Before this change (since the last one ended): the policy it changes from.
        let before_is_a = k.is_multiple_of(2);
        if s <= start && e >= from {
            if before_is_a {
                a = true
            } else {
                b = true
            }
        }
        if s <= end && e >= start {
            (a, b) = (true, true);
        }
        from = end;
    }
    if e >= from {
        if syncs.len().is_multiple_of(2) {
            a = true
        } else {
            b = true
        }
    }
    (a, b)
}

#[test]
fn a_hundred_policy_flips_never_show_a_wrong_verdict() {
    let mut env = Env::new();
    let dp = setup(&mut env);
    let flows = flows();
    let (a, b) = (policy_a(), policy_b());
    let letters = |p: &[PolicyRule]| flows.iter().map(|f| f.letter(p)).collect::<Vec<char>>();
    let (la, lb) = (letters(&a), letters(&b));
    let changing = la.iter().zip(&lb).filter(|(x, y)| x != y).count();
    assert!(
        changing >= 10 && changing < flows.len(),
        "{changing} of {} flows change",
        flows.len()
    );

    dp.sync_policy(&a).unwrap();
    let args = probe_args(&flows, &["--secs", "300", "--until-stdin-closes"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (stdin, mut out) = env.spawn_client_piped(&args);
    let now = monotonic_ns();
    rounds_until(&mut out, &flows, (&la, &la), (now, now));
    // A second prober on one flow only, sampling every few microseconds: identity 301's
    // port 1504 is denied by both policies through a block each reshapes (A: 1504-1507,
    // B: 1504 alone) over an any-identity ALLOW, so it is the flow a wrong order would
    // let through.
    let hot: Vec<Flow> = flows
        .into_iter()
        .filter(|f| f.target == "tcp:10.77.0.1:1504")
        .collect();
    let flows = self::flows();
    let hot_args = probe_args(&hot, &["--secs", "300", "--until-stdin-closes"]);
    let hot_args: Vec<&str> = hot_args.iter().map(String::as_str).collect();
    let (hot_stdin, hot_out) = env.spawn_client_piped(&hot_args);
    let hot_lines =
        std::thread::spawn(move || hot_out.lines().map(Result::unwrap).collect::<Vec<_>>());

    let (mut rounds, mut straddling) = (0, 0);
    let mut syncs = Vec::new();
    for flip in 0..100u32 {
        let (old, new, rules) = if flip.is_multiple_of(2) {
            (&la, &lb, &b)
        } else {
            (&lb, &la, &a)
        };
        let start = monotonic_ns();
        let report = dp.sync_policy(rules).unwrap();
        let end = monotonic_ns();
        syncs.push((start, end));
        assert!(
            report.added + report.changed + report.removed > 0,
            "{report:?}"
        );
        let (n, s) = rounds_until(&mut out, &flows, (old, new), (start, end));
        rounds += n;
        straddling += s;
    }
    drop((stdin, hot_stdin));
    // The prober ran through the changes, not only between them.
    assert!(straddling > 0, "{rounds} rounds, none during a change");

    let hot_lines = hot_lines.join().unwrap();
    let (want_a, want_b) = (hot[0].letter(&a), hot[0].letter(&b));
    assert_eq!((want_a, want_b), ('D', 'D'));
    let mut hot_during = 0;
    for line in &hot_lines {
        let (s, e, got) = parse(line);
        let (in_a, in_b) = in_force(&syncs, s, e);
        if in_a && in_b {
            hot_during += 1;
        }
        assert!(
            (in_a && got[0] == want_a) || (in_b && got[0] == want_b),
            "{} saw {} at {s}..{e} (A in force: {in_a}, B: {in_b})",
            hot[0].target,
            got[0]
        );
    }
    assert!(
        hot_during > 0,
        "{} single-flow rounds, none during a change",
        hot_lines.len()
    );
    println!(
        "{rounds} rounds of {} connects ({straddling} during a change), {} of the hot flow ({hot_during} during a change)",
        flows.len(),
        hot_lines.len()
    );
}
